"""The classifier and feature terms of docs/theory.md as pure functions on tensors.

Shapes: ``n`` evaluation samples, teacher feature width ``d``, ``K`` classes.
``z_t``/``z_s`` (n, d) are the teacher's and the (connected) student's features of the
same inputs, row by row; ``weight`` (K, d) and ``bias`` (K,) are the teacher classifier
``h_T(z) = z weightᵀ + bias``; ``y`` (n,) holds labels in ``0..K-1``.

Every prediction in the package goes through ``classifier_logits`` (float64) and
``predict`` (``torch.argmax``, which returns the *first* maximal index), so ties are broken
the same way everywhere.

Exactness. docs/theory.md's bounds 1–3 hold on the evaluation sample itself and the estimators
must never report ``student_err > bound``. The code below makes that true in floating
point, not just in exact arithmetic:

- proportions and the coupled/margin bounds are ratios of integer counts with the same
  denominator, and correctly rounded division is monotone;
- a disagreement implies ``‖z_S − z_T‖ ≥ γ(z_T)`` and ``‖h(z_S) − h(z_T)‖_∞ ≥ m(z_T)/2``
  mathematically, but rounding can break these at ties. For disagreeing samples the
  margins are therefore replaced by ``min(margin, distance)`` (``gamma_eff``,
  ``logit_margin_eff``): a no-op in exact arithmetic that makes every disagreement a
  margin crossing in floating point too, and crossings are counted with a relative
  tolerance of ``CROSSING_RTOL`` on the crossing side;
- the Markov terms ``Σ‖·‖²/τ²`` use an upper bound of the rounded sum (relative slack
  ``(2n + 4)·2⁻⁵²``), so rounding in a long sum cannot pull a bound below the error.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.intervals import (
    Estimate,
    PairedBootstrap,
    clopper_pearson,
    proportion,
)
from ijckd_bounds.estimators.rowwise import (
    centred_sq_norms64,
    column_mean64,
    linear64,
    squared_distance64,
    weighted_sum64,
)
from ijckd_bounds.schema import LEVEL, N_BOOTSTRAP

__all__ = [
    "CROSSING_RTOL",
    "classifier_logits",
    "predict",
    "teacher_err",
    "student_err",
    "disagreement",
    "per_class_terms",
    "feat_msd",
    "feat_rel",
    "logit_msd",
    "geometric_margin",
    "logit_margin",
    "PairedPredictions",
    "paired_predictions",
    "delta_gamma",
    "coupled_bound",
    "margin_bound",
    "MarkovBound",
    "feat_markov_bound",
    "logit_markov_bound",
]

# relative tolerance on the crossing side of ‖z_S − z_T‖ ≥ γ(z_T)
CROSSING_RTOL = 1e-9
# τ values per Markov bound on which bootstrap replicates minimise (plus the best τ)
MARKOV_GRID = 64
_EPS = 2.0 ** -52
_ROW_CHUNK = 8192


# ----------------------------------------------------------------------------------------
# Predictions


def classifier_logits(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      order: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (n, K) float64 of the linear classifier ``z weightᵀ + bias``.

    z (n, d), weight (K, d), bias (K,). Computed in float64 on ``z``'s device; every
    prediction of the package uses this function, so equal inputs give equal logits.
    ``order`` (m,): logits of the rows ``z[order]`` instead (see ``rowwise``).
    """
    return linear64(z, weight, bias, order)


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes (n,) long: ``torch.argmax`` of logits (n, K), first index on ties."""
    return torch.argmax(logits, dim=1)


def _bootstrap(n, bootstrap, n_bootstrap, seed, level, device):
    if bootstrap is not None:
        if bootstrap.n != n:
            raise IJCKDError(f"`bootstrap` resamples {bootstrap.n} samples, the term has {n}")
        return bootstrap
    return PairedBootstrap(n, n_bootstrap, seed, level=level, device=device)


# ----------------------------------------------------------------------------------------
# Proportions


def teacher_err(logits_t: torch.Tensor, y: torch.Tensor, *, level: float = LEVEL) -> Estimate:
    """``ε_T(h_T) = P[argmax h_T(z_T) ≠ y]``: logits_t (n, K), y (n,). Clopper–Pearson."""
    return proportion(predict(logits_t) != y.to(logits_t.device), level)


def student_err(logits_s: torch.Tensor, y: torch.Tensor, *, level: float = LEVEL) -> Estimate:
    """``ε_S(h_T) = P[argmax h_T(z_S) ≠ y]``: logits_s (n, K), y (n,). Clopper–Pearson."""
    return proportion(predict(logits_s) != y.to(logits_s.device), level)


def disagreement(logits_s: torch.Tensor, logits_t: torch.Tensor, *,
                 level: float = LEVEL) -> Estimate:
    """``δ = P[argmax h_T(z_S) ≠ argmax h_T(z_T)]``: logits (n, K) each. Clopper–Pearson."""
    return proportion(predict(logits_s) != predict(logits_t), level)


def per_class_terms(logits_t: torch.Tensor, logits_s: torch.Tensor, y: torch.Tensor,
                    n_classes: int, *, level: float = LEVEL,
                    logits_own: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Per-class ``teacher_err``, ``student_err``, ``disagreement`` and ``top1_agreement``
    (Clopper–Pearson).

    logits_t, logits_s (n, K); y (n,). ``logits_own`` (n, K): the student's own head, for
    the agreement of what the student predicts with (default ``logits_s``, where the
    agreement is ``1 − disagreement``). Returns a list of dicts, one per class present in
    ``y`` (ascending): ``{"class": c, "n": n_c, "teacher_err": Estimate, ...}``.
    """
    pred_t, pred_s = predict(logits_t), predict(logits_s)
    pred_own = pred_s if logits_own is None else predict(logits_own).to(pred_t.device)
    y = y.to(pred_t.device)
    columns = torch.stack([pred_t != y, pred_s != y, pred_s != pred_t, pred_own == pred_t],
                          dim=1).long()
    counts = torch.zeros(n_classes, columns.shape[1], dtype=torch.long, device=y.device)
    counts.index_add_(0, y, columns)
    sizes = torch.bincount(y, minlength=n_classes).cpu().numpy()
    counts = counts.cpu().numpy()
    present = np.flatnonzero(sizes)
    names = ("teacher_err", "student_err", "disagreement", "top1_agreement")
    rows = [{"class": int(c), "n": int(sizes[c])} for c in present]
    if not rows:
        return rows
    for j, name in enumerate(names):
        k, n = counts[present, j], sizes[present]
        lo, hi = clopper_pearson(k, n, level)  # vectorised over classes
        for row, kc, nc, lc, hc in zip(rows, k, n, lo, hi, strict=True):
            value = int(kc) / int(nc)
            row[name] = Estimate(value, min(float(lc), value), max(float(hc), value), int(nc),
                                 "clopper-pearson", float(level))
    return rows


# ----------------------------------------------------------------------------------------
# Feature and logit discrepancies (paired bootstrap)


def _squared_distance(a, b, order=None):
    return squared_distance64(a, b, order)


def feat_msd(z_t: torch.Tensor, z_s: torch.Tensor, *, level: float = LEVEL,
             bootstrap: PairedBootstrap | None = None, n_bootstrap: int = N_BOOTSTRAP,
             seed: int = 0, order: torch.Tensor | None = None) -> Estimate:
    """``feat_msd = E‖z_S − z_T‖²`` over paired rows of z_t, z_s (n, d) (the rows
    ``order`` of them, in that order, when given)."""
    sq = _squared_distance(z_s, z_t, order)
    bootstrap = _bootstrap(sq.numel(), bootstrap, n_bootstrap, seed, level, sq.device)
    return bootstrap.mean_estimate(sq)


def feat_rel(z_t: torch.Tensor, z_s: torch.Tensor, *, level: float = LEVEL,
             bootstrap: PairedBootstrap | None = None, n_bootstrap: int = N_BOOTSTRAP,
             seed: int = 0, order: torch.Tensor | None = None) -> Estimate:
    """``feat_rel = sqrt(feat_msd / E‖z_T − E z_T‖²)``: z_t, z_s (n, d). Scale free.
    ``order``: the rows to use, in that order (default all).

    NaN (with the reason in ``method``) when the teacher features do not vary.
    """
    sq = _squared_distance(z_s, z_t, order)
    n = sq.numel()
    bootstrap = _bootstrap(n, bootstrap, n_bootstrap, seed, level, sq.device)
    # centring by the full-sample mean first keeps the weighted variance formula stable
    mean = column_mean64(z_t, order)
    spread = centred_sq_norms64(z_t, mean, order)
    # the unbiased variance (1/(n−1)) in the value: the plug-in 1/n form makes it high by
    # sqrt(n/(n−1)). The replicates need the factor twice: a resample's plug-in variance
    # is on average (n−1)/n of the sample's (the sample is the resample's population), so
    # with the factor once they centre on the plug-in ratio, high by sqrt(n/(n−1)), and
    # at d ≳ n, where the ratio is so precise that this bias is most of the interval's
    # half-width, the interval missed the population value in 13-16% of draws
    if n < 2:
        return Estimate.missing(n, bootstrap.level, "feat_rel needs at least 2 samples")
    correction = n / (n - 1)
    variance = float(spread.mean()) * correction
    if not variance > 0:
        return Estimate.missing(n, bootstrap.level, "the teacher features have zero variance")
    value = math.sqrt(float(sq.mean()) / variance)
    msd_b, spread_b = bootstrap.means(torch.stack([sq, spread], dim=1)).unbind(1)
    mean_b = weighted_sum64(bootstrap.weights_like(sq), z_t, mean, order) / n
    variance_b = (spread_b - (mean_b * mean_b).sum(dim=1)) * correction ** 2
    ratio_b = msd_b / variance_b
    replicates = torch.where(variance_b > 0, ratio_b, torch.full_like(ratio_b, math.nan)).sqrt()
    return bootstrap.estimate(value, replicates)


def logit_msd(logits_t: torch.Tensor, logits_s: torch.Tensor, *, level: float = LEVEL,
              bootstrap: PairedBootstrap | None = None, n_bootstrap: int = N_BOOTSTRAP,
              seed: int = 0) -> Estimate:
    """``logit_msd = E‖h_T(z_S) − h_T(z_T)‖²``: logits_t, logits_s (n, K)."""
    sq = _squared_distance(logits_s, logits_t)
    bootstrap = _bootstrap(sq.numel(), bootstrap, n_bootstrap, seed, level, sq.device)
    return bootstrap.mean_estimate(sq)


# ----------------------------------------------------------------------------------------
# Margins


def _row_distances(weight):
    """‖w_a − w_b‖ (K, K) float64, from differences (exactly 0 for identical rows)."""
    w = weight.to(torch.float64)
    return torch.cdist(w[None], w[None], compute_mode="donot_use_mm_for_euclid_dist")[0]


def _geometric_margin_from_logits(logits, row_distances):
    """γ (n,) from logits (n, K) and ‖w_a − w_b‖ (K, K); see ``geometric_margin``."""
    out = torch.empty(logits.shape[0], dtype=torch.float64, device=logits.device)
    for start in range(0, logits.shape[0], _ROW_CHUNK):
        block = logits[start:start + _ROW_CHUNK]
        top = predict(block)
        gap = block.gather(1, top[:, None]) - block  # >= 0: top is a maximum
        norm = row_distances[top]
        # a competitor j with w_j = w_top keeps a constant gap: it can never overtake
        ratio = torch.where(norm > 0, gap / norm, torch.full_like(gap, math.inf))
        ratio.scatter_(1, top[:, None], math.inf)
        out[start:start + _ROW_CHUNK] = ratio.min(dim=1).values
    return out


def geometric_margin(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Teacher geometric margin (n,) float64 of features z (n, d):

    ``γ(z) = min_{j ≠ ŷ} (h_ŷ(z) − h_j(z)) / ‖w_ŷ − w_j‖``, ``ŷ = argmax h(z)``: the
    Euclidean distance from z to the nearest point where another class ties with ŷ.
    Competitors with ``w_j = w_ŷ`` can never overtake (their gap is constant) and are
    left out; ``+inf`` when no competitor can overtake. With one class, ``+inf``.
    """
    return _geometric_margin_from_logits(classifier_logits(z, weight, bias),
                                         _row_distances(weight).to(z.device))


def logit_margin(logits: torch.Tensor) -> torch.Tensor:
    """Logit margin (n,) float64 ``m = top1 − top2`` of logits (n, K); ``+inf`` if K = 1."""
    logits = logits.to(torch.float64)
    if logits.shape[1] < 2:
        return torch.full((logits.shape[0],), math.inf, dtype=torch.float64,
                          device=logits.device)
    top2 = torch.topk(logits, 2, dim=1).values
    return top2[:, 0] - top2[:, 1]


@dataclass(frozen=True)
class PairedPredictions:
    """Per-sample quantities of the teacher classifier on paired features.

    Tensors of length n (float64 unless stated): ``logits_t``/``logits_s`` (n, K);
    ``pred_t``/``pred_s`` (long); ``disagree`` (bool); ``gamma`` = γ(z_T);
    ``gamma_eff`` = γ(z_T), replaced by ``min(γ, distance)`` where the sample disagrees;
    ``distance`` = ‖z_S − z_T‖; ``distance_sq`` = ‖z_S − z_T‖² (summed squares);
    ``logit_margin`` = m(z_T); ``logit_margin_eff`` (as ``gamma_eff``, with
    ``2‖h(z_S) − h(z_T)‖_∞``); ``logit_gap_sq`` = ‖h(z_S) − h(z_T)‖²;
    ``logit_gap_inf`` = ‖h(z_S) − h(z_T)‖_∞; ``crossing`` (bool) = the sample crosses the
    teacher's margin: ``distance ≥ γ(1 − CROSSING_RTOL)`` or it disagrees.
    """

    logits_t: torch.Tensor
    logits_s: torch.Tensor
    pred_t: torch.Tensor
    pred_s: torch.Tensor
    disagree: torch.Tensor
    gamma: torch.Tensor
    gamma_eff: torch.Tensor
    distance: torch.Tensor
    distance_sq: torch.Tensor
    logit_margin: torch.Tensor
    logit_margin_eff: torch.Tensor
    logit_gap_sq: torch.Tensor
    logit_gap_inf: torch.Tensor
    crossing: torch.Tensor

    @property
    def n(self) -> int:
        """The number of samples."""
        return int(self.pred_t.numel())


def paired_predictions(z_t: torch.Tensor, z_s: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, order: torch.Tensor | None = None
                       ) -> PairedPredictions:
    """All per-sample margin quantities of ``h_T`` on z_t, z_s (n, d); see the class.
    ``order``: of the rows ``order``, in that order (default all)."""
    logits_t = classifier_logits(z_t, weight, bias, order)
    logits_s = classifier_logits(z_s, weight, bias, order)
    pred_t, pred_s = predict(logits_t), predict(logits_s)
    disagree = pred_t != pred_s
    gamma = _geometric_margin_from_logits(logits_t, _row_distances(weight).to(logits_t.device))
    distance_sq = _squared_distance(z_s, z_t, order)
    distance = distance_sq.sqrt()
    # a disagreement implies distance >= gamma; enforce it against rounding at ties
    gamma_eff = torch.where(disagree, torch.minimum(gamma, distance), gamma)
    crossing = disagree | (distance >= gamma * (1.0 - CROSSING_RTOL))
    margin = logit_margin(logits_t)
    gap = logits_s - logits_t
    gap_inf = gap.abs().amax(dim=1)
    margin_eff = torch.where(disagree, torch.minimum(margin, 2.0 * gap_inf), margin)
    return PairedPredictions(
        logits_t=logits_t, logits_s=logits_s, pred_t=pred_t, pred_s=pred_s,
        disagree=disagree, gamma=gamma, gamma_eff=gamma_eff, distance=distance,
        distance_sq=distance_sq, logit_margin=margin, logit_margin_eff=margin_eff,
        logit_gap_sq=(gap * gap).sum(dim=1), logit_gap_inf=gap_inf, crossing=crossing)


def delta_gamma(pairs: PairedPredictions, *, level: float = LEVEL) -> Estimate:
    """``δ_γ = P[‖z_S − z_T‖ ≥ γ(z_T)]`` (Clopper–Pearson) from ``paired_predictions``.

    Counts ``pairs.crossing``: a tolerance of ``CROSSING_RTOL`` on the crossing side and
    every disagreement counted, so ``δ ≤ δ_γ`` holds on the sample in floating point.
    """
    return proportion(pairs.crossing, level)


# ----------------------------------------------------------------------------------------
# Bounds on student_err (docs/theory.md bounds 1 and 2), paired bootstrap intervals


def _teacher_wrong(pairs, y):
    y = y.to(pairs.pred_t.device)
    if y.shape != pairs.pred_t.shape:
        raise IJCKDError(f"`y` must have shape ({pairs.n},) like the features, "
                         f"got {tuple(y.shape)}")
    return pairs.pred_t != y


def _count_bound(teacher_wrong, extra, bootstrap):
    """``(#teacher_wrong + #extra) / n`` with the bootstrap interval of the same sum."""
    n = teacher_wrong.numel()
    value = (int(teacher_wrong.sum()) + int(extra.sum())) / n
    per_sample = teacher_wrong.to(torch.float64) + extra.to(torch.float64)
    return bootstrap.estimate(value, bootstrap.means(per_sample))


def coupled_bound(pairs: PairedPredictions, y: torch.Tensor, *, level: float = LEVEL,
                  bootstrap: PairedBootstrap | None = None, n_bootstrap: int = N_BOOTSTRAP,
                  seed: int = 0) -> Estimate:
    """``bound_coupled = teacher_err + disagreement`` (exact on the sample)."""
    bootstrap = _bootstrap(pairs.n, bootstrap, n_bootstrap, seed, level, pairs.pred_t.device)
    return _count_bound(_teacher_wrong(pairs, y), pairs.disagree, bootstrap)


def margin_bound(pairs: PairedPredictions, y: torch.Tensor, *, level: float = LEVEL,
                 bootstrap: PairedBootstrap | None = None, n_bootstrap: int = N_BOOTSTRAP,
                 seed: int = 0) -> Estimate:
    """``bound_margin = teacher_err + δ_γ`` (exact on the sample)."""
    bootstrap = _bootstrap(pairs.n, bootstrap, n_bootstrap, seed, level, pairs.pred_t.device)
    return _count_bound(_teacher_wrong(pairs, y), pairs.crossing, bootstrap)


@dataclass(frozen=True)
class MarkovBound:
    """A Markov bound ``teacher_err + min_τ P[margin < τ] + E‖·‖²/τ²`` and its best τ."""

    bound: Estimate
    tau: float


def _markov_term(sq, tau):
    """``sq / τ²`` (broadcast), 0 where sq = 0 (also when τ² underflows) or τ = ∞."""
    sq = torch.as_tensor(sq, dtype=torch.float64, device=tau.device)
    return torch.where(sq > 0, sq / (tau * tau), torch.zeros((), dtype=torch.float64,
                                                             device=tau.device))


def _markov_bound(teacher_wrong, margin_eff, sq, bootstrap, what):
    """``min over τ > 0`` of ``teacher_err + P[margin_eff < τ] + mean(sq)/τ²``.

    teacher_wrong (n,) bool; margin_eff (n,) >= 0 (``+inf`` allowed); sq (n,) >= 0 with
    ``sq_i >= fl(τ²)`` whenever sample i disagrees with ``margin_eff_i >= τ``. The exact
    minimum over all τ > 0 is attained at one of the distinct positive finite margins (on
    each interval between them the count is constant and sq/τ² decreases), or as τ → ∞;
    all are evaluated. Bootstrap replicates minimise over ``MARKOV_GRID`` margin quantiles
    plus the best τ.
    """
    n = teacher_wrong.numel()
    device = margin_eff.device
    k_teacher = float(teacher_wrong.sum())
    total_sq = float(sq.sum())
    total_sq_up = total_sq * (1.0 + (2 * n + 4) * _EPS)  # >= the exact sum of sq
    finite = margin_eff[torch.isfinite(margin_eff)]
    ordered = torch.sort(finite).values
    candidates = torch.unique(ordered[ordered > 0])
    below = torch.searchsorted(ordered, candidates, right=False).to(torch.float64)
    values = (k_teacher + below + _markov_term(total_sq_up, candidates)) / n
    # τ → ∞: every finite margin is below τ and the Markov term vanishes
    at_infinity = (k_teacher + float(ordered.numel())) / n
    if candidates.numel() and float(values.min()) <= at_infinity:
        best = int(torch.argmin(values))
        value, tau = float(values[best]), float(candidates[best])
    else:
        value, tau = at_infinity, math.inf

    if candidates.numel():
        levels = torch.linspace(0, 1, MARKOV_GRID, dtype=torch.float64, device=device)
        grid = torch.quantile(candidates, levels)
    else:
        grid = torch.empty(0, dtype=torch.float64, device=device)
    grid = torch.cat([grid, torch.tensor([tau], dtype=torch.float64, device=device)])
    below_i = (margin_eff[:, None] < grid[None, :]).to(torch.float64)
    markov_i = _markov_term(sq[:, None], grid[None, :])
    per_sample = teacher_wrong.to(torch.float64)[:, None] + below_i + markov_i
    replicates = bootstrap.means(per_sample).min(dim=1).values
    method = f"{bootstrap.method}; τ re-minimised per replicate over {grid.numel()} {what}"
    return MarkovBound(bootstrap.estimate(value, replicates, method=method), tau)


def feat_markov_bound(pairs: PairedPredictions, y: torch.Tensor, *, level: float = LEVEL,
                      bootstrap: PairedBootstrap | None = None, n_bootstrap: int = N_BOOTSTRAP,
                      seed: int = 0) -> MarkovBound:
    """``bound_feat_markov = teacher_err + min_τ P[γ(z_T) < τ] + feat_msd/τ²`` and the
    best τ (exact on the sample). ``pairs`` from ``paired_predictions``, y (n,)."""
    bootstrap = _bootstrap(pairs.n, bootstrap, n_bootstrap, seed, level, pairs.pred_t.device)
    # distance² recomputed from the rounded distance keeps distance >= τ => sq >= τ²
    sq = pairs.distance * pairs.distance
    return _markov_bound(_teacher_wrong(pairs, y), pairs.gamma_eff, sq, bootstrap,
                         "γ quantiles")


def logit_markov_bound(pairs: PairedPredictions, y: torch.Tensor, *, level: float = LEVEL,
                       bootstrap: PairedBootstrap | None = None, n_bootstrap: int = N_BOOTSTRAP,
                       seed: int = 0) -> MarkovBound:
    """``bound_logit_markov = teacher_err + min_τ P[m(z_T) < 2τ] + logit_msd/τ²`` and the
    best τ (exact on the sample). ``pairs`` from ``paired_predictions``, y (n,)."""
    bootstrap = _bootstrap(pairs.n, bootstrap, n_bootstrap, seed, level, pairs.pred_t.device)
    # a disagreement needs ‖Δlogits‖_∞ >= m/2: in units of τ the margin is m/2
    return _markov_bound(_teacher_wrong(pairs, y), pairs.logit_margin_eff / 2.0,
                         pairs.logit_gap_sq, bootstrap, "m/2 quantiles")
