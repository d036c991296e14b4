"""Intervals: Clopper–Pearson against binomial tails and coverage, the paired bootstrap
against explicit resampling."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.intervals import (
    Estimate,
    PairedBootstrap,
    bootstrap_weights,
    clopper_pearson,
    derived_seed,
    percentile_interval,
    proportion,
)


def test_estimate_is_frozen_and_missing_is_nan():
    est = Estimate(0.5, 0.4, 0.6, 10, "x", 0.95)
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.value = 1.0
    missing = Estimate.missing(7, 0.9, "no logits")
    assert math.isnan(missing.value) and math.isnan(missing.lo) and math.isnan(missing.hi)
    assert missing.n == 7 and "no logits" in missing.method


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (3, 17), (50, 100), (1, 1000)])
def test_clopper_pearson_matches_binomial_tails(k, n):
    # the CP limits are where the binomial tail probabilities equal alpha/2
    lo, hi = clopper_pearson(k, n, 0.95)
    if k > 0:
        assert binom.sf(k - 1, n, lo) == pytest.approx(0.025, abs=1e-9)  # P[X >= k | lo]
    else:
        assert lo == 0.0
    if k < n:
        assert binom.cdf(k, n, hi) == pytest.approx(0.025, abs=1e-9)  # P[X <= k | hi]
    else:
        assert hi == 1.0
    # closed forms at the edges
    if k == 0:
        assert hi == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-10)
    if k == n:
        assert lo == pytest.approx(0.025 ** (1 / n), rel=1e-10)


@pytest.mark.parametrize("n", [15, 60])
def test_clopper_pearson_exact_coverage_is_at_least_nominal(n):
    ks = np.arange(n + 1)
    lo, hi = clopper_pearson(ks, np.full(n + 1, n), 0.95)
    for p in np.linspace(0.005, 0.995, 67):
        covered = (lo <= p) & (p <= hi)
        coverage = binom.pmf(ks, n, p)[covered].sum()
        assert coverage >= 0.95 - 1e-12, (p, coverage)


def test_clopper_pearson_simulated_coverage():
    rng = np.random.default_rng(0)
    reps = 4000
    for p, n in [(0.02, 50), (0.3, 40), (0.5, 200), (0.9, 25)]:
        k = rng.binomial(n, p, size=reps)
        lo, hi = clopper_pearson(k, np.full(reps, n), 0.9)
        coverage = np.mean((lo <= p) & (p <= hi))
        # CP is conservative; 3 Monte Carlo standard errors of slack
        assert coverage >= 0.9 - 3 * math.sqrt(0.09 / reps), (p, n, coverage)


def test_proportion_counts_and_contains_value():
    est = proportion(torch.tensor([True, False, True, True]), level=0.9)
    assert est.value == 0.75 and est.n == 4 and est.method == "clopper-pearson"
    assert est.lo <= est.value <= est.hi
    assert (est.lo, est.hi) == pytest.approx(clopper_pearson(3, 4, 0.9))
    with pytest.raises(IJCKDError):
        proportion(torch.zeros(0))
    with pytest.raises(IJCKDError, match="level"):
        clopper_pearson(1, 2, 1.5)


def test_bootstrap_weights_are_seeded_multinomial_counts():
    w = bootstrap_weights(50, 300, seed=3)
    assert w.shape == (300, 50)
    assert torch.all(w.sum(dim=1) == 50)
    assert torch.all(w == w.round()) and torch.all(w >= 0)
    assert torch.equal(w, bootstrap_weights(50, 300, seed=3))
    assert not torch.equal(w, bootstrap_weights(50, 300, seed=4))
    # chunking does not change the draws' distribution: multinomial moments
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w.var()) == pytest.approx(1 - 1 / 50, rel=0.05)
    # chunk size is an implementation detail of memory, not of the result's law: rows
    # from different chunks are independent (correlation of counts near 0)
    corr = np.corrcoef(w[:, 0].numpy(), w[:, 1].numpy())[0, 1]
    assert abs(corr) < 0.2


def test_paired_bootstrap_means_equal_explicit_resamples():
    torch.manual_seed(0)
    x = torch.randn(40, 3, dtype=torch.float64)
    boot = PairedBootstrap(40, 25, seed=1)
    means = boot.means(x)
    for b in range(25):
        index = torch.repeat_interleave(torch.arange(40), boot.weights[b].long())
        assert torch.allclose(means[b], x[index].mean(dim=0), atol=1e-12)
    with pytest.raises(IJCKDError, match="rows"):
        boot.means(torch.zeros(39))


def test_percentile_interval_matches_numpy_and_contains_value():
    rng = np.random.default_rng(1)
    reps = rng.normal(size=2001)
    lo, hi = percentile_interval(torch.tensor(reps), 0.0, 0.9)
    assert lo == pytest.approx(np.percentile(reps, 5))
    assert hi == pytest.approx(np.percentile(reps, 95))
    # a shifted bootstrap distribution is widened to contain the estimate
    lo, hi = percentile_interval(torch.tensor(reps + 10), 0.0, 0.9)
    assert lo == 0.0 and hi == pytest.approx(np.percentile(reps + 10, 95))
    # NaN replicates are ignored, a NaN estimate gives a NaN interval
    with_nan = torch.tensor(np.concatenate([reps, [np.nan] * 50]))
    assert percentile_interval(with_nan, 0.0, 0.9)[0] == pytest.approx(np.percentile(reps, 5))
    assert all(math.isnan(v) for v in percentile_interval(with_nan, math.nan, 0.9))


def test_paired_bootstrap_interval_covers_the_mean():
    # many independent data sets share one weight matrix: one matmul gives all replicates
    rng = np.random.default_rng(2)
    n, datasets = 200, 400
    data = torch.tensor(rng.exponential(size=(n, datasets)))  # true mean 1
    boot = PairedBootstrap(n, 1000, seed=5, level=0.95)
    replicates = boot.means(data)
    lo, hi = percentile_interval(replicates, data.mean(dim=0), 0.95)
    coverage = float(((lo <= 1.0) & (1.0 <= hi)).double().mean())
    assert 0.9 <= coverage <= 0.99


def test_same_seed_same_interval():
    x = torch.randn(100, dtype=torch.float64)
    a = PairedBootstrap(100, 200, seed=9).mean_estimate(x)
    b = PairedBootstrap(100, 200, seed=9).mean_estimate(x)
    c = PairedBootstrap(100, 200, seed=10).mean_estimate(x)
    assert a == b
    assert (a.lo, a.hi) != (c.lo, c.hi)
    assert a.lo <= a.value <= a.hi


def test_derived_seeds_differ_by_purpose():
    assert derived_seed(0, "a") != derived_seed(0, "b")
    assert derived_seed(0, "a") != derived_seed(1, "a")
    assert derived_seed(3, "x") == derived_seed(3, "x")
