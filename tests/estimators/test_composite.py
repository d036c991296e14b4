"""The composite terms and the choice of ĥ* on the evaluation split (estimators/composite.py),
against a per-replicate numpy loop."""

import numpy as np
import pytest
import torch

from ijckd_bounds.estimators import composite
from ijckd_bounds.estimators.intervals import PairedBootstrap, percentile_interval


def _indicators(n, rates, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g) < r for r in rates]


def _choice(columns, n, n_bootstrap=300, seed=0):
    bootstrap = PairedBootstrap(n, n_bootstrap, seed)
    return composite.choose_joint(*columns, bootstrap=bootstrap), bootstrap


def _reference(columns, weights):
    """Per replicate (numpy loop): the chosen candidate by integer counts, h_T on a tie,
    and every composite term of it."""
    tt, ts, pt, ps, dt, ds = (c.numpy().astype(np.int64) for c in columns)
    n = tt.size
    out = {k: [] for k in ("ideal_joint", "ijc_lambda", "ijc_gap", "pair_disc",
                           "bound_ideal_joint", "probe")}
    for w in list(weights.numpy().astype(np.int64)) + [np.ones(n, dtype=np.int64)]:
        teacher, probe = w @ (tt + ts), w @ (pt + ps)
        chose_probe = probe < teacher
        ideal = min(teacher, probe)
        pair = abs(w @ ds - w @ dt) if chose_probe else 0
        out["ideal_joint"].append(ideal / n)
        out["ijc_lambda"].append(teacher / n)
        out["ijc_gap"].append((teacher - ideal) / n)
        out["pair_disc"].append(pair / n)
        out["bound_ideal_joint"].append((w @ tt + ideal + pair) / n)
        out["probe"].append(chose_probe)
    return {k: np.asarray(v) for k, v in out.items()}  # last entry: the full sample


@pytest.mark.parametrize("seed", range(4))
def test_every_composite_term_equals_the_per_replicate_reference(seed):
    n = 150
    tt, ts, pt, ps = _indicators(n, (0.1, 0.3, 0.12, 0.25), seed)
    columns = [tt, ts, pt, ps, tt ^ pt, ts ^ ps]
    choice, bootstrap = _choice(columns, n, seed=seed)
    ref = _reference(columns, bootstrap.weights)
    assert choice.chosen == ("probe" if ref["probe"][-1] else "teacher")
    assert choice.probe_share == pytest.approx(ref["probe"][:-1].mean())
    assert 0 < choice.probe_share < 1  # close candidates: the choice varies
    for name in ("ideal_joint", "ijc_lambda", "ijc_gap", "pair_disc", "bound_ideal_joint"):
        estimate = getattr(composite, name)(choice, bootstrap=bootstrap)
        lo, hi = percentile_interval(torch.as_tensor(ref[name][:-1]), ref[name][-1], 0.95)
        assert estimate.value == pytest.approx(ref[name][-1], abs=1e-12), name
        assert (estimate.lo, estimate.hi) == pytest.approx((lo, hi), abs=1e-12), name
    joint_t, joint_s = composite.joint_errors(choice)
    wrong_t, wrong_s = (pt, ps) if choice.chosen == "probe" else (tt, ts)
    assert joint_t.value == pytest.approx(float(wrong_t.double().mean()))
    assert joint_s.value == pytest.approx(float(wrong_s.double().mean()))
    assert joint_t.method == "clopper-pearson"


@pytest.mark.parametrize("n", [23, 49, 101, 120])
@pytest.mark.parametrize("probe_t", range(11))
def test_equal_integer_counts_go_to_the_teacher(n, probe_t):
    # h_T errs on 3 + 7 rows, the probe on probe_t + (10 - probe_t) of the same 10 rows:
    # at these n, a sum of two rounded means (probe_t/n + (10 - probe_t)/n) falls below
    # 3/n + 7/n for some splits, which made the probe "smaller" on a tie
    tt = torch.zeros(n, dtype=torch.bool)
    ts, pt, ps = tt.clone(), tt.clone(), tt.clone()
    tt[:3], ts[3:10] = True, True
    pt[:probe_t], ps[probe_t:10] = True, True
    choice, bootstrap = _choice([tt, ts, pt, ps, tt ^ pt, ts ^ ps], n, n_bootstrap=100)
    assert choice.chosen == "teacher"
    # each replicate weights the same 10 rows for both candidates: a tie in every one
    assert choice.probe_share == 0.0
    gap = composite.ijc_gap(choice, bootstrap=bootstrap)
    assert gap.value == gap.lo == gap.hi == 0.0
    assert composite.pair_disc(choice, bootstrap=bootstrap).value == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_ijc_gap_and_its_interval_are_never_below_zero(seed):
    g = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(10, 200, (1,), generator=g))
    rates = torch.rand(4, generator=g).tolist()
    tt, ts, pt, ps = _indicators(n, rates, seed)
    choice, bootstrap = _choice([tt, ts, pt, ps, tt ^ pt, ts ^ ps], n, n_bootstrap=100,
                                seed=seed)
    gap = composite.ijc_gap(choice, bootstrap=bootstrap)
    assert gap.value >= 0 and gap.lo >= 0
    ideal = composite.ideal_joint(choice, bootstrap=bootstrap)
    lam = composite.ijc_lambda(choice, bootstrap=bootstrap)
    assert ideal.value <= lam.value and ideal.hi <= lam.hi + 1e-12
    bound = composite.bound_ideal_joint(choice, bootstrap=bootstrap)
    assert bound.value >= float(ts.double().mean()) - 1e-12  # exact bound 3


def test_a_close_probe_gives_intervals_of_nonzero_width_when_the_teacher_wins():
    # the probe makes one more joint error than h_T on the full sample, and differs from
    # h_T on different rows of the two domains
    n = 200
    tt = torch.zeros(n, dtype=torch.bool)
    ts, pt, ps = tt.clone(), tt.clone(), tt.clone()
    tt[:10], ts[10:40] = True, True
    pt[40:55], ps[55:81] = True, True  # 41 against 40
    choice, bootstrap = _choice([tt, ts, pt, ps, tt ^ pt, ts ^ ps], n, n_bootstrap=500)
    assert choice.chosen == "teacher"
    assert 0.2 < choice.probe_share < 0.8
    gap = composite.ijc_gap(choice, bootstrap=bootstrap)
    pair = composite.pair_disc(choice, bootstrap=bootstrap)
    assert gap.value == 0.0 and gap.lo == 0.0 and gap.hi > 0.0
    assert pair.value == 0.0 and pair.hi > 0.0
    ideal = composite.ideal_joint(choice, bootstrap=bootstrap)
    assert ideal.value == pytest.approx(40 / n)


def test_proxy_a_and_ben_david_from_domain_errors():
    n = 120
    tt, ts, pt, ps, err_t, err_s = _indicators(n, (0.1, 0.2, 0.3, 0.3, 0.2, 0.35), 5)
    choice, bootstrap = _choice([tt, ts, pt, ps, tt ^ pt, ts ^ ps], n, n_bootstrap=200)
    proxy = composite.proxy_a(err_t, err_s, bootstrap=bootstrap)
    err_dom = 0.5 * (float(err_t.double().mean()) + float(err_s.double().mean()))
    assert proxy.value == pytest.approx(min(max(2 * (1 - 2 * err_dom), 0), 2))
    assert proxy.lo <= proxy.value <= proxy.hi
    ben_david = composite.bound_ben_david(choice, err_t, err_s, bootstrap=bootstrap)
    ideal = composite.ideal_joint(choice, bootstrap=bootstrap)
    assert ben_david.value == pytest.approx(float(tt.double().mean()) + 0.5 * proxy.value
                                            + ideal.value)
    assert "not a guaranteed bound" in ben_david.method
