"""``ijckd-bounds audit``: why does this student underperform?

Loads a teacher and a student checkpoint (or a feature file), estimates every bound term on
the evaluation split, splits the student's error into THEORY.md's additive error budget and
writes ``report.md`` (with the figures it cites) and ``bounds.json`` to ``--out``.
"""

import json
import math
from pathlib import Path

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.audit import error_budget
from ijckd_bounds.io import atomic_write_text, check_writable_dir


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item"):
        return _clean(obj.item())
    return obj


def budgets_from_report(report, *, own_features, n_bootstrap, seed):
    """Primary budget (what the student predicts with) first, then the h_T budget for
    own-head students ("would this student work with the teacher's classifier")."""
    ind = report.indicators()
    common = dict(teacher_wrong=ind["teacher_wrong"], student_wrong=ind["student_wrong"],
                  joint_s_wrong=ind["joint_s_wrong"], probe_wrong=ind["probe_wrong"],
                  own_features=own_features, n_bootstrap=n_bootstrap, seed=seed)
    if ind.get("own_wrong") is None:
        return [error_budget(**common)]
    return [error_budget(own_wrong=ind["own_wrong"], **common), error_budget(**common)]


def _checkpoint_inputs(teacher, student, dataset, data_dir, out, n_bootstrap, seed):
    from ijckd_bounds.checkpoint import load_student
    from ijckd_bounds.data import build_dataset
    from ijckd_bounds.tracking.track import EstimatorSettings, estimate_checkpoint, teacher_features

    if student is None:
        raise IJCKDError("audit needs --student (a checkpoint) or --features (a feature file)")
    loaded = load_student(student)
    teacher = teacher or loaded.meta.get("teacher_path")
    if teacher is None:
        raise IJCKDError(f"student checkpoint {student!r} names no teacher; pass --teacher")
    meta = loaded.meta.get("dataset") or {}
    name = dataset or meta.get("name")
    if name is None:
        raise IJCKDError("the student checkpoint names no dataset; pass --dataset")
    options = dict(meta.get("options") or {}) if name == meta.get("name") else {}
    splits = build_dataset(name, seed=meta.get("seed", 0),
                           data_dir=data_dir or meta.get("data_dir"), **options)
    # the teacher's features are cached beside the report so a re-run audit skips them
    cache = teacher_features(teacher, splits, Path(out) / ".cache" / "teacher_features.pt")
    if cache["weight"].shape[0] != splits.num_classes:
        raise IJCKDError(f"the teacher has {cache['weight'].shape[0]} classes, dataset "
                         f"{name!r} has {splits.num_classes}")
    settings = EstimatorSettings(n_bootstrap=n_bootstrap, seed=seed)
    report, connector = estimate_checkpoint(loaded, cache, settings)
    title = (f"{loaded.meta.get('method')} student ({loaded.meta.get('model_name')}) at epoch "
             f"{loaded.meta.get('epoch')}, on {name}")
    notes = []
    if connector == "post-hoc ridge":
        notes.append("this student predicts with its own head: its features were mapped into "
                     "the teacher's space by the post-hoc ridge connector of THEORY.md, fitted "
                     "on the fit split")
    return report, True, title, notes


def _feature_inputs(features, n_bootstrap, seed):
    from ijckd_bounds.estimators import estimate_bounds_from_file

    report = estimate_bounds_from_file(features, n_bootstrap=n_bootstrap, seed=seed)
    own = report.details.get("probe_features") == "s"
    return report, own, f"features from {Path(features).name}", []


def run_audit(*, teacher=None, student=None, dataset=None, data_dir=None, features=None,
              out, n_bootstrap=1000, seed=0):
    """Write ``report.md``, ``bounds.json`` and figures to ``out``; returns report.md's path."""
    out = Path(out)
    check_writable_dir(out)
    if features is not None:
        if student is not None:
            raise IJCKDError("pass either --features or --student, not both")
        report, own_features, title, notes = _feature_inputs(features, n_bootstrap, seed)
    else:
        report, own_features, title, notes = _checkpoint_inputs(
            teacher, student, dataset, data_dir, out, n_bootstrap, seed)
    notes = list(notes) + list(getattr(report, "notes", []))
    budgets = budgets_from_report(report, own_features=own_features,
                                  n_bootstrap=n_bootstrap, seed=seed)
    row = report.row()
    per_class = report.per_class()
    figures = _figures(report, per_class, out)

    from ijckd_bounds.reporting import audit_markdown

    budget_dicts = [b.as_dict() for b in budgets]
    text = audit_markdown(title=title, row=row, budgets=[dict(b) for b in budget_dicts],
                          per_class=per_class, figures=figures, notes=notes)
    atomic_write_text(out / "report.md", text)
    payload = {"title": title, "terms": row, "budgets": budget_dicts,
               "per_class": per_class.to_dict(orient="records"), "notes": notes}
    atomic_write_text(out / "bounds.json",
                      json.dumps(_clean(payload), indent=2, default=_json_default) + "\n")
    return out / "report.md"


def _figures(report, per_class, out):
    import pandas as pd

    from ijckd_bounds.plotting import plot_margins, save_figure

    margins = pd.DataFrame(report.margins())
    margins = margins.rename(columns={"gamma": "teacher_margin", "distance": "feat_dist"})
    margins["run"], margins["method"], margins["epoch"] = "audit", "student", 0
    fig = plot_margins(margins)
    save_figure(fig, out / "margins")
    return ["margins.png"]
