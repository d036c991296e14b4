"""MMD² between the distributions of paired teacher and student features (docs/theory.md ``mmd2``).

Gaussian kernel ``k(a, b) = exp(−‖a − b‖²/(2σ²))``, σ the median pairwise distance of the
pooled sample (``median_bandwidth``). The samples are paired (one input gives both), so
the estimator is the U-statistic over pairs (Gretton et al. 2012, Lemma 6)::

    MMD²_u = 1/(n(n−1)) Σ_{i≠j} H_ij,
    H_ij = k(t_i,t_j) + k(s_i,s_j) − k(t_i,s_j) − k(s_i,t_j).

Permutation test: each permutation swaps t_i and s_i within pair i with probability ½,
a sign vector ε ∈ {±1}ⁿ with statistic ``M_b = εᵀHε/(n(n−1))`` (H_ii = 0);
``mmd_p = (1 + #{b: M_b ≥ M}) / (1 + B)``. Bootstrap: count weights w (resampling
pairs) give the weighted U-statistic ``wᵀHw / Σ_{i≠j} w_i w_j`` (zero diagonal, so a pair
drawn twice is never compared with itself). All sign vectors and bootstrap weights ride
along in one block pass over H (``blockpass``): O(block·n) memory, never n×n.
"""

import math
from dataclasses import dataclass

import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.blockpass import paired_block_pass
from ijckd_bounds.estimators.intervals import Estimate, PairedBootstrap, derived_seed
from ijckd_bounds.estimators.rowwise import column_mean64
from ijckd_bounds.schema import LEVEL, N_BOOTSTRAP, N_PERMUTATIONS

__all__ = ["MMDTest", "NoBandwidth", "median_bandwidth", "centre_pair", "mmd2",
           "mmd_from_pass",
           "run_mmd_pass", "sign_vectors", "subsample_pairs"]

BANDWIDTH_POINTS = 2000


class NoBandwidth(IJCKDError):
    """The median pairwise distance is 0: degenerate features have no median bandwidth
    (``estimate_bounds`` then reports MMD² missing; ``mmd2`` accepts ``bandwidth=``)."""


@dataclass(frozen=True)
class MMDTest:
    """MMD² with its bootstrap interval, the permutation p-value and the bandwidth σ."""

    mmd2: Estimate
    p_value: float
    bandwidth: float
    n_permutations: int


def centre_pair(z_t: torch.Tensor, z_s: torch.Tensor, dtype: torch.dtype = torch.float64,
                order: torch.Tensor | None = None, rows: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t, z_s (n, d) minus the mean of the pooled sample, in ``dtype`` (distances are
    unchanged; centring keeps ‖a‖² + ‖b‖² − 2a·b from cancelling). The mean is taken in
    float64; float32 inputs centred in float32 lose nothing they had.

    ``order`` (n,): the samples are the rows ``order`` of z_t, z_s, in that order.
    ``rows`` (m,): return only these rows of the (ordered) samples, centred by the mean
    of all of them. Each result is one new (m, d) tensor.
    """
    mean = 0.5 * (column_mean64(z_t, order) + column_mean64(z_s, order))
    if order is not None and rows is not None:
        rows = order[rows.to(order.device)]
    elif order is not None:
        rows = order

    def centred(z):
        out = z.to(dtype) if rows is None else z[rows.to(z.device)].to(dtype)
        if out.data_ptr() == z.data_ptr():  # no copy was made: do not centre in place
            return out - mean.to(dtype)
        return out.sub_(mean.to(dtype))

    return centred(z_t), centred(z_s)


def median_bandwidth(z_t: torch.Tensor, z_s: torch.Tensor, *, max_points: int = BANDWIDTH_POINTS,
                     seed: int = 0, order: torch.Tensor | None = None) -> float:
    """σ = median pairwise distance (i < j) of the pooled sample ``[z_t; z_s]`` (2n, d).

    With more than ``max_points`` pooled points a seeded subsample of ``max_points`` of
    them is used. ``order`` (n,): the samples are the rows ``order`` of z_t, z_s, in that
    order (the subsample is drawn in that order). Returns a positive float; a
    ``NoBandwidth`` error when more than half of the distances are 0.
    """
    if order is not None:
        order = order.to(z_t.device)
        if z_t.shape[0] != z_s.shape[0]:
            raise IJCKDError("`order` needs paired z_t, z_s with equal row counts")

        def rows(z, index):
            return z[order[index]]
    else:
        def rows(z, index):
            return z[index]
    n_t = z_t.shape[0] if order is None else order.shape[0]
    total = n_t + (z_s.shape[0] if order is None else n_t)
    if total > max_points:
        generator = torch.Generator().manual_seed(derived_seed(seed, "mmd-bandwidth"))
        pick = torch.randperm(total, generator=generator)[:max_points].to(z_t.device)
        # rows of [z_t; z_s] gathered from each side: the float64 copy of the pooled
        # sample would be 2n·d·8 bytes (80 MB at n = 10,000, d = 512) for 2,000 rows
        from_t = pick < n_t
        pooled = torch.empty(max_points, z_t.shape[1], dtype=torch.float64,
                             device=z_t.device)
        pooled[from_t] = rows(z_t, pick[from_t]).to(torch.float64)
        pooled[~from_t] = rows(z_s, pick[~from_t] - n_t).to(torch.float64)
    else:
        everything = torch.arange(n_t, device=z_t.device)
        pooled = torch.cat([rows(z_t, everything).to(torch.float64),
                            rows(z_s, everything).to(torch.float64)])
    pooled = pooled - pooled.mean(dim=0)
    sq_norms = (pooled * pooled).sum(dim=1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * pooled @ pooled.T).clamp(min=0)
    # equal points give rounding residues, not 0, in ‖a‖² + ‖b‖² − 2ab: count them as 0
    sq_dist[sq_dist <= 1e-12 * float(sq_norms.max())] = 0.0
    upper = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1,
                               device=pooled.device)
    distances = sq_dist[upper[0], upper[1]].sqrt().cpu()
    # the median as numpy defines it: the mean of the two middle values for an even count
    count = distances.numel()
    lower = float(torch.kthvalue(distances, (count + 1) // 2).values)
    upper_mid = float(torch.kthvalue(distances, count // 2 + 1).values)
    sigma = 0.5 * (lower + upper_mid)
    if not sigma > 0:
        raise NoBandwidth("cannot choose an MMD bandwidth: more than half of the pairwise "
                          "distances between features are 0 (constant or duplicate "
                          "features?)")
    return sigma


def sign_vectors(n, n_permutations, seed, *, dtype=torch.float32):
    """Seeded ±1 sign vectors (n, n_permutations): column b swaps pair i when it is −1."""
    generator = torch.Generator().manual_seed(derived_seed(seed, "mmd-signs"))
    bits = torch.randint(0, 2, (n, n_permutations), generator=generator)
    return (2 * bits - 1).to(dtype)


def mmd_from_pass(sums, n, n_permutations, weights, *, bootstrap, bandwidth, method_extra=""):
    """Turn the sums of ``paired_block_pass`` into an ``MMDTest``.

    sums.mmd_quad holds the sign-vector forms first (n_permutations), then the bootstrap
    forms of ``weights`` (B, n) (the count weights restricted to the samples of the pass).
    """
    pairs = n * (n - 1)
    value = float(sums.mmd_total) / pairs
    permuted = sums.mmd_quad[:n_permutations] / pairs
    # the observed statistic is one of the equally likely sign patterns: count it
    p_value = (1.0 + float((permuted >= value).sum())) / (1.0 + n_permutations)
    w = weights.to(torch.float64).cpu()
    normaliser = w.sum(dim=1) ** 2 - (w * w).sum(dim=1)  # Σ_{i≠j} w_i w_j
    replicates = sums.mmd_quad[n_permutations:] / normaliser
    replicates = torch.where(normaliser > 0, replicates, torch.full_like(replicates, math.nan))
    method = f"{bootstrap.method}; weighted U-statistic{method_extra}"
    return MMDTest(bootstrap.estimate(value, replicates, method=method, n=n), p_value,
                   float(bandwidth), int(n_permutations))


def _check_pair(z_t, z_s):
    if z_t.dim() != 2 or z_s.shape != z_t.shape:
        raise IJCKDError(f"`z_s` must have shape {tuple(z_t.shape)} like `z_t` (paired rows), "
                         f"got {tuple(z_s.shape)}")
    if z_t.shape[0] < 2:
        raise IJCKDError(f"MMD² needs at least 2 paired samples, got {z_t.shape[0]}")


def subsample_pairs(n, max_n, seed):
    """Sorted indices of a seeded subsample of ``max_n`` of ``n`` pairs (all when n <= max_n)."""
    if max_n is None or n <= max_n:
        return None
    if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 2:
        raise IJCKDError(f"`mmd_max_n` must be an integer >= 2, got {max_n!r}")
    generator = torch.Generator().manual_seed(derived_seed(seed, "mmd-subsample"))
    return torch.sort(torch.randperm(n, generator=generator)[:max_n]).values


def run_mmd_pass(z_t, z_s, *, bandwidth=None, n_permutations=N_PERMUTATIONS, seed=0, bootstrap,
                 max_n=None, block_rows=None, order=None):
    """MMD² from one block pass; see ``mmd2``.

    order (n,): the samples are the rows ``order`` of z_t, z_s, in that order (gathered
    once, into the centred copies the pass needs anyway).
    Returns ``(MMDTest, pairs used)``.
    """
    n = z_t.shape[0] if order is None else order.shape[0]
    if bandwidth is None:
        bandwidth = median_bandwidth(z_t, z_s, seed=seed, order=order)
    dtype = torch.float64 if z_t.dtype == torch.float64 else torch.float32
    weights = bootstrap.weights
    extra = ""
    pick = subsample_pairs(n, max_n, seed)
    t, s = centre_pair(z_t, z_s, dtype, order=order, rows=pick)
    if pick is not None:
        weights = weights[:, pick.to(weights.device)]
        extra = f" on a seeded subsample of {pick.numel()} of {n} pairs"
    m = t.shape[0]
    vectors = torch.cat([sign_vectors(m, n_permutations, seed, dtype=dtype).to(t.device),
                         weights.T.to(device=t.device, dtype=dtype)], dim=1)
    sums = paired_block_pass(t, s, bandwidth=bandwidth, mmd_vectors=vectors,
                             block_rows=block_rows)
    del vectors
    test = mmd_from_pass(sums, m, n_permutations, weights, bootstrap=bootstrap,
                         bandwidth=bandwidth, method_extra=extra)
    return test, m


def mmd2(z_t: torch.Tensor, z_s: torch.Tensor, *, bandwidth: float | None = None,
         n_permutations: int = N_PERMUTATIONS, level: float = LEVEL,
         bootstrap: PairedBootstrap | None = None, n_bootstrap: int = N_BOOTSTRAP,
         seed: int = 0, max_n: int | None = None, block_rows: int | None = None) -> MMDTest:
    """Paired MMD² U-statistic of z_t, z_s (n, d) with permutation p-value and interval.

    Args:
        bandwidth: σ; default ``median_bandwidth`` of the pooled sample (seeded).
        n_permutations: sign-flip permutations for ``p_value``.
        bootstrap: a ``PairedBootstrap`` over the n pairs (default: a new one from
            ``n_bootstrap`` and ``seed``).
        max_n: compute on a seeded subsample of this many pairs (the bootstrap weights are
            restricted to it) when n is larger.
        block_rows: rows of H per block (memory ~ 16·block_rows·n bytes in float32).

    Float64 inputs are computed in float64 throughout; anything else in float32 with
    float64 sums. Returns ``MMDTest``.
    """
    _check_pair(z_t, z_s)
    n = z_t.shape[0]
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) \
            or n_permutations < 1:
        raise IJCKDError(f"`n_permutations` must be a positive integer, got {n_permutations!r}")
    if bootstrap is None:
        bootstrap = PairedBootstrap(n, n_bootstrap, seed, level=level, device=z_t.device)
    elif bootstrap.n != n:
        raise IJCKDError(f"`bootstrap` resamples {bootstrap.n} samples, the features have {n}")
    if bandwidth is not None and not (isinstance(bandwidth, (int, float)) and
                                      math.isfinite(bandwidth) and bandwidth > 0):
        raise IJCKDError(f"`bandwidth` must be a positive number, got {bandwidth!r}")
    test, _ = run_mmd_pass(z_t, z_s, bandwidth=bandwidth, n_permutations=n_permutations,
                                 seed=seed, bootstrap=bootstrap, max_n=max_n,
                                 block_rows=block_rows)
    return test
