"""The audit's ``report.md``: written from plain numbers (a bounds row, error budgets as
``ErrorBudget.as_dict()``, per-class rows), never from tensors or models.

Sections, in order: what was read, diagnosis and next steps, the error budget (every piece
defined in one line beside its value), the teacher-classifier budget of an own-head student,
the bound terms, the classes that carry the gap, then the extra sections (see
``EXTRA_SECTIONS`` and the ``sections`` argument of ``audit_markdown``), figures and notes.
"""

import math
from dataclasses import dataclass

from ijckd_bounds import schema
from ijckd_bounds.reporting_fidelity import fidelity_section
from ijckd_bounds.schema import ADVICE, DIAGNOSES, UNDETERMINED

# Extension point: further sections of report.md, appended in this order after "Classes
# that carry the gap". Each entry is a function ``(row, details) -> str | None``: ``row``
# the report's results-table row (dict), ``details`` its ``BoundsReport.details``; it
# returns markdown starting with a "## " heading, or None to leave the section out.
EXTRA_SECTIONS = []


@dataclass(frozen=True)
class Subject:
    """What an audit read: ``title`` (the report's heading) and one line each naming the
    teacher and the student (file, architecture, epoch)."""

    title: str
    teacher: str | None = None
    student: str | None = None


def _isnan(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(value):
    return "n/a" if _isnan(value) else f"{100 * value:.1f}%"


def _signed_pct(value):
    return "n/a" if _isnan(value) else f"{100 * value:+.1f}%"


def _num(value):
    return "n/a" if _isnan(value) else f"{value:.4g}"


def _interval(est):
    return f"[{_signed_pct(est['lo'])}, {_signed_pct(est['hi'])}]"


def _with_interval(est):
    return f"{_signed_pct(est['value'])} {_interval(est)}"


def _ranked(budget):
    """Pieces as dicts with their name, largest first (stable among equal values)."""
    pieces = [{"name": k, **v} for k, v in budget["pieces"].items()]
    return sorted(pieces, key=lambda p: p["value"], reverse=True)


def budget_table(budget):
    """The budget's pieces, largest first, each with its one-line definition."""
    lines = ["| piece | value | 95% interval | definition |", "|---|---:|---|---|"]
    for piece in _ranked(budget):
        lines.append(f"| {piece['name']} | {_signed_pct(piece['value'])} | {_interval(piece)} "
                     f"| `{piece['formula']}`: {piece['meaning']} |")
    lines.append(f"| **sum** | **{_pct(budget['total'])}** | [{_pct(budget['total_lo'])}, "
                 f"{_pct(budget['total_hi'])}] | `{budget['target']}`, the student's error "
                 f"(the pieces sum to it exactly) |")
    return "\n".join(lines)


def _separating_samples(difference, n):
    """Evaluation samples at which an interval as wide, relative to its sample size, would
    exclude 0 if the difference stayed as measured (None when the difference is 0)."""
    half_width = (difference["hi"] - difference["lo"]) / 2.0
    if _isnan(half_width) or difference["value"] == 0 or not n:
        return None
    return int(math.ceil(n * (half_width / abs(difference["value"])) ** 2))


def _piece_phrase(budget, name):
    piece = budget["pieces"][name]
    return f"the {name} piece ({_with_interval(piece)})"


def diagnosis_text(budget):
    """The diagnosis paragraph: what is named and the numbers that allow it."""
    named = budget["named"]
    best = named[0]
    parts = []
    if budget["diagnosis"] == UNDETERMINED:
        fit = budget["pieces"]["fit"]
        if best == "fit":
            why = f"the fit piece ({_with_interval(fit)}) is the largest"
            if budget["tie"]:
                why += (f", not clearly ahead of {_piece_phrase(budget, named[1])} (their "
                        f"difference is {_with_interval(budget['separation'])})")
        elif "fit" in named:
            why = (f"{_piece_phrase(budget, best)} cannot be told from the fit piece "
                   f"({_with_interval(fit)}): their difference is "
                   f"{_with_interval(budget['separation'])}")
        else:
            unclear = [k for k, v in budget["fit_margins"].items() if not v["lo"] > 0]
            why = "; ".join(f"{_piece_phrase(budget, k)} is not clearly above the fit piece "
                            f"({_signed_pct(fit['value'])}): their difference is "
                            f"{_with_interval(budget['fit_margins'][k])}" for k in unclear)
        n_fit = budget.get("n_fit")
        fitted = f"n_fit = {n_fit} fit samples" if n_fit else "the fit split"
        parts.append(f"**undetermined**: {why}. The probes were fitted on {fitted}, too few "
                     f"to separate the pieces; the fit piece is what a probe loses by being "
                     f"fitted on them, a property of the audit's data, not of the student.")
    elif budget["tie"]:
        second = named[1]
        sep = budget["separation"]
        first_piece, second_piece = budget["pieces"][best], budget["pieces"][second]
        parts.append(
            f"**{DIAGNOSES[best]}**, tied with **{DIAGNOSES[second]}**: "
            f"{_piece_phrase(budget, best)} and {_piece_phrase(budget, second)} cannot be "
            f"told apart; their difference, on the same bootstrap replicates, is "
            f"{_with_interval(sep)}, which includes 0. What separates them: the {best} piece "
            f"is `{first_piece['formula']}` ({first_piece['meaning']}), the {second} piece "
            f"`{second_piece['formula']}` ({second_piece['meaning']}).")
        needed = _separating_samples(sep, budget.get("n"))
        if needed is not None:
            parts.append(f"About {needed} evaluation samples (now {budget.get('n')}) would "
                         f"separate them if the difference stayed at "
                         f"{_signed_pct(sep['value'])}.")
    else:
        parts.append(
            f"**{DIAGNOSES[best]}**: {_piece_phrase(budget, best)} is the largest share of "
            f"the {budget['target']} of {_pct(budget['total'])}, clearly ahead of the "
            f"runner-up, {_piece_phrase(budget, budget['runner_up'])}: their difference is "
            f"{_with_interval(budget['separation'])}.")
    teacher = budget["pieces"]["teacher"]
    runner_up = budget["pieces"][budget["runner_up"]]
    if budget["clearly_worse"] and teacher["value"] >= runner_up["value"]:
        parts.append(f"The teacher piece ({_signed_pct(teacher['value'])}) is not a candidate: "
                     f"the student's error is clearly above the teacher's "
                     f"({budget['target']} − teacher_err = "
                     f"{_with_interval(budget['teacher_gap'])}), so it is not "
                     f"teacher-limited.")
    return " ".join(parts)


def next_steps(budget):
    """Bullet lines of advice: only for named pieces whose own interval lies above 0."""
    if budget["diagnosis"] == UNDETERMINED:
        n_fit = budget.get("n_fit")
        had = f" (the probes had {n_fit})" if n_fit else ""
        return [f"- Give the audit more fit samples{had}, several times as many, and run it "
                f"again: no piece of the student can be named before its probes are fitted "
                f"on enough data."]
    lines = [f"- {ADVICE[name]}" for name in budget["advice"]]
    if not lines:
        named = ", ".join(f"the {k} piece ({_with_interval(budget['pieces'][k])})"
                          for k in budget["named"])
        lines = [f"- No advice: the interval of {named} does not lie above 0, so these data "
                 f"show nothing to fix."]
    return lines


def terms_table(row):
    """Markdown table of the rate terms (in percent) and distance terms of ``row``, each
    with its interval; terms that are NaN are left out."""
    lines = ["| term | value | 95% interval |", "|---|---:|---|"]
    for term in schema.RATE_TERMS:
        if term in row and not _isnan(row[term]):
            lines.append(f"| `{term}` | {_pct(row[term])} | "
                         f"[{_pct(row[term + '_lo'])}, {_pct(row[term + '_hi'])}] |")
    for term in schema.DISTANCE_TERMS:
        if term in row and not _isnan(row[term]):
            flag = " (n < 10·d)" if term in schema.DISCREPANCY_TERMS and _small_n(row) else ""
            lines.append(f"| `{term}`{flag} | {_num(row[term])} | "
                         f"[{_num(row[term + '_lo'])}, {_num(row[term + '_hi'])}] |")
    lines.append(f"| `mmd_p` | {_num(row.get('mmd_p'))} | permutation p-value |")
    lines.append(f"| `n_eval`, `n_fit`, `dim`, `n_classes` | {row.get('n_eval')}, "
                 f"{row.get('n_fit')}, {row.get('dim')}, {row.get('n_classes')} | |")
    return "\n".join(lines)


def _small_n(row):
    try:
        return float(row["n_eval"]) < 10 * float(row["dim"])
    except (KeyError, TypeError, ValueError):
        return False


def classes_table(per_class, top=5):
    """Markdown table of the ``top`` classes where the student falls furthest behind the
    teacher (largest student_err − teacher_err) in ``per_class``."""
    df = per_class.assign(gap=per_class["student_err"] - per_class["teacher_err"])
    df = df.sort_values("gap", ascending=False).head(top)
    lines = ["| class | n | student_err | teacher_err | disagreement |",
             "|---:|---:|---:|---:|---:|"]
    for _, r in df.iterrows():
        lines.append(f"| {int(r['class'])} | {int(r['n'])} | {_pct(r['student_err'])} | "
                     f"{_pct(r['teacher_err'])} | {_pct(r['disagreement'])} |")
    return "\n".join(lines)


def read_section(subject, row):
    """What the audit read and the sample sizes behind every number."""
    lines = ["## What was read", ""]
    if subject.teacher:
        lines.append(f"- teacher: {subject.teacher}")
    if subject.student:
        lines.append(f"- student: {subject.student}")
    lines.append(f"- evaluation samples n_eval = {row.get('n_eval')}, fit samples n_fit = "
                 f"{row.get('n_fit')} (the probes and connectors are fitted on these, "
                 f"disjoint from the evaluation samples), teacher feature width dim = "
                 f"{row.get('dim')}, classes = {row.get('n_classes')}")
    return "\n".join(lines)


def audit_markdown(*, title, row, budgets, per_class, figures=(), notes=(), details=None,
                   sections=()):
    """Markdown text of an audit.

    Args:
        title: the report's heading, or a ``Subject`` naming the teacher and student read.
        row: the report's results-table row (dict).
        budgets: ``ErrorBudget.as_dict()`` of each budget, primary (what the student
            predicts with) first, then the teacher-classifier budget of an own-head student.
        per_class: ``BoundsReport.per_class()``.
        details: ``BoundsReport.details`` (for ``EXTRA_SECTIONS``).
        sections: further markdown sections (each starting with "## "), appended after
            those of ``EXTRA_SECTIONS``.
    """
    subject = title if isinstance(title, Subject) else Subject(str(title))
    primary = budgets[0]
    parts = [f"# Audit: {subject.title}", "", read_section(subject, row), "",
             "## Diagnosis", "", diagnosis_text(primary), "", "### Next steps", ""]
    parts += next_steps(primary)
    parts += ["", "## Error budget", "", f"The pieces sum exactly to the student's error "
              f"(docs/theory.md, \"Audit\"); each interval is a paired bootstrap over the "
              f"{primary.get('n')} evaluation samples ({primary.get('method')}), the same "
              f"resamples for every piece and every difference of pieces.", "",
              budget_table(primary), ""]
    for other in budgets[1:]:
        parts += [f"### With the teacher's classifier ({other['target']})", "",
                  "Would this student work with the teacher's classifier, through the "
                  "post-hoc connector? " + diagnosis_text(other), "", budget_table(other), ""]
    parts += ["## Bound terms", "", terms_table(row), ""]
    if _small_n(row):
        parts += ["Discrepancy terms marked (n < 10·d) were measured with fewer than ten "
                  "samples per feature dimension; read them as rough.", ""]
    parts += fidelity_section(row, (details or {}).get("ece_gap"))
    parts += ["## Classes that carry the gap", "", classes_table(per_class), ""]
    extra = [build(row, dict(details or {})) for build in EXTRA_SECTIONS] + list(sections)
    for section in extra:
        if section:
            parts += [section.rstrip("\n"), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    notes = list(notes) + [n for b in budgets for n in b.get("notes", [])]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    return "\n".join(parts)
