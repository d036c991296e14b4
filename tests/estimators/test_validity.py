"""The coverage promise of docs/theory.md, held in CI on the simulated model of
``experiments/validity.py`` (its functions are imported, not copied).

Binomial margins. A test that counts covering intervals out of R replicates asserts at
least ``binom.ppf(0.01, R, 0.93)`` of them: an implementation that keeps the promise
(coverage >= 0.93) fails it with probability below 1% (``binom.cdf(k − 1, R, 0.93)``:
0.0084 for R = 60). The permutation test's level is held the other way round: at most
``binom.ppf(0.99, R, 0.05)`` rejections of R true null hypotheses (a valid test fails with
probability below 1%: 0.0093 for R = 300). The replicates are seeded, so a run repeats
exactly; the margins say how unlikely a failure of a correct implementation is over
seeds.
"""

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from ijckd_bounds.estimators import debiased_cka, median_bandwidth, mmd2

_PATH = Path(__file__).resolve().parents[2] / "experiments" / "validity.py"
_SPEC = importlib.util.spec_from_file_location("validity_experiment", _PATH)
validity = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(validity)

PROMISE = 0.93
FAIL_PROBABILITY = 0.01
N_BOOTSTRAP = 200


def min_covered(reps, coverage=PROMISE):
    """Fewest covering intervals out of ``reps`` that a ``coverage`` implementation
    reaches with probability at least 99%."""
    k = int(binom.ppf(FAIL_PROBABILITY, reps, coverage))
    assert binom.cdf(k - 1, reps, coverage) < FAIL_PROBABILITY
    return k


def max_rejections(reps, alpha=validity.ALPHA):
    """Most rejections out of ``reps`` true nulls that a level-``alpha`` test stays within
    with probability at least 99%."""
    k = int(binom.ppf(1 - FAIL_PROBABILITY, reps, alpha))
    assert binom.sf(k, reps, alpha) < FAIL_PROBABILITY
    return k


@lru_cache(maxsize=None)
def reports(scenario, n, d, reps):
    """``run_replicate`` records of ``reps`` seeded reports: dict term -> list of dicts."""
    by_term, extras = {}, []
    for rep in range(reps):
        rows, extra = validity.run_replicate(scenario, n, d, rep, n_bootstrap=N_BOOTSTRAP,
                                             this_fit=False)
        for row in rows:
            by_term.setdefault(row["term"], []).append(row)
        extras.append(extra)
    return by_term, extras


@lru_cache(maxsize=None)
def population(scenario, d):
    return validity.population_values(validity.Model(d, validity.SHIFTS[scenario]),
                                      samples=400_000)


def covered(rows, target):
    return sum(1 for r in rows if r["lo"] <= target <= r["hi"])


# ----------------------------------------------------------------------------------------
# the harness's population values against large samples of the full-width model


@pytest.mark.slow
def test_population_values_match_a_large_sample():
    model = validity.Model(5, validity.SHIFTS["shifted"])
    truth = validity.population_values(model, samples=400_000)
    n = 40_000
    data = model.sample(n, np.random.default_rng(3))
    weight, bias = model.classifier()
    z_t, z_s, y = data["z_t"].double(), data["z_s"].double(), data["y"]
    pred_t = (z_t @ weight.T + bias).argmax(1)
    pred_s = (z_s @ weight.T + bias).argmax(1)

    def close(value, target, spread):
        assert abs(value - target) <= 5 * spread / math.sqrt(n), (value, target)

    for name, hits in (("teacher_err", pred_t != y), ("student_err", pred_s != y),
                       ("disagreement", pred_s != pred_t),
                       ("student_own_err", data["student_logits"].argmax(1) != y)):
        close(float(hits.double().mean()), truth[name], 0.5)
    sq = ((z_s - z_t) ** 2).sum(1)
    close(float(sq.mean()), truth["feat_msd"], float(sq.std()))
    logit_sq = (((z_s - z_t) @ weight.T) ** 2).sum(1)
    close(float(logit_sq.mean()), truth["logit_msd"], float(logit_sq.std()))
    # debiased CKA is consistent for the population linear CKA
    assert abs(debiased_cka(z_t, z_s) - truth["feat_cka"]) < 0.01
    # the population median distance against the sample median, MMD² at that bandwidth
    sigma = median_bandwidth(data["z_t"], data["z_s"], max_points=2000, seed=1)
    assert abs(sigma - truth["mmd_bandwidth"]) < 0.03 * truth["mmd_bandwidth"]
    test = mmd2(data["z_t"][:3000].double(), data["z_s"][:3000].double(),
                bandwidth=truth["mmd_bandwidth"], n_permutations=1, n_bootstrap=1)
    assert abs(test.mmd2.value - truth["mmd2"]) < 0.1 * truth["mmd2"]
    # ε_T + ε_S of h_T is never below the minimum λ* the harness found
    assert truth["ideal_joint"] <= truth["ijc_lambda"]
    assert truth["ijc_gap"] > 0.05  # in this scenario a linear classifier beats h_T


@pytest.mark.slow
def test_aligned_scenario_has_teacher_optimal_and_no_shift():
    truth = population("aligned", 5)
    assert truth["ijc_gap"] == 0 and truth["pair_disc"] == 0 and truth["mmd2"] == 0
    assert truth["ideal_joint"] == truth["ijc_lambda"]


# ----------------------------------------------------------------------------------------
# the key cases of the coverage promise


@pytest.mark.slow
@pytest.mark.parametrize(("n", "d"), [(50, 100), (100, 200)])
def test_feat_cka_covers_where_n_is_below_2d(n, d):
    """Debiased CKA at n ≲ 2d: the interval must leave the pairs of copies out."""
    reps = 60
    truth = validity.population_cka(validity.Model(d, 0.0))
    rows = [validity.run_cka_replicate("aligned", n, d, rep, n_bootstrap=N_BOOTSTRAP)
            for rep in range(reps)]
    assert covered(rows, truth) >= min_covered(reps), \
        f"{covered(rows, truth)} of {reps} CKA intervals cover {truth:.4f}"


@pytest.mark.slow
def test_ideal_joint_covers_where_the_probe_beats_the_teacher():
    reps = 40
    by_term, extras = reports("shifted", 200, 5, reps)
    truth = population("shifted", 5)
    assert truth["ijc_gap"] > 0.05
    # the probe is ĥ* in most reports: the case is the one where it genuinely wins
    assert sum(e["joint_chosen"] == "probe" for e in extras) >= 0.8 * reps
    hits = covered(by_term["ideal_joint"], truth["ideal_joint"])
    assert hits >= min_covered(reps), \
        f"{hits} of {reps} ideal_joint intervals cover λ* = {truth['ideal_joint']:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize(("n", "d"), [(50, 5), (50, 100)])
def test_ijc_gap_is_never_negative_where_the_teacher_is_optimal(n, d):
    reps = 40
    by_term, _ = reports("aligned", n, d, reps)
    gaps = by_term["ijc_gap"]
    assert min(r["value"] for r in gaps) >= 0
    assert min(r["lo"] for r in gaps) >= 0
    # the population gap is 0: the interval must reach it
    assert covered(gaps, 0.0) >= min_covered(reps)


@pytest.mark.slow
def test_mmd_permutation_test_keeps_its_level():
    reps = 300
    rejections = sum(validity.run_mmd_replicate(50, 5, 0.0, rep)["reject"]
                     for rep in range(reps))
    assert rejections <= max_rejections(reps), f"{rejections} of {reps} true nulls rejected"


def test_margins_are_what_the_docstring_says():
    assert min_covered(60) == 51
    assert round(binom.cdf(min_covered(60) - 1, 60, PROMISE), 4) == 0.0084
    assert max_rejections(300) == 24
    assert round(binom.sf(max_rejections(300), 300, 0.05), 4) == 0.0093


@pytest.mark.slow
def test_quick_run_writes_every_table(tmp_path):
    """The one command, in its --quick form, on a tiny grid."""
    saved = (validity.QUICK_CELLS, validity.QUICK_MMD, validity.QUICK_TRUTH_SAMPLES)
    validity.QUICK_CELLS, validity.QUICK_MMD = {(40, 5): 2}, {(40, 5): 2}
    validity.QUICK_TRUTH_SAMPLES = 20_000
    try:
        assert validity.main(["--quick", "--out", str(tmp_path / "out"),
                              "--work", str(tmp_path / "work"), "--n-bootstrap", "20"]) == 0
        first = (tmp_path / "out" / "table.md").read_text()
        # a second run finds every block done and writes the same table
        assert validity.main(["--quick", "--out", str(tmp_path / "out"),
                              "--work", str(tmp_path / "work"), "--n-bootstrap", "20"]) == 0
    finally:
        validity.QUICK_CELLS, validity.QUICK_MMD, validity.QUICK_TRUTH_SAMPLES = saved
    assert (tmp_path / "out" / "table.md").read_text() == first
    import pandas as pd

    coverage = pd.read_csv(tmp_path / "out" / "coverage.csv")
    assert set(coverage["term"]) >= {"feat_cka", "ideal_joint", "mmd2", "teacher_err"}
