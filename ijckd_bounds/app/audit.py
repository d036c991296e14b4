"""``ijckd-bounds audit``: why does this student underperform?

Loads a teacher and a student checkpoint (or a feature file), estimates every bound term on
the evaluation split, splits the student's error into docs/theory.md's additive error budget and
writes ``report.md`` (with the figures it cites) and ``bounds.json`` to ``--out``.
"""

import json
import math
from pathlib import Path

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.budget import error_budget
from ijckd_bounds.io import atomic_write_text, check_writable_dir
from ijckd_bounds.reporting import Subject, audit_markdown
from ijckd_bounds.schema import N_BOOTSTRAP, N_PERMUTATIONS


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


def budgets_from_report(report, *, own_features=True):
    """Primary budget (what the student predicts with) first, then the h_T budget for
    own-head students ("would this student work with the teacher's classifier").

    The indicators are taken in the report's canonical order and the intervals from the
    report's own ``PairedBootstrap``, so every budget interval comes from the resamples of
    the report's intervals. ``own_features``: whether the student probe saw the student's
    own features ``s``; False merges capacity and connector into one representation piece.
    """
    ind = report.indicators(canonical=True)
    common = dict(teacher_wrong=ind["teacher_wrong"], student_wrong=ind["student_wrong"],
                  teacher_probe_wrong=ind["teacher_probe_wrong"],
                  connected_probe_wrong=ind["connected_probe_wrong"],
                  student_probe_wrong=ind["student_probe_wrong"] if own_features else None,
                  bootstrap=report.paired_bootstrap(), n_fit=report.scalars.get("n_fit"))
    if ind.get("own_wrong") is None:
        return [error_budget(**common)]
    return [error_budget(own_wrong=ind["own_wrong"], **common), error_budget(**common)]


def _checkpoint_inputs(teacher, student, dataset, data_dir, out, n_bootstrap, seed, *,
                       n_permutations=N_PERMUTATIONS, allow_other_teacher=False):
    from ijckd_bounds.checkpoint import load_student
    from ijckd_bounds.data import build_dataset
    from ijckd_bounds.track_config import TrackConfig
    from ijckd_bounds.tracking.track import estimate_checkpoint, teacher_features

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
    notes = _check_teacher_identity(loaded, student, teacher, allow_other=allow_other_teacher)
    # the teacher's features are cached beside the report so a re-run audit skips them
    cache = teacher_features(teacher, splits, Path(out) / ".cache" / "teacher_features.pt")
    settings = TrackConfig(n_bootstrap=n_bootstrap, n_permutations=n_permutations, seed=seed)
    report, connector = estimate_checkpoint(loaded, cache, settings)
    title = (f"{loaded.meta.get('method')} student ({loaded.meta.get('model_name')}) at epoch "
             f"{loaded.meta.get('epoch')}, on {name}")
    if connector == "post-hoc ridge":
        notes.append("this student predicts with its own head: its features were mapped into "
                     "the teacher's space by the post-hoc ridge connector of docs/theory.md, "
                     "fitted on the fit split")
    subject = Subject(title, teacher=_describe_teacher(teacher),
                      student=_describe_student(loaded, student))
    who = {"method": loaded.meta.get("method"), "epoch": loaded.meta.get("epoch"),
           "run": Path(student).name}
    return report, True, subject, notes, who


def _describe_teacher(teacher):
    """One line naming a ``LoadedTeacher``: its file, architecture and epoch."""
    if teacher.source == "checkpoint":
        return (f"`{teacher.path}` ({teacher.meta.get('model_name')}, epoch "
                f"{teacher.meta.get('epoch')}, sha256 {teacher.sha256[:12]}...)")
    return (f"weights file `{teacher.path}` ({teacher.meta.get('model_name')}, torchvision "
            f"layout, no epoch recorded, sha256 {teacher.sha256[:12]}...)")


def _describe_student(loaded, path):
    """One line naming a ``LoadedStudent``: its file, method, architecture and epoch."""
    predicts = ("the teacher's classifier through its trained connector"
                if loaded.predicts_with == "teacher_classifier" else "its own head")
    return (f"`{path}` ({loaded.meta.get('method')} student, {loaded.meta.get('model_name')}, "
            f"epoch {loaded.meta.get('epoch')}; predicts with {predicts})")


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


def _check_teacher_identity(loaded, student_path, teacher, *, allow_other):
    """A ``--teacher`` that is itself a student checkpoint, or another file than the one the
    student records as its teacher, is refused unless ``allow_other``; allowed, it is a
    warning line of the report. Returns the report's notes (a list)."""
    problems = []
    if teacher.source == "checkpoint" and teacher.meta.get("kind") == "student":
        problems.append(f"--teacher {str(teacher.path)!r} is a {teacher.meta.get('method')} "
                        f"student checkpoint, not a teacher")
    recorded = loaded.meta.get("teacher_sha256")
    if recorded and teacher.sha256 != recorded:
        problems.append(f"--teacher {str(teacher.path)!r} is not the teacher student "
                        f"checkpoint {str(student_path)!r} was distilled from (sha256 "
                        f"{teacher.sha256[:12]}..., recorded {recorded[:12]}...)")
    if not problems:
        return []
    if not allow_other:
        hint = ("omit --teacher to use the recorded teacher" if recorded
                else "pass a teacher run's teacher.pt")
        raise IJCKDError(f"{problems[0]}; {hint}, or pass --allow-other-teacher to audit "
                         f"against it anyway")
    return [f"WARNING: {problem}; audited against it as asked (--allow-other-teacher), so "
            f"the teacher terms describe that model, not the student's teacher"
            for problem in problems]


def _feature_inputs(features, n_bootstrap, seed, n_permutations=N_PERMUTATIONS):
    from ijckd_bounds.estimators import estimate_bounds_from_file

    report = estimate_bounds_from_file(features, n_bootstrap=n_bootstrap,
                                       n_permutations=n_permutations, seed=seed)
    own = report.details.get("probe_features") == "s"
    return report, own, _feature_subject(features, report, own), [], {
        "run": Path(features).name}


def _feature_subject(features, report, own_features):
    """The ``Subject`` of an audit of a feature file: which of its arrays were read."""
    name = Path(features).name
    student = ["z_s"] + (["s"] if own_features else [])
    if not math.isnan(report.terms["student_own_err"].value):
        student.append("student_logits")
    return Subject(f"features from {name}",
                   teacher=f"arrays `z_t`, `weight`, `bias` of `{features}` (a feature file "
                           f"records no architecture or epoch)",
                   student=f"arrays {', '.join(f'`{a}`' for a in student)} of `{features}`")


def run_audit(*, teacher=None, student=None, dataset=None, data_dir=None, features=None,
              out, n_bootstrap=N_BOOTSTRAP, seed=0, n_permutations=N_PERMUTATIONS,
              allow_other_teacher=False):
    """Write ``report.md``, ``bounds.json`` and figures to ``out``; returns report.md's path.

    ``allow_other_teacher``: accept a ``teacher`` that is not the student's recorded one (or
    a student checkpoint); the report then carries a warning line saying so."""
    out = Path(out)
    check_writable_dir(out)
    if features is not None:
        if student is not None:
            raise IJCKDError("pass either --features or --student, not both")
        report, own_features, title, notes, who = _feature_inputs(features, n_bootstrap, seed,
                                                                   n_permutations)
    else:
        report, own_features, title, notes, who = _checkpoint_inputs(
            teacher, student, dataset, data_dir, out, n_bootstrap, seed,
            n_permutations=n_permutations, allow_other_teacher=allow_other_teacher)
    from ijckd_bounds.app.audit_layers import append_layers_section

    path = write_audit(report, out, own_features=own_features, title=title, notes=notes,
                       student=who)
    return append_layers_section(path, student=student, teacher=teacher, dataset=dataset,
                                 data_dir=data_dir, n_bootstrap=n_bootstrap, seed=seed)


def write_audit(report, out, *, own_features, title, notes=(), sections=(), student=None):
    """Error budget + ``report.md`` + ``bounds.json`` + figures for one ``BoundsReport``.

    ``title``: the heading, or a ``Subject`` naming the teacher and student read;
    ``sections``: further markdown sections for ``report.md`` (see
    ``reporting.audit_markdown``); the budgets' intervals come from the report's own
    paired bootstrap; ``student``: ``{"method", "run", "epoch"}`` of the student
    audited (any may be missing), which the margin figure's title names."""
    out = Path(out)
    notes = list(notes) + list(getattr(report, "notes", []))
    budgets = budgets_from_report(report, own_features=own_features)
    row = report.row()
    per_class = report.per_class()
    figures = _figures(report, per_class, out, student)
    budget_dicts = [b.as_dict() for b in budgets]
    text = audit_markdown(title=title, row=row, budgets=budget_dicts, per_class=per_class,
                          figures=figures, notes=notes, details=report.details,
                          sections=sections)
    atomic_write_text(out / "report.md", text)
    subject = title if isinstance(title, Subject) else Subject(str(title))
    payload = {"title": subject.title, "teacher": subject.teacher, "student": subject.student,
               "terms": row, "ece_gap": report.details.get("ece_gap"),
               "budgets": budget_dicts,
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


def audit_models(teacher, student, splits, out, *, connector=None, n_bootstrap=N_BOOTSTRAP, seed=0,
                 title=None, n_permutations=N_PERMUTATIONS):
    """Audit any two models of the zoo interface, e.g. user modules wrapped in
    ``FeatureModel``: ``model(x) -> (logits, features)``, ``.classifier`` an ``nn.Linear``,
    and ``forward_with_map(x)``.

    Args:
        teacher, student: ``nn.Module``s (used in eval mode, never trained here).
        splits: a ``DatasetSplits`` (``ijckd_bounds.data.build_dataset`` or your own); its
            ``fit`` split fits the probes and, without ``connector``, docs/theory.md's post-hoc
            ridge connector; its ``eval`` split is what every number is measured on.
        connector: optional module mapping the student's last map into the teacher's
            feature space (``connector.pooled(fmap)``, as the trainer's connectors); given
            one, the student is audited as predicting with the teacher's classifier.
        out: directory for ``report.md``, ``bounds.json`` and figures.
    Returns the path of ``report.md``.
    """
    from ijckd_bounds.checkpoint import LoadedStudent, LoadedTeacher
    from ijckd_bounds.track_config import TrackConfig
    from ijckd_bounds.tracking.track import estimate_checkpoint, teacher_features

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
                                       TrackConfig(n_bootstrap=n_bootstrap,
                                                   n_permutations=n_permutations, seed=seed))
    notes = []
    if kind == "post-hoc ridge":
        notes.append("the student predicts with its own head: its features were mapped into "
                     "the teacher's space by the post-hoc ridge connector of docs/theory.md, "
                     "fitted on the fit split")
    predicts = ("the teacher's classifier through the given connector"
                if connector is not None else "its own head")
    subject = Subject(title or f"{type(student).__name__} student on {splits.name}",
                      teacher=f"in-memory {type(teacher).__name__} (state sha256 "
                              f"{loaded_teacher.sha256[:12]}...)",
                      student=f"in-memory {type(student).__name__}; predicts with {predicts}")
    return write_audit(report, out, own_features=True, notes=notes, title=subject,
                       student={"method": type(student).__name__, "run": "in memory"})


def _figures(report, per_class, out, student=None):
    from ijckd_bounds.plotting import plot_margins, save_figure

    margins = report.margin_frame()
    # the title names the student the caller read: method, file or name, epoch
    who = dict(student or {})
    margins["run"] = who.get("run") or "audit"
    margins["method"] = who.get("method") or "student"
    margins["epoch"] = float(who["epoch"]) if who.get("epoch") is not None else float("nan")
    fig = plot_margins(margins)
    save_figure(fig, out / "margins")
    return ["margins.png"]
