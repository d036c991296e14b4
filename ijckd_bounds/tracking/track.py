"""Estimate every docs/theory.md term at every checkpoint of a run, into the run's tables.

Offline: ``track_run(run_dir)`` walks ``run_dir/checkpoints/*.pt``, skips checkpoints that
already have a row in ``bounds.csv`` (so a killed tracker re-run finishes the job without
duplicates) and appends one row per checkpoint. Online: ``BoundTracker`` is a trainer
callback doing the same for each checkpoint as it is written.

The teacher is rebuilt from what the student checkpoint records (a teacher run's
teacher.pt or a torchvision-layout weights file, sha256-checked; see
``checkpoint.load_teacher_from``). It is frozen, so its fit/eval features are computed
once per run:

- in-memory splits (``.inputs`` tensors: digits, mnist1d, CIFAR, user tensors): the
  features and the inputs are cached in ``run_dir/teacher_features.pt`` (keyed by the
  teacher file's sha256 and the data split) and every student is run on the cached
  inputs;
- image folders (no ``.inputs``): features are streamed to memory-mapped arrays by
  ``tracking.extract`` (chunked, resumable, sharded over the ranks of a torchrun job and
  merged by rank 0) in ``run_dir/teacher_features/{fit,eval}/``; no image is ever held in
  memory beyond a batch, and no inputs are cached. A student's features go to
  ``run_dir/student_features/<checkpoint>/`` and are deleted once its row is written.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ijckd_bounds import runtime, schema
from ijckd_bounds.checkpoint import (
    LoadedTeacher,
    capture_rng,
    load_student,
    load_teacher,
    load_teacher_from,
    restore_rng,
    sha256_file,
)
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators import estimate_bounds, fit_connector
from ijckd_bounds.io import load_torch, save_torch
from ijckd_bounds.runtime import barrier, rank_and_world
from ijckd_bounds.track_config import CHUNK_SIZE, EVAL_BATCH_SIZE, TrackConfig
from ijckd_bounds.tracking import layers, table
from ijckd_bounds.tracking.extract import extract_features, split_fingerprint

if TYPE_CHECKING:  # annotation only
    import pandas as pd
    from torch.distributed import ProcessGroup

    from ijckd_bounds.checkpoint import LoadedStudent
    from ijckd_bounds.data.splits import DatasetSplits
    from ijckd_bounds.estimators import BoundsReport

BOUNDS_CSV = "bounds.csv"
PER_CLASS_CSV = "per_class.csv"
MARGINS_CSV = "margins.csv"
CALIBRATION_CSV = "calibration.csv"
# the tables written beside bounds.csv for each checkpoint (bounds.csv last)
COMPANION_CSVS = (PER_CLASS_CSV, MARGINS_CSV, CALIBRATION_CSV)
TEACHER_CACHE = "teacher_features.pt"
STUDENT_FEATURES = "student_features"
# Rank 0 estimates while the other ranks wait; a barrier of its own with a long timeout
# keeps NCCL's default (10 minutes) from ending the job meanwhile.
TRACKING_BARRIER_TIMEOUT_S = 6 * 3600


def resolve_device(spec):
    """``runtime.resolve_device`` for tracking: None or ``"auto"`` -> cuda:LOCAL_RANK
    when CUDA is available, else cpu."""
    return runtime.resolve_device("auto" if spec is None else spec, what="tracking device",
                                  fix="")


def in_memory(split):
    """Whether a split holds its inputs as one tensor (``.inputs``), e.g. ``TensorSplit``."""
    return isinstance(getattr(split, "inputs", None), torch.Tensor)


def split_tensors(split: torch.utils.data.Dataset, batch_size: int = 512
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(inputs, labels)`` of a dataset split as two tensors (eval splits only)."""
    inputs = getattr(split, "inputs", None)
    labels = getattr(split, "labels", None)
    if inputs is not None and labels is not None:
        return inputs, labels
    loader = torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=False)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], Sequence[torch.Tensor | None]], inputs: torch.Tensor,
            batch_size: int = 512) -> tuple[torch.Tensor | None, ...]:
    """Apply ``fn`` (returning a tuple of tensors or None) to ``inputs`` batch by batch;
    the results are concatenated on the CPU."""
    outs = None
    for start in range(0, len(inputs), batch_size):
        result = fn(inputs[start:start + batch_size])
        if outs is None:
            outs = [[] for _ in result]
        for store, value in zip(outs, result, strict=True):
            store.append(None if value is None else value.cpu())
    return tuple(None if any(v is None for v in store) else torch.cat(store) for store in outs)


def resolve_teacher(teacher: LoadedTeacher | Mapping[str, Any] | str | Path | None
                    ) -> LoadedTeacher:
    """A ``LoadedTeacher`` from a LoadedTeacher, a student's ``teacher_source`` dict
    (rebuilt and sha256-checked) or a teacher checkpoint path."""
    if isinstance(teacher, LoadedTeacher):
        return teacher
    if isinstance(teacher, dict):
        return load_teacher_from(teacher)
    if teacher is None:
        raise IJCKDError("no teacher given (the student checkpoint records none)")
    return load_teacher(teacher)


def _teacher_of(student):
    """What rebuilds a loaded student's teacher: its recorded source, else its path."""
    return student.meta.get("teacher_source") or student.meta.get("teacher_path")


def _classifier(teacher):
    return (teacher.model.classifier.weight.detach().cpu().clone(),
            teacher.model.classifier.bias.detach().cpu().clone())


def teacher_features(teacher: LoadedTeacher | Mapping[str, Any] | str | Path,
                     splits: DatasetSplits, cache_path: str | Path, *,
                     batch_size: int = EVAL_BATCH_SIZE, device: str | None = "cpu",
                     num_workers: int = 0, chunk_size: int = CHUNK_SIZE,
                     group: ProcessGroup | None = None, progress: bool = False
                     ) -> dict[str, Any]:
    """Teacher features on the fit and eval splits, cached next to the run.

    Args:
        teacher: a teacher checkpoint path, a student's ``teacher_source`` dict, or a
            ``LoadedTeacher``.
        splits: the ``DatasetSplits`` the student was distilled on.
        cache_path: RUN_DIR/teacher_features.pt; image splits use the folder of that name
            without the suffix instead, and RUN_DIR/student_features/ for students.
        device: where the teacher runs; batch_size/num_workers/chunk_size: of the feature
            extraction (num_workers and chunk_size for image splits only).
        group: process group to shard image-split extraction over (torchrun).

    Returns:
        dict with ``z_t`` (n_eval, d), ``y`` (n_eval,), ``z_t_fit`` (n_fit, d), ``y_fit``
        (n_fit,), ``weight`` (K, d), ``bias`` (K,) as CPU tensors; in-memory splits also
        ``logits_t``, ``x_eval``, ``x_fit``; image splits ``fit_split``/``eval_split`` and
        where student features go. On ranks other than 0 the feature arrays are None.
    """
    teacher = resolve_teacher(teacher)
    device = resolve_device(device)
    cache_path = Path(cache_path)
    if in_memory(splits.fit) and in_memory(splits.eval):
        return _in_memory_teacher_features(teacher, splits, cache_path, batch_size, device)
    teacher.to(device)

    def fn(x):
        _, z_t = teacher(x)
        return {"z_t": z_t}

    arrays = {}
    for which in ("fit", "eval"):
        split = splits.split(which)
        key = f"teacher:{teacher.sha256}:{splits.name}:{split_fingerprint(split)}"
        arrays[which] = extract_features(
            fn, split, cache_path.with_suffix("") / which, key=key, batch_size=batch_size,
            chunk_size=chunk_size, num_workers=num_workers, pin_memory=device.type == "cuda",
            group=group, progress=progress)
    teacher.to("cpu")
    weight, bias = _classifier(teacher)
    cache = {"key": f"{teacher.sha256}:{splits.name}", "weight": weight, "bias": bias,
             "fit_split": splits.fit, "eval_split": splits.eval,
             "student_features": cache_path.parent / STUDENT_FEATURES,
             "z_t": None, "y": None, "z_t_fit": None, "y_fit": None}
    if arrays["eval"] is not None:  # rank 0
        cache.update(z_t=torch.from_numpy(arrays["eval"]["z_t"]),
                     y=torch.from_numpy(arrays["eval"]["y"]),
                     z_t_fit=torch.from_numpy(arrays["fit"]["z_t"]),
                     y_fit=torch.from_numpy(arrays["fit"]["y"]))
    return cache


def _in_memory_teacher_features(teacher, splits, cache_path, batch_size, device):
    key = f"{teacher.sha256}:{splits.name}:{len(splits.fit)}:{len(splits.eval)}"
    if cache_path.is_file():
        cached = load_torch(cache_path, what="teacher feature cache")
        if cached.get("key") == key:
            return cached
    x_fit, y_fit = split_tensors(splits.fit, batch_size)
    x_eval, y_eval = split_tensors(splits.eval, batch_size)
    teacher.to(device)
    _, z_t_fit = batched(teacher, x_fit, batch_size)
    logits_t, z_t = batched(teacher, x_eval, batch_size)
    teacher.to("cpu")
    weight, bias = _classifier(teacher)
    cached = {"key": key, "z_t": z_t, "logits_t": logits_t, "y": y_eval.long(),
              "z_t_fit": z_t_fit, "y_fit": y_fit.long(), "x_fit": x_fit, "x_eval": x_eval,
              "weight": weight, "bias": bias}
    save_torch(cached, cache_path)
    return cached


def _student_fns(student):
    """Feature functions of a loaded student for the eval and the fit split."""

    def eval_fn(x):
        z_s, s, own_logits, _ = student.features(x)
        return {"z_s": z_s, "s": s, "own_logits": own_logits}

    def fit_fn(x):
        z_s, s, _, _ = student.features(x)
        return {"z_s": z_s, "s": s}

    return eval_fn, fit_fn


def _student_feature_dir(student, cache):
    return Path(cache["student_features"]) / Path(student.meta.get("path", "student")).stem


def _streamed_student_features(student, cache, *, batch_size, device, num_workers,
                               chunk_size, group):
    """Image splits: the student's features streamed like the teacher's; rank 0 gets
    ``(z_s, s, own_logits, z_s_fit, s_fit)`` tensors, other ranks None."""
    path = student.meta.get("path")
    identity = sha256_file(path) if path and Path(path).is_file() else repr(student.meta)
    out_dir = _student_feature_dir(student, cache)
    student.to(device)
    eval_fn, fit_fn = _student_fns(student)
    arrays = {}
    for which, fn, split in (("eval", eval_fn, cache["eval_split"]),
                             ("fit", fit_fn, cache["fit_split"])):
        key = f"student:{identity}:{split_fingerprint(split)}"
        arrays[which] = extract_features(
            fn, split, out_dir / which, key=key, batch_size=batch_size, chunk_size=chunk_size,
            num_workers=num_workers, pin_memory=device.type == "cuda", group=group)
    student.to("cpu")
    if arrays["eval"] is None:
        return None

    def tensor(array):
        return None if array is None else torch.from_numpy(array)

    ev, fit = arrays["eval"], arrays["fit"]
    if not torch.equal(tensor(ev["y"]), cache["y"]):  # the same images in the same order
        raise IJCKDError(f"the student's evaluation samples in {str(out_dir)!r} differ from "
                         f"the teacher's; delete that folder and track again")
    return (tensor(ev["z_s"]), tensor(ev["s"]), tensor(ev["own_logits"]), tensor(fit["z_s"]),
            tensor(fit["s"]))


def student_inputs(student: LoadedStudent, cache: dict[str, Any], *,
                   batch_size: int = EVAL_BATCH_SIZE, device: str | None = "cpu",
                   num_workers: int = 0, chunk_size: int = CHUNK_SIZE,
                   group: ProcessGroup | None = None) -> dict[str, Any] | None:
    """Everything ``estimate_bounds`` needs from a student, on the cached eval/fit inputs
    (in-memory splits) or streamed from the image splits.

    Students that predict with the teacher classifier (SimKD, IJCKD) bring their own
    connector; any other student gets the post-hoc ridge connector of docs/theory.md, fitted on the
    fit split only. Returns None on ranks other than 0 of a sharded extraction.
    """
    device = resolve_device(device)
    if "x_eval" in cache:
        student.to(device)
        z_s, s, own_logits, _ = batched(student.features, cache["x_eval"], batch_size)
        z_s_fit, s_fit, _, _ = batched(student.features, cache["x_fit"], batch_size)
        student.to("cpu")
    else:
        streamed = _streamed_student_features(student, cache, batch_size=batch_size,
                                              device=device, num_workers=num_workers,
                                              chunk_size=chunk_size, group=group)
        if streamed is None:
            return None
        z_s, s, own_logits, z_s_fit, s_fit = streamed
    connector = "trained"
    if z_s is None or z_s_fit is None:
        ridge = fit_connector(s_fit, cache["z_t_fit"])
        z_s, z_s_fit = ridge.transform(s), ridge.transform(s_fit)
        connector = "post-hoc ridge"
    if student.predicts_with == "teacher_classifier":
        own_logits = None
    return {"z_s": z_s, "z_s_fit": z_s_fit, "s": s, "s_fit": s_fit,
            "student_logits": own_logits, "connector": connector}


def estimate_checkpoint(student: LoadedStudent, cache: dict[str, Any], settings: TrackConfig,
                        *, group: ProcessGroup | None = None
                        ) -> tuple[BoundsReport | None, str | None]:
    """Run ``estimate_bounds`` for one loaded student; returns (report, connector kind).

    With image splits every rank of ``group`` extracts its share of the features and
    only rank 0 estimates: the others get ``(None, None)``.
    """
    settings = settings.resolved(student.meta.get("config"))
    feats = student_inputs(student, cache, batch_size=settings.batch_size,
                           device=settings.device, num_workers=settings.num_workers,
                           chunk_size=settings.chunk_size, group=group)
    if feats is None:
        return None, None
    if feats["z_s"].shape[1] != cache["z_t"].shape[1]:
        raise IJCKDError(f"student features in teacher space have width {feats['z_s'].shape[1]}, "
                         f"the teacher's have {cache['z_t'].shape[1]}")
    report = estimate_bounds(
        cache["z_t"], feats["z_s"], cache["y"], cache["weight"], cache["bias"],
        fit=(cache["z_t_fit"], feats["z_s_fit"], cache["y_fit"]),
        s=feats["s"], s_fit=feats["s_fit"], student_logits=feats["student_logits"],
        n_permutations=settings.n_permutations, n_bootstrap=settings.n_bootstrap,
        seed=settings.seed, mmd_max_n=settings.mmd_max_n or None)
    if "student_features" in cache:
        # the student's streamed features served their purpose (hundreds of MB each)
        shutil.rmtree(_student_feature_dir(student, cache), ignore_errors=True)
    return report, feats["connector"]


def _keys(student, run, checkpoint):
    meta = student.meta
    return {"run": run, "method": meta.get("method", "student"),
            "dataset": meta.get("dataset", {}).get("name", "unknown"),
            "seed": meta.get("seed", math.nan), "epoch": meta.get("epoch", math.nan),
            "step": meta.get("step", math.nan), "split": "eval", "checkpoint": checkpoint}


def rows_for(report: BoundsReport, keys: Mapping[str, Any]
             ) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The bounds row, per-class rows, margin rows and calibration rows of one report."""
    row = dict(keys)
    row.update(report.row())
    per_class = report.per_class().copy()
    margins = report.margin_frame()
    calibration = report.calibration()
    for name in schema.COMPANION_KEYS:
        per_class[name] = margins[name] = calibration[name] = keys[name]
    calibration["split"] = keys["split"]
    return row, per_class, margins, calibration


def write_rows(run_dir, row, per_class, margins, calibration):
    """Companion tables (``COMPANION_CSVS``) first, ``bounds.csv`` last: a checkpoint
    listed in ``bounds.csv`` is complete, so a tracker killed in between (which re-runs
    skip by ``bounds.csv``) leaves only upserted companion rows that the re-run replaces."""
    run_dir = Path(run_dir)
    table.append_per_class(run_dir / PER_CLASS_CSV, per_class)
    table.append_margins(run_dir / MARGINS_CSV, margins)
    table.append_calibration(run_dir / CALIBRATION_CSV, calibration)
    table.append_bounds(run_dir / BOUNDS_CSV, [row])


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


def _teacher_cache(student, splits, run_dir, settings, group=None, progress=False):
    settings = settings.resolved(student.meta.get("config"))
    return teacher_features(_teacher_of(student), splits, Path(run_dir) / TEACHER_CACHE,
                            batch_size=settings.batch_size, device=settings.device,
                            num_workers=settings.num_workers, chunk_size=settings.chunk_size,
                            group=group, progress=progress)


class _CheckpointProgress:
    """Progress of tracking: a tqdm bar over checkpoints on a terminal, one line per
    tracked checkpoint on stdout when stdout is not a terminal (``run.progress``
    semantics: ``setting`` False shows neither)."""

    def __init__(self, setting, *, total, initial=0, desc):
        from tqdm.auto import tqdm

        bars, self.lines = runtime.progress_modes(setting)
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="ckpt",
                        disable=not bars, dynamic_ncols=True, leave=False)
        self.started = time.perf_counter()

    def done(self, checkpoint, row):
        self.bar.update(1)
        if self.bar.total and self.bar.n >= self.bar.total:
            self.bar.close()
        if self.lines:
            def pct(term):
                value = row.get(term)
                finite = isinstance(value, (int, float)) and math.isfinite(value)
                return f"{100 * value:.1f}%" if finite else "n/a"

            print(f"tracked {checkpoint}: student_err {pct('student_err')}, teacher_err "
                  f"{pct('teacher_err')}, bound_coupled {pct('bound_coupled')} "
                  f"({time.perf_counter() - self.started:.1f} s)", flush=True)
        self.started = time.perf_counter()

    def close(self):
        self.bar.close()


def track_run(run_dir: str | Path, settings: TrackConfig | None = None, *,
              data_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Estimate the bound terms at every checkpoint of ``run_dir`` not yet in its table.

    ``settings`` None: the run's own (its config's ``track`` section). ``progress``: a bar
    on a terminal, a line per checkpoint otherwise (``run.progress=None``); False: quiet.
    """
    run_dir = Path(run_dir)
    table.remove_stale_temp_files(run_dir)
    # rows a tracker of an older write order left without their companions
    table.drop_incomplete_checkpoints(run_dir / BOUNDS_CSV,
                                      [run_dir / name for name in COMPANION_CSVS])
    done = set()
    if (run_dir / BOUNDS_CSV).is_file():
        done = set(table.read_table(run_dir / BOUNDS_CSV)["checkpoint"].astype(str))
    todo = layers.pending(run_dir, checkpoints_of(run_dir), done, settings)
    cache = None
    shown = _CheckpointProgress(None if progress else False, total=len(todo),
                                desc=f"track {run_dir.name}")
    try:
        for path in todo:
            student = load_student(path)
            run_settings = (settings or TrackConfig()).resolved(student.meta.get("config"))
            if cache is None:
                cache = _teacher_cache(student, _dataset_for(student, data_dir), run_dir,
                                       run_settings, progress=progress)
            keys = _keys(student, run_dir.name, path.name)
            if layers.layers_wanted(student, run_settings):  # before bounds.csv, a companion
                layers.track_layers(student, cache, run_dir, run_settings, keys)
            if path.name in done:
                shown.bar.update(1)
                continue  # only its layer rows were missing
            report, _ = estimate_checkpoint(student, cache, run_settings)
            rows = rows_for(report, keys)
            write_rows(run_dir, *rows)
            shown.done(path.name, rows[0])
    finally:
        shown.close()
    return table.read_table(run_dir / BOUNDS_CSV)


class BoundTracker:
    """Trainer callback: estimate the bound terms whenever a checkpoint is written.

    ``settings`` None: the run's own (its config's ``track`` section, via the checkpoint).
    Under torchrun the trainer calls it on every rank (``every_rank``): image-split
    features are extracted in shards by all ranks, rank 0 merges, estimates and writes the
    rows while the others wait. The global random state is restored afterwards, so a run
    tracked online trains exactly like one that is not.
    """

    every_rank = True

    def __init__(self, run_dir: str | Path, settings: TrackConfig | None = None,
                 data_dir: str | Path | None = None):
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.data_dir = data_dir
        self._cache = None
        self._group = None
        self._idle = False  # a rank other than 0 with in-memory splits: nothing to do
        self._progress = None  # rank 0: the run's bar / lines of tracked checkpoints

    def _process_group(self):
        import datetime

        import torch.distributed as dist

        _, world = rank_and_world()
        if world == 1:
            return None
        if self._group is None:
            self._group = dist.new_group(
                backend="gloo", timeout=datetime.timedelta(seconds=TRACKING_BARRIER_TIMEOUT_S))
        return self._group

    def on_checkpoint(self, path: str | Path, epoch: int | None = None) -> None:
        """Estimate the bound terms of the checkpoint at ``path`` and write its rows (rank 0),
        with every rank in step; the global random state is left as it was."""
        rng = capture_rng()
        try:
            group = self._process_group()
            barrier(group)  # rank 0 wrote the checkpoint before any rank reads it
            self._track(path, group)
            barrier(group)
        finally:
            restore_rng(rng)

    def _track(self, path, group):
        self._started = time.perf_counter()
        rank, _ = rank_and_world(group)
        if self._idle:
            return
        student = load_student(path)
        settings = (self.settings or TrackConfig()).resolved(student.meta.get("config"))
        if self._cache is None:
            splits = _dataset_for(student, self.data_dir)
            if in_memory(splits.fit) and in_memory(splits.eval) and rank != 0:
                self._idle = True  # in-memory splits: rank 0 alone, in seconds
                return
            self._cache = _teacher_cache(student, splits, self.run_dir, settings, group)
        keys = _keys(student, self.run_dir.name, Path(path).name)
        if layers.layers_wanted(student, settings):  # every rank: image splits are sharded
            layers.track_layers(student, self._cache, self.run_dir, settings, keys, group=group)
        report, _ = estimate_checkpoint(student, self._cache, settings, group=group)
        if rank == 0:
            rows = rows_for(report, keys)
            write_rows(self.run_dir, *rows)
            self._shown(student).done(Path(path).name, rows[0])

    def _shown(self, student):
        if self._progress is None:
            config = student.meta.get("config") or {}
            run, optim = config.get("run") or {}, config.get("optim") or {}
            epochs, every = int(optim.get("epochs") or 0), int(run.get("ckpt_every") or 1)
            total = epochs // every + (1 if epochs % every else 0)
            done = (int(student.meta.get("epoch") or 1) - 1) // every
            self._progress = _CheckpointProgress(run.get("progress"), total=total,
                                                 initial=done, desc="tracked")
        self._progress.started = self._started
        return self._progress


__all__ = ["BoundTracker", "track_run", "teacher_features",
           "estimate_checkpoint", "rows_for", "schema", "student_inputs", "split_tensors",
           "batched", "resolve_teacher"]
