"""Classifier, feature and margin terms; the exact bounds never fall below student_err."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ijckd_bounds.estimators import terms
from ijckd_bounds.estimators.intervals import PairedBootstrap


def _boot(n, b=50, seed=0):
    return PairedBootstrap(n, b, seed)


def _gaussian_case(n=300, d=5, k=4, noise=0.5, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    z_t = means[y] + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z_s = z_t + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = 2 * means
    bias = -(means * means).sum(dim=1)
    return z_t, z_s, y, weight, bias


# ----------------------------------------------------------------------------------------
# predictions and proportions


def test_predict_breaks_ties_by_first_index():
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    assert terms.predict(logits).tolist() == [0, 1, 0]


def test_proportions_match_numpy():
    z_t, z_s, y, weight, bias = _gaussian_case()
    lt = terms.classifier_logits(z_t, weight, bias)
    ls = terms.classifier_logits(z_s, weight, bias)
    pt = (z_t.numpy() @ weight.numpy().T + bias.numpy()).argmax(1)
    ps = (z_s.numpy() @ weight.numpy().T + bias.numpy()).argmax(1)
    yn = y.numpy()
    assert terms.teacher_err(lt, y).value == pytest.approx(np.mean(pt != yn))
    assert terms.student_err(ls, y).value == pytest.approx(np.mean(ps != yn))
    assert terms.disagreement(ls, lt).value == pytest.approx(np.mean(ps != pt))
    assert 0 < terms.student_err(ls, y).value < 1  # the case is not degenerate


def test_per_class_terms_match_groupby():
    z_t, z_s, y, weight, bias = _gaussian_case(n=400, k=5)
    lt = terms.classifier_logits(z_t, weight, bias)
    ls = terms.classifier_logits(z_s, weight, bias)
    rows = terms.per_class_terms(lt, ls, y, 5)
    df = pd.DataFrame({"y": y.numpy(), "t": (terms.predict(lt) != y).numpy(),
                       "s": (terms.predict(ls) != y).numpy(),
                       "d": (terms.predict(ls) != terms.predict(lt)).numpy()})
    expected = df.groupby("y").mean()
    assert [r["class"] for r in rows] == sorted(df["y"].unique())
    for r in rows:
        c = r["class"]
        assert r["n"] == int((df["y"] == c).sum())
        assert r["teacher_err"].value == pytest.approx(expected.loc[c, "t"])
        assert r["student_err"].value == pytest.approx(expected.loc[c, "s"])
        assert r["disagreement"].value == pytest.approx(expected.loc[c, "d"])
        for name in ("teacher_err", "student_err", "disagreement"):
            assert r[name].lo <= r[name].value <= r[name].hi


# ----------------------------------------------------------------------------------------
# feature and logit discrepancies


def test_feature_and_logit_discrepancies_match_numpy():
    z_t, z_s, y, weight, bias = _gaussian_case()
    t, s = z_t.numpy(), z_s.numpy()
    boot = _boot(len(t), 200)
    msd = terms.feat_msd(z_t, z_s, bootstrap=boot)
    assert msd.value == pytest.approx(np.mean(((s - t) ** 2).sum(1)), rel=1e-12)
    rel = terms.feat_rel(z_t, z_s, bootstrap=boot)
    total_var = ((t - t.mean(0)) ** 2).sum(1).sum() / (len(t) - 1)  # unbiased variance
    assert rel.value == pytest.approx(math.sqrt(msd.value / total_var), rel=1e-12)
    lt = terms.classifier_logits(z_t, weight, bias)
    ls = terms.classifier_logits(z_s, weight, bias)
    lmsd = terms.logit_msd(lt, ls, bootstrap=boot)
    w = weight.numpy()
    assert lmsd.value == pytest.approx(np.mean(((s @ w.T - t @ w.T) ** 2).sum(1)), rel=1e-10)
    for est in (msd, rel, lmsd):
        assert est.lo <= est.value <= est.hi and est.lo < est.hi


class _CapturingBootstrap(PairedBootstrap):
    """Keeps the replicates handed to ``estimate``."""

    def estimate(self, value, replicates, **kwargs):
        self.captured = torch.as_tensor(replicates).clone()
        return super().estimate(value, replicates, **kwargs)


def test_feat_rel_replicates_equal_explicit_resamples():
    # each replicate is the estimator on its resample, with the resample's variance
    # scaled by n/(n−1) once more: a resample's unbiased variance centres on the sample's
    # plug-in variance, the replicates must centre on the value's unbiased one
    z_t, z_s, *_ = _gaussian_case(n=60)
    boot = _CapturingBootstrap(60, 8, seed=0)
    terms.feat_rel(z_t, z_s, bootstrap=boot)
    for b in range(8):
        idx = torch.repeat_interleave(torch.arange(60), boot.weights[b].long())
        t, s = z_t[idx], z_s[idx]
        explicit = math.sqrt(float(((s - t) ** 2).sum(1).mean())
                             / (float(((t - t.mean(0)) ** 2).sum(1).sum()) / 59 * 60 / 59))
        assert float(boot.captured[b]) == pytest.approx(explicit, rel=1e-10)


def test_feat_rel_replicates_centre_on_the_value_where_the_ratio_is_precise():
    # d ≫ n: the ratio's sampling spread is small, so a replicate centre off by the
    # plug-in bias sqrt(n/(n−1)) would put the value outside the middle of the interval
    generator = torch.Generator().manual_seed(5)
    n, d = 40, 400
    z_t = torch.randn(n, d, generator=generator, dtype=torch.float64)
    z_s = z_t + 0.6 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    boot = _CapturingBootstrap(n, 2000, seed=1)
    estimate = terms.feat_rel(z_t, z_s, bootstrap=boot)
    centre = float(boot.captured.median())
    spread = float(boot.captured.std())
    plugin_bias = estimate.value * (math.sqrt(n / (n - 1)) - 1)
    assert plugin_bias > 0.5 * spread  # the case is one where the bias would matter
    assert abs(centre - estimate.value) < 0.25 * spread


# ----------------------------------------------------------------------------------------
# margins


def test_geometric_margin_is_the_flip_distance():
    g = torch.Generator().manual_seed(1)
    d, k = 4, 5
    weight = torch.randn(k, d, generator=g, dtype=torch.float64)
    bias = torch.randn(k, generator=g, dtype=torch.float64)
    z = 2 * torch.randn(30, d, generator=g, dtype=torch.float64)
    gamma = terms.geometric_margin(z, weight, bias)
    pred = terms.predict(terms.classifier_logits(z, weight, bias))
    directions = torch.randn(3000, d, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    for i in range(z.shape[0]):
        # no perturbation shorter than γ changes the prediction ...
        moved = z[i] + 0.999 * gamma[i] * directions
        assert torch.all(terms.predict(terms.classifier_logits(moved, weight, bias)) == pred[i])
        # ... and one just longer than γ does (towards the nearest competitor's boundary)
        logits = terms.classifier_logits(z[i:i + 1], weight, bias)[0]
        gaps = (logits[pred[i]] - logits) / (weight[pred[i]] - weight).norm(dim=1)
        gaps[pred[i]] = math.inf
        j = int(torch.argmin(gaps))
        u = -(weight[pred[i]] - weight[j]) / (weight[pred[i]] - weight[j]).norm()
        flipped = (z[i] + 1.001 * gamma[i] * u)[None]
        assert int(terms.predict(terms.classifier_logits(flipped, weight, bias))[0]) != pred[i]


def test_geometric_margin_with_identical_weight_rows():
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[2.0, 5.0], [-3.0, 1.0]], dtype=torch.float64)
    # equal biases: classes 0 and 1 always tie, 0 wins the tie; only class 2 can overtake
    gamma = terms.geometric_margin(z, weight, torch.zeros(3, dtype=torch.float64))
    assert gamma.tolist() == pytest.approx([2.0, 3.0])
    # a class identical to the winner but with a lower bias can never overtake
    only_twins = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    gamma = terms.geometric_margin(z, only_twins, torch.tensor([0.0, -1.0], dtype=torch.float64))
    assert torch.all(torch.isinf(gamma))


def test_logit_margin_is_top1_minus_top2():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 0.0, -1.0]])
    assert terms.logit_margin(logits).tolist() == pytest.approx([0.5, 0.0])


def _two_class_line(x, moves, labels):
    """Classes 0/1 split by the line x = 0: γ(z) = |x|. ``moves`` are (dx, dy) per sample."""
    weight = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    bias = torch.zeros(2, dtype=torch.float64)
    z_t = torch.stack([torch.as_tensor(x, dtype=torch.float64),
                       torch.zeros(len(x), dtype=torch.float64)], dim=1)
    z_s = z_t + torch.as_tensor(moves, dtype=torch.float64)
    return z_t, z_s, torch.as_tensor(labels), weight, bias


def test_margin_bound_tight_case():
    # disagreements cross the boundary by just over γ; nobody else moves more than γ/2
    x = [1.0, -2.0, 0.5, 3.0, -1.0, 2.0]
    moves = [(-1.0 - 1e-6, 0.0), (2.0 + 1e-6, 0.0), (0.2, 0.0), (0.0, 1.4), (-0.4, 0.0),
             (-0.9, 0.1)]
    labels = [0, 1, 1, 0, 1, 0]
    z_t, z_s, y, weight, bias = _two_class_line(x, moves, labels)
    pairs = terms.paired_predictions(z_t, z_s, weight, bias)
    assert pairs.disagree.tolist() == [True, True, False, False, False, False]
    assert pairs.gamma.tolist() == pytest.approx([abs(v) for v in x])
    assert terms.delta_gamma(pairs).value == terms.disagreement(pairs.logits_s,
                                                                pairs.logits_t).value
    boot = _boot(6)
    coupled = terms.coupled_bound(pairs, y, bootstrap=boot)
    margin = terms.margin_bound(pairs, y, bootstrap=boot)
    assert margin.value == coupled.value == pytest.approx((1 + 2) / 6)
    assert terms.student_err(pairs.logits_s, y).value <= margin.value


def test_margin_bound_loose_case_and_boundary_ties():
    # samples 0-2 move parallel to the boundary (far, but no disagreement); sample 3 lands
    # exactly on the boundary (a logit tie, argmax picks class 0: a disagreement) and
    # sample 4 lands exactly on it from class 0's side (no disagreement, but Δ = γ)
    x = [1.0, -1.0, 2.0, -1.5, 0.5, 4.0]
    moves = [(0.0, 3.0), (0.0, -5.0), (0.0, 2.5), (1.5, 0.0), (-0.5, 0.0), (0.1, 0.0)]
    labels = [0, 1, 0, 1, 0, 0]
    z_t, z_s, y, weight, bias = _two_class_line(x, moves, labels)
    pairs = terms.paired_predictions(z_t, z_s, weight, bias)
    assert pairs.disagree.tolist() == [False, False, False, True, False, False]
    assert pairs.crossing.tolist() == [True, True, True, True, True, False]
    assert terms.delta_gamma(pairs).value == pytest.approx(5 / 6)
    assert terms.disagreement(pairs.logits_s, pairs.logits_t).value == pytest.approx(1 / 6)
    boot = _boot(6)
    assert terms.margin_bound(pairs, y, bootstrap=boot).value == pytest.approx(5 / 6)
    assert terms.coupled_bound(pairs, y, bootstrap=boot).value == pytest.approx(1 / 6)


def _markov_reference(teacher_wrong, margin, sq, taus):
    at_infinity = np.mean(teacher_wrong) + np.mean(np.isfinite(margin))
    return min([at_infinity] + [np.mean(teacher_wrong) + np.mean(margin < tau)
                                + np.mean(sq) / tau ** 2 for tau in taus])


def test_markov_bounds_are_exact_minima_over_tau():
    z_t, z_s, y, weight, bias = _gaussian_case(n=250, noise=0.15, seed=3, spread=3.0)
    pairs = terms.paired_predictions(z_t, z_s, weight, bias)
    tw = (pairs.pred_t != y).numpy()
    boot = _boot(250)
    feat = terms.feat_markov_bound(pairs, y, bootstrap=boot)
    logit = terms.logit_markov_bound(pairs, y, bootstrap=boot)
    for result, margin, sq in (
            (feat, pairs.gamma_eff.numpy(), pairs.distance_sq.numpy()),
            (logit, pairs.logit_margin_eff.numpy() / 2, pairs.logit_gap_sq.numpy())):
        positive = np.unique(margin[(margin > 0) & np.isfinite(margin)])
        dense = np.concatenate([positive, np.geomspace(1e-3, 1e3, 2000),
                                (positive[1:] + positive[:-1]) / 2])
        best_on_candidates = _markov_reference(tw, margin, sq, positive)
        assert result.bound.value == pytest.approx(best_on_candidates, rel=1e-12)
        assert result.bound.value <= _markov_reference(tw, margin, sq, dense) + 1e-12
        assert np.mean(tw) + np.mean(margin < result.tau) + np.mean(sq) / result.tau ** 2 \
            == pytest.approx(result.bound.value, rel=1e-12)
        assert result.bound.lo <= result.bound.value <= result.bound.hi
    # Markov relaxes the margin bound: it can only be looser
    margin_value = terms.margin_bound(pairs, y, bootstrap=boot).value
    assert feat.bound.value >= margin_value
    assert 0 < feat.bound.value < 1 and 0 < logit.bound.value < 1  # informative case


def test_markov_bound_without_discrepancy_is_the_zero_margin_rate():
    z_t, _, y, weight, bias = _gaussian_case(n=100)
    pairs = terms.paired_predictions(z_t, z_t.clone(), weight, bias)
    result = terms.feat_markov_bound(pairs, y, bootstrap=_boot(100))
    teacher = terms.teacher_err(pairs.logits_t, y).value
    assert result.bound.value == pytest.approx(teacher + float((pairs.gamma == 0).double().mean()))


# ----------------------------------------------------------------------------------------
# the exact bounds never fall below student_err, ties included


def _adversarial_case(rng):
    """Small random cases built to produce ties: duplicate weight rows, integer-valued
    features and weights, students a hair away from the teacher or exactly on it."""
    n = int(rng.integers(5, 60))
    d = int(rng.integers(1, 5))
    k = int(rng.integers(2, 6))
    integer = rng.random() < 0.5
    if integer:
        weight = rng.integers(-2, 3, size=(k, d)).astype(float)
        bias = rng.integers(-1, 2, size=k).astype(float)
        z_t = rng.integers(-3, 4, size=(n, d)).astype(float)
    else:
        weight = rng.normal(size=(k, d))
        bias = rng.normal(size=k)
        z_t = rng.normal(scale=10.0, size=(n, d))
    if rng.random() < 0.6:  # duplicate weight rows (and sometimes biases)
        src, dst = rng.choice(k, size=2, replace=False)
        weight[dst] = weight[src]
        if rng.random() < 0.5:
            bias[dst] = bias[src]
        if rng.random() < 0.5:  # ... or duplicates up to rounding: γ's quotient is noise
            weight[dst] *= 1 + rng.normal(scale=1e-15, size=d)
            bias[dst] += rng.normal(scale=1e-15)
    kind = rng.integers(0, 4)
    if kind == 0:
        z_s = z_t + rng.normal(scale=1e-13, size=z_t.shape)
    elif kind == 1:
        z_s = z_t + rng.integers(-1, 2, size=z_t.shape)
    elif kind == 2:
        z_s = z_t.copy()
    else:
        z_s = z_t + rng.normal(scale=rng.choice([1e-15, 1e-9, 0.1, 1.0]), size=z_t.shape)
    if rng.random() < 0.3:  # the student's features in the teacher's float32 grid
        z_s = z_s.astype(np.float32).astype(float)
    if rng.random() < 0.5:
        y = rng.integers(0, k, size=n)
    else:  # labels = the teacher's predictions: every disagreement is a student error
        y = np.argmax(z_t @ weight.T + bias, axis=1)
    return tuple(torch.tensor(a) for a in (z_t, z_s, y, weight, bias))


def _check_bounds_hold(z_t, z_s, y, weight, bias):
    pairs = terms.paired_predictions(z_t, z_s, weight, bias)
    boot = _boot(pairs.n, 5)
    student = terms.student_err(pairs.logits_s, y).value
    assert torch.all(pairs.crossing[pairs.disagree])
    assert torch.all(pairs.gamma_eff[pairs.disagree] <= pairs.distance[pairs.disagree])
    assert torch.all(pairs.logit_margin_eff[pairs.disagree]
                     <= 2 * pairs.logit_gap_inf[pairs.disagree])
    for bound in (terms.coupled_bound(pairs, y, bootstrap=boot),
                  terms.margin_bound(pairs, y, bootstrap=boot),
                  terms.feat_markov_bound(pairs, y, bootstrap=boot).bound,
                  terms.logit_markov_bound(pairs, y, bootstrap=boot).bound):
        assert bound.value >= student, (bound, student)
        assert bound.lo <= bound.value <= bound.hi


def test_exact_bounds_hold_on_adversarial_ties():
    rng = np.random.default_rng(12345)
    for _ in range(150):
        _check_bounds_hold(*_adversarial_case(rng))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_exact_bounds_hold_property(seed):
    _check_bounds_hold(*_adversarial_case(np.random.default_rng(seed)))


def test_bounds_hold_when_rounding_breaks_the_margin_inequality():
    # float32 features with float64 classifier: the student sits within rounding of the
    # boundary on the other side. Whatever the rounding, the bounds hold.
    weight = torch.tensor([[1.0, 1e-8], [1.0 - 1e-16, 0.0]], dtype=torch.float64)
    bias = torch.tensor([0.0, 1e-17], dtype=torch.float64)
    z_t = torch.tensor([[1.0, 1e-9], [3.0, 0.0]], dtype=torch.float32)
    z_s = z_t + torch.tensor([[0.0, -2e-9], [0.0, 1e-7]], dtype=torch.float32)
    _check_bounds_hold(z_t, z_s, torch.tensor([0, 0]), weight, bias)


def test_markov_bound_survives_rounding_in_the_sum():
    # three students land exactly on the boundary (logit tie, class 0 wins: all three
    # disagree and are wrong) at distance τ; for this τ, fl(τ² + τ² + τ²) / τ² < 3, so a
    # Markov term without its rounding slack would put the bound below student_err = 1
    tau = 0.9046800706458055
    z_t, z_s, y, weight, bias = _two_class_line([-tau] * 3, [(tau, 0.0)] * 3, [1, 1, 1])
    pairs = terms.paired_predictions(z_t, z_s, weight, bias)
    assert pairs.disagree.all()
    student = terms.student_err(pairs.logits_s, y).value
    assert student == 1.0
    result = terms.feat_markov_bound(pairs, y, bootstrap=_boot(3))
    assert result.bound.value >= student
