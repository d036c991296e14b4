"""``tensors``: the user's own data from a ``.npz`` or ``.pt`` file of named arrays.

The file (``path=``, or ``data_dir`` naming the file) holds one of three layouts, chosen by
which array names are present:

1. ``x`` (n, ...), ``y`` (n,): one pool, cut seeded and class-stratified into
   train/fit/eval by ``fractions`` (default 0.6/0.2/0.2).
2. ``x_train``, ``y_train``, ``x_test``, ``y_test``: train as given; the test part is cut
   seeded and stratified into fit/eval by ``fit_fraction`` (default 0.5).
3. ``x_train``, ``y_train``, ``x_fit``, ``y_fit``, ``x_eval``, ``y_eval``: all as given.

An optional ``class_names`` array (K strings) may ride along. ``x`` arrays must be finite
numbers with the same per-sample shape in every split; ``y`` arrays integer labels
(whole-numbered floats are taken as integers, the rule of ``ijckd-bounds estimate``) in
``[0, K)``, where K is ``num_classes=`` if given, else ``len(class_names)``, else the
largest label + 1. Every split must be non-empty and hold at least two classes, and a
given fit split must not hold the eval split's samples. Inputs are used as they are (no
standardisation). ``.pt`` files are loaded with ``weights_only=True`` and ``.npz`` files
with ``allow_pickle=False``: no code runs.
"""

from pathlib import Path

import numpy as np
import torch

from ijckd_bounds.data import DATASETS
from ijckd_bounds.data.splits import (
    SPLIT_NAMES,
    DatasetSplits,
    TensorSplit,
    check_fractions,
    check_seed,
    reject_unknown_options,
    stratified_split,
)
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import load_arrays

LAYOUTS = {
    "pool": ("x", "y"),
    "train_test": ("x_train", "y_train", "x_test", "y_test"),
    "explicit": ("x_train", "y_train", "x_fit", "y_fit", "x_eval", "y_eval"),
}
OPTIONAL_KEYS = ("class_names",)


def _layout(keys, where):
    """The layout name the array names ``keys`` describe, or a one-line IJCKDError."""
    data_keys = set(keys) - set(OPTIONAL_KEYS)
    for layout, names in LAYOUTS.items():
        if data_keys == set(names):
            return layout
    unknown = sorted(data_keys - {k for names in LAYOUTS.values() for k in names})
    if unknown:
        raise IJCKDError(f"{where} has unexpected arrays {unknown}; expected x,y or "
                         f"x_train,y_train,x_test,y_test or "
                         f"x_train,y_train,x_fit,y_fit,x_eval,y_eval (and class_names)")
    best = min(LAYOUTS.values(), key=lambda names: len(set(names) ^ data_keys))
    missing = sorted(set(best) - data_keys)
    extra = sorted(data_keys - set(best))
    problem = f"lacks {missing}" if missing else f"mixes layouts with {extra}"
    raise IJCKDError(f"{where} {problem}; expected x,y or x_train,y_train,x_test,y_test or "
                     f"x_train,y_train,x_fit,y_fit,x_eval,y_eval (got {sorted(data_keys)})")


def _check_inputs(x, name, where):
    if x.dtype.kind not in "biuf" or x.ndim < 2 or len(x) == 0:
        raise IJCKDError(f"{where}: `{name}` must be a non-empty numeric array of shape "
                         f"(n, ...), got {x.dtype} {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise IJCKDError(f"{where}: `{name}` has NaN or inf values in {bad} sample(s)")


def _check_labels(y, name, n, where):
    """``y`` as int64 class indices. The rule of ``estimate`` (``estimators.bounds``):
    integer dtypes, or floats whose every value is a whole number (labels saved as
    float32); booleans, complex numbers and fractional values are refused."""
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    elif y.dtype.kind == "f":
        raise IJCKDError(f"{where}: `{name}` must hold integer class indices, got "
                         f"non-integer values")
    if y.dtype.kind not in "iu":
        raise IJCKDError(f"{where}: `{name}` must hold integer class indices, got dtype "
                         f"{y.dtype}")
    if y.shape != (n,):
        raise IJCKDError(f"{where}: `{name}` must have shape ({n},) like its inputs, "
                         f"got {y.shape}")
    if y.min() < 0:
        raise IJCKDError(f"{where}: `{name}` has negative labels (min {y.min()})")
    return y


def _num_classes(labels_by_split, num_classes, class_names, where):
    largest = max(int(y.max()) for y in labels_by_split.values())
    if num_classes is None and class_names is not None:
        if largest >= len(class_names):
            raise IJCKDError(f"{where}: `class_names` has {len(class_names)} names but the "
                             f"labels go up to {largest}")
        num_classes = len(class_names)
    elif num_classes is None:
        num_classes = largest + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise IJCKDError(f"{where}: `num_classes` must be an integer >= 2, got {num_classes!r}")
    if largest >= num_classes:
        raise IJCKDError(f"{where}: labels must lie in [0, {num_classes}), got label {largest}")
    if class_names is not None and len(class_names) != num_classes:
        raise IJCKDError(f"{where}: `class_names` has {len(class_names)} names for "
                         f"{num_classes} classes")
    return int(num_classes)


# a given fit split sharing at least this fraction of the evaluation samples is an error
# (fewer may be duplicates in the data itself)
OVERLAP_ERROR_FRACTION = 0.01


def _check_disjoint(x_fit, x_eval, where):
    """The fit split fits the post-hoc connector and the probes: any evaluation sample in
    it makes the estimated errors optimistic. Compare whole samples by their bytes."""
    import hashlib

    def digests(x):
        rows = np.ascontiguousarray(x.reshape(len(x), -1).astype(np.float64))
        return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]

    fit_rows = set(digests(x_fit))
    shared = sum(1 for d in digests(x_eval) if d in fit_rows)
    if shared and shared >= OVERLAP_ERROR_FRACTION * len(x_eval):
        raise IJCKDError(f"{where}: the fit split overlaps the eval split: {shared} of the "
                         f"{len(x_eval)} samples of `x_eval` also appear in `x_fit`")


def _resolve_path(path, data_dir):
    if path is None:
        if data_dir is not None and Path(data_dir).is_file():
            return Path(data_dir)
        raise IJCKDError("dataset 'tensors' needs path=<file.npz or file.pt> "
                         "(or data_dir naming that file)")
    return Path(path).expanduser()


@DATASETS.register("tensors")
def tensors(seed=0, data_dir=None, *, path=None, fractions=(0.6, 0.2, 0.2), fit_fraction=0.5,
            num_classes=None, **unknown):
    """Splits from the user's array file (layouts in the module docstring).

    ``fractions`` (train, fit, eval) applies to the ``x``,``y`` layout, ``fit_fraction`` to
    the train/test layout; ``num_classes`` fixes K when some classes are absent.
    """
    reject_unknown_options("tensors", unknown,
                           ["path", "fractions", "fit_fraction", "num_classes"])
    seed = check_seed(seed)
    file = _resolve_path(path, data_dir)
    where = f"tensors file {str(file)!r}"
    arrays = load_arrays(file, what="tensors file")
    layout = _layout(arrays, where)
    class_names = arrays.get("class_names")
    if class_names is not None:
        class_names = [str(c) for c in np.asarray(class_names).reshape(-1)]

    for key, value in arrays.items():
        if key.startswith("x"):
            _check_inputs(value, key, where)
    for key, value in list(arrays.items()):
        if key.startswith("y"):
            arrays[key] = _check_labels(value, key, len(arrays["x" + key[1:]]), where)

    if layout == "pool":
        pool_x, pool_y = arrays["x"], arrays["y"]
        indices = stratified_split(pool_y, check_fractions("tensors", fractions), seed=seed)
        parts = {which: (pool_x[idx], pool_y[idx], idx, "x")
                 for which, idx in zip(SPLIT_NAMES, indices, strict=True)}
    elif layout == "train_test":
        if not isinstance(fit_fraction, (int, float)) or not 0.0 < fit_fraction < 1.0:
            raise IJCKDError(f"tensors `fit_fraction` must lie in (0, 1), got {fit_fraction!r}")
        test_x, test_y = arrays["x_test"], arrays["y_test"]
        fit_idx, eval_idx = stratified_split(test_y, (fit_fraction, 1.0 - fit_fraction),
                                             seed=seed)
        parts = {"train": (arrays["x_train"], arrays["y_train"],
                           np.arange(len(arrays["y_train"])), "x_train"),
                 "fit": (test_x[fit_idx], test_y[fit_idx], fit_idx, "x_test"),
                 "eval": (test_x[eval_idx], test_y[eval_idx], eval_idx, "x_test")}
    else:
        parts = {which: (arrays[f"x_{which}"], arrays[f"y_{which}"],
                         np.arange(len(arrays[f"y_{which}"])), f"x_{which}")
                 for which in SPLIT_NAMES}

    input_shape = parts["train"][0].shape[1:]
    for which, (x, y, _, _) in parts.items():
        if x.shape[1:] != input_shape:
            raise IJCKDError(f"{where}: {which} inputs must have shape (n, "
                             f"{', '.join(map(str, input_shape))}) like train, got {x.shape}")
        if len(y) == 0:
            raise IJCKDError(f"{where}: the {which} split is empty")
        if len(np.unique(y)) < 2:
            raise IJCKDError(f"{where}: the {which} split must hold >= 2 classes, "
                             f"got only class {int(y[0])} ({len(y)} samples)")
    k = _num_classes({w: p[1] for w, p in parts.items()}, num_classes, class_names, where)
    if layout == "explicit":
        _check_disjoint(parts["fit"][0], parts["eval"][0], where)

    for x, _, _, source in parts.values():
        if x.dtype.kind == "f" and np.abs(x).max() > np.finfo(np.float32).max:
            raise IJCKDError(f"{where}: `{source}` has values too large for float32")
    splits = {which: TensorSplit(torch.as_tensor(x, dtype=torch.float32),
                                 torch.as_tensor(y, dtype=torch.int64),
                                 indices=idx, source=f"{file.name}:{source}")
              for which, (x, y, idx, source) in parts.items()}
    return DatasetSplits("tensors", splits["train"], splits["fit"], splits["eval"],
                         num_classes=k, input_shape=input_shape, class_names=class_names)
