"""Fitted classifiers on features: the logistic probe, the joint classifier, domain classifiers.

All follow the scikit-learn contract: hyperparameters in ``__init__``, ``fit`` returns
``self``, learned attributes end in ``_``, and fitting twice equals fitting once (every
random choice comes from an explicit seed, and ``fit`` never reuses an earlier fit).

Their objectives and gradients are written in torch and run on the device of their
input; the L-BFGS steps between evaluations (scipy's L-BFGS-B, on the CPU, on the K·d
parameters) cost little beside them. Computation happens in float64 when the input is
float64 and in float32 otherwise (losses summed in float64): the probes are convex (or,
for the MLP, small), features are standardised internally, and float32 halves the cost of
the matmuls that dominate at n = 10,000, d = 512, K = 100.

docs/theory.md names the terms these parts serve: ``teacher_probe_err``, ``student_probe_err``
and ``connected_probe_err`` (``LogisticProbe``, one recipe on ``t(x)``, ``s(x)``, ``z_S``),
``joint_err_T``/``joint_err_S`` (``fit_joint_classifier``, the candidate for ``ĥ*`` beside
``h_T``; the choice is made on the evaluation split by ``composite.choose_joint``),
``proxy_a_linear``/``proxy_a_mlp`` (``DomainClassifier`` + ``domain_errors`` +
``proxy_a_distance``).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.blockpass import matmul_nt
from ijckd_bounds.estimators.rowwise import all_finite

__all__ = [
    "LogisticProbe",
    "JointClassifier",
    "fit_joint_classifier",
    "DomainClassifier",
    "domain_errors",
    "proxy_a_distance",
    "holdout_split",
]

# what the estimators take: a tensor, or an array torch.as_tensor reads
Array = torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------------------
# Input checks (shared with ridge_connector.py)


def as_tensor(x, name, expected):
    """A CPU tensor of the numbers in ``x`` (numpy array, nested lists, scalar), or an
    ``IJCKDError`` saying that ``name`` must be ``expected``."""
    try:
        array = np.asarray(x)
    except (TypeError, ValueError):  # ragged nested lists
        raise IJCKDError(f"`{name}` must be {expected}, got {type(x).__name__}") from None
    if array.dtype.kind not in "biufc":
        raise IJCKDError(f"`{name}` must hold numbers, got dtype {array.dtype}")
    if not array.dtype.isnative:  # big-endian arrays (from another machine's files)
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:
        array = array.astype(np.int64)  # torch lacks most ops on uint16/32/64
    try:
        return torch.as_tensor(array)
    except (TypeError, ValueError, RuntimeError):
        raise IJCKDError(f"`{name}` must be {expected}, got {type(x).__name__}") from None


def as_features(x, name, *, dim=None, like=None, rows="n", integers_as=torch.float32):
    """``x`` as a 2-D floating tensor (rows, d) with finite entries, or an ``IJCKDError``.

    ``dim`` (int) is the width it must have; ``like`` names where that width comes from
    and ``rows`` what the rows count, both for the message. Numpy arrays and nested lists
    become CPU tensors; tensors keep their device and are detached (the estimates are
    statistics of the features, not part of a graph). Integer inputs become
    ``integers_as``.
    """
    if not torch.is_tensor(x):
        x = as_tensor(x, name, "a 2-D array of features")
    x = x.detach()
    if x.dim() != 2:
        raise IJCKDError(f"`{name}` must be 2-D with shape ({rows}, d), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise IJCKDError(f"`{name}` must hold real numbers, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(integers_as)
    if dim is not None and x.shape[1] != dim:
        source = f" like {like}" if like else ""
        raise IJCKDError(f"`{name}` must have shape ({rows}, {dim}){source}, "
                         f"got ({rows}, {x.shape[1]})")
    if x.shape[0] == 0:
        raise IJCKDError(f"`{name}` is empty (shape {tuple(x.shape)})")
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise IJCKDError(f"`{name}` has NaN or infinite values in {bad} of {x.shape[0]} rows")
    return x


def as_labels(y, name, n, *, num_classes=None, x_name="x"):
    """``y`` as a 1-D long tensor (n,) of class indices in ``0..num_classes-1``."""
    if not torch.is_tensor(y):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise IJCKDError(f"`{name}` must be a 1-D array of class indices, "
                             f"got {type(y).__name__}") from None
    if y.dim() != 1 or y.shape[0] != n:
        raise IJCKDError(f"`{name}` must have shape ({n},) like the rows of `{x_name}`, "
                         f"got {tuple(y.shape)}")
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise IJCKDError(f"`{name}` must hold integer class indices, got fractional values")
    elif y.dtype == torch.bool or y.is_complex():
        raise IJCKDError(f"`{name}` must hold integer class indices, got dtype {y.dtype}")
    y = y.long()
    if n and int(y.min()) < 0:
        raise IJCKDError(f"`{name}` must hold class indices >= 0, got {int(y.min())}")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise IJCKDError(f"`{name}` must hold class indices < num_classes={num_classes}, "
                         f"got {int(y.max())}")
    return y


def _check_fraction(value, name):
    if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
        raise IJCKDError(f"`{name}` must be a fraction strictly between 0 and 1, got {value!r}")
    return float(value)


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise IJCKDError(f"`{name}` must be a positive integer, got {value!r}")
    return value


def _check_penalty_grid(grid, name):
    values = [grid] if isinstance(grid, (int, float)) else grid
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise IJCKDError(f"`{name}` must be a sequence of numbers, got {grid!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise IJCKDError(f"`{name}` must be a non-empty sequence of positive finite numbers, "
                         f"got {grid!r}")
    return values


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _not_fitted(estimator, attribute="weight_"):
    if not hasattr(estimator, attribute):
        name = type(estimator).__name__
        raise IJCKDError(f"this {name} is not fitted yet; call fit(...) first")


def _as_rows(rows, n, device):
    """``rows`` as a 1-D long index tensor into ``n`` rows, or an ``IJCKDError``."""
    rows = torch.as_tensor(rows)
    if rows.dim() != 1 or rows.dtype in (torch.bool, torch.float16, torch.float32,
                                          torch.float64) or rows.is_complex():
        raise IJCKDError(f"`rows` must be a 1-D array of row indices, got shape "
                         f"{tuple(rows.shape)} and dtype {rows.dtype}")
    rows = rows.long().to(device)
    if rows.numel() == 0:
        raise IJCKDError("`rows` selects no rows")
    if int(rows.min()) < 0 or int(rows.max()) >= n:
        raise IJCKDError(f"`rows` must hold indices in [0, {n}), got values from "
                         f"{int(rows.min())} to {int(rows.max())}")
    return rows


# ----------------------------------------------------------------------------------------
# Splits


def holdout_split(y, holdout, seed, *, groups=None):
    """Seeded, class-stratified split of samples into a fitting and a held-out part.

    Args:
        y: (n,) long class indices.
        holdout: fraction of each class to hold out (rounded to nearest; every class with
            at least two members keeps at least one member in the fitting part).
        seed: int; the split depends on nothing else (not on the device).
        groups: optional (n,) long group ids; samples of one group land on the same side
            (e.g. the teacher and student features of one input). Each group must carry a
            single label.

    Returns:
        ``(fit_idx, held_idx)``: two sorted (m,) long tensors on ``y``'s device.
    """
    device = y.device
    y_cpu = y.detach().cpu().long()
    if groups is None:
        unit_labels = y_cpu
        unit_of_sample = None
    else:
        group_ids, unit_of_sample = torch.unique(groups.detach().cpu(), return_inverse=True)
        unit_labels = torch.full((group_ids.numel(),), -1, dtype=torch.long)
        unit_labels.scatter_(0, unit_of_sample, y_cpu)
        if not bool((unit_labels[unit_of_sample] == y_cpu).all()):
            raise IJCKDError("`groups` must not mix labels: samples of one group share a label")
    n_units = unit_labels.numel()
    generator = torch.Generator().manual_seed(int(seed))
    permutation = torch.randperm(n_units, generator=generator)
    # a stable sort by label after a random permutation shuffles within each class
    order = permutation[torch.sort(unit_labels[permutation], stable=True).indices]
    sorted_labels = unit_labels[order]
    counts = torch.bincount(sorted_labels)
    class_start = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n_units) - class_start[sorted_labels]
    n_held = torch.floor(counts.double() * holdout + 0.5).long()
    n_held = torch.minimum(n_held, (counts - 1).clamp(min=0))
    held_units = torch.zeros(n_units, dtype=torch.bool)
    held_units[order] = rank_in_class < n_held[sorted_labels]
    held = held_units if unit_of_sample is None else held_units[unit_of_sample]
    fit_idx = torch.nonzero(~held).squeeze(1)
    held_idx = torch.nonzero(held).squeeze(1)
    return fit_idx.to(device), held_idx.to(device)


# ----------------------------------------------------------------------------------------
# Multinomial logistic regression by full-batch L-BFGS


def _standardisation(x):
    """Per-feature mean and scale of x (n, d), shapes (d,), for ``(x - mean) / scale``.

    A constant column gets its own value as mean and scale 1, so it standardises to exact
    zeros: its computed std is not 0 in float32 (a column of 0.1 gives about 1e-8), and
    dividing by it would blow rounding noise up into a unit-variance feature.
    """
    # separate amin/amax and a two-pass variance: torch.aminmax and torch.var_mean
    # reduce over dim 0 of a row-major matrix about ten times slower (12 ms each against
    # 1-2 ms at 7,500 × 512 float32, and the report standardises a dozen such matrices)
    constant = x.amin(dim=0) == x.amax(dim=0)
    mean = x.mean(dim=0)
    variance = (x - mean).square_().mean(dim=0)
    mean = torch.where(constant, x[0], mean)
    scale = torch.where(constant, torch.ones_like(mean), variance.sqrt())
    return mean, scale


def _to_standardised(weight, bias, mean, scale):
    """Raw-input parameters -> parameters on ``(x - mean) / scale``."""
    return weight * scale, bias + weight @ mean


def _to_raw(weight, bias, mean, scale):
    """Parameters on ``(x - mean) / scale`` -> parameters on raw ``x``."""
    raw_weight = weight / scale
    return raw_weight, bias - raw_weight @ mean


def _minimise(objective, start, *, max_iter, tol):
    """Minimise a smooth function of a flat parameter vector by L-BFGS.

    objective: maps a float64 numpy vector (P,) to ``(loss, gradient)``, a float and a
        float64 numpy vector (P,).
    start: float64 numpy vector (P,).
    Stops when the largest gradient entry is at most ``tol`` (the criterion of
    scikit-learn's lbfgs solver), after ``max_iter`` iterations, or after
    ``max_iter·5/4 + 1`` evaluations. Returns the last accepted point, float64 (P,).

    The optimizer is scipy's L-BFGS-B (history 10, strong-Wolfe line search): its
    bookkeeping on the P = K·d parameters runs in compiled single-threaded code, while
    ``objective`` does the heavy work in torch. torch.optim.LBFGS does that bookkeeping as
    about fifty small parallel tensor ops per iteration, and each parallel op waits for
    every OpenMP thread: on a machine shared with other jobs that waiting cost more than
    the evaluations themselves.
    """
    from scipy.optimize import minimize

    with _single_threaded_blas():
        result = minimize(objective, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "maxfun": max_iter * 5 // 4 + 1,
                                   "maxcor": 10, "gtol": tol, "maxls": 50,
                                   # no relative-decrease stop: the gradient decides
                                   "ftol": 64 * np.finfo(np.float64).eps})
    return result.x


_blas_controller = None  # threadpoolctl.ThreadpoolController, made at first use


def _single_threaded_blas():
    """A context in which scipy's and numpy's OpenBLAS run on one thread.

    L-BFGS-B calls BLAS on vectors of K·d entries: too little work to share, and
    OpenBLAS's helper threads spin after each call, taking a core from the torch threads
    that evaluate the objective (two torch threads on two cores shared with one other busy
    process: the student probe at n = 7,500, d = 512, K = 100 took 1.6 times, the MLP
    domain classifier 2.8 times as long without this). torch's own BLAS is not affected.
    Without threadpoolctl (a dependency of scikit-learn), nothing changes.
    """
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
            _blas_controller = False
        else:
            # inspecting the loaded libraries takes a millisecond or two: once is enough
            # (scipy.optimize, imported by the caller, has loaded its BLAS by now)
            _blas_controller = ThreadpoolController()
    if _blas_controller is False:  # pragma: no cover
        from contextlib import nullcontext

        return nullcontext()
    return _blas_controller.limit(limits=1, user_api="blas")


def _torch_objective(loss_and_grad, like):
    """Wrap ``loss_and_grad`` (a tensor (P,) on ``like``'s device and dtype -> (loss
    tensor, gradient (P,))) as the float64 numpy objective of ``_minimise``."""

    def objective(theta):
        loss, grad = loss_and_grad(torch.from_numpy(theta).to(like))
        return float(loss), grad.to(torch.float64).cpu().numpy()

    return objective


def _squared_norm(v):
    """‖v‖² of a 1-D tensor, accumulated in float64."""
    return torch.dot(v, v) if v.dtype == torch.float64 else v.double().pow(2).sum()


def _softmax_loss_and_grad(x_std, y, num_classes, l2):
    """Mean cross-entropy + ``l2·‖W‖²/2`` and its gradient, by hand.

    x_std (n, d), y (n,) in 0..num_classes-1. The returned function maps the flat
    parameters ``[W.ravel(), b]`` (K·d + K,) to ``(loss (), gradient (K·d + K,))``:
    ``∂/∂logits = (softmax − onehot)/n``, ``∂W = (∂logits)ᵀ x + l2·W``, ``∂b = Σ ∂logits``.
    Written out rather than through autograd: it saves the intermediate copies autograd
    keeps, which matters at n·K = 10⁶ entries per evaluation.
    """
    n, d = x_std.shape
    targets = y[:, None]
    minus_one = torch.full((n, 1), -1.0, dtype=x_std.dtype, device=x_std.device)

    def loss_and_grad(theta):
        weight = theta[:num_classes * d].view(num_classes, d)
        bias = theta[num_classes * d:]
        logits = matmul_nt(x_std, weight, bias)
        log_normaliser = torch.logsumexp(logits, dim=1)
        # per-sample terms first, summed in float64: in float32 the two sums would cancel
        # and hide the small decreases the line search must see near the optimum
        loss = (log_normaliser - logits.gather(1, targets).squeeze(1)).sum(
            dtype=torch.float64) / n + 0.5 * l2 * _squared_norm(theta[:num_classes * d])
        residual = logits.sub_(log_normaliser[:, None]).exp_()  # softmax, in place
        residual.scatter_add_(1, targets, minus_one)
        grad_weight = matmul_nt(residual.T, x_std.T).mul_(1.0 / n).add_(weight, alpha=l2)
        grad_bias = residual.sum(dim=0) / n
        return loss, torch.cat([grad_weight.reshape(-1), grad_bias])

    return loss_and_grad


def _fit_softmax(x_std, y, num_classes, l2, weight, bias, *, max_iter, tol):
    """Minimise mean cross-entropy + l2·‖W‖²/2 (bias unpenalised) from ``(weight, bias)``.

    x_std (n, d) standardised features, y (n,) in 0..num_classes-1, weight (K, d),
    bias (K,). Returns the fitted ``(weight, bias)`` (new tensors).
    """
    k, d = weight.shape
    start = torch.cat([weight.reshape(-1), bias]).to(torch.float64).cpu().numpy()
    objective = _torch_objective(_softmax_loss_and_grad(x_std, y, num_classes, l2), x_std)
    theta = torch.from_numpy(_minimise(objective, start, max_iter=max_iter, tol=tol))
    theta = theta.to(device=weight.device, dtype=weight.dtype)
    return theta[:k * d].view(k, d).clone(), theta[k * d:].clone()


def _argmax_error(x, y, weight, bias):
    """Fraction of rows of x (n, d) whose argmax of ``x Wᵀ + b`` differs from y (n,)."""
    return float((torch.addmm(bias, x, weight.T).argmax(dim=1) != y).double().mean())


class LogisticProbe:
    """Multinomial logistic regression with an L2 strength chosen on a held-out part.

    Objective: mean cross-entropy + ``l2·‖W‖²/2`` over standardised features (bias not
    penalised), minimised by full-batch L-BFGS with a strong-Wolfe line search. With
    ``C = 1 / (l2·n)`` this is scikit-learn's ``LogisticRegression`` on
    ``StandardScaler``-ed features.

    ``fit`` holds out a seeded, class-stratified ``holdout`` fraction, fits every l2 of
    the grid on the rest (strongest first, each warm-started from the previous), keeps the
    l2 with the lowest held-out error (ties go to the *larger* l2: at equal measured error
    the more regularised probe is the simpler hypothesis, whose error estimate is the
    more stable, and it is the cheaper one to refit), then refits on all samples with that
    l2, warm-started from the held-out fit. A one-element grid skips the held-out part.

    Args:
        l2_grid: candidate L2 strengths (positive).
        max_iter: L-BFGS iterations per fit (one per grid value, one for the refit).
        tol: stop when the largest entry of the gradient of the mean objective falls below
            ``tol``. The default 1e-4 is an order of magnitude below the sampling noise of
            those entries at n = 10⁴, K = 100 (about ``sqrt(1/(K·n))``): the fits stop
            where further iterations would only fit noise more precisely, typically after
            10-20 iterations.
        seed: seed of the held-out split.
        holdout: fraction of each class held out to choose l2.

    Learned attributes:
        weight_ (K, d), bias_ (K,): classifier on raw inputs, ``logits = x weight_ᵀ + bias_``.
            Classes absent from the training labels get zero weights and bias ``-inf``, so
            they are never predicted.
        l2_: the chosen L2 strength.
        classes_ (K_seen,): the class indices seen in training, sorted.
        heldout_errors_: dict l2 -> held-out error (empty for a one-element grid).
        num_classes_: K.
    """

    def __init__(self, l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
                 max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                 holdout: float = 0.25):
        self.l2_grid = l2_grid
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.holdout = holdout

    def fit(self, x: Array, y: Array, num_classes: int | None = None,
            groups: Array | None = None, rows: Array | None = None
            ) -> "LogisticProbe":
        """Fit on x (n, d) with labels y (n,) in ``0..num_classes-1``.

        ``num_classes`` defaults to ``max(y) + 1``. ``groups`` (n,) optionally keeps
        related samples (e.g. the teacher and student features of one input) on the same
        side of the held-out split. ``rows`` (m,) optionally fits on the rows ``rows`` of
        x, y and groups, in that order: the same fit as ``fit(x[rows], y[rows], ...)``
        without gathering ``x[rows]`` beside the copies the fit makes anyway.
        Returns ``self``.
        """
        return self._fit(x, y, num_classes, groups, rows=rows)

    def _fit(self, x, y, num_classes, groups, rows=None, *, overwrite=False):
        """``fit``; ``overwrite=True`` lets it standardise ``x`` in place (a copy the
        caller made and drops afterwards), which saves one copy of the features."""
        grid = sorted(_check_penalty_grid(self.l2_grid, "l2_grid"), reverse=True)
        max_iter = _check_positive_int(self.max_iter, "max_iter")
        if not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise IJCKDError(f"`tol` must be a positive number, got {self.tol!r}")
        holdout = _check_fraction(self.holdout, "holdout")
        x = as_features(x, "x")
        if num_classes is not None:
            num_classes = _check_positive_int(num_classes, "num_classes")
        y = as_labels(y, "y", x.shape[0], num_classes=num_classes).to(x.device)
        if groups is not None:
            groups = as_labels(groups, "groups", x.shape[0]).to(x.device)
        if rows is not None:
            rows = _as_rows(rows, x.shape[0], x.device)
            y = y[rows]
            groups = None if groups is None else groups[rows]
        if num_classes is None:
            num_classes = int(y.max()) + 1
        n_features, dtype = x.shape[1], _compute_dtype(x)

        def gather(index):
            """A new tensor: rows ``index`` of the (selected) samples, in ``dtype``."""
            return x[index if rows is None else rows[index]].to(dtype)

        classes = torch.unique(y)  # sorted
        self.heldout_errors_ = {}
        if classes.numel() == 1:
            chosen_l2 = grid[0]  # nothing to fit: report the strongest penalty
            weight = torch.zeros(1, n_features, dtype=dtype, device=x.device)
            bias = torch.zeros(1, dtype=dtype, device=x.device)
        else:
            # fit on the seen classes only: absent classes would push their bias to -inf
            y_seen = torch.searchsorted(classes, y)
            k_seen = classes.numel()
            start = None  # raw-input parameters of the held-out stage, for the warm start
            if len(grid) == 1:
                chosen_l2 = grid[0]
            else:
                fit_idx, held_idx = holdout_split(y_seen, holdout, self.seed, groups=groups)
                if held_idx.numel() == 0 or fit_idx.numel() == 0:
                    raise IJCKDError(
                        f"cannot hold out {holdout:.0%} of {y.shape[0]} samples per class "
                        "to choose l2: every class needs at least 2 samples")
                x_part_std, y_part = gather(fit_idx), y_seen[fit_idx]  # standardised next
                x_held, y_held = gather(held_idx), y_seen[held_idx]
                mean, scale = _standardisation(x_part_std)
                x_part_std.sub_(mean).div_(scale)
                weight = torch.zeros(k_seen, n_features, dtype=dtype, device=x.device)
                bias = torch.zeros(k_seen, dtype=dtype, device=x.device)
                best = None
                for l2 in grid:  # strongest first: each solution warm-starts the next
                    weight, bias = _fit_softmax(x_part_std, y_part, k_seen, l2, weight, bias,
                                                max_iter=max_iter, tol=self.tol)
                    raw = _to_raw(weight, bias, mean, scale)
                    error = _argmax_error(x_held, y_held, *raw)
                    self.heldout_errors_[l2] = error
                    if best is None or error < best[0]:  # strict: ties keep the larger l2
                        best = (error, l2, raw)
                _, chosen_l2, start = best
                del x_part_std, x_held  # before the refit makes its copy
            # the refit's standardised copy: in place where the features are a copy
            # already (gathered rows, another dtype, or the caller's own to overwrite)
            if rows is not None:
                x_std = x[rows].to(dtype)
            elif overwrite or x.dtype != dtype:
                x_std = x.to(dtype)
            else:
                x_std = None
            mean, scale = _standardisation(x if x_std is None else x_std)
            if start is None:
                weight = torch.zeros(k_seen, n_features, dtype=dtype, device=x.device)
                bias = torch.zeros(k_seen, dtype=dtype, device=x.device)
            else:
                weight, bias = _to_standardised(*start, mean, scale)
            x_std = x - mean if x_std is None else x_std.sub_(mean)
            del x
            x_std.div_(scale)
            weight, bias = _fit_softmax(x_std, y_seen, k_seen, chosen_l2,
                                        weight, bias, max_iter=max_iter, tol=self.tol)
            del x_std
            weight, bias = _to_raw(weight, bias, mean, scale)

        self.weight_ = torch.zeros(num_classes, n_features, dtype=dtype, device=weight.device)
        self.bias_ = torch.full((num_classes,), -math.inf, dtype=dtype, device=weight.device)
        self.weight_[classes] = weight
        self.bias_[classes] = bias
        self.l2_ = float(chosen_l2)
        self.classes_ = classes
        self.num_classes_ = num_classes
        return self

    def logits(self, x: Array) -> torch.Tensor:
        """Logits (n, K) of x (n, d); ``-inf`` in the columns of classes never seen."""
        _not_fitted(self)
        x = as_features(x, "x", dim=self.weight_.shape[1], like="the fitted features")
        return torch.addmm(self.bias_, x.to(self.weight_), self.weight_.T)

    def predict(self, x: Array) -> torch.Tensor:
        """Predicted class indices, long (n,)."""
        return self.logits(x).argmax(dim=1)

    def error(self, x: Array, y: Array) -> float:
        """Misclassification rate (float) on x (n, d), y (n,)."""
        predicted = self.predict(x)
        y = as_labels(y, "y", predicted.shape[0]).to(predicted.device)
        return float((predicted != y).double().mean())


# ----------------------------------------------------------------------------------------
# The joint classifier ĥ* of docs/theory.md's joint_err rows


@dataclass(frozen=True)
class JointClassifier:
    """The joint probe: the fitted candidate for ``ĥ*`` beside ``h_T``.

    docs/theory.md's ``ĥ*`` is the one of ``h_T`` and this probe with the smaller joint error
    ``ε_T(h) + ε_S(h)`` on the *evaluation* split (integer counts, ``h_T`` on a tie),
    chosen again in every bootstrap replicate: ``composite.choose_joint`` makes that
    choice; this class only holds the probe.

    Attributes:
        weight (K, d), bias (K,): the probe, a linear classifier on teacher-space
            features. Classes absent from the fit split carry bias ``-inf``.
        l2: the L2 strength the probe chose on its nested held-out part.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (n, K) of features z (n, d)."""
        return torch.addmm(self.bias, z.to(self.weight), self.weight.T)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted class indices, long (n,)."""
        return self.logits(z).argmax(dim=1)


def fit_joint_classifier(z_t_fit: Array, z_s_fit: Array, y_fit: Array,
                         weight: torch.Tensor, bias: torch.Tensor, *, seed: int = 0,
                         probe_kwargs: dict[str, Any] | None = None,
                         rows: Array | None = None) -> JointClassifier:
    """Fit the joint probe, the candidate for ``ĥ* = argmin_h ε_T(h) + ε_S(h)`` beside h_T.

    A ``LogisticProbe`` is fitted on the union of teacher and student features of the
    *whole* fit split (labels duplicated). Its own L2 strength is chosen on a nested,
    seeded, class-stratified held-out part of those pairs, the two features of one input
    kept on the same side. The choice between the probe and ``h_T`` is not made here: it
    is made on the evaluation split (``composite.choose_joint``).

    Args:
        z_t_fit (n, d), z_s_fit (n, d): teacher and (connected) student features of the
            fit split, row i of both from the same input.
        y_fit (n,): labels in ``0..K-1``.
        weight (K, d), bias (K,): the teacher classifier ``h_T`` (checked against the
            features; it sets K and the dtype and device of the result).
        seed: seed of the probe's nested held-out split.
        probe_kwargs: extra ``LogisticProbe`` hyperparameters (``seed`` defaults to ``seed``).
        rows (m,): use the fit pairs ``rows``, in that order: the same as passing
            ``z_t_fit[rows], z_s_fit[rows], y_fit[rows]`` without gathering them whole.

    Returns:
        ``JointClassifier`` with weight/bias on the device and dtype of ``weight``.
    """
    z_t_fit = as_features(z_t_fit, "z_t_fit")
    n, d = z_t_fit.shape
    z_s_fit = as_features(z_s_fit, "z_s_fit", dim=d, like="`z_t_fit`")
    if z_s_fit.shape[0] != n:
        raise IJCKDError(f"`z_s_fit` must have {n} rows like `z_t_fit` (paired samples), "
                         f"got {z_s_fit.shape[0]}")
    weight = as_features(weight, "weight", dim=d, like="`z_t_fit`", rows="K")
    num_classes = weight.shape[0]
    if not torch.is_tensor(bias):
        bias = torch.as_tensor(bias)
    if bias.shape != (num_classes,):
        raise IJCKDError(f"`bias` must have shape ({num_classes},) like the rows of `weight`, "
                         f"got {tuple(bias.shape)}")
    if not bool(torch.isfinite(bias).all()):
        raise IJCKDError("`bias` has NaN or infinite values")
    y_fit = as_labels(y_fit, "y_fit", n, num_classes=num_classes, x_name="z_t_fit")
    device, dtype = z_t_fit.device, _compute_dtype(z_t_fit)
    z_s_fit = z_s_fit.to(device)
    y_fit = y_fit.to(device)
    if rows is not None:
        rows = _as_rows(rows, n, device)
        y_fit, n = y_fit[rows], rows.numel()
    else:
        rows = torch.arange(n, device=device)
    # gathered straight into one tensor, which the probe may then standardise in place
    union = torch.empty(2 * n, d, dtype=dtype, device=device)
    for part, z in ((union[:n], z_t_fit), (union[n:], z_s_fit)):
        if z.dtype == dtype:
            torch.index_select(z, 0, rows, out=part)
        else:
            part.copy_(z[rows])
    union_labels = torch.cat([y_fit, y_fit])
    pair_ids = torch.arange(n, device=device).repeat(2)
    options = {"seed": seed, **(probe_kwargs or {})}
    probe = LogisticProbe(**options)._fit(union, union_labels, num_classes, pair_ids,
                                          overwrite=True)
    del union
    return JointClassifier(
        weight=probe.weight_.to(device=weight.device, dtype=weight.dtype),
        bias=probe.bias_.to(device=weight.device, dtype=weight.dtype),
        l2=probe.l2_,
    )


# ----------------------------------------------------------------------------------------
# Domain classifiers and the proxy A-distance


def _split_mlp(theta, hidden, d):
    """Views ``(W1 (hidden, d), b1 (hidden,), w2 (hidden,), b2 ())`` of flat parameters."""
    w1 = theta[:hidden * d].view(hidden, d)
    b1 = theta[hidden * d:hidden * (d + 1)]
    w2 = theta[hidden * (d + 1):hidden * (d + 2)]
    return w1, b1, w2, theta[-1]


def _mlp_loss_and_grad(x_std, domain, hidden, l2):
    """Binary cross-entropy of a one-hidden-layer ReLU network + ``l2/2·(‖W1‖² + ‖w2‖²)``
    and its gradient, by hand (see ``_softmax_loss_and_grad``).

    x_std (n, d), domain (n,) 0/1 in x_std's dtype. The returned function maps the flat
    parameters ``[W1.ravel(), b1, w2, b2]`` to ``(loss (), gradient (P,))``.
    """
    n, d = x_std.shape

    def loss_and_grad(theta):
        w1, b1, w2, b2 = _split_mlp(theta, hidden, d)
        activation = matmul_nt(x_std, w1, b1).clamp_(min=0.0)  # (n, hidden)
        logit = torch.addmv(b2, activation, w2)
        loss = F.binary_cross_entropy_with_logits(logit, domain, reduction="none").sum(
            dtype=torch.float64) / n \
            + 0.5 * l2 * (_squared_norm(w1.reshape(-1)) + _squared_norm(w2))
        residual = (torch.sigmoid(logit) - domain) / n  # ∂loss/∂logit
        grad_w2 = torch.addmv(w2, activation.T, residual, beta=l2)
        # ∂loss/∂(pre-activation): the ReLU passes the gradient where it is active
        hidden_residual = torch.outer(residual, w2).mul_(activation > 0)
        grad_w1 = matmul_nt(hidden_residual.T, x_std.T).add_(w1, alpha=l2)
        return loss, torch.cat([grad_w1.reshape(-1), hidden_residual.sum(dim=0), grad_w2,
                                residual.sum().reshape(1)])

    return loss_and_grad


class DomainClassifier:
    """Tells teacher features (domain 0) from student features (domain 1).

    ``kind="linear"``: logistic regression (``LogisticProbe`` with the single L2 strength
    ``l2``). ``kind="mlp"``: one hidden ReLU layer of width ``hidden`` and one output
    logit, binary cross-entropy + ``l2/2·(‖W1‖² + ‖w2‖²)`` on standardised inputs,
    full-batch L-BFGS for at most ``max_iter`` iterations from a seeded initialisation
    (nn.Linear's default, drawn on the CPU). ``max_iter=50``: on 2 × 10⁴ features of
    width 512 the proxy A-distance changes by about 0.02 between 50 and 200 iterations,
    while the cost (the first layer, 2·n·d·hidden flops per pass) grows fourfold.

    Learned attributes (raw-input parameters, standardisation folded in):
        linear: weight_ (2, d), bias_ (2,).
        mlp: hidden_weight_ (hidden, d), hidden_bias_ (hidden,), out_weight_ (hidden,),
            out_bias_ (scalar tensor).
    """

    def __init__(self, kind: str = "linear", hidden: int = 64, max_iter: int = 50,
                 l2: float = 1e-3, seed: int = 0, tol: float = 1e-4):
        self.kind = kind
        self.hidden = hidden
        self.max_iter = max_iter
        self.l2 = l2
        self.seed = seed
        self.tol = tol

    def fit(self, z_t_fit: Array, z_s_fit: Array, rows: Array | None = None
            ) -> "DomainClassifier":
        """Fit on teacher features z_t_fit (n, d) and student features z_s_fit (m, d).

        ``rows`` (r,): fit on the rows ``rows`` of both, in that order (the same as
        passing ``z_t_fit[rows], z_s_fit[rows]``, without gathering them first)."""
        if self.kind not in ("linear", "mlp"):
            raise IJCKDError(f"`kind` must be 'linear' or 'mlp', got {self.kind!r}")
        max_iter = _check_positive_int(self.max_iter, "max_iter")
        if not (isinstance(self.l2, (int, float)) and math.isfinite(self.l2) and self.l2 >= 0):
            raise IJCKDError(f"`l2` must be a non-negative number, got {self.l2!r}")
        z_t_fit = as_features(z_t_fit, "z_t_fit")
        z_s_fit = as_features(z_s_fit, "z_s_fit", dim=z_t_fit.shape[1], like="`z_t_fit`")
        # one new tensor [z_t; z_s] in the compute dtype, which the fit then standardises
        # in place
        if rows is None:
            n_t, n_s = z_t_fit.shape[0], z_s_fit.shape[0]
        else:
            rows = _as_rows(rows, min(z_t_fit.shape[0], z_s_fit.shape[0]), z_t_fit.device)
            n_t = n_s = rows.numel()
        x = torch.empty(n_t + n_s, z_t_fit.shape[1], dtype=_compute_dtype(z_t_fit),
                        device=z_t_fit.device)
        for part, z in ((x[:n_t], z_t_fit), (x[n_t:], z_s_fit)):
            if rows is None:
                part.copy_(z)
            elif z.dtype == part.dtype and z.device == part.device:
                torch.index_select(z, 0, rows, out=part)
            else:
                part.copy_(z[rows.to(z.device)])
        del z_t_fit, z_s_fit
        domain = torch.cat([torch.zeros(n_t, dtype=torch.long),
                            torch.ones(n_s, dtype=torch.long)]).to(x.device)
        for attribute in ("weight_", "bias_", "hidden_weight_", "hidden_bias_", "out_weight_",
                          "out_bias_"):
            self.__dict__.pop(attribute, None)
        if self.kind == "linear":
            # l2 = 0 is allowed here but not in the probe's grid: use a vanishing penalty
            probe = LogisticProbe(l2_grid=(max(self.l2, 1e-12),), max_iter=max_iter,
                                  tol=self.tol, seed=self.seed)._fit(x, domain, 2, None,
                                                                     overwrite=True)
            self.weight_, self.bias_ = probe.weight_, probe.bias_
        else:
            self._fit_mlp(x, domain.to(x.dtype), max_iter)
        return self

    def _fit_mlp(self, x, domain, max_iter):
        hidden = _check_positive_int(self.hidden, "hidden")
        mean, scale = _standardisation(x)
        x_std = x.sub_(mean).div_(scale)  # x is fit's own concatenation
        d = x.shape[1]
        # nn.Linear's default initialisation, drawn from a CPU generator so the result
        # does not depend on the device
        generator = torch.Generator().manual_seed(int(self.seed))

        def uniform(shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound

        start = torch.cat([uniform((hidden, d), d).reshape(-1), uniform((hidden,), d),
                           uniform((hidden,), hidden), uniform((1,), hidden)]).numpy()
        objective = _torch_objective(_mlp_loss_and_grad(x_std, domain, hidden, float(self.l2)),
                                     x_std)
        theta = torch.from_numpy(_minimise(objective, start, max_iter=max_iter, tol=self.tol))
        w1, b1, w2, b2 = _split_mlp(theta.to(x_std), hidden, d)
        self.hidden_weight_, self.hidden_bias_ = _to_raw(w1, b1, mean, scale)
        self.out_weight_, self.out_bias_ = w2.clone(), b2.clone()

    def predict_domain(self, z: Array) -> torch.Tensor:
        """Predicted domain of each row of z (n, d): long (n,), 0 = teacher, 1 = student."""
        if self.kind == "linear":
            _not_fitted(self, "weight_")
            z = as_features(z, "z", dim=self.weight_.shape[1], like="the fitted features")
            return torch.addmm(self.bias_, z.to(self.weight_), self.weight_.T).argmax(dim=1)
        _not_fitted(self, "hidden_weight_")
        z = as_features(z, "z", dim=self.hidden_weight_.shape[1], like="the fitted features")
        activation = torch.relu(torch.addmm(self.hidden_bias_, z.to(self.hidden_weight_),
                                            self.hidden_weight_.T))
        return (activation @ self.out_weight_ + self.out_bias_ > 0).long()


def domain_errors(clf: DomainClassifier, z_t_eval: Array, z_s_eval: Array
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample domain misclassifications on the evaluation split.

    Args:
        clf: a fitted ``DomainClassifier``.
        z_t_eval (n, d), z_s_eval (n, d): teacher and student features, paired by row.

    Returns:
        ``(err_t, err_s)``, two bool (n,) tensors: ``err_t[i]`` is true when the teacher
        feature of input i is called a student feature, ``err_s[i]`` the converse. Keeping
        them per input lets a bootstrap resample inputs with both features together.
    """
    z_t_eval = as_features(z_t_eval, "z_t_eval")
    z_s_eval = as_features(z_s_eval, "z_s_eval", dim=z_t_eval.shape[1], like="`z_t_eval`")
    if z_s_eval.shape[0] != z_t_eval.shape[0]:
        raise IJCKDError(f"`z_s_eval` must have {z_t_eval.shape[0]} rows like `z_t_eval` "
                         f"(paired samples), got {z_s_eval.shape[0]}")
    return clf.predict_domain(z_t_eval) != 0, clf.predict_domain(z_s_eval) != 1


def proxy_a_distance(err_t: Array, err_s: Array) -> float:
    """Proxy A-distance ``clip(2(1 − 2·err_dom), 0, 2)``, ``err_dom = (mean err_t + mean err_s)/2``.

    err_t (n,), err_s (m,): per-sample domain misclassification indicators (bool or 0/1).
    """
    err_t, err_s = torch.as_tensor(err_t), torch.as_tensor(err_s)
    if err_t.dim() != 1 or err_s.dim() != 1 or err_t.numel() == 0 or err_s.numel() == 0:
        raise IJCKDError(f"`err_t` and `err_s` must be non-empty 1-D indicator arrays, got "
                         f"shapes {tuple(err_t.shape)} and {tuple(err_s.shape)}")
    err_dom = 0.5 * (float(err_t.double().mean()) + float(err_s.double().mean()))
    return min(max(2.0 * (1.0 - 2.0 * err_dom), 0.0), 2.0)
