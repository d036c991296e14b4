"""``train_teacher`` and ``distill``: build everything a run needs, resume, run the loop.

Both write the run directory described in ``ijckd_bounds.checkpoint`` (config.yaml,
history.csv, steps.csv, checkpoints/epoch_NNNN.pt; teacher runs also teacher.pt).
With ``resume=True`` a run continues from its latest checkpoint; on CPU with a fixed
seed a run killed at any point and resumed ends with the same weights, bit for bit, as
an uninterrupted one (single process; see ``distributed`` for several).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ijckd_bounds import __version__
from ijckd_bounds.checkpoint import (
    capture_rng,
    connector_entry,
    load_state_checked,
    load_teacher,
    load_teacher_weights,
    model_entry,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import atomic_write_text, check_writable_dir
from ijckd_bounds.runtime import progress_modes
from ijckd_bounds.train.callbacks import (
    HISTORY_CSV,
    STEPS_CSV,
    HistoryWriter,
    ProgressBars,
    TensorBoardLogger,
    truncate_logs,
)
from ijckd_bounds.train.config import MethodConfig, TrainConfig
from ijckd_bounds.train.distributed import (
    Precision,
    RunData,
    init_distributed,
    shutdown_distributed,
)
from ijckd_bounds.train.loop import TrainState, fit, notify
from ijckd_bounds.train.objectives import METHODS, build_objective
from ijckd_bounds.typed_yaml import renamed_keys, to_dict

log = logging.getLogger("ijckd_bounds.train")

CHECKPOINT_DIR = "checkpoints"
TEACHER_FILE = "teacher.pt"
CONFIG_FILE = "config.yaml"
_CKPT_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")
# Keys that may change between a run and its resumption without changing the result.
_RESUME_FREE = {"run.run_dir", "run.device", "run.progress", "run.tensorboard",
                "data.num_workers",
                "data.pin_memory", "data.persistent_workers", "data.prefetch_factor",
                "data.eval_batch_size", "data.data_dir", "model.teacher_checkpoint",
                "model.teacher_weights"}
# Whole sections that never change what is trained (bound tracking settings).
_RESUME_FREE_SECTIONS = ("track.",)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a finished run left: its directory, last checkpoint, final epoch metrics, and
    for teacher runs ``teacher_path`` (RUN_DIR/teacher.pt)."""

    run_dir: Path
    checkpoint: Path | None
    metrics: dict
    teacher_path: Path | None = None


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """Where the checkpoint of ``epoch`` goes in ``run_dir``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:04d}.pt"


def run_checkpoints(run_dir):
    """The checkpoints in RUN_DIR/checkpoints, highest epoch first."""
    found = []
    directory = Path(run_dir) / CHECKPOINT_DIR
    if directory.is_dir():
        for path in directory.iterdir():
            match = _CKPT_NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in RUN_DIR/checkpoints, or None."""
    found = run_checkpoints(run_dir)
    return found[0] if found else None


def seed_everything(seed):
    """Seed Python's, numpy's and torch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("options", "teacher_options",
                                                   "student_options"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_difference(saved, current):
    """The first config key (sorted) whose value changes what is trained, as
    ``(key, saved value, current value)``; None when both configs train the same run. A
    saved config's old key names (``method.alpha``, ``method.beta``) count as the new ones."""
    method = (saved or {}).get("method")
    if isinstance(method, dict):
        saved = {**saved, "method": renamed_keys(MethodConfig, method, where="config.method")}
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    for key in sorted(set(saved_flat) | set(current_flat)):
        if key in _RESUME_FREE or key.startswith(_RESUME_FREE_SECTIONS):
            continue
        old, new = saved_flat.get(key), current_flat.get(key)
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = list(old), list(new)
        if old != new:
            return key, old, new
    return None


def check_resume_config(saved, current, path):
    """The resumed run must train the same thing: the first differing key is an error."""
    difference = config_difference(saved, current)
    if difference is not None:
        key, old, new = difference
        raise IJCKDError(f"cannot resume from {str(path)!r}: config key {key} was {old!r}, "
                         f"now {new!r}; use the run's own config or another run.run_dir")


def _check_teacher_fits(teacher, cfg, splits, path):
    """A teacher from another dataset, class count or input shape fails here."""
    meta = teacher.meta
    dataset = meta.get("dataset") or {}
    if dataset.get("name") not in (None, cfg.data.name):
        raise IJCKDError(f"teacher checkpoint {path!r} was trained on dataset "
                         f"{dataset.get('name')!r}, this run distills on {cfg.data.name!r}")
    model = teacher.model
    if model.num_classes != splits.num_classes:
        raise IJCKDError(f"teacher checkpoint {path!r} predicts {model.num_classes} classes, "
                         f"dataset {cfg.data.name!r} has {splits.num_classes}")
    shape = tuple(dataset.get("input_shape") or ())
    if shape and shape != tuple(splits.input_shape):
        raise IJCKDError(f"teacher checkpoint {path!r} takes inputs of shape {shape}, "
                         f"dataset {cfg.data.name!r} gives {tuple(splits.input_shape)}")
    if cfg.model.teacher is not None and cfg.model.teacher != meta.get("model_name"):
        raise IJCKDError(f"model.teacher is {cfg.model.teacher!r} but teacher checkpoint "
                         f"{path!r} holds a {meta.get('model_name')!r}")
    same_split = (dataset.get("seed") in (None, cfg.data.seed)
                  and dict(dataset.get("options") or {}) == dict(cfg.data.options))
    if not same_split:
        warnings.warn(f"teacher checkpoint {path!r} was trained on the split of data.seed="
                      f"{dataset.get('seed')} with options {dataset.get('options') or {}}, this "
                      f"run uses data.seed={cfg.data.seed} with {dict(cfg.data.options)}: the "
                      f"teacher may have seen this run's fit/eval samples", stacklevel=4)


def _optimizer(cfg, params):
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg, optimizer):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    milestones = list(cfg.milestones) if cfg.schedule == "multistep" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.gamma)


def train_teacher(cfg: TrainConfig, *, resume: bool = False,
                  callbacks: Sequence[object] = ()) -> RunResult:
    """Train ``cfg.model.teacher`` with cross-entropy; write RUN_DIR/teacher.pt at the end.

    Returns a ``RunResult`` whose ``teacher_path`` is what ``distill`` reads.
    """
    if cfg.model.teacher is None:
        raise IJCKDError("model.teacher must name the model to train, e.g. model.teacher=cnn_large")
    if cfg.method.name != "ce":
        raise IJCKDError(f"train-teacher trains with cross-entropy: method.name must be 'ce', "
                         f"got {cfg.method.name!r}")
    return _run(cfg, teacher_mode=True, resume=resume, callbacks=callbacks)


def distill(cfg: TrainConfig, *, resume: bool = False,
            callbacks: Sequence[object] = ()) -> RunResult:
    """Train ``cfg.model.student`` with ``cfg.method`` from the teacher in
    ``cfg.model.teacher_checkpoint`` (a teacher run's teacher.pt) or
    ``cfg.model.teacher_weights`` (a torchvision-layout state dict for the
    ``cfg.model.teacher`` architecture). Returns a ``RunResult``.

    ``callbacks`` run on rank 0 only, except those with a true ``every_rank`` attribute
    (bound tracking, which shards its feature extraction over the ranks)."""
    METHODS.get(cfg.method.name)  # an unknown method fails before any work
    return _run(cfg, teacher_mode=False, resume=resume, callbacks=callbacks)


def absolute_data_paths(cfg):
    """``cfg`` with ``data.data_dir`` and the ``tensors`` dataset's ``path`` option made
    absolute: the checkpoints record where the data is, so ``track`` and ``audit`` find it
    from any working directory."""
    data = cfg.data
    changes = {}
    if data.data_dir is not None:
        changes["data_dir"] = str(Path(data.data_dir).expanduser().resolve())
    if data.name == "tensors" and data.options.get("path") is not None:
        changes["options"] = {**data.options,
                              "path": str(Path(data.options["path"]).expanduser().resolve())}
    if not changes:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(data, **changes))


def _run(cfg, *, teacher_mode, resume, callbacks):
    from ijckd_bounds.data import build_dataset

    cfg = absolute_data_paths(cfg)
    ctx = init_distributed(cfg.run.device)
    try:
        run_dir = Path(cfg.run.run_dir)
        # Every rank checks (not only the writer), so none is left waiting for a rank that
        # failed here.
        check_writable_dir(run_dir, need_bytes=64 << 20)
        resume_from = _resume_point(run_dir, resume)
        precision = Precision(cfg.run.amp, ctx.device)
        seed_everything(cfg.run.seed)
        splits = build_dataset(cfg.data.name, seed=cfg.data.seed, data_dir=cfg.data.data_dir,
                               **cfg.data.options)
        teacher = None if teacher_mode else _load_run_teacher(cfg, splits)
        objective = _build_objective(cfg, ctx, splits, teacher, teacher_mode)
        optimizer = _optimizer(cfg.optim, objective.trainable_parameters())
        scheduler = _scheduler(cfg.optim, optimizer)
        config_dict = to_dict(cfg)
        state, last_metrics = TrainState(), {}
        if resume_from is not None:
            state, last_metrics = _restore(resume_from, objective, optimizer, scheduler,
                                           precision, config_dict, teacher, ctx)
        if ctx.is_main:
            _prepare_run_files(run_dir, config_dict, resume_from, state.epoch)
            _describe_run(run_dir, cfg, config_dict, objective, teacher, teacher_mode,
                          show=any(progress_modes(cfg.run.progress)))

        engine = objective
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            engine = torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)
        bars = ProgressBars(state.epoch + 1, cfg.optim.epochs,
                            cfg.run.progress if ctx.is_main else False)
        data = RunData(splits, cfg.data, ctx, seed=cfg.run.seed, progress=bars,
                       channels_last=cfg.run.channels_last and ctx.device.type == "cuda")
        all_callbacks = [bars]
        if ctx.is_main:
            all_callbacks += [HistoryWriter(run_dir, objective.term_names), *callbacks]
            if cfg.run.tensorboard:  # after the tracker: it logs the rows tracking wrote
                all_callbacks.append(TensorBoardLogger(run_dir, first_epoch=state.epoch + 1))
        else:
            all_callbacks += [c for c in callbacks if getattr(c, "every_rank", False)]
        describe = _Describer(cfg, config_dict, splits, teacher, teacher_mode, objective,
                              optimizer, scheduler, precision, last_metrics)
        if resume_from is not None:
            notify(all_callbacks, "on_resume", resume_from, state.epoch, state.step)

        def save_checkpoint(state, metrics):
            if state.epoch % cfg.run.ckpt_every and state.epoch != cfg.optim.epochs:
                return None
            path = checkpoint_path(run_dir, state.epoch)
            if ctx.is_main:
                write_checkpoint(describe(state, metrics, training=True), path)
            return path

        try:
            fit(objective, engine, optimizer, scheduler, precision, data, state, all_callbacks,
                epochs=cfg.optim.epochs, save_checkpoint=save_checkpoint)
        finally:
            bars.close()
            for callback in all_callbacks:
                if isinstance(callback, TensorBoardLogger):
                    callback.close()
        teacher_path = None
        if teacher_mode and ctx.is_main:
            teacher_path = write_checkpoint(describe(state, describe.last_metrics, training=False),
                                            run_dir / TEACHER_FILE)
        last = checkpoint_path(run_dir, state.epoch)
        return RunResult(run_dir=run_dir, checkpoint=last if last.is_file() else None,
                         metrics=dict(describe.last_metrics), teacher_path=teacher_path)
    finally:
        shutdown_distributed(ctx)


def _load_run_teacher(cfg, splits):
    """The frozen teacher of a distillation run (None without one), checked against the
    dataset."""
    if cfg.model.teacher_weights is not None:
        # ModelConfig guarantees model.teacher names the architecture
        return load_teacher_weights(cfg.model.teacher_weights, cfg.model.teacher,
                                    splits.num_classes, splits.input_shape,
                                    cfg.model.teacher_options)
    if cfg.model.teacher_checkpoint is not None:
        teacher = load_teacher(cfg.model.teacher_checkpoint)
        _check_teacher_fits(teacher, cfg, splits, cfg.model.teacher_checkpoint)
        return teacher
    return None


def _resume_point(run_dir, resume):
    """The checkpoint to resume from (None: start fresh); refuses to overwrite a run.

    A latest checkpoint that does not load (a disk that filled up, a copy cut short) is
    skipped with a warning for the newest complete one before it; training rewrites it."""
    checkpoints = run_checkpoints(run_dir)
    if checkpoints and not resume:
        raise IJCKDError(f"run directory {str(run_dir)!r} already has checkpoints; pass "
                         f"--resume to continue it or choose another run.run_dir")
    for i, path in enumerate(checkpoints):
        try:
            payload = read_checkpoint(path)
        except IJCKDError as exc:
            if i + 1 == len(checkpoints):
                raise  # nothing complete to fall back to
            reason = str(exc)
            continue
        if payload.get("training") and i > 0:
            warnings.warn(f"{reason}; resuming from the previous complete checkpoint "
                          f"{str(path)!r} (epoch {payload.get('epoch')}) instead",
                          stacklevel=3)
        return path
    return None


def _build_objective(cfg, ctx, splits, teacher, teacher_mode):
    """The run's objective (model to train + connector + frozen teacher) on its device."""
    from ijckd_bounds.models import build_model

    name, options = ((cfg.model.teacher, cfg.model.teacher_options) if teacher_mode
                     else (cfg.model.student, cfg.model.student_options))
    model = build_model(name, splits.num_classes, splits.input_shape, **options)
    example_x = torch.stack([splits.train[i][0] for i in range(2)])
    method = dataclasses.replace(cfg.method, name="ce") if teacher_mode else cfg.method
    objective = build_objective(method, model, None if teacher is None else teacher.model,
                                example_x)
    if cfg.run.channels_last:
        if ctx.device.type != "cuda":
            warnings.warn("run.channels_last is ignored on CPU", stacklevel=4)
        elif example_x.dim() == 4:
            objective.to(memory_format=torch.channels_last)
    objective.to(ctx.device)
    if cfg.run.sync_bn and ctx.distributed and ctx.device.type == "cuda":
        # Student and connector; the frozen teacher is no child of the objective.
        objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return objective


def _prepare_run_files(run_dir, config_dict, resume_from, epoch):
    """config.yaml always; logs truncated to the resumed epoch, or cleared when fresh."""
    import yaml

    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config_dict, sort_keys=False))
    if resume_from is not None:
        truncate_logs(run_dir, epoch)
    else:
        for stale in (HISTORY_CSV, STEPS_CSV):
            (run_dir / stale).unlink(missing_ok=True)


PARAMS_FILE = "params.json"


def _count(module, *, trainable):
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _describe_run(run_dir, cfg, config_dict, objective, teacher, teacher_mode, *, show):
    """RUN_DIR/params.json (trainable parameters of the student and the connector, the
    frozen teacher's size); with ``show``, those and the resolved config on stdout."""
    import json

    name = cfg.model.teacher if teacher_mode else cfg.model.student
    params = {"model": name, "model_trainable": _count(objective.student, trainable=True),
              "connector": None if objective.connector is None
              else objective.connector.spec.get("kind"),
              "connector_trainable": _count(objective.connector, trainable=True),
              "teacher": None if teacher is None else teacher.meta.get("model_name"),
              "teacher_frozen": None if teacher is None
              else _count(teacher.model, trainable=False)}
    atomic_write_text(run_dir / PARAMS_FILE, json.dumps(params, indent=2) + "\n")
    if not show:
        return
    role = "teacher" if teacher_mode else "student"
    line = (f"{run_dir}: {cfg.method.name} {role} {name}, {params['model_trainable']:,} "
            f"trainable parameters")
    if params["connector"] is not None:
        line += f" + {params['connector']} connector {params['connector_trainable']:,}"
    if teacher is not None:
        line += f"; teacher {params['teacher']} {params['teacher_frozen']:,} (frozen)"
    print(line, flush=True)
    print(f"resolved config (all of it in {run_dir / CONFIG_FILE}):", flush=True)
    for section, values in config_dict.items():
        shown = " ".join(f"{k}={v}" for k, v in values.items() if v not in (None, {}, []))
        print(f"  {section}: {shown}", flush=True)


def _restore(path, objective, optimizer, scheduler, precision, config_dict, teacher, ctx):
    """Load a checkpoint into the run's objects; returns its TrainState and metrics."""
    payload = read_checkpoint(path)
    check_resume_config(payload.get("config") or {}, config_dict, path)
    saved_teacher = payload.get("teacher") or {}
    if teacher is not None and saved_teacher.get("sha256") not in (None, teacher.sha256):
        setting = ("model.teacher_weights" if teacher.source == "torchvision_weights"
                   else "model.teacher_checkpoint")
        raise IJCKDError(f"cannot resume from {str(path)!r}: it was distilled from a teacher "
                         f"file with sha256 {saved_teacher['sha256'][:12]}..., "
                         f"{setting} now has {teacher.sha256[:12]}...")
    what = f"checkpoint {str(path)!r} does not fit the configured model"
    load_state_checked(objective.student, payload["model"]["state_dict"], what=what)
    if objective.connector is not None:
        load_state_checked(objective.connector, payload["connector"]["state_dict"], what=what)
    training = payload.get("training")
    if not training:
        raise IJCKDError(f"cannot resume from {str(path)!r}: it holds no optimizer state")
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    precision.load_state_dict(training.get("grad_scaler"))
    restore_rng(training["rng"])
    objective.to(ctx.device)
    log.info("resuming from %s (epoch %d, step %d)", path, payload["epoch"], payload["step"])
    state = TrainState(epoch=payload["epoch"], step=payload["step"],
                       best_eval_acc=training["best_eval_acc"],
                       best_epoch=training["best_epoch"], last_checkpoint=str(path))
    return state, dict(payload.get("metrics") or {})


class _Describer:
    """Builds the self-describing checkpoint dict of the run's current state."""

    def __init__(self, cfg, config_dict, splits, teacher, teacher_mode, objective, optimizer,
                 scheduler, precision, last_metrics):
        self.cfg, self.config_dict, self.splits = cfg, config_dict, splits
        self.teacher, self.teacher_mode = teacher, teacher_mode
        self.objective, self.optimizer = objective, optimizer
        self.scheduler, self.precision = scheduler, precision
        self.last_metrics = dict(last_metrics)  # of the last epoch run (or resumed)

    def __call__(self, state, metrics, *, training):
        cfg, objective = self.cfg, self.objective
        self.last_metrics = dict(metrics)
        name, options = ((cfg.model.teacher, cfg.model.teacher_options) if self.teacher_mode
                         else (cfg.model.student, cfg.model.student_options))
        teacher_entry = None
        if self.teacher is not None:
            classifier = self.teacher.model.classifier
            # describe(): source, path, sha256, name, num_classes, input_shape, options:
            # what tracking needs to rebuild the teacher from this checkpoint alone
            teacher_entry = {**self.teacher.describe(),
                             "feature_dim": int(classifier.in_features),
                             "weight": classifier.weight.detach().cpu().clone(),
                             "bias": classifier.bias.detach().cpu().clone()}
        payload = {
            "package_version": __version__,
            "kind": "teacher" if self.teacher_mode else "student",
            "method": objective.name,
            "predicts_with": objective.predicts_with,
            "epoch": state.epoch, "step": state.step, "seed": cfg.run.seed,
            "dataset": {"name": cfg.data.name, "seed": cfg.data.seed,
                        "data_dir": cfg.data.data_dir, "options": dict(cfg.data.options),
                        "num_classes": int(self.splits.num_classes),
                        "input_shape": [int(s) for s in self.splits.input_shape]},
            "config": self.config_dict,
            "model": model_entry(objective.student, name, self.splits.num_classes,
                                 self.splits.input_shape, options),
            "connector": connector_entry(objective.connector),
            "teacher": teacher_entry,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "training": None,
        }
        if training:
            payload["training"] = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.precision.state_dict(),
                "rng": capture_rng(),
                "best_eval_acc": float(state.best_eval_acc),
                "best_epoch": int(state.best_epoch),
            }
        return payload


def method_names() -> list[str]:
    """The registered distillation methods, sorted."""
    return METHODS.names()
