"""Track the layer terms (docs/theory.md "Layers") at every checkpoint, into ``layers.csv``.

Switched on by the run config's ``track.layers: true`` (off by default; the demo turns it
on). For each checkpoint the teacher's and the student's stage outputs
(``ZooModel.forward_stages``: every stage from one forward pass per batch, each pooled to
a vector) on the fit and evaluation splits give

- ``stage_probe_err`` rows for every stage of both models (``model`` teacher/student);
- ``stage_cka`` rows for every teacher stage x student stage pair.

The teacher is frozen, so its stages (and its probe rows) are computed once per run:
in-memory splits cache them in ``run_dir/teacher_stages.pt`` (keyed like the teacher
feature cache); image folders stream them with ``tracking.extract`` into
``run_dir/teacher_stages/{fit,eval}/`` (chunked, resumable, sharded over the ranks of a
torchrun job), and a student's stages into ``run_dir/student_features/<ckpt>_stages/``,
deleted once its rows are written.

``layers.csv`` follows the other tables: a checkpoint's rows are upserted as one block
under the table's lock and written atomically (``table.upsert_block``), written before
the checkpoint's ``bounds.csv`` row, and a re-track fills in the checkpoints the table
lacks, also for runs whose bounds were tracked before layers were switched on.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.layers import layer_rows, stage_cka_matrix, stage_probe_errors
from ijckd_bounds.io import load_torch, save_torch
from ijckd_bounds.runtime import rank_and_world
from ijckd_bounds.track_config import TrackConfig
from ijckd_bounds.tracking import table
from ijckd_bounds.tracking.extract import extract_features, split_fingerprint

if TYPE_CHECKING:  # annotation only: the checkpoint reader is imported where it is used
    import pandas as pd
    from torch.distributed import ProcessGroup

    from ijckd_bounds.checkpoint import LoadedStudent, LoadedTeacher

LAYERS_CSV = "layers.csv"
TEACHER_STAGES = "teacher_stages.pt"
STAGE_PREFIX = "stage_"


def layers_wanted(student: LoadedStudent, settings: TrackConfig | None = None) -> bool:
    """Whether layer tracking is on for this student: ``settings.layers`` when the
    settings carry one, else the run config's ``track.layers`` (default False)."""
    explicit = getattr(settings, "layers", None)
    if explicit is not None:
        return bool(explicit)
    track = ((student.meta.get("config") or {}).get("track") or {})
    return bool(track.get("layers", False))


def tracked_checkpoints(run_dir: str | Path) -> set[str]:
    """Names of the checkpoints that ``layers.csv`` holds rows for."""
    path = Path(run_dir) / LAYERS_CSV
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    return set(table.read_table(path, kind="layers")["checkpoint"].astype(str))


def _model_of(loaded):
    model = loaded.model
    if not hasattr(model, "forward_stages"):
        raise IJCKDError(f"layer tracking needs a zoo model with forward_stages, got "
                         f"{type(model).__name__}")
    return model


@torch.no_grad()
def _stages_in_memory(model, inputs, batch_size):
    """Pooled stage outputs [(n, C_i)] of ``model`` on ``inputs``, batch by batch (CPU)."""
    device = next(model.parameters()).device
    model.eval()
    parts = None
    for start in range(0, len(inputs), batch_size):
        _, stages = model.forward_stages(inputs[start:start + batch_size].to(device))
        if parts is None:
            parts = [[] for _ in stages]
        for store, stage in zip(parts, stages, strict=True):
            store.append(stage.float().cpu())
    return [torch.cat(store) for store in parts]


def _stage_fn(model):
    device = next(model.parameters()).device

    def fn(x):
        model.eval()
        _, stages = model.forward_stages(x.to(device))
        return {f"{STAGE_PREFIX}{k:03d}": stage for k, stage in enumerate(stages)}

    return fn


def _streamed_stages(model, splits, out_dir, key, *, settings, group):
    """Image splits: ``{"eval": [...], "fit": [...]}`` stage tensors on rank 0 (None on
    the others), extracted in one forward pass per batch."""
    fn = _stage_fn(model)
    out = {}
    for which, split in splits.items():
        arrays = extract_features(
            torch.no_grad()(fn), split, Path(out_dir) / which,
            key=f"{key}:{split_fingerprint(split)}", batch_size=settings.batch_size,
            chunk_size=settings.chunk_size, num_workers=settings.num_workers,
            pin_memory=next(model.parameters()).device.type == "cuda", group=group)
        if arrays is None:
            return None
        names = sorted(name for name in arrays if name.startswith(STAGE_PREFIX))
        out[which] = [torch.from_numpy(arrays[name]) for name in names]
    return out


def _stages(loaded, cache, run_dir, identity, settings, *, group, out_dir):
    """Stage features ``{"eval", "fit"}`` of a loaded teacher or student on the run's
    splits (cached inputs or streamed image splits)."""
    from ijckd_bounds.tracking.track import resolve_device

    model = _model_of(loaded)
    loaded.to(resolve_device(settings.device))
    try:
        if "x_eval" in cache:
            return {"eval": _stages_in_memory(model, cache["x_eval"], settings.batch_size),
                    "fit": _stages_in_memory(model, cache["x_fit"], settings.batch_size)}
        splits = {"eval": cache["eval_split"], "fit": cache["fit_split"]}
        return _streamed_stages(model, splits, out_dir, identity, settings=settings,
                                group=group)
    finally:
        loaded.to("cpu")


def teacher_stages(student: LoadedStudent, cache: dict[str, Any], run_dir: str | Path,
                   settings: TrackConfig, *, group: ProcessGroup | None = None,
                   teacher: LoadedTeacher | None = None) -> dict[str, Any]:
    """The teacher's stage features and names, computed once per run: ``{"names",
    "eval", "fit"}`` (tensors on rank 0, None elsewhere); kept in ``cache["layers"]``.
    ``teacher``: a ``LoadedTeacher`` (default: the one the student records)."""
    from ijckd_bounds.tracking.track import _teacher_of, resolve_teacher

    if "layers" in cache:
        return cache["layers"]
    run_dir = Path(run_dir)
    teacher = teacher if teacher is not None else resolve_teacher(_teacher_of(student))
    key = f"teacher-stages:{cache['key']}"
    path = run_dir / TEACHER_STAGES
    stages = None
    if "x_eval" in cache and path.is_file():
        saved = load_torch(path, what="teacher stage cache")
        if saved.get("key") == key:
            stages = saved
    if stages is None:
        features = _stages(teacher, cache, run_dir, f"{key}:{teacher.sha256}", settings,
                           group=group, out_dir=path.with_suffix(""))
        stages = {"key": key, "names": list(_model_of(teacher).stage_names),
                  "eval": None if features is None else features["eval"],
                  "fit": None if features is None else features["fit"]}
        if "x_eval" in cache:
            save_torch(stages, path)
    cache["layers"] = stages
    return stages


def layer_table_rows(student: LoadedStudent, cache: dict[str, Any], run_dir: str | Path,
                     settings: TrackConfig, keys: Mapping[str, Any], *,
                     group: ProcessGroup | None = None, teacher: LoadedTeacher | None = None
                     ) -> list[dict[str, Any]] | None:
    """The ``layers.csv`` rows (list of dicts) of one loaded student, or None on ranks
    other than 0. ``settings``: resolved ``TrackConfig``; ``keys``: the row keys;
    ``teacher``: a ``LoadedTeacher`` (default: the one the student records)."""
    from ijckd_bounds.checkpoint import sha256_file
    from ijckd_bounds.tracking.track import _student_feature_dir

    teacher = teacher_stages(student, cache, run_dir, settings, group=group, teacher=teacher)
    out_dir = identity = None
    if "x_eval" not in cache:  # streamed next to the student's other features
        feature_dir = _student_feature_dir(student, cache)
        out_dir = feature_dir.with_name(f"{feature_dir.name}_stages")
        path = student.meta.get("path")
        identity = "student-stages:" + (sha256_file(path) if path and Path(path).is_file()
                                        else repr(student.meta))
    features = _stages(student, cache, run_dir, identity, settings, group=group,
                       out_dir=out_dir)
    rank, _ = rank_and_world(group)
    if out_dir is not None and rank == 0:
        shutil.rmtree(out_dir, ignore_errors=True)
    if features is None or rank != 0:
        return None
    y, y_fit = cache["y"], cache["y_fit"]
    num_classes = int(cache["weight"].shape[0])
    if "probes" not in teacher:  # the teacher is frozen: its probe rows once per run
        teacher["probes"] = stage_probe_errors(teacher["eval"], y, teacher["fit"], y_fit,
                                               num_classes=num_classes, seed=settings.seed)
    student_probes = stage_probe_errors(features["eval"], y, features["fit"], y_fit,
                                        num_classes=num_classes, seed=settings.seed)
    cka = stage_cka_matrix(teacher["eval"], features["eval"])
    rows = layer_rows(teacher["probes"], student_probes, cka,
                      teacher_stages=teacher["names"],
                      student_stages=list(_model_of(student).stage_names),
                      teacher_dims=[int(x.shape[1]) for x in teacher["eval"]],
                      student_dims=[int(x.shape[1]) for x in features["eval"]],
                      n_eval=int(y.shape[0]), n_fit=int(y_fit.shape[0]))
    return [{**{k: keys[k] for k in schema.LAYER_KEYS}, **row} for row in rows]


def write_layer_rows(run_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Upsert one checkpoint's rows into ``run_dir/layers.csv`` as one block."""
    table.append_layers(Path(run_dir) / LAYERS_CSV, rows)


def track_layers(student: LoadedStudent, cache: dict[str, Any], run_dir: str | Path,
                 settings: TrackConfig, keys: Mapping[str, Any], *,
                 group: ProcessGroup | None = None) -> list[dict[str, Any]] | None:
    """Layer rows of one checkpoint into ``layers.csv`` (rank 0 writes)."""
    rows = layer_table_rows(student, cache, run_dir, settings, keys, group=group)
    if rows is not None:
        write_layer_rows(run_dir, rows)
    return rows


__all__ = ["LAYERS_CSV", "layer_table_rows", "layers_wanted", "pending", "teacher_stages",
           "track_layers", "track_run_layers", "tracked_checkpoints", "write_layer_rows"]


def pending(run_dir: str | Path, checkpoints: Sequence[Path], done: Collection[str],
            settings: TrackConfig | None = None) -> list[Path]:
    """The checkpoints a tracker must visit: those without a ``bounds.csv`` row
    (``done``: the names it has), and, where layer tracking is on, those ``layers.csv``
    lacks. Whether it is on is read from the first tracked checkpoint's config."""
    from ijckd_bounds.checkpoint import load_student

    todo = [p for p in checkpoints if p.name not in done]
    tracked = [p for p in checkpoints if p.name in done]
    if not tracked:
        return todo
    if getattr(settings, "layers", None) is None:
        wanted = layers_wanted(load_student(tracked[0]))
    else:
        wanted = bool(settings.layers)
    if not wanted:
        return todo
    have = tracked_checkpoints(run_dir)
    missing = {p.name for p in tracked if p.name not in have}
    return [p for p in checkpoints if p.name not in done or p.name in missing]


def track_run_layers(run_dir: str | Path, settings: TrackConfig | None = None, *,
                     data_dir: str | Path | None = None) -> pd.DataFrame:
    """Only the layer rows: ``layers.csv`` for every checkpoint of ``run_dir`` it lacks,
    whatever the run's ``track.layers`` says (``bounds.csv`` is left as it is). Returns
    the table."""
    from ijckd_bounds.checkpoint import load_student
    from ijckd_bounds.tracking.track import _dataset_for, _keys, _teacher_cache, checkpoints_of

    run_dir = Path(run_dir)
    have = tracked_checkpoints(run_dir)
    cache = None
    for path in checkpoints_of(run_dir):
        if path.name in have:
            continue
        student = load_student(path)
        config = student.meta.get("config")
        run_settings = (settings or TrackConfig()).resolved(config)
        if cache is None:
            cache = _teacher_cache(student, _dataset_for(student, data_dir), run_dir,
                                   run_settings)
        track_layers(student, cache, run_dir, run_settings, _keys(student, run_dir.name, path.name))
    return table.read_table(run_dir / LAYERS_CSV, kind="layers")
