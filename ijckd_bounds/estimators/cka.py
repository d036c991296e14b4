"""Debiased linear CKA between paired teacher and student features (docs/theory.md ``feat_cka``).

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

Interval: a delete-one jackknife. A bootstrap resample holds copies of one sample, and
HSIC_u on it counts the pairs of copies, exactly the ``i = j`` terms the unbiased
estimator leaves out: at n ≲ 2d its replicates drift above the estimate and the interval
covers about half the time. The n leave-one-out estimates need no n×n matrix either:
leaving out sample k changes each piece by rank-one terms of row k::

    tr(K̃L̃)₋ₖ = tr(K̃L̃) − 2(x_kᵀ(XᵀY)y_k − ‖x_k‖²‖y_k‖²)
    1ᵀK̃1₋ₖ   = 1ᵀK̃1 − 2(K̃1)_k
    1ᵀK̃L̃1₋ₖ = 1ᵀK̃L̃1 − (K̃1)_k(L̃1)_k − y_k·Yᵀ(K̃1) − x_k·Xᵀ(L̃1) + (K̃1)_k L_kk
                + K_kk (L̃1)_k + x_kᵀ(XᵀY)y_k − ‖x_k‖²‖y_k‖²

so the jackknife costs O(n·d²) like the estimate. The interval is
``value ± t_{n−1} · se_jack``, ``se_jack² = (n−1)/n · Σ_k (θ₋ₖ − θ̄)²``, centred on the
estimate.
"""

import math

import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.intervals import Estimate, check_level
from ijckd_bounds.estimators.rowwise import column_mean64, project64, row_blocks
from ijckd_bounds.schema import LEVEL

__all__ = ["hsic_terms", "debiased_cka", "cka_jackknife", "feat_cka"]


def _hsic(tr_kl, sum_k, sum_l, sum_kl, m):
    """Unbiased HSIC from its four pieces (tensors or floats) for sample size m."""
    return (tr_kl + sum_k * sum_l / ((m - 1) * (m - 2)) - 2.0 * sum_kl / (m - 2)) \
        / (m * (m - 3))


def _first_pass(x, y, order):
    """Means, Gram products and per-row pieces of centred x, y (float64)."""
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
    return dict(n=n, mean_x=mean_x, mean_y=mean_y, xty=xty, xtx=xtx, yty=yty, sx=sx, sy=sy,
                nx=nx, ny=ny, row_k=row_k, row_l=row_l)


def _frob2(prod):
    return float((prod * prod).sum())


def _pieces(p):
    """The full-sample pieces ``(tr, 1ᵀK̃1, 1ᵀL̃1, 1ᵀK̃L̃1)`` of the three HSICs."""
    nx, ny, row_k, row_l = p["nx"], p["ny"], p["row_k"], p["row_l"]
    sum_k = float(p["sx"] @ p["sx"] - nx.sum())
    sum_l = float(p["sy"] @ p["sy"] - ny.sum())
    return {
        "kl": (_frob2(p["xty"]) - float((nx * ny).sum()), sum_k, sum_l,
               float((row_k * row_l).sum())),
        "kk": (_frob2(p["xtx"]) - float((nx * nx).sum()), sum_k, sum_k,
               float((row_k * row_k).sum())),
        "ll": (_frob2(p["yty"]) - float((ny * ny).sum()), sum_l, sum_l,
               float((row_l * row_l).sum())),
    }


def hsic_terms(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None = None
               ) -> tuple[float, float, float]:
    """``(HSIC_u(K,L), HSIC_u(K,K), HSIC_u(L,L))`` as floats, linear kernels, O(n·d²).

    x (n, d_x), y (n, d_y): paired rows, n >= 4. Computed in float64 on centred rows, a
    block of rows at a time (no float64 copy of x or y). ``order``: the rows to use, in
    that order (default all).
    """
    p = _first_pass(x, y, order)
    pieces = _pieces(p)
    return tuple(_hsic(*pieces[name], p["n"]) for name in ("kl", "kk", "ll"))


def _ratio(hsic_kl, hsic_kk, hsic_ll):
    denominator = hsic_kk * hsic_ll
    if isinstance(denominator, torch.Tensor):
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        return torch.where(denominator > 0, hsic_kl / safe.sqrt(),
                           torch.full_like(denominator, math.nan))
    return hsic_kl / math.sqrt(denominator) if denominator > 0 else math.nan


def debiased_cka(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None = None) -> float:
    """Debiased linear CKA (float) of x (n, d_x) and y (n, d_y) (of their rows ``order``
    when given); NaN if a feature set is constant (its HSIC_u with itself is not
    positive)."""
    return _ratio(*hsic_terms(x, y, order))


def _leave_one_out(p, x, y, order):
    """Per sample k (n,) float64: the pieces of the three HSICs without sample k."""
    n, mean_x, mean_y = p["n"], p["mean_x"], p["mean_y"]
    nx, ny, row_k, row_l = p["nx"], p["ny"], p["row_k"], p["row_l"]
    options = dict(dtype=torch.float64, device=x.device)
    # x_kᵀ(XᵀY)y_k, x_kᵀ(XᵀX)x_k, y_kᵀ(YᵀY)y_k and the sums Xᵀ(K̃1), Yᵀ(K̃1), Xᵀ(L̃1), Yᵀ(L̃1)
    q_kl, q_kk, q_ll = (torch.empty(n, **options) for _ in range(3))
    xa, ya = torch.zeros(x.shape[1], **options), torch.zeros(y.shape[1], **options)
    xb_, yb_ = torch.zeros(x.shape[1], **options), torch.zeros(y.shape[1], **options)
    for rows in row_blocks(n):
        index = rows if order is None else order[rows]
        xb = x[index].to(torch.float64) - mean_x
        yb = y[index].to(torch.float64) - mean_y
        q_kl[rows] = ((xb @ p["xty"]) * yb).sum(dim=1)
        q_kk[rows] = ((xb @ p["xtx"]) * xb).sum(dim=1)
        q_ll[rows] = ((yb @ p["yty"]) * yb).sum(dim=1)
        xa += row_k[rows] @ xb
        ya += row_k[rows] @ yb
        xb_ += row_l[rows] @ xb
        yb_ += row_l[rows] @ yb

    def centred_project(z, mean, v):
        return project64(z, v, order) - float(mean @ v)

    # Σ_{i≠k} (K̃1)_i L_ik etc.: y_k·Yᵀ(K̃1) − (K̃1)_k L_kk
    k_l = centred_project(y, mean_y, ya) - row_k * ny    # Σ_{i≠k} (K̃1)_i L_ik
    l_k = centred_project(x, mean_x, xb_) - row_l * nx   # Σ_{i≠k} K_ik (L̃1)_i
    k_k = centred_project(x, mean_x, xa) - row_k * nx    # Σ_{i≠k} (K̃1)_i K_ik
    l_l = centred_project(y, mean_y, yb_) - row_l * ny   # Σ_{i≠k} (L̃1)_i L_ik
    full = _pieces(p)

    def drop(name, q, kk_diag, a, b, a_b, b_a):
        tr, sum_a, sum_b, sum_ab = full[name]
        cross = q - kk_diag  # Σ_{i≠k} K_ik L_ik
        return (tr - 2.0 * cross, sum_a - 2.0 * a, sum_b - 2.0 * b,
                sum_ab - a * b - a_b - b_a + cross)

    return {
        "kl": drop("kl", q_kl, nx * ny, row_k, row_l, k_l, l_k),
        "kk": drop("kk", q_kk, nx * nx, row_k, row_k, k_k, k_k),
        "ll": drop("ll", q_ll, ny * ny, row_l, row_l, l_l, l_l),
    }


def cka_jackknife(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None = None
                  ) -> tuple[float, torch.Tensor]:
    """Debiased linear CKA and its n leave-one-out values, in O(n·d²).

    x (n, d_x), y (n, d_y): paired rows (of them the rows ``order`` when given), n >= 5.
    Returns ``(value, loo)``: a float and (n,) float64 on x's device, ``loo[k]`` the
    debiased CKA of the samples without sample k (NaN where a feature set is constant).
    """
    p = _first_pass(x, y, order)
    n = p["n"]
    if n < 5:
        raise IJCKDError(f"the jackknife of debiased CKA needs at least 5 samples, got {n}")
    pieces = _pieces(p)
    value = _ratio(*(_hsic(*pieces[name], n) for name in ("kl", "kk", "ll")))
    loo = _leave_one_out(p, x, y, order)
    m = n - 1
    return value, _ratio(*(_hsic(*loo[name], m) for name in ("kl", "kk", "ll")))


def feat_cka(z_t: torch.Tensor, z_s: torch.Tensor, *, level: float = LEVEL,
             order: torch.Tensor | None = None) -> Estimate:
    """Debiased linear CKA of z_t (n, d_t) and z_s (n, d_s) (their rows ``order`` when
    given) with a delete-one jackknife interval ``value ± t_{n−1, (1+level)/2} · se_jack``
    (``Estimate``; missing when a feature set is constant)."""
    from scipy.special import stdtrit  # the t quantile, without scipy.stats' overhead

    level = check_level(level)
    n = z_t.shape[0] if order is None else order.shape[0]
    if order is None and z_s.shape[0] != n:
        raise IJCKDError(f"`z_s` must have {n} rows like `z_t` (paired samples), "
                         f"got {z_s.shape[0]}")
    value, loo = cka_jackknife(z_t, z_s, order)
    if math.isnan(value) or not bool(torch.isfinite(loo).all()):
        return Estimate.missing(n, level, "a feature set is constant")
    spread = float(((loo - loo.mean()) ** 2).sum())
    half = float(stdtrit(n - 1, 0.5 + level / 2)) * math.sqrt((n - 1) / n * spread)
    return Estimate(value, value - half, value + half, n,
                    f"delete-one jackknife (n={n}), t interval", level)
