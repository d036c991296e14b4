"""Fitted probes: the logistic probe against scikit-learn, the joint classifier, domain
classifiers and the proxy A-distance."""

import math

import numpy as np
import pytest
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.probes import (
    DomainClassifier,
    JointClassifier,
    LogisticProbe,
    domain_errors,
    fit_joint_classifier,
    holdout_split,
    proxy_a_distance,
)

TIGHT = {"tol": 1e-9, "max_iter": 1000}


def gaussian_classes(n, d, k, *, separation, seed, dtype=torch.float64):
    """n samples of k Gaussian classes in R^d; class means at distance ~ separation."""
    generator = torch.Generator().manual_seed(seed)
    means = separation * torch.randn(k, d, generator=generator, dtype=dtype)
    y = torch.arange(n) % k
    x = means[y] + torch.randn(n, d, generator=generator, dtype=dtype)
    # unequal feature scales and offsets exercise the internal standardisation
    x = x * torch.linspace(0.5, 3.0, d, dtype=dtype) + 2.0
    return x, y


# ----------------------------------------------------------------------------------------
# holdout_split


def test_holdout_split_partitions_each_class_with_rounded_holdout():
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 1 + [3] * 2)
    fit_idx, held_idx = holdout_split(y, 0.25, seed=3)
    assert torch.equal(torch.sort(torch.cat([fit_idx, held_idx])).values, torch.arange(20))
    held_per_class = torch.bincount(y[held_idx], minlength=4).tolist()
    # round(2.5) -> 3, round(1.75) -> 2, a lone sample stays in the fitting part,
    # round(0.5) -> 1 but a class of two keeps one member for fitting
    assert held_per_class == [3, 2, 0, 1]
    assert torch.equal(fit_idx, torch.sort(fit_idx).values)


def test_holdout_split_is_seeded():
    y = torch.arange(200) % 5
    first = holdout_split(y, 0.3, seed=7)
    again = holdout_split(y, 0.3, seed=7)
    other = holdout_split(y, 0.3, seed=8)
    assert torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_holdout_split_keeps_groups_together():
    pair_labels = torch.arange(40) % 4
    y = torch.cat([pair_labels, pair_labels])
    groups = torch.arange(40).repeat(2)
    fit_idx, held_idx = holdout_split(y, 0.25, seed=0, groups=groups)
    held_groups = set(groups[held_idx].tolist())
    assert held_groups.isdisjoint(groups[fit_idx].tolist())
    assert len(held_groups) == 12  # round(0.25 * 10) = 3 pairs of each of 4 classes
    with pytest.raises(IJCKDError, match="groups"):
        holdout_split(torch.tensor([0, 1]), 0.5, seed=0, groups=torch.tensor([0, 0]))


# ----------------------------------------------------------------------------------------
# LogisticProbe


def test_logistic_probe_matches_sklearn_for_fixed_l2():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = gaussian_classes(300, 5, 3, separation=1.0, seed=0)
    l2 = 1e-2
    probe = LogisticProbe(l2_grid=(l2,), **TIGHT).fit(x, y)

    scaler = StandardScaler().fit(x.numpy())
    reference = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-12, max_iter=10_000)
    reference.fit(scaler.transform(x.numpy()), y.numpy())
    ref_weight = reference.coef_ / scaler.scale_
    ref_bias = reference.intercept_ - ref_weight @ scaler.mean_

    np.testing.assert_allclose(probe.weight_.numpy(), ref_weight, rtol=1e-5, atol=1e-6)
    # the unpenalised bias is identified up to a common shift
    np.testing.assert_allclose(probe.bias_.numpy() - probe.bias_.numpy().mean(),
                               ref_bias - ref_bias.mean(), rtol=1e-5, atol=1e-6)
    probabilities = torch.softmax(probe.logits(x), dim=1).numpy()
    np.testing.assert_allclose(probabilities,
                               reference.predict_proba(scaler.transform(x.numpy())), atol=1e-6)
    assert np.array_equal(probe.predict(x).numpy(), reference.predict(scaler.transform(x.numpy())))
    assert probe.l2_ == l2 and probe.heldout_errors_ == {}


def test_logistic_probe_float32_stays_close_to_float64():
    x, y = gaussian_classes(400, 8, 4, separation=0.8, seed=1)
    exact = LogisticProbe(l2_grid=(1e-2,), **TIGHT).fit(x, y)
    single = LogisticProbe(l2_grid=(1e-2,), tol=1e-5).fit(x.float(), y)
    assert single.weight_.dtype == torch.float32 and exact.weight_.dtype == torch.float64
    assert torch.allclose(single.weight_.double(), exact.weight_, atol=2e-3)
    agreement = (single.predict(x.float()) == exact.predict(x)).double().mean()
    assert agreement >= 0.99


def test_logistic_probe_chooses_l2_by_heldout_error_then_refits_on_all():
    x, y = gaussian_classes(240, 20, 3, separation=0.35, seed=2)
    grid = (1e-4, 1e-2, 1.0)
    probe = LogisticProbe(l2_grid=grid, seed=5, holdout=0.25, **TIGHT).fit(x, y)

    # the held-out errors of warm-started sweeps equal those of independent cold fits
    fit_idx, held_idx = holdout_split(y, 0.25, seed=5)
    for l2 in grid:
        alone = LogisticProbe(l2_grid=(l2,), **TIGHT).fit(x[fit_idx], y[fit_idx])
        assert probe.heldout_errors_[l2] == pytest.approx(alone.error(x[held_idx], y[held_idx]))
    best = min(probe.heldout_errors_.values())
    assert probe.l2_ == max(l2 for l2, err in probe.heldout_errors_.items() if err == best)

    refit = LogisticProbe(l2_grid=(probe.l2_,), **TIGHT).fit(x, y)
    assert torch.allclose(probe.weight_, refit.weight_, atol=1e-6)
    assert torch.allclose(probe.bias_ - probe.bias_.mean(), refit.bias_ - refit.bias_.mean(),
                          atol=1e-6)


def test_logistic_probe_ties_go_to_the_larger_l2():
    # far-apart classes: every l2 of the grid separates the held-out part perfectly
    x, y = gaussian_classes(120, 3, 3, separation=20.0, seed=3)
    probe = LogisticProbe(l2_grid=(1e-3, 1e-1, 1e-2)).fit(x, y)
    assert set(probe.heldout_errors_.values()) == {0.0}
    assert probe.l2_ == 1e-1


def test_logistic_probe_is_deterministic_and_refits_from_scratch():
    x, y = gaussian_classes(200, 6, 4, separation=0.5, seed=6)
    other_x, other_y = gaussian_classes(150, 6, 4, separation=2.0, seed=7)
    probe = LogisticProbe(seed=1).fit(x, y)
    weight, bias, l2 = probe.weight_.clone(), probe.bias_.clone(), probe.l2_
    probe.fit(other_x, other_y).fit(x, y)
    assert torch.equal(probe.weight_, weight) and torch.equal(probe.bias_, bias)
    assert probe.l2_ == l2


def test_logistic_probe_never_predicts_absent_classes():
    x, y = gaussian_classes(90, 4, 3, separation=2.0, seed=8)
    labels = torch.tensor([0, 2, 4])[y]  # classes 1 and 3 of 5 never appear
    probe = LogisticProbe(l2_grid=(1e-2,), **TIGHT).fit(x, labels, num_classes=5)
    compact = LogisticProbe(l2_grid=(1e-2,), **TIGHT).fit(x, y)
    assert probe.weight_.shape == (5, 4) and torch.equal(probe.classes_, torch.tensor([0, 2, 4]))
    assert torch.equal(probe.bias_[[1, 3]], torch.full((2,), -math.inf, dtype=torch.float64))
    assert torch.allclose(probe.weight_[[0, 2, 4]], compact.weight_, atol=1e-8)
    wild = 10 * torch.randn(500, 4, dtype=torch.float64)
    assert set(probe.predict(wild).tolist()) <= {0, 2, 4}
    assert torch.equal(probe.predict(x), torch.tensor([0, 2, 4])[compact.predict(x)])


def test_logistic_probe_ignores_constant_features():
    x, y = gaussian_classes(200, 3, 2, separation=1.0, seed=22, dtype=torch.float32)
    # float32 rounding gives these columns a computed std near 1e-8, not 0
    with_constants = torch.cat([x, torch.full((200, 2), 0.1), torch.full((200, 1), 3.3)], 1)
    probe = LogisticProbe(l2_grid=(1e-2,), tol=1e-6).fit(with_constants, y)
    plain = LogisticProbe(l2_grid=(1e-2,), tol=1e-6).fit(x, y)
    assert torch.equal(probe.weight_[:, 3:], torch.zeros(2, 3))
    assert torch.allclose(probe.weight_[:, :3], plain.weight_, atol=1e-4)
    assert torch.equal(probe.predict(with_constants), plain.predict(x))


def test_logistic_probe_with_one_class_predicts_it():
    x = torch.randn(10, 3)
    probe = LogisticProbe().fit(x, torch.full((10,), 2), num_classes=4)
    assert torch.equal(probe.predict(torch.randn(7, 3)), torch.full((7,), 2))
    assert probe.error(x, torch.full((10,), 2)) == 0.0


def test_logistic_probe_error_and_predict_contract():
    x, y = gaussian_classes(100, 3, 2, separation=1.0, seed=9)
    probe = LogisticProbe(l2_grid=(1e-2,)).fit(x, y)
    predicted = probe.predict(x)
    assert predicted.dtype == torch.long and predicted.shape == (100,)
    assert torch.equal(predicted, probe.logits(x).argmax(dim=1))
    assert probe.error(x, y) == pytest.approx(float((predicted != y).double().mean()))
    assert 0.0 < probe.error(x, y) < 0.5
    # numpy input is accepted like tensors
    assert torch.equal(probe.predict(x.numpy()), predicted)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (torch.randn(10), torch.zeros(10), {}, r"`x` must be 2-D"),
        (torch.randn(10, 3), torch.zeros(9), {}, r"`y` must have shape \(10,\)"),
        (torch.tensor([[0.0, float("nan")]] * 4), torch.zeros(4), {}, "NaN or infinite"),
        (torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), {"num_classes": 3}, "< num_classes=3"),
        (torch.randn(4, 2), torch.tensor([0, -1, 0, 1]), {}, ">= 0"),
        (torch.randn(4, 2), torch.tensor([0.5, 1, 0, 1]), {}, "integer class indices"),
    ],
)
def test_logistic_probe_rejects_bad_input(x, y, kwargs, match):
    with pytest.raises(IJCKDError, match=match):
        LogisticProbe().fit(x, y, **kwargs)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"l2_grid": ()}, "l2_grid"),
        ({"l2_grid": (1e-2, -1.0)}, "l2_grid"),
        ({"holdout": 1.0}, "holdout"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": 0}, "tol"),
    ],
)
def test_logistic_probe_rejects_bad_hyperparameters(params, match):
    with pytest.raises(IJCKDError, match=match):
        LogisticProbe(**params).fit(torch.randn(20, 2), torch.arange(20) % 2)


def test_logistic_probe_needs_two_per_class_to_hold_out_and_must_be_fitted():
    with pytest.raises(IJCKDError, match="at least 2 samples"):
        LogisticProbe().fit(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(IJCKDError, match="not fitted"):
        LogisticProbe().predict(torch.randn(3, 2))
    probe = LogisticProbe(l2_grid=(1.0,)).fit(torch.randn(6, 2), torch.arange(6) % 2)
    with pytest.raises(IJCKDError, match=r"shape \(n, 2\) like the fitted features, got \(n, 3\)"):
        probe.predict(torch.randn(3, 3))


# ----------------------------------------------------------------------------------------
# fit_joint_classifier


def _teacher(x, y, k):
    probe = LogisticProbe(l2_grid=(1e-3,), **TIGHT).fit(x, y, num_classes=k)
    return probe.weight_, probe.bias_


def _manual_joint_error(z_t, z_s, y, weight, bias):
    def err(z):
        return float(((z @ weight.T + bias).argmax(dim=1) != y).double().mean())

    return err(z_t) + err(z_s)


def test_joint_probe_is_fitted_on_the_union_of_the_whole_fit_split_pairs_kept_together():
    z_t, y = gaussian_classes(160, 5, 4, separation=0.7, seed=13)
    z_s = z_t + 0.8 * torch.randn(z_t.shape, generator=torch.Generator().manual_seed(1),
                                  dtype=torch.float64)
    weight = torch.zeros(4, 5, dtype=torch.float64)
    bias = torch.zeros(4, dtype=torch.float64)
    joint = fit_joint_classifier(z_t, z_s, y, weight, bias, seed=3, probe_kwargs=TIGHT)
    assert isinstance(joint, JointClassifier)

    union = torch.cat([z_t, z_s])
    union_y = torch.cat([y, y])
    groups = torch.arange(160).repeat(2)
    rebuilt = LogisticProbe(seed=3, **TIGHT).fit(union, union_y, num_classes=4, groups=groups)
    assert joint.l2 == rebuilt.l2_
    assert torch.allclose(joint.weight, rebuilt.weight_, atol=1e-6)
    assert torch.allclose(joint.bias, rebuilt.bias_, atol=1e-6)
    # the nested l2 choice keeps both features of an input on one side
    fit_idx, held_idx = holdout_split(union_y, 0.25, 3, groups=groups)
    assert set((fit_idx % 160).tolist()).isdisjoint((held_idx % 160).tolist())
    # every fit pair enters the final probe: changing any one of them changes it
    moved_t = z_t.clone()
    moved_t[int(held_idx[0]) % 160] += 5.0
    moved = fit_joint_classifier(moved_t, z_s, y, weight, bias, seed=3, probe_kwargs=TIGHT)
    assert not torch.allclose(moved.weight, joint.weight, atol=1e-6)


def test_joint_probe_separates_both_domains_where_the_teacher_fails_on_students():
    # teacher classes at x0 = -2 / +2 (x1 = 0); the student moved everything by +3 along
    # x0 and +4 along x1, so h_T (boundary x0 = 0) calls every student feature class 1,
    # while the line x0 = 0.75 x1 separates the classes in both domains
    generator = torch.Generator().manual_seed(12)
    n = 400
    y = torch.arange(n) % 2
    z_t = torch.stack([4.0 * y - 2, torch.zeros(n)], dim=1).double()
    z_t += 0.3 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    z_s = z_t + torch.tensor([3.0, 4.0], dtype=torch.float64)
    weight = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    bias = torch.zeros(2, dtype=torch.float64)

    joint = fit_joint_classifier(z_t, z_s, y, weight, bias, seed=4)
    assert _manual_joint_error(z_t, z_s, y, weight, bias) == pytest.approx(0.5, abs=0.05)
    assert _manual_joint_error(z_t, z_s, y, joint.weight, joint.bias) < 0.05
    assert torch.equal(joint.predict(z_s), (z_s @ joint.weight.T + joint.bias).argmax(1))


def test_joint_classifier_probe_output_matches_teacher_dtype_and_class_count():
    z_t, y = gaussian_classes(120, 3, 3, separation=1.0, seed=14)
    weight = torch.zeros(5, 3)  # K = 5 classes, of which the fit split holds three
    joint = fit_joint_classifier(z_t.float(), z_t.float(), y, weight, torch.zeros(5))
    assert joint.weight.shape == (5, 3) and joint.weight.dtype == torch.float32
    assert torch.isinf(joint.bias[3:]).all()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"z_s_fit": torch.randn(12, 3)}, r"`z_s_fit` must have shape \(n, 4\) like `z_t_fit`"),
        ({"z_s_fit": torch.randn(11, 4)}, "`z_s_fit` must have 12 rows"),
        ({"bias": torch.zeros(3)}, r"`bias` must have shape \(2,\)"),
        ({"y_fit": torch.full((12,), 2)}, "< num_classes=2"),
        ({"weight": torch.zeros(2, 5)},
         r"`weight` must have shape \(K, 4\) like `z_t_fit`, got \(K, 5\)"),
    ],
)
def test_joint_classifier_rejects_bad_input(change, match):
    arguments = {"z_t_fit": torch.randn(12, 4), "z_s_fit": torch.randn(12, 4),
                 "y_fit": torch.arange(12) % 2, "weight": torch.zeros(2, 4),
                 "bias": torch.zeros(2)}
    arguments.update(change)
    with pytest.raises(IJCKDError, match=match):
        fit_joint_classifier(**arguments)


# ----------------------------------------------------------------------------------------
# Domain classifiers and the proxy A-distance


def test_proxy_a_distance_closed_form_and_clipping():
    assert proxy_a_distance(torch.zeros(10, dtype=torch.bool), torch.zeros(4)) == 2.0
    err_t = torch.tensor([True, False, False, False])  # 0.25
    err_s = torch.tensor([False, False])  # 0.0
    assert proxy_a_distance(err_t, err_s) == pytest.approx(2 * (1 - 2 * 0.125))
    assert proxy_a_distance(torch.ones(3), torch.tensor([1.0, 0.0])) == 0.0  # err_dom > 1/2
    with pytest.raises(IJCKDError, match="1-D"):
        proxy_a_distance(torch.zeros(2, 2), torch.zeros(2))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_identical_domains_give_proxy_a_zero(kind):
    z, _ = gaussian_classes(200, 6, 3, separation=1.0, seed=15, dtype=torch.float32)
    z_eval, _ = gaussian_classes(200, 6, 3, separation=1.0, seed=16, dtype=torch.float32)
    clf = DomainClassifier(kind, hidden=16).fit(z, z.clone())
    err_t, err_s = domain_errors(clf, z_eval, z_eval.clone())
    # one input gives one prediction for both copies: exactly one of them is wrong
    assert torch.equal(err_t ^ err_s, torch.ones(200, dtype=torch.bool))
    assert proxy_a_distance(err_t, err_s) == 0.0


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_same_distribution_domains_give_small_proxy_a(kind):
    generator = torch.Generator().manual_seed(17)
    draws = [torch.randn(600, 5, generator=generator) for _ in range(4)]
    clf = DomainClassifier(kind, hidden=16).fit(draws[0], draws[1])
    assert proxy_a_distance(*domain_errors(clf, draws[2], draws[3])) < 0.3


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_separated_domains_give_proxy_a_near_two(kind):
    generator = torch.Generator().manual_seed(18)
    z_t = torch.randn(300, 5, generator=generator)
    z_s = torch.randn(300, 5, generator=generator) + torch.tensor([6.0, 0, 0, 0, 0])
    clf = DomainClassifier(kind, hidden=16).fit(z_t, z_s)
    z_t_eval = torch.randn(300, 5, generator=generator)
    z_s_eval = torch.randn(300, 5, generator=generator) + torch.tensor([6.0, 0, 0, 0, 0])
    err_t, err_s = domain_errors(clf, z_t_eval, z_s_eval)
    assert err_t.dtype == torch.bool and err_t.shape == (300,)
    assert torch.equal(err_t, clf.predict_domain(z_t_eval) != 0)
    assert proxy_a_distance(err_t, err_s) > 1.9


def test_mlp_detects_a_shift_in_scale_that_no_linear_classifier_sees():
    generator = torch.Generator().manual_seed(19)
    z_t, z_t_eval = (torch.randn(800, 4, generator=generator) for _ in range(2))
    z_s, z_s_eval = (3 * torch.randn(800, 4, generator=generator) for _ in range(2))
    linear = DomainClassifier("linear").fit(z_t, z_s)
    mlp = DomainClassifier("mlp", hidden=32, max_iter=200).fit(z_t, z_s)
    assert proxy_a_distance(*domain_errors(linear, z_t_eval, z_s_eval)) < 0.3
    assert proxy_a_distance(*domain_errors(mlp, z_t_eval, z_s_eval)) > 1.0


def test_mlp_domain_classifier_is_deterministic_given_seed():
    generator = torch.Generator().manual_seed(20)
    z_t, z_s = torch.randn(200, 4, generator=generator), torch.randn(200, 4, generator=generator)
    first = DomainClassifier("mlp", hidden=8, seed=3).fit(z_t, z_s + 0.5)
    second = DomainClassifier("mlp", hidden=8, seed=3).fit(z_t, z_s + 0.5)
    other = DomainClassifier("mlp", hidden=8, seed=4).fit(z_t, z_s + 0.5)
    assert torch.equal(first.hidden_weight_, second.hidden_weight_)
    assert torch.equal(first.out_bias_, second.out_bias_)
    assert not torch.equal(first.hidden_weight_, other.hidden_weight_)
    first.fit(z_s, z_t).fit(z_t, z_s + 0.5)
    assert torch.equal(first.hidden_weight_, second.hidden_weight_)


def test_domain_classifier_rejects_bad_input():
    with pytest.raises(IJCKDError, match="`kind` must be 'linear' or 'mlp'"):
        DomainClassifier("svm").fit(torch.randn(5, 2), torch.randn(5, 2))
    with pytest.raises(IJCKDError, match=r"`z_s_fit` must have shape \(n, 2\) like `z_t_fit`"):
        DomainClassifier().fit(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(IJCKDError, match="not fitted"):
        DomainClassifier("mlp").predict_domain(torch.randn(5, 2))
    clf = DomainClassifier().fit(torch.randn(5, 2), torch.randn(5, 2))
    with pytest.raises(IJCKDError, match="`z_s_eval` must have 5 rows"):
        domain_errors(clf, torch.randn(5, 2), torch.randn(4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probes_run_on_the_input_device_and_agree_with_cpu():
    x, y = gaussian_classes(300, 6, 3, separation=0.8, seed=21)
    cpu = LogisticProbe(**TIGHT).fit(x, y)
    gpu = LogisticProbe(**TIGHT).fit(x.cuda(), y.cuda())
    assert gpu.weight_.device.type == "cuda" and gpu.l2_ == cpu.l2_
    assert torch.allclose(gpu.weight_.cpu(), cpu.weight_, atol=1e-5)
    clf = DomainClassifier("mlp", hidden=8).fit(x.cuda(), x.cuda() + 1)
    assert clf.predict_domain(x.cuda()).device.type == "cuda"


# ----------------------------------------------------------------------------------------
# rows=: fitting on selected rows without gathering them first


def _rows(n, m, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_probe_on_rows_equals_the_probe_on_gathered_rows(dtype):
    x, y = gaussian_classes(300, 6, 4, separation=1.5, seed=30, dtype=dtype)
    rows = _rows(300, 220, 1)
    on_rows = LogisticProbe(seed=5).fit(x, y, num_classes=5, rows=rows)
    gathered = LogisticProbe(seed=5).fit(x[rows], y[rows], num_classes=5)
    assert torch.equal(on_rows.weight_, gathered.weight_)
    assert torch.equal(on_rows.bias_, gathered.bias_)
    assert on_rows.l2_ == gathered.l2_ and on_rows.heldout_errors_ == gathered.heldout_errors_
    # the caller's features are left as they were
    assert torch.equal(x, gaussian_classes(300, 6, 4, separation=1.5, seed=30, dtype=dtype)[0])


def test_logistic_probe_rows_keep_groups_aligned():
    x, y = gaussian_classes(200, 4, 2, separation=1.0, seed=31)
    groups = torch.arange(200) % 100  # samples i and i + 100 (one label) share a group
    rows = _rows(200, 150, 2)
    on_rows = LogisticProbe(seed=1).fit(x, y, groups=groups, rows=rows)
    gathered = LogisticProbe(seed=1).fit(x[rows], y[rows], groups=groups[rows])
    assert torch.equal(on_rows.weight_, gathered.weight_)


@pytest.mark.parametrize(("rows", "match"), [
    (torch.tensor([0, 500]), r"`rows` must hold indices in \[0, 300\)"),
    (torch.tensor([[0, 1]]), "`rows` must be a 1-D array of row indices"),
    (torch.tensor([0.0, 1.0]), "`rows` must be a 1-D array of row indices"),
    (torch.tensor([], dtype=torch.long), "`rows` selects no rows"),
])
def test_logistic_probe_rejects_bad_rows(rows, match):
    x, y = gaussian_classes(300, 3, 3, separation=2.0, seed=32)
    with pytest.raises(IJCKDError, match=match):
        LogisticProbe().fit(x, y, rows=rows)


def test_joint_classifier_on_rows_equals_the_classifier_on_gathered_rows():
    z_t, y = gaussian_classes(400, 5, 4, separation=2.0, seed=33, dtype=torch.float32)
    z_s = z_t + 0.8 * torch.randn(z_t.shape, generator=torch.Generator().manual_seed(3)) + 0.5
    weight, bias = _teacher(z_t, y, 4)
    rows = _rows(400, 300, 4)
    on_rows = fit_joint_classifier(z_t, z_s, y, weight, bias, seed=7, rows=rows)
    gathered = fit_joint_classifier(z_t[rows], z_s[rows], y[rows], weight, bias, seed=7)
    assert on_rows.l2 == gathered.l2
    assert torch.equal(on_rows.weight, gathered.weight)
    assert torch.equal(on_rows.bias, gathered.bias)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_domain_classifier_on_rows_equals_the_classifier_on_gathered_rows(kind):
    generator = torch.Generator().manual_seed(34)
    z_t = torch.randn(300, 6, generator=generator)
    z_s = torch.randn(300, 6, generator=generator) * 1.3 + 0.3
    rows = _rows(300, 200, 5)
    on_rows = DomainClassifier(kind, hidden=8, seed=2).fit(z_t, z_s, rows=rows)
    gathered = DomainClassifier(kind, hidden=8, seed=2).fit(z_t[rows], z_s[rows])
    for name in ("weight_", "bias_", "hidden_weight_", "hidden_bias_", "out_weight_"):
        if hasattr(gathered, name):
            assert torch.equal(getattr(on_rows, name), getattr(gathered, name)), name
    # the caller's features are left as they were
    assert torch.equal(z_t, torch.randn(300, 6, generator=torch.Generator().manual_seed(34)))


def test_standardisation_matches_numpy_in_float64():
    from ijckd_bounds.estimators.probes import _standardisation

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(300, 6, generator=generator) * torch.tensor([1e-3, 1, 5, 100, 1, 1]) \
        + torch.tensor([0.0, -7, 3, 1e3, 0, 0])
    x[:, 4] = 0.1  # constant columns: their own value as mean, scale 1
    x[:, 5] = -2.5
    mean, scale = _standardisation(x)
    ref = x.double().numpy()
    np.testing.assert_allclose(mean[:4].double().numpy(), ref[:, :4].mean(0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(scale[:4].double().numpy(), ref[:, :4].std(0), rtol=1e-5)
    assert mean[4] == x[0, 4] and mean[5] == x[0, 5]
    assert scale[4] == 1 and scale[5] == 1
    assert torch.equal((x[:, 4:] - mean[4:]) / scale[4:], torch.zeros(300, 2))
