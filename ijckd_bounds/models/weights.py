"""Load teacher weights from a local file in torchvision's state-dict layout.

``load_torchvision_weights(model, "resnet34-b627a593.pth")`` loads a file downloaded from
torchvision (or saved with ``torch.save(model.state_dict(), path)``) into a zoo model whose
module names match (``models.imagenet``'s ResNets, or a ``FeatureModel`` wrapping a
torchvision model). Nothing is downloaded and no code in the file runs
(``weights_only=True``).

Checks, each failing with one IJCKDError line:

- the file name's hash: torchvision names its files ``<name>-<first 8 hex digits of the
  sha256>.pth``; such a name is checked against the file's sha256, which catches truncated
  downloads and mixed-up files (``check_hash=False`` skips it);
- the keys, strictly: the first missing key (in the model's order), else the first
  unexpected one (in the file's order), with how many more there are;
- the shapes: the first tensor whose shape differs from the model's.

Accepted containers: a plain state dict, or a checkpoint dict holding it under
``state_dict`` or ``model`` (common in distillation code), beside other entries such as
``optimizer``, ``epoch`` or ``best_acc``. A ``module.`` prefix on every key (left by
``DataParallel``) is removed. A whole mdistiller distiller (keys ``student.*``, and
``teacher.*`` plus the method's own modules when it distilled) gives its ``student.*``
part: the network that run trained. BatchNorm's ``num_batches_tracked`` counters, absent
from torchvision's older files, are set to 0 when missing, as PyTorch itself does.

Key names: torchvision's (the zoo's ImageNet models use them), the zoo's own, and for the
CIFAR zoo models those of RepDistiller and mdistiller (``models.layouts``: ``fc`` for the
zoo's ``classifier`` and the other differences listed there), recognised from the keys.
An error then names the file's own key beside the zoo's.
"""

import hashlib
import re
from pathlib import Path

import torch
import torch.nn as nn

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import load_torch
from ijckd_bounds.models.layouts import CIFAR_CODEBASES, cifar_codebase_names

# torchvision's file names: "<name>-<hash prefix>.pth", e.g. resnet34-b627a593.pth.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8})\.pth?$")
WRAPPER_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
DISTILLER_STUDENT_PREFIX = "student."  # mdistiller saves the whole distiller module


def sha256_of(path):
    """Hex sha256 digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_prefix_in_name(path):
    """The 8 hex digits of a torchvision-style file name ``<name>-<hash>.pth``, or None."""
    found = HASH_IN_NAME.search(Path(path).name)
    return found.group(1) if found else None


def check_file_hash(path):
    """If ``path``'s name carries a hash prefix, the file's sha256 must start with it."""
    expected = hash_prefix_in_name(path)
    if expected is None:
        return
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise IJCKDError(f"weights file {str(path)!r} is named for sha256 {expected}... but its "
                         f"sha256 is {actual[:8]}...: the download is incomplete or the file "
                         f"was renamed (drop the '-{expected}' suffix or pass check_hash=False "
                         f"to skip this check)")


def _is_tensor_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())


def _all_prefixed(keys):
    keys = list(keys)
    return bool(keys) and all(key.startswith(DATA_PARALLEL_PREFIX) for key in keys)


def extract_state_dict(loaded, where, expected_keys=()):
    """The state dict (str -> tensor) inside what ``torch.load`` returned; a ``module.``
    prefix on every key is dropped unless the model's own keys (``expected_keys``) carry it.
    """
    state = loaded
    if not _is_tensor_dict(state) and isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if _is_tensor_dict(state.get(key)):
                state = state[key]
                break
    if not _is_tensor_dict(state):
        kind = type(loaded).__name__
        keys = f" with keys {sorted(map(str, loaded))[:5]}" if isinstance(loaded, dict) else ""
        raise IJCKDError(f"weights file {where} must hold a state dict (names -> tensors), "
                         f"directly or under {' or '.join(map(repr, WRAPPER_KEYS))}; "
                         f"got a {kind}{keys}")
    if _all_prefixed(state) and not _all_prefixed(expected_keys):
        state = {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state.items()}
    expected_keys = list(expected_keys)
    if (expected_keys and not any(k.startswith(DISTILLER_STUDENT_PREFIX) for k in expected_keys)
            and any(k.startswith(DISTILLER_STUDENT_PREFIX) for k in state)):
        state = {key[len(DISTILLER_STUDENT_PREFIX):]: value for key, value in state.items()
                 if key.startswith(DISTILLER_STUDENT_PREFIX)}
    return dict(state)


def check_state_dict(model, state, where, file_keys=None):
    """One IJCKDError line for the first key or shape of ``state`` (str -> tensor) that
    does not fit ``model``'s state dict; missing BN counters are filled in ``state``.

    ``file_keys``: ``{key of state: the key as the file names it}`` where the two differ
    (a renamed layout); the message then names both.
    """
    file_keys = file_keys or {}

    def named(key):
        original = file_keys.get(key, key)
        return f"{key!r}" if original == key else f"{key!r} (the file's {original!r})"

    expected = model.state_dict()
    for key, tensor in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(tensor)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    model_name = type(model).__name__
    if missing or unexpected:
        first, problem = (missing[0], "missing key") if missing else (unexpected[0],
                                                                       "unexpected key")
        raise IJCKDError(f"weights file {where} does not fit {model_name}: {problem} "
                         f"{named(first)} ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected in all)")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise IJCKDError(f"weights file {where} does not fit {model_name}: {named(key)} has "
                             f"shape {tuple(state[key].shape)} in the file but "
                             f"{tuple(tensor.shape)} in the model (another number of classes "
                             f"or architecture?)")
    return state


def load_torchvision_weights(model, path, *, check_hash=True):
    """Load the state dict at ``path`` into ``model`` strictly (see the module docstring).

    Args:
        model: an ``nn.Module`` (e.g. ``build_model("resnet34", 1000, (3, 224, 224))``).
        path: a ``.pth``/``.pt`` file written by ``torch.save``.
        check_hash: check a ``<name>-<8 hex>.pth`` file name against the file's sha256.

    Returns:
        ``model``, with its parameters and buffers replaced by the file's (cast to the
        model's dtypes and devices).
    """
    if not isinstance(model, nn.Module):
        raise IJCKDError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    path = Path(path).expanduser()
    where = repr(str(path))
    if not path.is_file():
        raise IJCKDError(f"weights file {where} does not exist")
    if check_hash:
        check_file_hash(path)
    expected_keys = list(model.state_dict())
    state = extract_state_dict(load_torch(path, what="weights file"), where,
                               expected_keys=expected_keys)
    file_keys = None
    if not set(state) <= set(expected_keys):
        names = cifar_codebase_names(model, state)
        if names is not None:
            state = {new: state[old] for new, old in names.items()}
            file_keys = names
            where = f"{where} ({CIFAR_CODEBASES} key names)"
    state = check_state_dict(model, state, where, file_keys)
    model.load_state_dict(state, strict=True)
    return model


__all__ = ["check_file_hash", "check_state_dict", "extract_state_dict", "hash_prefix_in_name",
           "load_torchvision_weights", "sha256_of"]
