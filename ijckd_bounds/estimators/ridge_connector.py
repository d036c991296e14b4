"""The post-hoc connector: ridge least squares from student features into teacher space.

docs/theory.md: a student without a trained connector (CE, KD, FitNet, SRRL, a user's model)
is mapped into the teacher's feature space by ``p(s) = s W + b``, fitted on the fit split
(disjoint from the evaluation split), so that ``z_S = p(s(x))`` can be read by ``h_T``.

The ridge strength is chosen on a seeded held-out part of the fit split by held-out mean
squared error. One eigendecomposition of the centred Gram matrix serves the whole grid:
with ``SᵀS = V diag(λ) Vᵀ``, ``W(α) = V diag(1/(λ+α)) Vᵀ SᵀT`` costs a rescaling per α,
and the held-out error of every α follows from three matrix products (see ``fit``). The
Gram matrices of the fitting part and the held-out part add up to that of the whole fit
split, so the final refit costs one more eigendecomposition and no pass over the data.

The grid is *relative*: ``α`` multiplies the mean eigenvalue ``tr(SᵀS)/d_s`` of the
centred Gram matrix of the samples being fitted, so one grid means the same for features
of any scale and any sample size (an absolute grid such as 1e-6..1e2 would hardly
regularise unit-scale features at n = 10,000, where ``SᵀS`` has eigenvalues near 10⁴).
The absolute value used in the final fit is ``ridge_abs_``, which is scikit-learn's
``Ridge(alpha=ridge_abs_)`` on the same data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.probes import (
    Array,
    _check_fraction,
    _check_penalty_grid,
    _not_fitted,
    as_features,
)

__all__ = ["RidgeConnector", "fit_connector", "DEFAULT_RIDGE_GRID"]

DEFAULT_RIDGE_GRID = tuple(10.0 ** k for k in range(-6, 3))  # 1e-6, 1e-5, ..., 1e2


def _moments(s, t):
    """Sums over rows of s (m, d_s), t (m, d): (m, Σs, Σt, SᵀS, SᵀT)."""
    return s.shape[0], s.sum(dim=0), t.sum(dim=0), s.T @ s, s.T @ t


def _merge(first, second):
    return tuple(x + y for x, y in zip(first, second, strict=True))


def _ridge_basis(moments):
    """Eigen-form of the ridge problem of one sample, from its (uncentred) moments.

    Returns means (d_s,), (d,); eigenvalues (d_s,) and eigenvectors (d_s, d_s) of the
    centred Gram matrix; ``Vᵀ S_cᵀ T_c`` (d_s, d); and its mean eigenvalue (the unit of
    the relative ridge). ``W(α) = V diag(1/(λ+α)) (Vᵀ S_cᵀ T_c)``.
    """
    m, sum_s, sum_t, gram, cross = moments
    mean_s, mean_t = sum_s / m, sum_t / m
    # centring by subtraction is exact enough here: the caller centred s and t on the
    # whole fit split first, so these means are small and nothing large cancels
    centred_gram = gram - m * torch.outer(mean_s, mean_s)
    centred_cross = cross - m * torch.outer(mean_s, mean_t)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred_gram)
    # rounding can leave tiny negative eigenvalues of a positive semi-definite matrix
    eigenvalues = eigenvalues.clamp(min=0)
    # 1 for constant features, whose cross-covariance with t is zero: any ridge gives W = 0
    mean_eigenvalue = float(centred_gram.diagonal().sum()) / gram.shape[0]
    if not mean_eigenvalue > 0:
        mean_eigenvalue = 1.0
    return mean_s, mean_t, eigenvalues, eigenvectors, eigenvectors.T @ centred_cross, \
        mean_eigenvalue


class RidgeConnector:
    """Affine map ``t ≈ s W + b`` by ridge regression (intercept unpenalised).

    Args:
        ridge_grid: candidate *relative* ridge strengths (multiples of the mean eigenvalue
            of the centred Gram matrix ``SᵀS``; see the module docstring).
        holdout: fraction of the fit samples held out (seeded, uniformly at random) to
            choose the ridge strength. A one-element grid skips the held-out part.
        seed: seed of the held-out split.

    Learned attributes:
        weight_ (d_s, d), bias_ (d,): ``transform(s) = s weight_ + bias_``.
        ridge_: the chosen relative ridge strength; ridge_abs_: the absolute one used in
            the final fit on all samples.
        heldout_mse_: dict relative ridge -> held-out mean of ``‖t − p(s)‖²`` (empty for a
            one-element grid).
    """

    def __init__(self, ridge_grid: Sequence[float] = DEFAULT_RIDGE_GRID, holdout: float = 0.2,
                 seed: int = 0):
        self.ridge_grid = ridge_grid
        self.holdout = holdout
        self.seed = seed

    def fit(self, s_fit: Array, t_fit: Array
            ) -> RidgeConnector:
        """Fit on student features s_fit (n, d_s) and teacher features t_fit (n, d)."""
        # strongest first, so that strict '<' in the selection hands ties to the larger ridge
        grid = sorted(_check_penalty_grid(self.ridge_grid, "ridge_grid"), reverse=True)
        holdout = _check_fraction(self.holdout, "holdout")
        s_fit = as_features(s_fit, "s_fit")
        t_fit = as_features(t_fit, "t_fit")
        n = s_fit.shape[0]
        if t_fit.shape[0] != n:
            raise IJCKDError(f"`t_fit` must have {n} rows like `s_fit` (paired samples), "
                             f"got {t_fit.shape[0]}")
        out_dtype = s_fit.dtype
        # float64: the Gram matrix of 10^4 samples loses too many digits in float32 for an
        # almost unregularised fit, and at d_s = 512 the float64 cost is a fraction of a second
        s = s_fit.to(torch.float64)
        t = t_fit.to(device=s.device, dtype=torch.float64)
        # a constant column centred on its own value is exactly zero (its float64 mean can
        # differ from the value in the last digit), so it cannot enter the fit as noise
        constant = s.max(dim=0).values == s.min(dim=0).values
        offset_s = torch.where(constant, s[0], s.mean(dim=0))
        offset_t = t.mean(dim=0)
        s, t = s - offset_s, t - offset_t

        self.heldout_mse_ = {}
        if len(grid) == 1:
            chosen = grid[0]
            moments_all = _moments(s, t)
        else:
            n_held = int(math.floor(n * holdout + 0.5))
            if n_held < 1 or n - n_held < 2:
                raise IJCKDError(f"cannot hold out {holdout:.0%} of {n} fit samples to choose "
                                 "the ridge strength: need at least 3 samples")
            generator = torch.Generator().manual_seed(int(self.seed))
            permutation = torch.randperm(n, generator=generator).to(s.device)
            held, part = permutation[:n_held], permutation[n_held:]
            moments_part, moments_held = _moments(s[part], t[part]), _moments(s[held], t[held])
            moments_all = _merge(moments_part, moments_held)
            mean_s, mean_t, eigenvalues, eigenvectors, projected_cross, scale = \
                _ridge_basis(moments_part)
            # held-out residual R − P D B with P = (S_h − μ_s) V, D = diag(1/(λ+α)),
            # B = Vᵀ S_cᵀ T_c: ‖R − PDB‖² = ‖R‖² − 2 Σ_i D_i (B∘PᵀR)_i· + Σ_ij D_i D_j
            # (PᵀP)_ij (BBᵀ)_ij, so after three products every α of the grid is O(d_s²)
            held_projected = (s[held] - mean_s) @ eigenvectors
            held_target = t[held] - mean_t
            linear_term = (projected_cross * (held_projected.T @ held_target)).sum(dim=1)
            quadratic_term = (held_projected.T @ held_projected) * (
                projected_cross @ projected_cross.T)
            target_energy = float(held_target.pow(2).sum())
            best = None
            for ridge in grid:
                shrink = 1.0 / (eigenvalues + ridge * scale)
                energy = target_energy - 2 * float(shrink @ linear_term) + float(
                    shrink @ quadratic_term @ shrink)
                mse = max(energy, 0.0) / n_held
                self.heldout_mse_[ridge] = mse
                if best is None or mse < best[0]:
                    best = (mse, ridge)
            chosen = best[1]

        mean_s, mean_t, eigenvalues, eigenvectors, projected_cross, scale = \
            _ridge_basis(moments_all)
        ridge_abs = chosen * scale
        weight = eigenvectors @ (projected_cross / (eigenvalues + ridge_abs).unsqueeze(1))
        self.weight_ = weight.to(out_dtype)
        self.bias_ = (offset_t + mean_t - (offset_s + mean_s) @ weight).to(out_dtype)
        self.ridge_ = float(chosen)
        self.ridge_abs_ = float(ridge_abs)
        return self

    def transform(self, s: Array) -> torch.Tensor:
        """Student features s (n, d_s) mapped into teacher space: (n, d)."""
        _not_fitted(self)
        s = as_features(s, "s", dim=self.weight_.shape[0], like="the fitted `s_fit`")
        return torch.addmm(self.bias_, s.to(self.weight_), self.weight_)


def fit_connector(s_fit: Array, t_fit: Array,
                  **kwargs: Any) -> RidgeConnector:
    """A ``RidgeConnector(**kwargs)`` fitted on s_fit (n, d_s) -> t_fit (n, d)."""
    return RidgeConnector(**kwargs).fit(s_fit, t_fit)
