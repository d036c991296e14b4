"""The three splits every dataset provides, and the seeded stratified cut that makes them.

- ``train``: what teachers and students are trained on.
- ``fit``: where post-hoc connectors, joint probes and domain classifiers are fitted.
- ``eval``: where every bound term is measured (``D`` of docs/theory.md).

The three are disjoint, so nothing the estimators fit has seen the evaluation samples.
Splits are a pure function of the seed: the same seed gives the same indices.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ijckd_bounds.errors import IJCKDError, closest

SPLIT_NAMES = ("train", "fit", "eval")


class TensorSplit(Dataset):
    """A split held in memory: ``inputs`` (n, *input_shape) float32, ``labels`` (n,) int64.

    ``split[i]`` returns ``(x, y)`` with ``x`` float32 of shape ``input_shape`` and ``y`` an
    int64 scalar tensor. ``transform`` (optional) is the train-time augmentation, applied per
    item; it draws from torch's global RNG, which DataLoader seeds per worker. The raw
    ``inputs``/``labels`` stay reachable, un-augmented, so the estimators can extract
    features by batching them directly. ``indices`` (n,) are the samples' positions in the
    pool they were cut from (``source``), kept to check disjointness and for provenance.
    """

    def __init__(self, inputs, labels, *, transform=None, indices=None, source=None):
        if not isinstance(inputs, torch.Tensor) or inputs.dtype != torch.float32:
            raise IJCKDError(f"`inputs` must be a float32 tensor, got "
                             f"{getattr(inputs, 'dtype', type(inputs).__name__)}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
            raise IJCKDError(f"`labels` must be an int64 tensor, got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)}")
        if inputs.dim() < 2 or labels.dim() != 1 or len(inputs) != len(labels):
            raise IJCKDError(f"`inputs` must have shape (n, ...) and `labels` shape (n,), got "
                             f"{tuple(inputs.shape)} and {tuple(labels.shape)}")
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            if indices.shape != (len(labels),):
                raise IJCKDError(f"`indices` must have shape ({len(labels)},), "
                                 f"got {indices.shape}")
        self.inputs = inputs
        self.labels = labels
        self.transform = transform
        self.indices = indices
        self.source = source

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        x = self.inputs[item]
        # A fresh tensor either way, so callers can modify it without touching the pool.
        x = self.transform(x) if self.transform is not None else x.clone()
        return x, self.labels[item]

    @property
    def input_shape(self):
        """The shape of one sample, ``inputs.shape[1:]``."""
        return tuple(self.inputs.shape[1:])

    def class_counts(self, num_classes):
        """(num_classes,) int64 numpy array: how many samples of each class."""
        return np.bincount(self.labels.numpy(), minlength=num_classes)

    def __repr__(self):
        extra = f", transform={self.transform!r}" if self.transform is not None else ""
        return f"TensorSplit(n={len(self)}, input_shape={self.input_shape}{extra})"


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's ``train``/``fit``/``eval`` splits and what a model needs to know of it.

    Each split is a ``torch.utils.data.Dataset`` yielding ``(x, y)``: ``x`` float32 of shape
    ``input_shape`` (e.g. (1, 8, 8), (1, 40), (3, 32, 32)), ``y`` an int64 scalar in
    ``[0, num_classes)``. In-memory splits (``TensorSplit``) also carry ``.inputs``
    (n, *input_shape) and ``.labels`` (n,).
    """

    name: str
    train: Dataset
    fit: Dataset
    eval: Dataset
    num_classes: int
    input_shape: tuple
    class_names: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if int(self.num_classes) < 2:
            raise IJCKDError(f"dataset {self.name!r} must have >= 2 classes, "
                             f"got {self.num_classes}")
        if self.class_names is not None:
            names = tuple(str(c) for c in self.class_names)
            if len(names) != self.num_classes:
                raise IJCKDError(f"dataset {self.name!r} has {self.num_classes} classes but "
                                 f"{len(names)} class names")
            object.__setattr__(self, "class_names", names)

    def split(self, which):
        """The split called ``which`` ('train', 'fit' or 'eval')."""
        if which not in SPLIT_NAMES:
            raise IJCKDError(f"unknown split {which!r}; valid: {', '.join(SPLIT_NAMES)}")
        return getattr(self, which)

    @property
    def sizes(self):
        """{'train': n_train, 'fit': n_fit, 'eval': n_eval}."""
        return {which: len(self.split(which)) for which in SPLIT_NAMES}


def check_seed(seed):
    """The seed as a non-negative int, or a one-line IJCKDError."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise IJCKDError(f"`seed` must be a non-negative integer, got {seed!r}")
    return int(seed)


def reject_unknown_options(dataset, unknown, valid):
    """Fail on options a dataset factory does not take, naming the ones it does."""
    if unknown:
        names = ", ".join(sorted(map(repr, unknown)))
        hint = closest(sorted(unknown)[0], valid) if valid else None
        extra = f" (did you mean {hint!r}?)" if hint else ""
        raise IJCKDError(f"dataset {dataset!r} got unknown option(s) {names}{extra}; "
                         f"valid: {', '.join(valid) if valid else 'none'}")


def part_sizes(parts, n):
    """Integer sizes of the requested parts of ``n`` items, plus the unused rest (last).

    ``parts`` are either all fractions in (0, 1] summing to at most 1 (sizes by largest
    remainder, so they sum to ``round(n * sum)`` without drift), or all positive integer
    counts summing to at most ``n``.
    """
    parts = tuple(parts)
    if not parts:
        raise IJCKDError("the split needs at least one part")
    is_count = [isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in parts]
    if all(is_count):
        sizes = [int(p) for p in parts]
        if min(sizes) < 1 or sum(sizes) > n:
            raise IJCKDError(f"split sizes {sizes} must be positive and sum to at most {n}")
        return sizes + [n - sum(sizes)]
    try:
        fractions = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise IJCKDError(f"split parts must be fractions or counts, got {parts!r}") from None
    if any(is_count) or not all(0.0 < f <= 1.0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise IJCKDError(f"split fractions {list(parts)} must all lie in (0, 1] and sum to "
                         f"at most 1 (not mixed with counts)")
    rest = max(0.0, 1.0 - sum(fractions))
    wanted = np.array(fractions + [rest]) * n
    sizes = np.floor(wanted + 1e-9).astype(np.int64)
    # Hand the items lost to flooring to the parts with the largest remainders.
    short = n - int(sizes.sum())
    order = np.argsort(-(wanted - sizes), kind="stable")
    sizes[order[:short]] += 1
    return [int(s) for s in sizes]


def _round_table(class_sizes, sizes, rng):
    """Integer (C, P) table of per-class part counts with the given margins.

    Every entry is the floor or the ceiling of its proportional share
    ``class_sizes[c] * sizes[p] / n``, so each part holds every class within one sample of
    its proportion, while rows sum to ``class_sizes`` and columns to ``sizes`` exactly.
    Such a rounding always exists (the margins are integers); it is found as a maximum flow
    from classes to parts over the cells whose share is fractional.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(class_sizes.sum())
    product = np.outer(class_sizes, sizes)  # exact integer arithmetic, no float rounding
    table = product // n
    fractional = (product % n) > 0
    row_short = class_sizes - table.sum(axis=1)
    col_short = sizes - table.sum(axis=0)
    total = int(row_short.sum())
    if total == 0:
        return table
    num_classes, num_parts = table.shape
    # Shuffle the node order so ties (which class gets the extra sample) do not always
    # favour the same classes.
    class_node = 1 + rng.permutation(num_classes)
    part_node = 1 + num_classes + rng.permutation(num_parts)
    source, sink = 0, 1 + num_classes + num_parts
    rows, cols, caps = [], [], []
    for c in range(num_classes):
        if row_short[c]:
            rows.append(source), cols.append(class_node[c]), caps.append(row_short[c])
        for p in np.flatnonzero(fractional[c]):
            rows.append(class_node[c]), cols.append(part_node[p]), caps.append(1)
    for p in range(num_parts):
        if col_short[p]:
            rows.append(part_node[p]), cols.append(sink), caps.append(col_short[p])
    graph = csr_matrix((np.array(caps, dtype=np.int32), (rows, cols)),
                       shape=(sink + 1, sink + 1))
    result = maximum_flow(graph, source, sink)
    if result.flow_value != total:  # pragma: no cover - impossible for integer margins
        raise RuntimeError("stratified rounding found no feasible table")
    flow = result.flow.toarray()
    return table + np.maximum(flow[np.ix_(class_node, part_node)], 0)


def stratified_split(labels, parts, *, seed):
    """Cut ``range(len(labels))`` into disjoint, class-stratified parts.

    Args:
        labels: (n,) integer class labels.
        parts: fractions of ``n`` (each in (0, 1], summing to at most 1) or integer counts
            (summing to at most ``n``). Items left over belong to no part.
        seed: seeds a ``numpy.random.Generator``; the same seed gives the same parts.

    Returns:
        A tuple of sorted int64 index arrays, one per part, pairwise disjoint. Part ``p``
        holds ``floor`` or ``ceil`` of ``n_c * size_p / n`` samples of each class ``c``, and
        exactly ``size_p`` samples in total.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise IJCKDError(f"`labels` must have shape (n,) with n > 0, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise IJCKDError(f"`labels` must be integers, got dtype {labels.dtype}")
    rng = np.random.default_rng(check_seed(seed))
    sizes = part_sizes(parts, len(labels))
    for p, size in enumerate(sizes[:-1]):
        if size == 0:
            raise IJCKDError(f"split part {p} of {list(parts)} would be empty "
                             f"with only {len(labels)} samples")
    _, class_of = np.unique(labels, return_inverse=True)
    class_sizes = np.bincount(class_of)
    counts = _round_table(class_sizes, sizes, rng)
    chosen = [[] for _ in sizes]
    for c in range(len(class_sizes)):
        members = rng.permutation(np.flatnonzero(class_of == c))
        for p, chunk in enumerate(np.split(members, np.cumsum(counts[c])[:-1])):
            chosen[p].append(chunk)
    return tuple(np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in chosen[:-1])


def standardize(train_inputs, *others):
    """Standardise with the train split's scalar mean and std (computed on train only).

    Args:
        train_inputs: (n, ...) float tensor; its mean/std over all entries are used.
        others: further (m, ...) tensors standardised with the same statistics.

    Returns:
        ``(train_std, *others_std, mean, std)`` with float32 tensors.
    """
    mean = train_inputs.double().mean()
    std = train_inputs.double().std()
    if not torch.isfinite(std) or std <= 0:
        raise IJCKDError("the train inputs are constant; cannot standardise them")
    out = [((x.double() - mean) / std).float() for x in (train_inputs, *others)]
    return (*out, float(mean), float(std))


def splits_from_pool(name, inputs, labels, indices_by_split, *, num_classes, class_names=None,
                     train_transform=None, source=None):
    """Build ``DatasetSplits`` from one in-memory pool cut by index arrays.

    Args:
        inputs: (N, *input_shape) float32 tensor. labels: (N,) int64 tensor.
        indices_by_split: ``(train_idx, fit_idx, eval_idx)`` int arrays into the pool.
    """
    made = {}
    for which, idx in zip(SPLIT_NAMES, indices_by_split, strict=True):
        idx_t = torch.as_tensor(idx, dtype=torch.int64)
        made[which] = TensorSplit(inputs[idx_t], labels[idx_t], indices=idx, source=source,
                                  transform=train_transform if which == "train" else None)
    return DatasetSplits(name, made["train"], made["fit"], made["eval"], num_classes=num_classes,
                         input_shape=tuple(inputs.shape[1:]), class_names=class_names)


def check_fractions(dataset, fractions):
    """``fractions`` as a (train, fit, eval) tuple of floats, or a one-line IJCKDError."""
    try:
        fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise IJCKDError(f"dataset {dataset!r}: `fractions` must be three numbers "
                         f"(train, fit, eval), got {fractions!r}") from None
    if len(fractions) != 3:
        raise IJCKDError(f"dataset {dataset!r}: `fractions` must be three numbers "
                         f"(train, fit, eval), got {len(fractions)}")
    return fractions


__all__ = ["SPLIT_NAMES", "DatasetSplits", "TensorSplit", "check_fractions", "check_seed",
           "part_sizes", "reject_unknown_options", "splits_from_pool", "standardize",
           "stratified_split"]
