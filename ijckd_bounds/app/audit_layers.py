"""The audit's "Layers" section: where the student falls behind, stage by stage.

From one checkpoint's rows of the layer table (docs/theory.md "Layers"):

- the first student stage whose probe error exceeds the teacher's at the same relative
  depth by more than the intervals (the student's interval lies wholly above the
  teacher's). The teacher stage "at the same relative depth" is the one whose relative
  depth ``(k + 1) / stages`` is nearest, the shallower one on a tie;
- the teacher stage that the student's last stage resembles most (the largest
  ``stage_cka``), and whether its interval separates it from the runner-up.

``layer_findings`` and ``layers_markdown`` read plain rows; ``append_layers_section``
computes the rows of an audited checkpoint, writes them with two figures beside the
report and appends the section to ``report.md``.
"""

import json
import math
from pathlib import Path

import pandas as pd

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.schema import N_BOOTSTRAP

__all__ = ["append_layers_section", "layer_findings", "layers_markdown"]


def _pct(value):
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _interval_pct(row, term="stage_probe_err"):
    return f"{_pct(row[term])} [{_pct(row[term + '_lo'])}, {_pct(row[term + '_hi'])}]"


def _interval_cka(row):
    if math.isnan(row["stage_cka"]):
        return "n/a"
    return f"{row['stage_cka']:.3f} [{row['stage_cka_lo']:.3f}, {row['stage_cka_hi']:.3f}]"


def _matched_teacher_stage(depth, teacher):
    """The teacher row at the relative depth nearest ``depth`` (the shallower on a tie)."""
    gaps = (teacher["depth"] - depth).abs().round(12)
    return teacher.loc[gaps[gaps == gaps.min()].index].sort_values("depth").iloc[0]


def layer_findings(layers_df):
    """The two findings of the section from one checkpoint's layer rows (a DataFrame with
    the ``layers.csv`` columns). Returns a dict of plain values::

        {"comparisons": [{student stage, matched teacher stage, both rows, behind}],
         "behind": the first comparison with behind=True or None,
         "resembles": {"stage", "cka", "lo", "hi", "runner_up", "separated"} or None}
    """
    probes = layers_df[layers_df["model"].isin(["teacher", "student"])
                       & layers_df["stage_probe_err"].notna()]
    teacher = probes[probes["model"] == "teacher"].sort_values("stage_index")
    student = probes[probes["model"] == "student"].sort_values("stage_index")
    if teacher.empty or student.empty:
        raise IJCKDError("the layer rows hold no stage_probe_err of both the teacher and "
                         "the student")
    comparisons = []
    for _, mine in student.iterrows():
        theirs = _matched_teacher_stage(mine["depth"], teacher)
        behind = bool(mine["stage_probe_err_lo"] > theirs["stage_probe_err_hi"])
        comparisons.append({"student": mine.to_dict(), "teacher": theirs.to_dict(),
                            "behind": behind})
    behind = next((c for c in comparisons if c["behind"]), None)

    cka = layers_df[layers_df["teacher_stage"].notna() & layers_df["student_stage"].notna()
                    & layers_df["stage_cka"].notna()]
    resembles = None
    if not cka.empty:
        last = cka[cka["student_index"] == cka["student_index"].max()]
        ranked = last.sort_values("stage_cka", ascending=False)
        best = ranked.iloc[0]
        runner = ranked.iloc[1] if len(ranked) > 1 else None
        resembles = {"student_stage": best["student_stage"], "stage": best["teacher_stage"],
                     "cka": float(best["stage_cka"]), "lo": float(best["stage_cka_lo"]),
                     "hi": float(best["stage_cka_hi"]),
                     "runner_up": None if runner is None else runner.to_dict(),
                     "separated": runner is None
                     or bool(best["stage_cka_lo"] > runner["stage_cka_hi"])}
    return {"comparisons": comparisons, "behind": behind, "resembles": resembles}


def _stage(row):
    return f"`{row['stage']}` (depth {row['depth']:.2f})"


def layers_markdown(layers_df, *, figures=()):
    """Markdown text of the "Layers" section from one checkpoint's layer rows."""
    found = layer_findings(layers_df)
    first = found["comparisons"][0]["student"]
    parts = ["## Layers", "",
             "Logistic probes fitted by one recipe on each stage's pooled features (fit "
             "split), and the debiased linear CKA between every teacher and student stage "
             f"(docs/theory.md, \"Layers\"); n_eval = {int(first['n_eval'])}, "
             f"n_fit = {int(first['n_fit'])}; 95% intervals.", ""]
    behind = found["behind"]
    if behind is None:
        parts.append("- **Where the student falls behind:** nowhere by more than the "
                     "intervals: at every stage its probe error is below the teacher's at the "
                     "same relative depth or their intervals overlap.")
    else:
        mine, theirs = behind["student"], behind["teacher"]
        parts.append(f"- **Where the student falls behind:** at stage {_stage(mine)}: its "
                     f"probe error {_interval_pct(mine)} exceeds the teacher's at the same "
                     f"relative depth, {_stage(theirs)}, {_interval_pct(theirs)}, by more "
                     "than the intervals"
                     + ("; the stages before it do not." if mine["stage_index"] > 0 else "."))
    resembles = found["resembles"]
    if resembles is None:
        parts.append("- **What the student's last stage resembles:** no CKA could be measured "
                     "(a stage is constant).")
    else:
        runner = resembles["runner_up"]
        tail = ""
        if runner is not None:
            verb = "ahead of" if resembles["separated"] else "not separable from"
            tail = f", {verb} `{runner['teacher_stage']}` ({_interval_cka(runner)})"
        parts.append(f"- **What the student's last stage resembles:** its stage "
                     f"`{resembles['student_stage']}` is closest to teacher stage "
                     f"`{resembles['stage']}` (CKA {resembles['cka']:.3f} "
                     f"[{resembles['lo']:.3f}, {resembles['hi']:.3f}]){tail}.")
    parts += ["", "| student stage | depth | student probe error | teacher stage at that "
              "depth | teacher probe error |", "|---|---:|---|---|---|"]
    for c in found["comparisons"]:
        mine, theirs = c["student"], c["teacher"]
        mark = " **(behind)**" if c["behind"] else ""
        parts.append(f"| `{mine['stage']}`{mark} | {mine['depth']:.2f} | {_interval_pct(mine)} "
                     f"| `{theirs['stage']}` ({theirs['depth']:.2f}) | {_interval_pct(theirs)} |")
    cka = layers_df[layers_df["teacher_stage"].notna() & layers_df["student_stage"].notna()]
    if not cka.empty:
        students = cka.drop_duplicates("student_index").sort_values("student_index")
        teachers = cka.drop_duplicates("teacher_index").sort_values("teacher_index")
        parts += ["", "CKA, teacher stages (rows) × student stages (columns):", "",
                  "| teacher \\ student | " + " | ".join(f"`{s}`" for s in
                                                       students["student_stage"]) + " |",
                  "|---|" + "---|" * len(students)]
        for _, t in teachers.iterrows():
            cells = []
            for _, s in students.iterrows():
                row = cka[(cka["teacher_index"] == t["teacher_index"])
                          & (cka["student_index"] == s["student_index"])].iloc[0]
                cells.append(_interval_cka(row))
            parts.append(f"| `{t['teacher_stage']}` | " + " | ".join(cells) + " |")
        small = cka[cka["n_eval"] < 10 * cka["dim"]]
        if not small.empty:
            parts += ["", f"{len(small)} of the {len(cka)} CKA cells were measured with fewer "
                      "than ten samples per feature dimension (n_eval < 10·dim); read them "
                      "as rough."]
    if figures:
        parts += [""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(parts) + "\n"


def _student_layer_rows(student, teacher, dataset, data_dir, out, n_bootstrap, seed):
    """The layer rows of an audited checkpoint (None where its model has no stages)."""
    from ijckd_bounds.app.audit import _resolve_teacher
    from ijckd_bounds.checkpoint import load_student
    from ijckd_bounds.data import build_dataset
    from ijckd_bounds.track_config import TrackConfig
    from ijckd_bounds.tracking.layers import layer_table_rows
    from ijckd_bounds.tracking.track import teacher_features

    loaded = load_student(student)
    teacher = _resolve_teacher(teacher, loaded, student)
    if not (hasattr(loaded.model, "forward_stages") and hasattr(teacher.model, "forward_stages")):
        return None
    meta = loaded.meta.get("dataset") or {}
    name = dataset or meta.get("name")
    options = dict(meta.get("options") or {}) if name == meta.get("name") else {}
    splits = build_dataset(name, seed=meta.get("seed", 0),
                           data_dir=data_dir or meta.get("data_dir"), **options)
    cache_dir = Path(out) / ".cache"  # shared with the audit's teacher features
    cache = teacher_features(teacher, splits, cache_dir / "teacher_features.pt")
    settings = TrackConfig(n_bootstrap=n_bootstrap, seed=seed).resolved(
        loaded.meta.get("config"))
    keys = {"run": "audit", "method": loaded.meta.get("method", "student"),
            "epoch": loaded.meta.get("epoch", math.nan), "checkpoint": Path(student).name,
            "split": "eval"}
    return layer_table_rows(loaded, cache, cache_dir, settings, keys, teacher=teacher)


def append_layers_section(report_path, *, student=None, teacher=None, dataset=None,
                          data_dir=None, n_bootstrap=N_BOOTSTRAP, seed=0):
    """Append the "Layers" section to an audit's ``report.md`` (``report_path``) for the
    student checkpoint ``student``; also writes ``layers.csv``, ``layers.json`` and the
    two layer figures beside it. Audits of a feature file (``student`` None) and models
    without stages are left as they are. Returns ``report_path``."""
    from ijckd_bounds.io import atomic_path, atomic_write_text
    from ijckd_bounds.plotting.layers import plot_layer_cka, plot_layer_profile
    from ijckd_bounds.plotting.output import save_figure

    report_path = Path(report_path)
    if student is None:
        return report_path
    out = report_path.parent
    rows = _student_layer_rows(student, teacher, dataset, data_dir, out, n_bootstrap, seed)
    if rows is None:
        return report_path
    df = pd.DataFrame(rows)
    with atomic_path(out / "layers.csv") as tmp:
        df.to_csv(tmp, index=False)
    save_figure(plot_layer_cka(df).figure, out / "layers_cka")
    save_figure(plot_layer_profile(df).figure, out / "layers_profile")
    from ijckd_bounds.app.audit import _clean, _json_default

    found = _clean(layer_findings(df))
    atomic_write_text(out / "layers.json",
                      json.dumps(found, indent=2, default=_json_default) + "\n")
    section = layers_markdown(df, figures=("layers_cka.png", "layers_profile.png"))
    atomic_write_text(report_path, report_path.read_text().rstrip("\n") + "\n\n" + section)
    return report_path
