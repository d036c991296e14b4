"""Intervals: one result type and two generic ways to get its interval.

- ``Estimate(value, lo, hi, n, method, level)``: every term of docs/theory.md is one of these.
- Clopper–Pearson (exact binomial) intervals for plain proportions.
- A paired bootstrap over evaluation samples for everything else. The resampling draws
  multinomial *count weights* ``W`` (B, n) once from an explicit ``torch.Generator``;
  every composite term is then a function of weighted per-sample means ``W @ X / n``
  (X (n, m) holds per-sample quantities), so all replicates of all terms come from the
  same resamples (their intervals are consistent with each other) and no Python loop
  runs per replicate. Resampling an evaluation sample resamples its teacher and student
  features together: that is what "paired" means here.

Percentile intervals are widened, when needed, to contain the point estimate: the
bootstrap distribution of a degenerate U-statistic (MMD² between equal distributions) or
of a minimum over a grid (the Markov bounds) is shifted away from the estimate, and a
reported interval that excludes its own estimate would be useless in the results table.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.schema import LEVEL, N_BOOTSTRAP

__all__ = [
    "Estimate",
    "clopper_pearson",
    "proportion",
    "proportion_from_counts",
    "bootstrap_weights",
    "PairedBootstrap",
    "percentile_interval",
    "check_level",
    "derived_seed",
    "t_interval",
    "welch_interval",
]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval at confidence ``level``.

    value, lo, hi: floats (NaN when the term could not be measured); n: the number of
    evaluation samples behind it; method: how the interval was made; level: e.g. 0.95.
    """

    value: float
    lo: float
    hi: float
    n: int
    method: str
    level: float

    def as_dict(self) -> dict[str, Any]:
        """The estimate as plain values: value, lo, hi, n, method, level."""
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n,
                "method": self.method, "level": self.level}

    @classmethod
    def missing(cls, n: int, level: float, why: str) -> "Estimate":
        """A term that was not measured (NaN value and interval), ``why`` in the method."""
        return cls(math.nan, math.nan, math.nan, int(n), f"not measured: {why}", float(level))


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one ``purpose`` (a string) derived from the user's ``seed``.

    Each random draw (bootstrap weights, MMD sign vectors, subsamples, splits) gets its
    own generator, so that no two of them reuse one stream of random numbers.
    """
    import hashlib

    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def check_level(level: float) -> float:
    """``level`` as a float in (0, 1), or an IJCKDError."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise IJCKDError(f"`level` must be a confidence level strictly between 0 and 1, "
                         f"got {level!r}")
    return float(level)


def clopper_pearson(k: int | np.ndarray, n: int | np.ndarray, level: float = LEVEL
                    ) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper–Pearson) interval ``(lo, hi)`` for ``k`` successes in ``n`` trials.

    k, n: ints or numpy arrays of ints (0 <= k <= n, n >= 1); returns floats or arrays.
    """
    from scipy.stats import beta

    level = check_level(level)
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise IJCKDError(f"Clopper-Pearson needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    alpha = 1.0 - level
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def proportion_from_counts(k: int, n: int, level: float = LEVEL) -> Estimate:
    """``Estimate`` of the proportion ``k / n`` with its Clopper–Pearson interval."""
    k, n = int(k), int(n)
    lo, hi = clopper_pearson(k, n, level)
    value = k / n
    # ppf rounding can land a hair inside the estimate when k is 0 or n
    return Estimate(value, min(lo, value), max(hi, value), n, "clopper-pearson", float(level))


def proportion(indicator: torch.Tensor | np.ndarray, level: float = LEVEL) -> Estimate:
    """Proportion of true entries of ``indicator`` (n,) (bool or 0/1) with a CP interval."""
    indicator = torch.as_tensor(indicator)
    if indicator.dim() != 1 or indicator.numel() == 0:
        raise IJCKDError(f"`indicator` must be a non-empty 1-D array, got shape "
                         f"{tuple(indicator.shape)}")
    k = int(torch.count_nonzero(indicator))
    return proportion_from_counts(k, indicator.numel(), level)


def bootstrap_weights(n: int, n_bootstrap: int, seed: int, *,
                      device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32, chunk_rows: int = 64) -> torch.Tensor:
    """Multinomial count weights (n_bootstrap, n): row b counts how often each of the
    ``n`` samples is drawn in resample b (each row sums to ``n``).

    Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` so that the same seed
    gives the same weights on every device; ``chunk_rows`` rows at a time bound the memory
    of the drawn indices. Counts are small integers: exact in float32.
    """
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise IJCKDError(f"`n_bootstrap` must be a positive integer, got {n_bootstrap!r}")
    if n < 1:
        raise IJCKDError(f"the bootstrap needs at least one sample, got n={n}")
    generator = torch.Generator().manual_seed(derived_seed(seed, "bootstrap-weights"))
    weights = torch.zeros(n_bootstrap, n, dtype=dtype)
    for start in range(0, n_bootstrap, chunk_rows):
        rows = min(chunk_rows, n_bootstrap - start)
        draws = torch.randint(0, n, (rows, n), generator=generator)
        weights[start:start + rows].scatter_add_(1, draws, torch.ones(rows, n, dtype=dtype))
    return weights.to(device) if device is not None else weights


def percentile_interval(replicates: torch.Tensor | np.ndarray,
                        value: float | torch.Tensor | np.ndarray, level: float
                        ) -> tuple[float, float] | tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval of ``replicates`` (B,) or (B, m), widened to contain ``value``.

    NaN replicates (a term undefined on some resample) are ignored; with no finite
    replicate the interval is NaN. Returns ``(lo, hi)`` as floats or (m,) float64 tensors.
    """
    replicates = torch.as_tensor(replicates, dtype=torch.float64)
    single = replicates.dim() == 1
    if single:
        replicates = replicates[:, None]
    value = torch.as_tensor(value, dtype=torch.float64, device=replicates.device).reshape(-1)
    alpha = (1.0 - level) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=replicates.device)
    bounds = torch.nanquantile(replicates, q, dim=0)  # (2, m)
    lo = torch.where(torch.isnan(value), value, torch.fmin(bounds[0], value))
    hi = torch.where(torch.isnan(value), value, torch.fmax(bounds[1], value))
    if single:
        return float(lo[0]), float(hi[0])
    return lo.cpu(), hi.cpu()


class PairedBootstrap:
    """One set of paired-bootstrap resamples of ``n`` evaluation samples.

    ``weights`` (B, n) are multinomial counts (see ``bootstrap_weights``). Build it once
    per evaluation split and hand it to every composite term, so that every interval
    comes from the same resamples.
    """

    def __init__(self, n: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, *,
                 level: float = LEVEL, device: torch.device | str | None = None):
        self.n = int(n)
        self.n_bootstrap = n_bootstrap
        self.seed = int(seed)
        self.level = check_level(level)
        self.weights = bootstrap_weights(self.n, n_bootstrap, self.seed, device=device)
        self._weights64 = None

    @property
    def method(self) -> str:
        """The method text of an interval from these resamples (B and seed)."""
        return f"paired bootstrap percentile (B={self.n_bootstrap}, seed={self.seed})"

    def weights_like(self, x: torch.Tensor) -> torch.Tensor:
        """The count weights (B, n) on ``x``'s device, float64 (cached)."""
        if self._weights64 is None or self._weights64.device != x.device:
            self._weights64 = self.weights.to(device=x.device, dtype=torch.float64)
        return self._weights64

    def release_cache(self) -> None:
        """Drop the float64 copy of the weights (B·n·8 bytes) until ``means`` needs it."""
        self._weights64 = None

    def means(self, per_sample: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Weighted per-sample means (B, m) (or (B,) for a 1-D input) of ``per_sample``
        (n, m) or (n,): replicate b is ``Σ_i W[b, i] · X[i] / n``. Float64."""
        x = torch.as_tensor(per_sample)
        if x.shape[0] != self.n:
            raise IJCKDError(f"per-sample values must have {self.n} rows like the bootstrap, "
                             f"got {x.shape[0]}")
        x = x.to(torch.float64)
        return (self.weights_like(x) @ x) / self.n

    def estimate(self, value: float, replicates: torch.Tensor, *, method: str | None = None,
                 n: int | None = None) -> Estimate:
        """``Estimate`` of ``value`` with the percentile interval of ``replicates`` (B,).

        ``n``: the samples behind the estimate when not all ``self.n`` (a subsample)."""
        lo, hi = percentile_interval(replicates, float(value), self.level)
        return Estimate(float(value), lo, hi, self.n if n is None else int(n),
                        method or self.method, self.level)

    def mean_estimate(self, per_sample: torch.Tensor | np.ndarray) -> Estimate:
        """``Estimate`` of the plain mean of ``per_sample`` (n,) with its bootstrap interval."""
        x = torch.as_tensor(per_sample).to(torch.float64)
        return self.estimate(float(x.mean()), self.means(x))


# ------------------------------------------------------------- intervals over replicates
# Whole training runs (one per seed) are the replicates here, not evaluation samples: a
# handful of values, so Student's t instead of a bootstrap.


def t_interval(values: np.ndarray | list[float], level: float = LEVEL) -> Estimate:
    """``Estimate`` of the mean of ``values`` (m,) (one per seed) with the Student-t
    interval ``mean ± t_{(1+level)/2, m-1} · s / √m`` (s: the sample std, ddof 1).

    With fewer than two values there is no interval: lo and hi are NaN and ``method``
    says why."""
    from scipy.stats import t as student_t

    level = check_level(level)
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise IJCKDError(f"t_interval needs finite values, got {values.tolist()}")
    mean = float(values.mean())
    if values.size < 2:
        return Estimate(mean, math.nan, math.nan, int(values.size),
                        "no interval: an interval over seeds needs at least two", level)
    half = (float(student_t.ppf((1 + level) / 2, values.size - 1))
            * float(values.std(ddof=1)) / math.sqrt(values.size))
    return Estimate(mean, mean - half, mean + half, int(values.size), "student-t", level)


def welch_interval(a: np.ndarray | list[float], b: np.ndarray | list[float],
                   level: float = LEVEL) -> Estimate:
    """``Estimate`` of ``mean(a) − mean(b)`` with Welch's interval
    ``± t_{(1+level)/2, ν} · √(s_a²/m_a + s_b²/m_b)``, ν the Welch–Satterthwaite degrees
    of freedom. a (m_a,), b (m_b,): one value per seed; ``n`` = m_a + m_b. Needs at least
    two values on each side (NaN interval otherwise, ``method`` says why); when both
    sample variances are 0 the interval is the point."""
    from scipy.stats import t as student_t

    level = check_level(level)
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise IJCKDError("welch_interval needs at least one value on each side")
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Estimate(diff, math.nan, math.nan, int(a.size + b.size),
                        "no interval: a Welch interval needs at least two seeds on each side",
                        level)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, diff, diff, int(a.size + b.size), "welch", level)
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(student_t.ppf((1 + level) / 2, dof)) * se
    return Estimate(diff, diff - half, diff + half, int(a.size + b.size), "welch", level)
