"""Float64 reductions over the rows of feature matrices, a block of rows at a time.

The estimators keep features in the dtype they come in (float32 from a model) and do
their sums in float64. Converting a whole (n, d) matrix to float64 first would double
its memory and then some: at n = 50,000, d = 2,048 each float64 copy is 800 MB, and the
report needs several. These helpers convert ``ROW_BLOCK`` rows at a time instead, so the
extra memory is O(ROW_BLOCK·d) whatever n is. Float64 inputs go through the same code
(their blocks are views, not copies).

Every helper takes an optional ``order`` (m,): a long tensor of row indices. The helper
then works on ``x[order]`` (row i of the result is row ``order[i]`` of x) without
gathering it whole: each block gathers its own rows. ``estimate_bounds`` passes its
canonical sample order this way instead of copying the features into that order.
"""

import torch

__all__ = ["ROW_BLOCK", "all_finite", "row_blocks", "column_mean64", "project64", "linear64",
           "squared_distance64", "weighted_sum64", "centred_sq_norms64"]

ROW_BLOCK = 4096


def all_finite(x):
    """Whether every entry of the tensor x is finite (neither NaN nor ±inf).

    A sum is NaN or infinite whenever one of its terms is, so a finite sum proves every
    entry finite at the cost of one reduction (a third of a millisecond on 10,000 × 512
    float32 values, against 6 ms for ``torch.isfinite(x).all()``, which writes a boolean
    copy first). Only a sum that is not finite (a bad entry, or finite values large
    enough to overflow it) needs the entry-by-entry check.
    """
    if x.numel() == 0 or not x.is_floating_point():
        return True
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def row_blocks(n, block=None):
    """Slices covering ``range(n)`` in consecutive blocks of at most ``block`` rows
    (default ``ROW_BLOCK``)."""
    block = ROW_BLOCK if block is None else block
    return [slice(start, min(start + block, n)) for start in range(0, n, block)]


def _block64(x, rows, order):
    return x[rows if order is None else order[rows]].to(torch.float64)


def _count(x, order):
    return x.shape[0] if order is None else order.shape[0]


def column_mean64(x, order=None):
    """Column means (d,) float64 of x (n, d)."""
    n = _count(x, order)
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for rows in row_blocks(n):
        total += _block64(x, rows, order).sum(dim=0)
    return total / n


def project64(x, direction, order=None):
    """``x @ direction`` (n,) float64 for x (n, d), direction (d,).

    Each row's value depends on that row alone, not on where it sits in x (an
    elementwise product and a row sum, not a matrix-vector kernel whose rounding may
    differ between rows): ``_canonical_order`` sorts by it."""
    direction = direction.to(device=x.device, dtype=torch.float64)
    n = _count(x, order)
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    for rows in row_blocks(n):
        out[rows] = (_block64(x, rows, order) * direction).sum(dim=1)
    return out


def linear64(x, weight, bias, order=None):
    """``x weightᵀ + bias`` (n, K) float64 for x (n, d), weight (K, d), bias (K,)."""
    weight = weight.to(device=x.device, dtype=torch.float64)
    bias = bias.to(device=x.device, dtype=torch.float64)
    n = _count(x, order)
    out = torch.empty(n, weight.shape[0], dtype=torch.float64, device=x.device)
    for rows in row_blocks(n):
        torch.addmm(bias, _block64(x, rows, order), weight.T, out=out[rows])
    return out


def squared_distance64(a, b, order=None):
    """``‖a_i − b_i‖²`` (n,) float64 for paired rows of a, b (n, d)."""
    n = _count(a, order)
    out = torch.empty(n, dtype=torch.float64, device=a.device)
    for rows in row_blocks(n):
        diff = _block64(a, rows, order) - _block64(b, rows, order)
        out[rows] = (diff * diff).sum(dim=1)
    return out


def centred_sq_norms64(x, mean, order=None):
    """``‖x_i − mean‖²`` (n,) float64 for x (n, d), mean (d,) float64."""
    n = _count(x, order)
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    for rows in row_blocks(n):
        centred = _block64(x, rows, order) - mean
        out[rows] = (centred * centred).sum(dim=1)
    return out


def weighted_sum64(weights, x, mean=None, order=None):
    """``weights @ (x − mean)`` (B, d) float64 for weights (B, n) and x (n, d); ``mean``
    (d,) float64 is subtracted from every row first when given."""
    weights = weights.to(device=x.device, dtype=torch.float64)
    out = torch.zeros(weights.shape[0], x.shape[1], dtype=torch.float64, device=x.device)
    for rows in row_blocks(_count(x, order)):
        block = _block64(x, rows, order)
        if mean is not None:
            block = block - mean
        out.addmm_(weights[:, rows], block)
    return out
