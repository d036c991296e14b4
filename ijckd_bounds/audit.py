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
    teacher = _resolve_teacher(teacher, loaded, student)
    meta = loaded.meta.get("dataset") or {}
    name = dataset or meta.get("name")
    if name is None:
        raise IJCKDError("the student checkpoint names no dataset; pass --dataset")
    options = dict(meta.get("options") or {}) if name == meta.get("name") else {}
    splits = build_dataset(name, seed=meta.get("seed", 0),
                           data_dir=data_dir or meta.get("data_dir"), **options)
    _check_pair(loaded, student, teacher, splits, name, explicit_dataset=dataset is not None)
    # the teacher's features are cached beside the report so a re-run audit skips them
    cache = teacher_features(teacher, splits, Path(out) / ".cache" / "teacher_features.pt")
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


def _check_fits(dataset_meta, what, splits, name):
    """The model of a checkpoint (its ``dataset`` field) takes the inputs and predicts the
    classes of ``splits``; otherwise one line naming both, before any feature is computed."""
    shape = tuple(dataset_meta.get("input_shape") or ())
    if shape and shape != tuple(splits.input_shape):
        raise IJCKDError(f"{what} takes inputs of shape {shape} (dataset "
                         f"{dataset_meta.get('name')!r}), dataset {name!r} gives "
                         f"{tuple(splits.input_shape)}")
    classes = dataset_meta.get("num_classes")
    if classes is not None and int(classes) != splits.num_classes:
        raise IJCKDError(f"{what} predicts {classes} classes (dataset "
                         f"{dataset_meta.get('name')!r}), dataset {name!r} has "
                         f"{splits.num_classes}")


def _resolve_teacher(teacher, loaded, student_path):
    """The ``LoadedTeacher`` to audit against: ``--teacher`` when given (a teacher
    checkpoint, or the weights file the student was distilled from), else the teacher the
    student's checkpoint records (a checkpoint or a weights file, sha256-checked)."""
    from ijckd_bounds.checkpoint import load_teacher, load_teacher_from

    source = loaded.meta.get("teacher_source") or {}
    if teacher is None:
        if not source.get("path"):
            raise IJCKDError(f"student checkpoint {str(student_path)!r} names no teacher; "
                             "pass --teacher")
        return load_teacher_from(source)
    recorded = source.get("path")
    if source.get("source") == "torchvision_weights" and recorded \
            and Path(teacher).resolve() == Path(recorded).resolve():
        # a weights file holds no architecture: the student's record says which
        return load_teacher_from(source)
    return load_teacher(teacher)


def _check_pair(loaded, student_path, teacher, splits, name, *, explicit_dataset):
    """Teacher and student must belong together and to the evaluation dataset.
    ``teacher``: a ``LoadedTeacher``."""
    student_what = f"student checkpoint {str(student_path)!r}"
    if teacher.source == "checkpoint":
        teacher_what = f"teacher checkpoint {str(teacher.path)!r}"
        teacher_data = teacher.meta.get("dataset") or {}
    else:  # a weights file: its model's input shape and class count, no dataset name
        teacher_what = f"teacher weights file {str(teacher.path)!r}"
        teacher_data = {"input_shape": teacher.meta.get("input_shape"),
                        "num_classes": int(teacher.model.num_classes)}
    student_data = loaded.meta.get("dataset") or {}
    if not explicit_dataset and teacher_data.get("name") not in (None, student_data.get("name")):
        raise IJCKDError(f"{teacher_what} was trained on dataset {teacher_data.get('name')!r}, "
                         f"{student_what} on {student_data.get('name')!r}; pass a teacher of "
                         f"the student's dataset (or --dataset to evaluate both on another)")
    _check_fits(student_data, student_what, splits, name)
    _check_fits(teacher_data, teacher_what, splits, name)
    distilled_from = loaded.meta.get("teacher_sha256")
    if loaded.predicts_with == "teacher_classifier" and distilled_from is not None:
        sha = teacher.sha256
        if sha != distilled_from:
            raise IJCKDError(f"{student_what} was distilled from a teacher file with sha256 "
                             f"{distilled_from[:12]}..., {teacher_what} has {sha[:12]}...: its "
                             f"connector maps into the other teacher's feature space")


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
    from ijckd_bounds.audit_layers import append_layers_section

    path = write_audit(report, out, own_features=own_features, title=title, notes=notes,
                       n_bootstrap=n_bootstrap, seed=seed)
    return append_layers_section(path, student=student, teacher=teacher, dataset=dataset,
                                 data_dir=data_dir, n_bootstrap=n_bootstrap, seed=seed)


def write_audit(report, out, *, own_features, title, notes=(), n_bootstrap=1000, seed=0):
    """Error budget + ``report.md`` + ``bounds.json`` + figures for one ``BoundsReport``."""
    out = Path(out)
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


def _module_digest(module):
    """A sha256 of a module's state (the teacher-feature cache key of an in-memory model)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def audit_models(teacher, student, splits, out, *, connector=None, n_bootstrap=1000, seed=0,
                 title=None):
    """Audit any two models of the zoo interface, e.g. user modules wrapped in
    ``FeatureModel``: ``model(x) -> (logits, features)``, ``.classifier`` an ``nn.Linear``,
    and ``forward_with_map(x)``.

    Args:
        teacher, student: ``nn.Module``s (used in eval mode, never trained here).
        splits: a ``DatasetSplits`` (``ijckd_bounds.data.build_dataset`` or your own); its
            ``fit`` split fits the probes and, without ``connector``, THEORY's post-hoc
            ridge connector; its ``eval`` split is what every number is measured on.
        connector: optional module mapping the student's last map into the teacher's
            feature space (``connector.pooled(fmap)``, as the trainer's connectors); given
            one, the student is audited as predicting with the teacher's classifier.
        out: directory for ``report.md``, ``bounds.json`` and figures.
    Returns the path of ``report.md``.
    """
    from ijckd_bounds.checkpoint import LoadedStudent, LoadedTeacher
    from ijckd_bounds.tracking.track import EstimatorSettings, estimate_checkpoint, teacher_features

    out = Path(out)
    check_writable_dir(out)
    for name, model in (("teacher", teacher), ("student", student)):
        if not hasattr(model, "forward_with_map") or not hasattr(model, "classifier"):
            raise IJCKDError(f"the {name} must follow the zoo interface (forward_with_map, "
                             f".classifier); wrap your module in "
                             f"ijckd_bounds.models.FeatureModel")
    teacher.eval()
    student.eval()
    loaded_teacher = LoadedTeacher(model=teacher, sha256=_module_digest(teacher),
                                   path="<in-memory teacher>")
    classifier = teacher.classifier
    loaded_student = LoadedStudent(
        model=student, connector=connector,
        teacher_weight=classifier.weight.detach() if connector is not None else None,
        teacher_bias=classifier.bias.detach() if connector is not None else None,
        predicts_with="teacher_classifier" if connector is not None else "own_head",
        meta={"method": "student", "dataset": {"name": splits.name}})
    cache = teacher_features(loaded_teacher, splits, out / ".cache" / "teacher_features.pt")
    report, kind = estimate_checkpoint(loaded_student, cache,
                                       EstimatorSettings(n_bootstrap=n_bootstrap, seed=seed))
    notes = []
    if kind == "post-hoc ridge":
        notes.append("the student predicts with its own head: its features were mapped into "
                     "the teacher's space by the post-hoc ridge connector of THEORY.md, "
                     "fitted on the fit split")
    return write_audit(report, out, own_features=True, notes=notes, n_bootstrap=n_bootstrap,
                       seed=seed, title=title or f"{type(student).__name__} student on "
                                                 f"{splits.name}")


def _figures(report, per_class, out):
    import pandas as pd

    from ijckd_bounds.plotting import plot_margins, save_figure

    margins = pd.DataFrame(report.margins())
    margins = margins.rename(columns={"gamma": "teacher_margin", "distance": "feat_dist"})
    margins["run"], margins["method"], margins["epoch"] = "audit", "student", 0
    fig = plot_margins(margins)
    save_figure(fig, out / "margins")
    return ["margins.png"]
