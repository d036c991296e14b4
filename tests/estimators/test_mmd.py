"""MMD² and debiased CKA against O(n²) references, closed forms and invariances."""

import math

import numpy as np
import pytest
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.blockpass import default_block_rows, paired_block_pass
from ijckd_bounds.estimators.cka import cka_jackknife, debiased_cka, feat_cka, hsic_terms
from ijckd_bounds.estimators.intervals import PairedBootstrap
from ijckd_bounds.estimators.mmd import (
    NoBandwidth,
    centre_pair,
    median_bandwidth,
    mmd2,
    run_mmd_pass,
    sign_vectors,
)

# ----------------------------------------------------------------------------------------
# independent references


def _mmd2_loop(t, s, sigma):
    """Paired MMD² U-statistic by an explicit double loop (docs/theory.md's formula)."""
    n = len(t)

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * sigma ** 2))

    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += k(t[i], t[j]) + k(s[i], s[j]) - k(t[i], s[j]) - k(s[i], t[j])
    return total / (n * (n - 1))


def _h_matrix(t, s, sigma):
    def gram(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-sq / (2 * sigma ** 2))

    h = gram(t, t) + gram(s, s) - gram(t, s) - gram(s, t)
    np.fill_diagonal(h, 0.0)
    return h


def _hsic_u_kernels(k, k2):
    """Unbiased HSIC (Song et al. 2012) from full kernel matrices, O(n²)."""
    n = k.shape[0]
    k, k2 = k.copy(), k2.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(k2, 0.0)
    one = np.ones(n)
    return (np.trace(k @ k2) + (one @ k @ one) * (one @ k2 @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ k2 @ one)) / (n * (n - 3))


def _cka_kernels(x, y):
    k, k2 = x @ x.T, y @ y.T
    return _hsic_u_kernels(k, k2) / math.sqrt(_hsic_u_kernels(k, k) * _hsic_u_kernels(k2, k2))


# ----------------------------------------------------------------------------------------
# MMD²


@pytest.mark.parametrize("block_rows", [1, 7, 64])
def test_mmd2_matches_double_loop(block_rows):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(30, 4))
    s = t + 0.4 * rng.normal(size=(30, 4)) + 0.3
    result = mmd2(torch.tensor(t), torch.tensor(s), bandwidth=1.3, block_rows=block_rows,
                  n_bootstrap=50)
    assert result.mmd2.value == pytest.approx(_mmd2_loop(t, s, 1.3), abs=1e-10)
    assert result.bandwidth == 1.3


def test_median_bandwidth_matches_numpy():
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(25, 3)), rng.normal(size=(25, 3)) + 1
    pooled = np.concatenate([t, s])
    dist = np.sqrt(((pooled[:, None] - pooled[None]) ** 2).sum(-1))
    expected = np.median(dist[np.triu_indices(50, k=1)])
    assert median_bandwidth(torch.tensor(t), torch.tensor(s)) == pytest.approx(expected)
    # with the default bandwidth the estimate equals the loop at that bandwidth
    result = mmd2(torch.tensor(t), torch.tensor(s), n_bootstrap=20)
    assert result.bandwidth == pytest.approx(expected)
    assert result.mmd2.value == pytest.approx(_mmd2_loop(t, s, expected), abs=1e-10)
    # a subsample of the pooled points is seeded
    big_t, big_s = torch.randn(1500, 3), torch.randn(1500, 3)
    assert median_bandwidth(big_t, big_s, seed=3) == median_bandwidth(big_t, big_s, seed=3)
    assert median_bandwidth(big_t, big_s, seed=3) == pytest.approx(
        median_bandwidth(big_t, big_s, max_points=3000), rel=0.05)


def test_permutation_and_bootstrap_forms_equal_explicit_quadratic_forms():
    rng = np.random.default_rng(2)
    n = 40
    t = rng.normal(size=(n, 3))
    s = t + rng.normal(size=(n, 3))
    h = _h_matrix(t, s, 1.1)
    signs = sign_vectors(n, 30, seed=4, dtype=torch.float64).numpy()
    weights = PairedBootstrap(n, 20, seed=5).weights.double().numpy()
    vectors = np.concatenate([signs, weights.T], axis=1)
    tc, sc = centre_pair(torch.tensor(t), torch.tensor(s))
    sums = paired_block_pass(tc, sc, bandwidth=1.1, mmd_vectors=torch.tensor(vectors),
                             block_rows=9)
    expected = np.einsum("ib,ij,jb->b", vectors, h, vectors)
    assert np.allclose(sums.mmd_quad.numpy(), expected, atol=1e-9)
    assert float(sums.mmd_total) == pytest.approx(h.sum(), abs=1e-9)
    # the p-value and the bootstrap replicates follow from those forms
    result = mmd2(torch.tensor(t), torch.tensor(s), bandwidth=1.1, n_permutations=30, seed=4,
                  bootstrap=PairedBootstrap(n, 20, seed=5, level=0.999999))
    observed = h.sum() / (n * (n - 1))
    permuted = expected[:30] / (n * (n - 1))
    assert result.p_value == pytest.approx((1 + np.sum(permuted >= observed)) / 31)
    replicates = expected[30:] / (weights.sum(1) ** 2 - (weights ** 2).sum(1))
    assert result.mmd2.lo == pytest.approx(min(replicates.min(), observed), rel=1e-3)
    assert result.mmd2.hi == pytest.approx(max(replicates.max(), observed), rel=1e-3)


def test_mmd2_between_gaussians_matches_closed_form():
    # t ~ N(μ1, s²I), s ~ N(μ2, s²I) drawn independently; kernel bandwidth σ fixed:
    # E k(x,x') = det(I + (A+B)/σ²)^(-1/2) exp(-½ (a-b)ᵀ(σ²I + A + B)⁻¹(a-b))
    rng = np.random.default_rng(3)
    n, d, spread, sigma = 1500, 3, 0.8, 1.5
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    t = mu1 + spread * rng.normal(size=(n, d))
    s = mu2 + spread * rng.normal(size=(n, d))
    same = (1 + 2 * spread ** 2 / sigma ** 2) ** (-d / 2)
    cross = same * math.exp(-0.5 * float((mu1 - mu2) @ (mu1 - mu2)) / (sigma ** 2
                                                                         + 2 * spread ** 2))
    population = 2 * same - 2 * cross
    result = mmd2(torch.tensor(t), torch.tensor(s), bandwidth=sigma, n_permutations=100,
                  n_bootstrap=300, seed=1)
    assert result.mmd2.lo <= population <= result.mmd2.hi
    assert result.mmd2.value == pytest.approx(population, rel=0.15)
    assert result.p_value == pytest.approx(1 / 101)


def test_identical_domains_give_zero_and_a_large_p_value():
    z = torch.randn(200, 6)
    result = mmd2(z, z.clone(), n_bootstrap=100)
    assert abs(result.mmd2.value) < 1e-6
    assert result.p_value > 0.5
    assert result.mmd2.lo <= result.mmd2.value <= result.mmd2.hi


def test_permutation_test_is_calibrated_under_the_null():
    # independent draws from one distribution: the p-values are about uniform
    p_values = []
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        t = torch.randn(40, 3, generator=g, dtype=torch.float64)
        s = torch.randn(40, 3, generator=g, dtype=torch.float64)
        p_values.append(mmd2(t, s, n_permutations=100, n_bootstrap=5, seed=seed).p_value)
    p_values = np.array(p_values)
    assert np.mean(p_values <= 0.05) <= 0.1
    assert 0.35 <= np.mean(p_values <= 0.5) <= 0.65


def test_separated_domains_give_a_small_p_value_and_positive_interval():
    t = torch.randn(150, 5)
    s = t + 1.0
    result = mmd2(t, s, n_permutations=199, n_bootstrap=200)
    assert result.p_value == pytest.approx(1 / 200)
    assert result.mmd2.lo > 0


def test_float32_pass_is_close_to_float64():
    g = torch.Generator().manual_seed(7)
    t = 50 + torch.randn(500, 32, generator=g, dtype=torch.float64)  # far from the origin
    s = t + 0.3 * torch.randn(500, 32, generator=g, dtype=torch.float64)
    exact = mmd2(t, s, n_bootstrap=50, seed=2)
    single = mmd2(t.float(), s.float(), n_bootstrap=50, seed=2)
    assert single.bandwidth == pytest.approx(exact.bandwidth, rel=1e-6)
    assert single.mmd2.value == pytest.approx(exact.mmd2.value, rel=1e-3, abs=1e-6)


def test_subsample_and_validation():
    t = torch.randn(300, 4)
    s = t + 0.5
    result = mmd2(t, s, max_n=100, n_bootstrap=30)
    assert result.mmd2.n == 100 and "subsample of 100 of 300" in result.mmd2.method
    with pytest.raises(IJCKDError, match="like `z_t`"):
        mmd2(t, s[:, :3])
    with pytest.raises(IJCKDError, match="bandwidth"):
        mmd2(t, s, bandwidth=-1.0)
    with pytest.raises(IJCKDError, match="n_permutations"):
        mmd2(t, s, n_permutations=0)
    with pytest.raises(NoBandwidth, match="cannot choose an MMD bandwidth") as info:
        mmd2(torch.zeros(10, 2), torch.zeros(10, 2))
    assert "pass" not in str(info.value)  # no option that the caller may not have


def test_block_memory_is_linear_in_n():
    # two (2·rows, n) float32 Gram blocks per step: about 128 MB whatever n is
    for n in (1_000, 10_000, 50_000, 200_000):
        rows = default_block_rows(n)
        assert 2 * (2 * rows) * n * 4 <= 140e6 or rows == 64
    assert 2 * (2 * default_block_rows(50_000)) * 50_000 * 4 < 0.2e9


# ----------------------------------------------------------------------------------------
# debiased linear CKA


def test_cka_matches_kernel_matrix_reference():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 7)) + 2.0
    y = x[:, :5] @ rng.normal(size=(5, 4)) + rng.normal(size=(60, 4))
    assert debiased_cka(torch.tensor(x), torch.tensor(y)) == pytest.approx(
        _cka_kernels(x, y), abs=1e-10)
    k, k2 = x @ x.T, y @ y.T
    terms = hsic_terms(torch.tensor(x), torch.tensor(y))
    assert terms[0] == pytest.approx(_hsic_u_kernels(k, k2), rel=1e-9)
    assert terms[1] == pytest.approx(_hsic_u_kernels(k, k), rel=1e-9)
    assert terms[2] == pytest.approx(_hsic_u_kernels(k2, k2), rel=1e-9)


def test_cka_invariances_and_extremes():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(400, 6)))
    rotation = torch.tensor(np.linalg.qr(rng.normal(size=(6, 6)))[0])
    assert debiased_cka(x, x) == pytest.approx(1.0)
    assert debiased_cka(x, 3 * x @ rotation + 5) == pytest.approx(1.0)
    y = torch.tensor(rng.normal(size=(400, 6)))
    assert abs(debiased_cka(x, y)) < 0.05
    # n close to d: plain linear CKA of independent features is large, debiased is not
    xs, ys = torch.tensor(rng.normal(size=(40, 30))), torch.tensor(rng.normal(size=(40, 30)))
    xc, yc = xs - xs.mean(0), ys - ys.mean(0)
    biased = float((xc.T @ yc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))
    assert biased > 0.4
    assert abs(debiased_cka(xs, ys)) < 0.2
    assert math.isnan(debiased_cka(torch.ones(10, 3), xs[:10]))
    with pytest.raises(IJCKDError, match="at least 4"):
        debiased_cka(xs[:3], ys[:3])


def test_cka_jackknife_equals_leave_one_out_kernel_reference():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(50, 7)) + 3
    y = x[:, :5] @ rng.normal(size=(5, 4)) + rng.normal(size=(50, 4))
    value, loo = cka_jackknife(torch.tensor(x), torch.tensor(y))
    assert value == pytest.approx(_cka_kernels(x, y), abs=1e-10)
    expected = [_cka_kernels(np.delete(x, k, 0), np.delete(y, k, 0)) for k in range(50)]
    assert np.allclose(loo.numpy(), expected, atol=1e-10)
    # on the rows of an order, without gathering them
    order = torch.from_numpy(rng.permutation(50)[:30])
    value_o, loo_o = cka_jackknife(torch.tensor(x), torch.tensor(y), order)
    gathered = cka_jackknife(torch.tensor(x[order.numpy()]), torch.tensor(y[order.numpy()]))
    assert value_o == pytest.approx(gathered[0], rel=1e-9)
    assert np.allclose(loo_o.numpy(), gathered[1].numpy(), atol=1e-10)


def test_feat_cka_jackknife_interval():
    from scipy.stats import t as student_t

    rng = np.random.default_rng(7)
    x = torch.tensor(rng.normal(size=(300, 5)), dtype=torch.float32)
    y = x @ torch.randn(5, 5) + 0.5 * torch.randn(300, 5)
    est = feat_cka(x, y)
    assert est.lo < est.value < est.hi < 1
    assert est.method.startswith("delete-one jackknife")
    assert est.value == pytest.approx(debiased_cka(x.double(), y.double()), abs=1e-9)
    _, loo = cka_jackknife(x, y)
    se = math.sqrt(299 / 300 * float(((loo - loo.mean()) ** 2).sum()))
    assert est.hi - est.value == pytest.approx(student_t.ppf(0.975, 299) * se, rel=1e-9)
    assert est.value - est.lo == pytest.approx(est.hi - est.value, rel=1e-9)  # centred
    # different widths are fine for CKA; constant features leave it missing
    assert feat_cka(x, y[:, :3]).lo <= 1
    assert math.isnan(feat_cka(torch.ones(20, 3), x[:20]).value)


def _population_cka_case(n, d, rng):
    """x ~ N(0, Σ) with a decaying spectrum, y = x + N(0, I): CKA in closed form,
    ‖Σ_xy‖²_F / (‖Σ_xx‖_F ‖Σ_yy‖_F) with Σ_xy = Σ_xx = Σ, Σ_yy = Σ + I."""
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(d))
    x = rng.normal(size=(n, d)) * spectrum
    y = x + rng.normal(size=(n, d))
    sigma2 = spectrum ** 2
    truth = (sigma2 ** 2).sum() / math.sqrt((sigma2 ** 2).sum() * ((sigma2 + 1) ** 2).sum())
    return torch.tensor(x), torch.tensor(y), truth


@pytest.mark.slow
@pytest.mark.parametrize(("n", "d"), [(100, 50), (50, 100), (100, 200)])
def test_feat_cka_interval_covers_the_population_cka_where_n_is_below_2d(n, d):
    # 800 reps: a correct 95% interval covers fewer than 744 (93%) with probability
    # P[Bin(800, 0.95) < 744] ≈ 0.5%
    from scipy.stats import binom

    reps, need = 800, 744
    assert binom.cdf(need - 1, reps, 0.95) < 0.01
    rng = np.random.default_rng(1000 + n + d)
    covered, off_centre = 0, []
    for _ in range(reps):
        x, y, truth = _population_cka_case(n, d, rng)
        est = feat_cka(x, y)
        covered += est.lo <= truth <= est.hi
        off_centre.append(abs((est.hi - est.value) - (est.value - est.lo)))
    assert covered >= need, (covered, reps)
    assert max(off_centre) < 1e-9


# ----------------------------------------------------------------------------------------
# order=: the rows of an index, without gathering them first


def test_cka_and_mmd_pass_on_an_order_equal_them_on_the_gathered_rows():
    generator = torch.Generator().manual_seed(8)
    z_t = torch.randn(90, 6, generator=generator) + 4.0
    z_s = z_t + 0.7 * torch.randn(90, 6, generator=generator)
    order = torch.randperm(90, generator=generator)[:70]
    gathered_t, gathered_s = z_t[order], z_s[order]
    for got, want in zip(hsic_terms(z_t, z_s, order), hsic_terms(gathered_t, gathered_s),
                         strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    boot = PairedBootstrap(70, 40, seed=2)
    on_order = run_mmd_pass(z_t, z_s, n_permutations=30, seed=5, bootstrap=boot,
                            order=order)
    on_gathered = run_mmd_pass(gathered_t, gathered_s, n_permutations=30, seed=5,
                               bootstrap=boot)
    assert on_order[0].mmd2.value == pytest.approx(on_gathered[0].mmd2.value, rel=1e-6)
    assert on_order[0].p_value == on_gathered[0].p_value
    assert on_order[0].bandwidth == pytest.approx(on_gathered[0].bandwidth, rel=1e-6)
    # with a subsample of the ordered pairs too
    sub_order = run_mmd_pass(z_t, z_s, n_permutations=30, seed=5, bootstrap=boot,
                             max_n=50, order=order)
    sub_gathered = run_mmd_pass(gathered_t, gathered_s, n_permutations=30, seed=5,
                                bootstrap=boot, max_n=50)
    assert sub_order[1] == sub_gathered[1] == 50
    assert sub_order[0].mmd2.value == pytest.approx(sub_gathered[0].mmd2.value, rel=1e-6)
    # the bandwidth's seeded subsample of pooled points, drawn in the given order
    assert median_bandwidth(z_t, z_s, max_points=40, seed=3, order=order) == pytest.approx(
        median_bandwidth(gathered_t, gathered_s, max_points=40, seed=3), rel=1e-9)
