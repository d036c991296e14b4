"""The audit's ``report.md``: written from plain numbers (a bounds row, an error budget,
per-class rows), never from tensors or models."""

import math

from ijckd_bounds import schema
from ijckd_bounds.estimators.audit import ADVICE, DIAGNOSES
from ijckd_bounds.reporting_fidelity import fidelity_section

RATE_TERMS = ("teacher_err", "student_err", "student_own_err", "disagreement", "delta_gamma",
              "joint_err_T", "joint_err_S", "ideal_joint", "student_probe_err", "ijc_lambda",
              "ijc_gap", "pair_disc") + schema.BOUNDS
OTHER_TERMS = ("feat_msd", "feat_rel", "feat_cka", "logit_msd", "mmd2", "proxy_a_linear",
               "proxy_a_mlp")
DISCREPANCY_TERMS = ("feat_cka", "mmd2", "proxy_a_linear", "proxy_a_mlp")


def _pct(value):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.1f}%"


def _signed_pct(value):
    return f"{100 * value:+.1f}%"


def _num(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}"


def budget_table(budget):
    lines = ["| piece | value | 95% interval | diagnosis if largest |", "|---|---:|---|---|"]
    for piece in budget["pieces_ranked"]:
        lines.append(f"| {piece['name']} | {_signed_pct(piece['value'])} | "
                     f"[{_signed_pct(piece['lo'])}, {_signed_pct(piece['hi'])}] | "
                     f"{DIAGNOSES[piece['name']]} |")
    lines.append(f"| **sum = {budget['target']}** | **{_pct(budget['total'])}** | "
                 f"[{_pct(budget['total_lo'])}, {_pct(budget['total_hi'])}] | |")
    return "\n".join(lines)


def _ranked(budget):
    pieces = [{"name": k, **v} for k, v in budget["pieces"].items()]
    return sorted(pieces, key=lambda p: p["value"], reverse=True)


def diagnosis_text(budget):
    ranked = _ranked(budget)
    best, second = ranked[0], ranked[1]
    name = DIAGNOSES[best["name"]]
    if budget["tie"]:
        return (f"**{name}**, tied with **{DIAGNOSES[second['name']]}**: the {best['name']} "
                f"piece ({_signed_pct(best['value'])}, [{_signed_pct(best['lo'])}, "
                f"{_signed_pct(best['hi'])}]) and the {second['name']} piece "
                f"({_signed_pct(second['value'])}, [{_signed_pct(second['lo'])}, "
                f"{_signed_pct(second['hi'])}]) have overlapping intervals.")
    return (f"**{name}**: the {best['name']} piece is the largest share of the "
            f"{budget['target']} of {_pct(budget['total'])} ({_signed_pct(best['value'])}, "
            f"[{_signed_pct(best['lo'])}, {_signed_pct(best['hi'])}]), ahead of the "
            f"{second['name']} piece ({_signed_pct(second['value'])}).")


def terms_table(row):
    lines = ["| term | value | 95% interval |", "|---|---:|---|"]
    for term in RATE_TERMS:
        if term in row and not _isnan(row[term]):
            lines.append(f"| `{term}` | {_pct(row[term])} | "
                         f"[{_pct(row[term + '_lo'])}, {_pct(row[term + '_hi'])}] |")
    for term in OTHER_TERMS:
        if term in row and not _isnan(row[term]):
            flag = " (n < 10·d)" if term in DISCREPANCY_TERMS and _small_n(row) else ""
            lines.append(f"| `{term}`{flag} | {_num(row[term])} | "
                         f"[{_num(row[term + '_lo'])}, {_num(row[term + '_hi'])}] |")
    lines.append(f"| `mmd_p` | {_num(row.get('mmd_p'))} | permutation p-value |")
    lines.append(f"| `n_eval`, `n_fit`, `dim`, `n_classes` | {row.get('n_eval')}, "
                 f"{row.get('n_fit')}, {row.get('dim')}, {row.get('n_classes')} | |")
    return "\n".join(lines)


def _isnan(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def _small_n(row):
    try:
        return float(row["n_eval"]) < 10 * float(row["dim"])
    except (KeyError, TypeError, ValueError):
        return False


def classes_table(per_class, top=5):
    df = per_class.assign(gap=per_class["student_err"] - per_class["teacher_err"])
    df = df.sort_values("gap", ascending=False).head(top)
    lines = ["| class | n | student_err | teacher_err | disagreement |", "|---:|---:|---:|---:|---:|"]
    for _, r in df.iterrows():
        lines.append(f"| {int(r['class'])} | {int(r['n'])} | {_pct(r['student_err'])} | "
                     f"{_pct(r['teacher_err'])} | {_pct(r['disagreement'])} |")
    return "\n".join(lines)


def audit_markdown(*, title, row, budgets, per_class, figures=(), notes=(), ece_gap=None):
    """Markdown text of an audit. ``budgets``: list of ErrorBudget.as_dict(), primary first.
    ``ece_gap``: the report's ``details["ece_gap"]`` (the fidelity section's ECE sentence)."""
    primary = budgets[0]
    for b in budgets:
        b["pieces_ranked"] = _ranked(b)
    parts = [f"# Audit: {title}", "", "## Diagnosis", "", diagnosis_text(primary), "",
             "### Next steps", ""]
    best = primary["pieces_ranked"][0]["name"]
    parts.append(f"- {ADVICE[best]}")
    if primary["tie"]:
        parts.append(f"- {ADVICE[primary['pieces_ranked'][1]['name']]}")
    parts += ["", "## Error budget", "", "The pieces sum exactly to the student's error "
              "(THEORY.md, \"Audit\"); each interval is a paired bootstrap over evaluation "
              "samples.", "", budget_table(primary), ""]
    for other in budgets[1:]:
        parts += [f"### With the teacher's classifier ({other['target']})", "",
                  "Would this student work with the teacher's classifier, through the "
                  "post-hoc connector? " + diagnosis_text(other), "", budget_table(other), ""]
    parts += ["## Bound terms", "", terms_table(row), ""]
    if _small_n(row):
        parts += ["Discrepancy terms marked (n < 10·d) were measured with fewer than ten "
                  "samples per feature dimension; read them as rough.", ""]
    parts += fidelity_section(row, ece_gap)
    parts += ["## Classes that carry the gap", "", classes_table(per_class), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    notes = list(notes) + [n for b in budgets for n in b.get("notes", [])]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    return "\n".join(parts)
