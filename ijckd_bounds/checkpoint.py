"""Self-describing checkpoints: written by the trainer, read by tracking and the audit.

This module never imports ``ijckd_bounds.train``: a checkpoint alone (plus the model zoo)
answers "what does this model predict", without a trainer object.

Run directory layout (written by ``ijckd_bounds.train``)::

    RUN_DIR/config.yaml                 the full TrainConfig of the run
    RUN_DIR/history.csv                 one row per epoch (every loss term, accuracies)
    RUN_DIR/steps.csv                   one row per optimizer step (every loss term)
    RUN_DIR/checkpoints/epoch_0003.pt   every ``ckpt_every`` epochs and at the end
    RUN_DIR/teacher.pt                  teacher runs only: the final model, no optimizer

Checkpoint contents (a plain dict; everything loads with ``torch.load(weights_only=True)``:
tensors, lists, dicts, strings, numbers, None, no numpy objects, no dataclasses)::

    format, format_version, package_version
    kind            "teacher" | "student"
    method          "ce", "kd", "fitnet", "srrl", "simkd", "ijckd", "ce_connector"
    predicts_with   "own_head" | "teacher_classifier"
    epoch, step, seed
    dataset         {name, seed, data_dir, options, num_classes, input_shape}
    config          the run's TrainConfig as a nested dict
    model           {name, num_classes, input_shape, options, state_dict}
    connector       None | {spec, state_dict}   (models.connectors.build_connector(spec))
    teacher         None | {path, sha256, name, source, num_classes, input_shape, options,
                            feature_dim, weight (K, d), bias (K,)}
    training        None | {optimizer, scheduler, grad_scaler, rng, best_eval_acc, best_epoch}
    metrics         the epoch's metrics {name: float}

The ``teacher`` entry is enough to rebuild the teacher (``load_teacher_from``): ``source``
is "checkpoint" (``path`` is a teacher run's teacher.pt) or "torchvision_weights" (``path``
is a state dict in torchvision's layout, ``name``/``num_classes``/``input_shape``/
``options`` rebuild the zoo model it loads into); ``sha256`` is checked on rebuilding.

``training.rng`` holds the python, numpy and torch (and CUDA) generator states as ints,
lists and tensors (numpy's key array as an int64 tensor); ``capture_rng``/``restore_rng``
convert.
"""

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import load_torch, save_torch

FORMAT = "ijckd_bounds.checkpoint"
FORMAT_VERSION = 1
PREDICTS_WITH = ("own_head", "teacher_classifier")
TEACHER_SOURCES = ("checkpoint", "torchvision_weights")
# The fields of a checkpoint's teacher entry that say where the teacher comes from.
TEACHER_SOURCE_KEYS = ("source", "path", "sha256", "name", "num_classes", "input_shape",
                       "options")


def sha256_file(path, chunk_size=1 << 20):
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- RNG states


def capture_rng():
    """The python, numpy, torch (and CUDA) generator states as weights_only-safe values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_cached)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state):
    """Inverse of ``capture_rng``."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------- writing and reading


def write_checkpoint(payload, path):
    """Atomically write a checkpoint dict (see the module docstring) to ``path``."""
    payload = dict(payload)
    payload.setdefault("format", FORMAT)
    payload.setdefault("format_version", FORMAT_VERSION)
    if payload.get("predicts_with") not in PREDICTS_WITH:
        raise IJCKDError(f"checkpoint `predicts_with` must be one of {', '.join(PREDICTS_WITH)}, "
                         f"got {payload.get('predicts_with')!r}")
    save_torch(payload, path)
    return Path(path)


def read_checkpoint(path, *, what="checkpoint"):
    """Load and check a checkpoint dict written by ``write_checkpoint``."""
    payload = load_torch(path, what=what)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise IJCKDError(f"{what} {str(path)!r} is not an ijckd_bounds checkpoint "
                         f"(no format field {FORMAT!r})")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise IJCKDError(f"{what} {str(path)!r} has format version "
                         f"{payload['format_version']}, this ijckd_bounds reads up to "
                         f"{FORMAT_VERSION}; upgrade the package")
    return payload


def _shape(t):
    return tuple(t.shape) if hasattr(t, "shape") else None


def load_state_checked(module, state_dict, *, what):
    """``module.load_state_dict(state_dict)`` with one readable line on any mismatch.

    The line names the first mismatching key (missing, unexpected, or of another shape),
    e.g. "checkpoint 'a.pt' does not fit model 'cnn_small': 'body.0.weight' has shape
    (32, 1, 3, 3) in the checkpoint, (16, 1, 3, 3) in the model".
    """
    own = module.state_dict()
    for key, value in own.items():
        if key not in state_dict:
            raise IJCKDError(f"{what}: key {key!r} of the model is missing from the checkpoint")
        if _shape(state_dict[key]) != _shape(value):
            raise IJCKDError(f"{what}: {key!r} has shape {_shape(state_dict[key])} in the "
                             f"checkpoint, {_shape(value)} in the model (another width?)")
    for key in state_dict:
        if key not in own:
            raise IJCKDError(f"{what}: the checkpoint has key {key!r} that the model lacks")
    module.load_state_dict(state_dict)
    return module


def model_entry(model, name, num_classes, input_shape, options=None):
    """The ``model`` field of a checkpoint for zoo model ``name``."""
    return {"name": str(name), "num_classes": int(num_classes),
            "input_shape": [int(s) for s in input_shape], "options": dict(options or {}),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def build_model_from(entry, *, what):
    """Rebuild a zoo model from a checkpoint's ``model`` field and load its weights."""
    from ijckd_bounds.models import build_model

    model = build_model(entry["name"], entry["num_classes"], tuple(entry["input_shape"]),
                        **dict(entry.get("options") or {}))
    return load_state_checked(model, entry["state_dict"],
                              what=f"{what} does not fit model {entry['name']!r}")


def connector_entry(connector):
    """The checkpoint entry of ``connector``: ``{spec, state_dict}`` with CPU copies of the
    weights, or None without a connector."""
    if connector is None:
        return None
    return {"spec": dict(connector.spec),
            "state_dict": {k: v.detach().cpu().clone() for k, v in connector.state_dict().items()}}


def build_connector_from(entry, *, what):
    from ijckd_bounds.models.connectors import build_connector

    if entry is None:
        return None
    connector = build_connector(entry["spec"])
    return load_state_checked(connector, entry["state_dict"],
                              what=f"{what} does not fit its {entry['spec']['kind']} connector")


def _meta(payload, path):
    keys = ("kind", "method", "predicts_with", "epoch", "step", "seed", "dataset", "config",
            "package_version", "metrics")
    meta = {k: payload.get(k) for k in keys}
    teacher = payload.get("teacher") or {}
    meta["teacher_path"] = teacher.get("path")
    meta["teacher_sha256"] = teacher.get("sha256")
    # what load_teacher_from needs to rebuild the teacher (no tensors)
    meta["teacher_source"] = ({key: teacher.get(key) for key in TEACHER_SOURCE_KEYS}
                              if teacher else None)
    meta["model_name"] = payload["model"]["name"]
    meta["path"] = str(path)
    return meta


# -------------------------------------------------------------------------- loaded views


@dataclass
class LoadedTeacher:
    """A frozen teacher, called like its model: ``teacher(x) -> (logits (n, K), z_t (n, d))``
    (in eval mode, without gradients, on the model's device).

    ``source``: "checkpoint" (a teacher run's teacher.pt) or "torchvision_weights" (a
    torchvision-layout state dict loaded into zoo model ``meta["model_name"]``).
    """

    model: torch.nn.Module
    sha256: str
    path: str
    meta: dict = field(default_factory=dict)
    source: str = "checkpoint"

    def describe(self):
        """The teacher entry's fields that rebuild this teacher (``load_teacher_from``):
        ``{source, path, sha256, name, num_classes, input_shape, options}``."""
        dataset = self.meta.get("dataset") or {}
        shape = self.meta.get("input_shape") or dataset.get("input_shape")
        return {"source": self.source, "path": str(Path(self.path).resolve()),
                "sha256": self.sha256, "name": self.meta.get("model_name"),
                "num_classes": int(self.model.num_classes),
                "input_shape": None if shape is None else [int(s) for s in shape],
                "options": dict(self.meta.get("model_options") or {})}

    @torch.no_grad()
    def __call__(self, x):
        """The teacher model's output on ``x`` (n, *input_shape), in eval mode and without a
        graph; ``x`` is moved to the model's device."""
        self.model.eval()
        device = next(self.model.parameters()).device
        return self.model(x.to(device))

    def to(self, device):
        """Move the teacher model to ``device``; returns self."""
        self.model.to(device)
        return self


@dataclass
class LoadedStudent:
    """A student from a checkpoint, with whatever it predicts with.

    ``model``: the student zoo model; ``connector``: its trained connector or None;
    ``teacher_weight`` (K, d) / ``teacher_bias`` (K,): the teacher classifier (None for
    students without a teacher); ``predicts_with``: "own_head" or "teacher_classifier";
    ``meta``: method, epoch, step, seed, dataset, config, teacher_path, teacher_sha256, ...
    """

    model: torch.nn.Module
    connector: torch.nn.Module | None
    teacher_weight: torch.Tensor | None
    teacher_bias: torch.Tensor | None
    predicts_with: str
    meta: dict = field(default_factory=dict)

    @torch.no_grad()
    def features(self, x):
        """``(z_s, s, own_logits, predicted_logits)`` for inputs ``x`` (n, *input_shape).

        - ``z_s`` (n, d_teacher): ``pool(connector(student map))`` for students that
          predict with the teacher classifier (SimKD, IJCKD); None otherwise (the tracker
          fits a post-hoc connector on ``s``).
        - ``s`` (n, d_s): the student's own pooled features.
        - ``own_logits`` (n, K): the student's own head; None for teacher-classifier
          students, whose own head is never trained.
        - ``predicted_logits`` (n, K): what the student predicts with:
          ``W z_s + b`` or ``own_logits``.
        """
        self.model.eval()
        if self.connector is not None:
            self.connector.eval()
        device = next(self.model.parameters()).device
        own_logits, s, s_map = self.model.forward_with_map(x.to(device))
        if self.predicts_with == "teacher_classifier":
            z_s = self.connector.pooled(s_map)
            predicted = F.linear(z_s, self.teacher_weight.to(device), self.teacher_bias.to(device))
            return z_s, s, None, predicted
        return None, s, own_logits, own_logits

    def to(self, device):
        """Move the student model and its connector to ``device``; returns self."""
        self.model.to(device)
        if self.connector is not None:
            self.connector.to(device)
        return self


def load_teacher(path):
    """A ``LoadedTeacher`` from a teacher run's ``teacher.pt`` or any of its checkpoints.

    A student checkpoint is accepted too (its model as the "teacher"): any checkpoint
    whose model predicts with its own head.
    """
    payload = read_checkpoint(path, what="teacher checkpoint")
    if payload.get("predicts_with") != "own_head":
        raise IJCKDError(f"teacher checkpoint {str(path)!r} is a {payload.get('method')} student "
                         f"that predicts with another model's classifier; use a teacher run's "
                         f"teacher.pt")
    what = f"teacher checkpoint {str(path)!r}"
    model = _frozen(build_model_from(payload["model"], what=what))
    meta = _meta(payload, path)
    meta["model_options"] = dict(payload["model"].get("options") or {})
    return LoadedTeacher(model=model, sha256=sha256_file(path), path=str(path), meta=meta)


def _frozen(model):
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_teacher_weights(path, name, num_classes, input_shape, options=None, *,
                         check_hash=True):
    """A ``LoadedTeacher`` from a state dict in torchvision's layout (e.g. torchvision's
    ``resnet34-b627a593.pth``) loaded strictly into zoo model ``name`` built for
    ``num_classes`` classes and inputs of ``input_shape`` (see ``models.weights``: a
    missing/unexpected key, a shape or a file-name hash prefix that does not fit fails with
    one line)."""
    from ijckd_bounds.models import build_model
    from ijckd_bounds.models.weights import load_torchvision_weights

    if not name:
        raise IJCKDError(f"teacher weights file {str(path)!r} needs the architecture it holds: "
                         f"set model.teacher (e.g. model.teacher=resnet34)")
    model = build_model(name, num_classes, tuple(input_shape), **dict(options or {}))
    load_torchvision_weights(model, path, check_hash=check_hash)
    meta = {"kind": "teacher", "model_name": str(name), "path": str(path), "dataset": None,
            "input_shape": [int(s) for s in input_shape],
            "model_options": dict(options or {})}
    return LoadedTeacher(model=_frozen(model), sha256=sha256_file(path), path=str(path),
                         meta=meta, source="torchvision_weights")


def load_teacher_from(source, *, what="the student's teacher"):
    """Rebuild the teacher a student was distilled from, from the ``teacher_source`` of
    its metadata (or its checkpoint's teacher entry), checking the file's sha256 against
    the one recorded at distillation."""
    if not isinstance(source, dict) or not source.get("path"):
        raise IJCKDError(f"{what} is not recorded (no teacher path in the checkpoint)")
    kind = source.get("source") or "checkpoint"  # entries written before weights files
    if kind not in TEACHER_SOURCES:
        raise IJCKDError(f"{what} has unknown source {kind!r}; valid: "
                         f"{', '.join(TEACHER_SOURCES)}")
    path = source["path"]
    if kind == "checkpoint":
        teacher = load_teacher(path)
    else:
        if source.get("num_classes") is None or source.get("input_shape") is None:
            raise IJCKDError(f"{what} (weights file {path!r}) lacks its class count or input "
                             f"shape; the checkpoint cannot rebuild it")
        teacher = load_teacher_weights(path, source.get("name"), source["num_classes"],
                                       source["input_shape"], source.get("options"),
                                       check_hash=False)
    recorded = source.get("sha256")
    if recorded and recorded != teacher.sha256:
        raise IJCKDError(f"teacher file {path!r} has changed since the student was distilled "
                         f"from it (sha256 {teacher.sha256[:12]}..., recorded "
                         f"{recorded[:12]}...)")
    return teacher


def load_student(path):
    """A ``LoadedStudent`` from a checkpoint (any method; teacher checkpoints too)."""
    payload = read_checkpoint(path, what="student checkpoint")
    what = f"student checkpoint {str(path)!r}"
    model = build_model_from(payload["model"], what=what)
    connector = build_connector_from(payload.get("connector"), what=what)
    teacher = payload.get("teacher") or {}
    predicts_with = payload["predicts_with"]
    if predicts_with == "teacher_classifier" and (connector is None or "weight" not in teacher):
        raise IJCKDError(f"{what} predicts with the teacher classifier but lacks its connector "
                         f"or the classifier's weight and bias")
    return LoadedStudent(model=model.eval(), connector=connector, predicts_with=predicts_with,
                         teacher_weight=teacher.get("weight"), teacher_bias=teacher.get("bias"),
                         meta=_meta(payload, path))


__all__ = ["FORMAT", "FORMAT_VERSION", "LoadedStudent", "LoadedTeacher", "TEACHER_SOURCES",
           "build_model_from", "capture_rng", "connector_entry", "load_state_checked",
           "load_student", "load_teacher", "load_teacher_from", "load_teacher_weights",
           "model_entry", "read_checkpoint", "restore_rng", "sha256_file", "write_checkpoint"]
