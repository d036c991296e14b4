"""Estimate every THEORY term at every checkpoint of a run, into the run's tables.

Offline: ``track_run(run_dir)`` walks ``run_dir/checkpoints/*.pt``, skips checkpoints that
already have a row in ``bounds.csv`` (so a killed tracker re-run finishes the job without
duplicates) and appends one row per checkpoint. Online: ``BoundTracker`` is a trainer
callback doing the same for each checkpoint as it is written.

The teacher is frozen, so its eval/fit features are computed once per run and cached in
``run_dir/teacher_features.pt`` (keyed by the teacher file's sha256 and the data split).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ijckd_bounds import schema
from ijckd_bounds.checkpoint import load_student, load_teacher
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators import estimate_bounds, fit_connector
from ijckd_bounds.io import load_torch, save_torch
from ijckd_bounds.tracking import table

BOUNDS_CSV = "bounds.csv"
PER_CLASS_CSV = "per_class.csv"
MARGINS_CSV = "margins.csv"
TEACHER_CACHE = "teacher_features.pt"


@dataclass(frozen=True)
class EstimatorSettings:
    n_bootstrap: int = 1000
    n_permutations: int = 200
    seed: int = 0
    batch_size: int = 512


def split_tensors(split, batch_size=512):
    """All ``(inputs, labels)`` of a dataset split as two tensors (eval splits only)."""
    inputs = getattr(split, "inputs", None)
    labels = getattr(split, "labels", None)
    if inputs is not None and labels is not None:
        return inputs, labels
    loader = torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=False)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def batched(fn, inputs, batch_size=512):
    """Apply ``fn`` (returning a tuple of tensors or None) to ``inputs`` batch by batch."""
    outs = None
    for start in range(0, len(inputs), batch_size):
        result = fn(inputs[start:start + batch_size])
        if outs is None:
            outs = [[] for _ in result]
        for store, value in zip(outs, result):
            store.append(value)
    return tuple(None if any(v is None for v in store) else torch.cat(store) for store in outs)


def teacher_features(teacher_path, splits, cache_path, *, batch_size=512):
    """Teacher features/logits on the fit and eval splits, cached next to the run."""
    teacher = load_teacher(teacher_path)
    key = f"{teacher.sha256}:{splits.name}:{len(splits.fit)}:{len(splits.eval)}"
    cache_path = Path(cache_path)
    if cache_path.is_file():
        cached = load_torch(cache_path, what="teacher feature cache")
        if cached.get("key") == key:
            return cached
    x_fit, y_fit = split_tensors(splits.fit, batch_size)
    x_eval, y_eval = split_tensors(splits.eval, batch_size)
    z_t_fit, logits_t_fit = batched(teacher.features, x_fit, batch_size)
    z_t, logits_t = batched(teacher.features, x_eval, batch_size)
    cached = {"key": key, "z_t": z_t, "logits_t": logits_t, "y": y_eval.long(),
              "z_t_fit": z_t_fit, "y_fit": y_fit.long(), "x_fit": x_fit, "x_eval": x_eval,
              "weight": teacher.model.classifier.weight.detach().clone(),
              "bias": teacher.model.classifier.bias.detach().clone()}
    save_torch(cached, cache_path)
    return cached


def student_inputs(student, cache, *, batch_size=512):
    """Everything ``estimate_bounds`` needs from a student, on the cached eval/fit inputs.

    Students that predict with the teacher classifier (SimKD, IJCKD) bring their own
    connector; any other student gets the post-hoc ridge connector of THEORY, fitted on the
    fit split only.
    """
    z_s, s, own_logits, _ = batched(student.features, cache["x_eval"], batch_size)
    z_s_fit, s_fit, _, _ = batched(student.features, cache["x_fit"], batch_size)
    connector = "trained"
    if z_s is None or z_s_fit is None:
        ridge = fit_connector(s_fit, cache["z_t_fit"])
        z_s, z_s_fit = ridge.transform(s), ridge.transform(s_fit)
        connector = "post-hoc ridge"
    if student.predicts_with == "teacher_classifier":
        own_logits = None
    return {"z_s": z_s, "z_s_fit": z_s_fit, "s": s, "s_fit": s_fit,
            "student_logits": own_logits, "connector": connector}


def estimate_checkpoint(student, cache, settings):
    """Run ``estimate_bounds`` for one loaded student; returns (report, connector kind)."""
    feats = student_inputs(student, cache, batch_size=settings.batch_size)
    if feats["z_s"].shape[1] != cache["z_t"].shape[1]:
        raise IJCKDError(f"student features in teacher space have width {feats['z_s'].shape[1]}, "
                         f"the teacher's have {cache['z_t'].shape[1]}")
    report = estimate_bounds(
        cache["z_t"], feats["z_s"], cache["y"], cache["weight"], cache["bias"],
        fit=(cache["z_t_fit"], feats["z_s_fit"], cache["y_fit"]),
        s=feats["s"], s_fit=feats["s_fit"], student_logits=feats["student_logits"],
        n_permutations=settings.n_permutations, n_bootstrap=settings.n_bootstrap,
        seed=settings.seed)
    return report, feats["connector"]


def _keys(student, run, checkpoint):
    meta = student.meta
    return {"run": run, "method": meta.get("method", "student"),
            "dataset": meta.get("dataset", {}).get("name", "unknown"),
            "seed": meta.get("seed", math.nan), "epoch": meta.get("epoch", math.nan),
            "step": meta.get("step", math.nan), "split": "eval", "checkpoint": checkpoint}


def rows_for(report, keys):
    """The bounds row, per-class rows and margin rows of one report."""
    row = dict(keys)
    row.update(report.row())
    per_class = report.per_class().copy()
    for name in ("run", "method", "epoch", "checkpoint"):
        per_class[name] = keys[name]
    margins = pd.DataFrame(report.margins())
    margins = margins.rename(columns={"gamma": "teacher_margin", "distance": "feat_dist"})
    for name in ("run", "method", "epoch", "checkpoint"):
        margins[name] = keys[name]
    return row, per_class, margins


def write_rows(run_dir, row, per_class, margins):
    run_dir = Path(run_dir)
    table.append_bounds(run_dir / BOUNDS_CSV, [row])
    table.append_per_class(run_dir / PER_CLASS_CSV, per_class)
    table.append_margins(run_dir / MARGINS_CSV, margins)


def _dataset_for(student, data_dir=None):
    from ijckd_bounds.data import build_dataset

    meta = student.meta.get("dataset", {})
    options = dict(meta.get("options", {}) or {})
    return build_dataset(meta.get("name", "digits"), seed=meta.get("seed", 0),
                         data_dir=data_dir or meta.get("data_dir"), **options)


def checkpoints_of(run_dir):
    files = sorted(Path(run_dir, "checkpoints").glob("*.pt"))
    if not files:
        raise IJCKDError(f"no checkpoints in {str(Path(run_dir, 'checkpoints'))!r}")
    return files


def track_run(run_dir, settings=EstimatorSettings(), *, data_dir=None, progress=True):
    """Estimate the bound terms at every checkpoint of ``run_dir`` not yet in its table."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    table.remove_stale_temp_files(run_dir)
    done = set()
    if (run_dir / BOUNDS_CSV).is_file():
        done = set(table.read_table(run_dir / BOUNDS_CSV)["checkpoint"].astype(str))
    todo = [p for p in checkpoints_of(run_dir) if p.name not in done]
    splits = cache = None
    for path in tqdm(todo, desc=f"track {run_dir.name}", disable=not progress or None,
                     unit="ckpt"):
        student = load_student(path)
        if cache is None:
            splits = _dataset_for(student, data_dir)
            cache = teacher_features(student.meta["teacher_path"], splits,
                                     run_dir / TEACHER_CACHE, batch_size=settings.batch_size)
        report, _ = estimate_checkpoint(student, cache, settings)
        write_rows(run_dir, *rows_for(report, _keys(student, run_dir.name, path.name)))
    return table.read_table(run_dir / BOUNDS_CSV)


class BoundTracker:
    """Trainer callback: estimate the bound terms whenever a checkpoint is written."""

    def __init__(self, run_dir, settings=EstimatorSettings(), data_dir=None):
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.data_dir = data_dir
        self._cache = None

    def on_checkpoint(self, path, epoch=None):
        student = load_student(path)
        if self._cache is None:
            splits = _dataset_for(student, self.data_dir)
            self._cache = teacher_features(student.meta["teacher_path"], splits,
                                           self.run_dir / TEACHER_CACHE,
                                           batch_size=self.settings.batch_size)
        report, _ = estimate_checkpoint(student, self._cache, self.settings)
        write_rows(self.run_dir, *rows_for(report, _keys(student, self.run_dir.name,
                                                         Path(path).name)))

    def on_epoch_end(self, epoch, metrics):
        pass

    def on_step_end(self, step, epoch, values):
        pass


__all__ = ["BoundTracker", "EstimatorSettings", "track_run", "teacher_features",
           "estimate_checkpoint", "rows_for", "schema"]
