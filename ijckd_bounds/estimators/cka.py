"""Debiased linear CKA between paired teacher and student features (THEORY ``feat_cka``).

``CKA = HSIC_u(K, L) / sqrt(HSIC_u(K, K) · HSIC_u(L, L))`` with linear kernels
``K = X Xᵀ``, ``L = Y Yᵀ`` and the unbiased HSIC estimator of Song et al. (2012)::

    HSIC_u(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)),

K̃, L̃ the kernel matrices with zeroed diagonals. For linear kernels every piece is a
feature-space expression, so the estimate costs O(n·d²), not O(n²·d)::

    tr(K̃L̃)  = ‖XᵀY‖_F² − Σ_i ‖x_i‖²‖y_i‖²
    1ᵀK̃1    = ‖Σ_i x_i‖² − Σ_i ‖x_i‖²
    1ᵀK̃L̃1  = Σ_i (x_i·Σ_j x_j − ‖x_i‖²)(y_i·Σ_j y_j − ‖y_i‖²)

HSIC_u is invariant to shifting all x_i by one vector (its pieces combine into doubly
centred forms), so centring the features first changes nothing but the rounding.

Bootstrap. A resample with counts w is a multiset; HSIC_u on it keeps pairs of distinct
copies of one sample. Only ``tr(K̃L̃)`` then needs the n×n matrix: it is
``wᵀ(K∘L)w − Σ_i w_i K_ii L_ii``, and ``wᵀ(K∘L)w`` comes from the block pass shared
with MMD (``blockpass``). Its cost grows with the number of replicates like the MMD
bootstrap, so by default only the first ``CKA_BOOTSTRAP`` rows of the common bootstrap
weights are used (the ``method`` string says how many).
"""

import math

import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.blockpass import paired_block_pass
from ijckd_bounds.estimators.intervals import Estimate, PairedBootstrap
from ijckd_bounds.estimators.rowwise import (
    centred_sq_norms64,
    column_mean64,
    linear64,
    project64,
    row_blocks,
    weighted_sum64,
)

__all__ = ["CKA_BOOTSTRAP", "hsic_terms", "debiased_cka", "cka_replicates", "feat_cka"]

CKA_BOOTSTRAP = 200


def _hsic(tr_kl, sum_k, sum_l, sum_kl, m):
    """Unbiased HSIC from its four pieces (tensors or floats) for sample size m."""
    return (tr_kl + sum_k * sum_l / ((m - 1) * (m - 2)) - 2.0 * sum_kl / (m - 2)) \
        / (m * (m - 3))


def hsic_terms(x, y, order=None):
    """``(HSIC_u(K,L), HSIC_u(K,K), HSIC_u(L,L))`` as floats, linear kernels, O(n·d²).

    x (n, d_x), y (n, d_y): paired rows, n >= 4. Computed in float64 on centred rows, a
    block of rows at a time (no float64 copy of x or y). ``order``: the rows to use, in
    that order (default all).
    """
    n = x.shape[0] if order is None else order.shape[0]
    if n < 4:
        raise IJCKDError(f"debiased CKA needs at least 4 samples, got {n}")
    mean_x, mean_y = column_mean64(x, order), column_mean64(y, order)
    options = dict(dtype=torch.float64, device=x.device)
    xty = torch.zeros(x.shape[1], y.shape[1], **options)
    xtx = torch.zeros(x.shape[1], x.shape[1], **options)
    yty = torch.zeros(y.shape[1], y.shape[1], **options)
    sx, sy = torch.zeros(x.shape[1], **options), torch.zeros(y.shape[1], **options)
    nx, ny = torch.empty(n, **options), torch.empty(n, **options)
    for rows in row_blocks(n):
        index = rows if order is None else order[rows]
        xb = x[index].to(torch.float64) - mean_x
        yb = y[index].to(torch.float64) - mean_y
        nx[rows], ny[rows] = (xb * xb).sum(dim=1), (yb * yb).sum(dim=1)
        sx += xb.sum(dim=0)
        sy += yb.sum(dim=0)
        xty.addmm_(xb.T, yb)
        xtx.addmm_(xb.T, xb)
        yty.addmm_(yb.T, yb)
    # (K̃1)_i = x_i·Σ_j x_j − ‖x_i‖², x centred
    row_k = project64(x, sx, order) - float(mean_x @ sx) - nx
    row_l = project64(y, sy, order) - float(mean_y @ sy) - ny

    def frob2(prod):
        return float((prod * prod).sum())

    sum_k = float(sx @ sx - nx.sum())
    sum_l = float(sy @ sy - ny.sum())
    hsic_kl = _hsic(frob2(xty) - float((nx * ny).sum()), sum_k, sum_l,
                    float((row_k * row_l).sum()), n)
    hsic_kk = _hsic(frob2(xtx) - float((nx * nx).sum()), sum_k, sum_k,
                    float((row_k * row_k).sum()), n)
    hsic_ll = _hsic(frob2(yty) - float((ny * ny).sum()), sum_l, sum_l,
                    float((row_l * row_l).sum()), n)
    return hsic_kl, hsic_kk, hsic_ll


def _ratio(hsic_kl, hsic_kk, hsic_ll):
    denominator = hsic_kk * hsic_ll
    if isinstance(denominator, torch.Tensor):
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        return torch.where(denominator > 0, hsic_kl / safe.sqrt(),
                           torch.full_like(denominator, math.nan))
    return hsic_kl / math.sqrt(denominator) if denominator > 0 else math.nan


def debiased_cka(x, y, order=None):
    """Debiased linear CKA (float) of x (n, d_x) and y (n, d_y) (of their rows ``order``
    when given); NaN if a feature set is constant (its HSIC_u with itself is not
    positive)."""
    return _ratio(*hsic_terms(x, y, order))


def cka_replicates(x, y, weights, quad, *, chunk=128):
    """Debiased CKA on bootstrap resamples.

    x (n, d_x), y (n, d_y): the (centred) features the block pass saw; weights (C, n)
    count weights; quad (3, C): ``wᵀ(K∘L)w, wᵀ(K∘K)w, wᵀ(L∘L)w`` from ``paired_block_pass``.
    Float64 sums over blocks of rows (no float64 copy of x or y).
    Returns (C,) float64 (NaN where undefined).
    """
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    nx, ny = centred_sq_norms64(x, zero), centred_sq_norms64(y, zero)
    out = []
    for start in range(0, weights.shape[0], chunk):
        w = weights[start:start + chunk].to(device=x.device, dtype=torch.float64)
        q = quad[:, start:start + chunk].to(device=x.device, dtype=torch.float64)
        m = w.sum(dim=1)
        sx, sy = weighted_sum64(w, x), weighted_sum64(w, y)  # (c, d): Xᵀw per replicate
        # (c, n): (K̃1) for a copy of sample i
        no_bias = torch.zeros(w.shape[0], dtype=torch.float64, device=x.device)
        row_k = linear64(x, sx, no_bias).T - nx
        row_l = linear64(y, sy, no_bias).T - ny
        sum_k = (sx * sx).sum(dim=1) - w @ nx
        sum_l = (sy * sy).sum(dim=1) - w @ ny
        hsic_kl = _hsic(q[0] - w @ (nx * ny), sum_k, sum_l, (w * row_k * row_l).sum(dim=1), m)
        hsic_kk = _hsic(q[1] - w @ (nx * nx), sum_k, sum_k, (w * row_k * row_k).sum(dim=1), m)
        hsic_ll = _hsic(q[2] - w @ (ny * ny), sum_l, sum_l, (w * row_l * row_l).sum(dim=1), m)
        out.append(_ratio(hsic_kl, hsic_kk, hsic_ll))
    return torch.cat(out).cpu()


def cka_replicate_count(n_bootstrap, max_bootstrap):
    if max_bootstrap is None:
        return n_bootstrap
    return max(1, min(n_bootstrap, int(max_bootstrap)))


def feat_cka(z_t, z_s, *, level=0.95, bootstrap=None, n_bootstrap=1000, seed=0,
             max_bootstrap=CKA_BOOTSTRAP, block_rows=None):
    """Debiased linear CKA of z_t (n, d_t) and z_s (n, d_s) with a paired-bootstrap
    interval from the first ``max_bootstrap`` resamples of ``bootstrap`` (None: all)."""
    n = z_t.shape[0]
    if z_s.shape[0] != n:
        raise IJCKDError(f"`z_s` must have {n} rows like `z_t` (paired samples), "
                         f"got {z_s.shape[0]}")
    if bootstrap is None:
        bootstrap = PairedBootstrap(n, n_bootstrap, seed, level=level, device=z_t.device)
    elif bootstrap.n != n:
        raise IJCKDError(f"`bootstrap` resamples {bootstrap.n} samples, the features have {n}")
    value = debiased_cka(z_t, z_s)
    if math.isnan(value):
        return Estimate.missing(n, bootstrap.level, "a feature set is constant")
    count = cka_replicate_count(bootstrap.n_bootstrap, max_bootstrap)
    dtype = torch.float64 if z_t.dtype == torch.float64 else torch.float32
    # centred copies in the pass's dtype (the means in float64); the pass pairs rows of
    # equal width, which CKA itself does not need: the narrower side is padded with zeros
    width = max(z_t.shape[1], z_s.shape[1])

    def centred(z):
        out = torch.zeros(n, width, dtype=dtype, device=z.device)
        out[:, :z.shape[1]] = z
        return out.sub_(torch.nn.functional.pad(column_mean64(z), (0, width - z.shape[1]))
                        .to(dtype))

    x, y = centred(z_t), centred(z_s)
    weights = bootstrap.weights[:count]
    sums = paired_block_pass(x, y, cka_weights=weights.T, block_rows=block_rows)
    replicates = cka_replicates(x, y, weights, sums.cka_quad)
    return bootstrap.estimate(value, replicates, method=cka_method(bootstrap, count))


def cka_method(bootstrap, count):
    if count == bootstrap.n_bootstrap:
        return bootstrap.method
    return (f"paired bootstrap percentile (first {count} of the B={bootstrap.n_bootstrap} "
            f"resamples, seed={bootstrap.seed})")
