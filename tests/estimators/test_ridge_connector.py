"""The post-hoc ridge connector against numpy/scikit-learn and closed forms."""

import math

import numpy as np
import pytest
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.ridge_connector import (
    DEFAULT_RIDGE_GRID,
    RidgeConnector,
    fit_connector,
)


def linear_pairs(n, d_s, d, *, noise, seed, dtype=torch.float64):
    """Student features s (n, d_s) and teacher features t = s A + c + noise (n, d)."""
    generator = torch.Generator().manual_seed(seed)
    s = torch.randn(n, d_s, generator=generator, dtype=dtype) * 2.0 + 1.0
    a = torch.randn(d_s, d, generator=generator, dtype=dtype) / math.sqrt(d_s)
    c = torch.randn(d, generator=generator, dtype=dtype)
    t = s @ a + c + noise * torch.randn(n, d, generator=generator, dtype=dtype)
    return s, t, a, c


def test_fixed_ridge_matches_sklearn_ridge():
    from sklearn.linear_model import Ridge

    s, t, _, _ = linear_pairs(60, 8, 5, noise=0.5, seed=0)
    connector = RidgeConnector(ridge_grid=(0.3,)).fit(s, t)
    centred = s - s.mean(0)
    assert connector.ridge_ == 0.3
    assert connector.ridge_abs_ == pytest.approx(0.3 * float((centred ** 2).sum()) / 8)
    reference = Ridge(alpha=connector.ridge_abs_).fit(s.numpy(), t.numpy())
    np.testing.assert_allclose(connector.weight_.numpy(), reference.coef_.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(connector.bias_.numpy(), reference.intercept_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(connector.transform(s).numpy(), reference.predict(s.numpy()),
                               rtol=1e-8, atol=1e-10)


def test_vanishing_ridge_matches_least_squares():
    s, t, _, _ = linear_pairs(50, 6, 4, noise=1.0, seed=1)
    connector = RidgeConnector(ridge_grid=(1e-12,)).fit(s, t)
    design = np.hstack([s.numpy(), np.ones((50, 1))])
    solution, *_ = np.linalg.lstsq(design, t.numpy(), rcond=None)
    np.testing.assert_allclose(connector.weight_.numpy(), solution[:6], atol=1e-8)
    np.testing.assert_allclose(connector.bias_.numpy(), solution[6], atol=1e-8)


def test_noiseless_linear_map_is_recovered_with_a_small_ridge():
    s, t, a, c = linear_pairs(300, 20, 12, noise=0.0, seed=2)
    connector = fit_connector(s, t)
    assert connector.ridge_ <= 1e-5
    assert torch.allclose(connector.weight_, a, atol=1e-5)
    assert torch.allclose(connector.bias_, c, atol=1e-5)
    assert torch.allclose(connector.transform(s), t, atol=1e-5)


def test_noisy_high_dimensional_map_gets_a_larger_ridge_that_generalises_better():
    s_all, t_all, _, _ = linear_pairs(2120, 80, 10, noise=3.0, seed=3)
    s, t = s_all[:120], t_all[:120]  # 120 fit samples for 80 student dimensions
    connector = fit_connector(s, t, seed=1)
    assert connector.ridge_ >= 1e-1
    assert connector.heldout_mse_[connector.ridge_] < connector.heldout_mse_[1e-6]
    # and the choice pays off on fresh samples of the same map
    barely = RidgeConnector(ridge_grid=(1e-6,)).fit(s, t)

    def fresh_mse(model):
        return float((model.transform(s_all[120:]) - t_all[120:]).pow(2).sum(1).mean())

    assert fresh_mse(connector) < 0.9 * fresh_mse(barely)


def test_grid_sweep_equals_separate_fits_on_the_fitting_part():
    # the held-out split: a seeded permutation whose first round(holdout * n) are held out
    s, t, _, _ = linear_pairs(100, 10, 3, noise=1.0, seed=4)
    connector = RidgeConnector(holdout=0.2, seed=5).fit(s, t)
    permutation = torch.randperm(100, generator=torch.Generator().manual_seed(5))
    held, part = permutation[:20], permutation[20:]
    assert set(connector.heldout_mse_) == set(DEFAULT_RIDGE_GRID)
    for ridge, mse in connector.heldout_mse_.items():
        alone = RidgeConnector(ridge_grid=(ridge,)).fit(s[part], t[part])
        expected = float((alone.transform(s[held]) - t[held]).pow(2).sum(1).mean())
        assert mse == pytest.approx(expected, rel=1e-9)
    assert connector.ridge_ == min(connector.heldout_mse_, key=connector.heldout_mse_.get)
    refit = RidgeConnector(ridge_grid=(connector.ridge_,)).fit(s, t)
    assert torch.allclose(connector.weight_, refit.weight_, atol=1e-12)


def test_connector_is_deterministic_and_keeps_dtype():
    s, t, _, _ = linear_pairs(80, 6, 4, noise=0.3, seed=6, dtype=torch.float32)
    connector = RidgeConnector(seed=2).fit(s, t)
    weight = connector.weight_.clone()
    connector.fit(t, s).fit(s, t)
    assert torch.equal(connector.weight_, weight)
    assert connector.weight_.dtype == torch.float32 and connector.weight_.shape == (6, 4)
    out = connector.transform(s[:7])
    assert out.shape == (7, 4) and out.dtype == torch.float32


def test_constant_student_features_are_ignored():
    t = torch.randn(3000, 3, dtype=torch.float64)
    only_constant = fit_connector(torch.full((3000, 2), 0.1), t)
    assert torch.equal(only_constant.weight_, torch.zeros(2, 3))
    assert torch.allclose(only_constant.bias_.double(), t.mean(0), atol=1e-6)
    s, t, _, _ = linear_pairs(3000, 4, 3, noise=0.5, seed=9, dtype=torch.float32)
    with_constant = fit_connector(torch.cat([s, torch.full((3000, 1), 0.1)], dim=1), t)
    plain = fit_connector(s, t)
    assert torch.equal(with_constant.weight_[4], torch.zeros(3))
    assert torch.allclose(with_constant.weight_[:4], plain.weight_, atol=1e-6)


@pytest.mark.parametrize(
    ("s", "t", "match"),
    [
        (torch.randn(10, 3), torch.randn(9, 4), "`t_fit` must have 10 rows like `s_fit`"),
        (torch.randn(10), torch.randn(10, 4), r"`s_fit` must be 2-D with shape \(n, d\)"),
        (torch.randn(10, 3), torch.randn(10, 4, 1), "`t_fit` must be 2-D"),
        (torch.tensor([[1.0, float("nan")]] * 5), torch.randn(5, 2), "`s_fit` has NaN"),
        (torch.randn(5, 2), torch.tensor([[float("inf")]] * 5), "`t_fit` has NaN or infinite"),
        (torch.randn(2, 2), torch.randn(2, 2), "need at least 3 samples"),
    ],
)
def test_connector_rejects_bad_input(s, t, match):
    with pytest.raises(IJCKDError, match=match):
        fit_connector(s, t)


def test_connector_rejects_bad_hyperparameters_and_unfitted_use():
    s, t, _, _ = linear_pairs(20, 3, 2, noise=0.1, seed=7)
    with pytest.raises(IJCKDError, match="ridge_grid"):
        fit_connector(s, t, ridge_grid=(1.0, 0.0))
    with pytest.raises(IJCKDError, match="holdout"):
        fit_connector(s, t, holdout=0)
    with pytest.raises(IJCKDError, match="not fitted"):
        RidgeConnector().transform(s)
    with pytest.raises(IJCKDError, match=r"`s` must have shape \(n, 3\) like the fitted `s_fit`"):
        fit_connector(s, t).transform(torch.randn(4, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_connector_runs_on_the_input_device_and_agrees_with_cpu():
    s, t, _, _ = linear_pairs(200, 16, 8, noise=0.5, seed=8)
    cpu = fit_connector(s, t)
    gpu = fit_connector(s.cuda(), t.cuda())
    assert gpu.weight_.device.type == "cuda" and gpu.ridge_ == cpu.ridge_
    assert torch.allclose(gpu.weight_.cpu(), cpu.weight_, atol=1e-8)
