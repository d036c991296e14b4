"""How far the intervals can be trusted: coverage of every interval of ``estimate_bounds``
on simulated data whose population values are known.

    python experiments/validity.py                 # the published table (see the README)
    python experiments/validity.py --quick         # smoke test, about a minute
    python experiments/validity.py --jobs 2        # cells in two worker processes

Re-running the same command finishes the missing cells only (every block of replicates is
its own file under ``--work``); ``--force`` starts over. The tables are written to
``--out`` (default ``experiments/validity``): ``coverage.csv`` (one row per scenario × n ×
d × term × target), ``mmd_test.csv`` (the permutation test's level and power) and
``table.md`` (what the README shows).

The generating model (every quantity below has a closed form or an exact reduction to the
plane of the class means, so its population value does not depend on ``d``'s cost):

- ``y`` uniform on K = 3 classes; class means ``μ_k = r·(cos 2πk/3, sin 2πk/3, 0, …, 0)``
  in ``R^d`` (r = 1.75);
- teacher features ``z_T = μ_y + ε``, ``ε ~ N(0, I_d)``;
- student features ``z_S = μ_y + c + ρ·ε + sqrt(1 − ρ²)·ε'``, ``ε' ~ N(0, I_d)``
  independent, ρ = 0.8: given y, ``z_S`` has the law of ``z_T`` moved by ``c``;
- the teacher classifier ``h_T`` is the nearest class mean (``W = μ``, ``b = −‖μ_k‖²/2``),
  Bayes-optimal for ``z_T``; the student's own head is the nearest *moved* class mean, and
  the student's own features are ``s(x) = z_S`` (an identity connector).

Scenarios: ``aligned`` (c = 0: both domains have one law, ``h_T`` is Bayes-optimal on both,
so λ* = λ(h_T), ijc_gap = pair_disc = MMD² = 0, and the pair (z_T, z_S) is exchangeable,
which makes the sign-flip test exact) and ``shifted`` (c = 1.5 along the first axis:
``h_T`` loses on z_S and a joint linear classifier genuinely beats it).

Targets ("target" column of the tables):

- ``population``: the docs/theory.md quantity of the population. Error rates, disagreement,
  δ_γ and the Markov/coupled/margin bounds of the fixed classifiers are computed on
  ``TRUTH_SAMPLES`` draws reduced exactly to the plane of the means (the logits live
  there; the rest of ``‖z_S − z_T‖²`` is an independent scaled χ²_{d−2}); feat_msd,
  feat_rel, logit_msd and linear CKA ``‖Σ_TS‖²_F/(‖Σ_TT‖_F‖Σ_SS‖_F)`` in closed form; MMD²
  in closed form for Gaussian mixtures at the *population* median bandwidth (the report
  uses the sample median, a data-dependent bandwidth that converges to it); λ*, its
  minimiser h* (for joint_err_T/S, pair_disc) and the best linear domain classifier by
  minimising the exact error in the plane; the MLP proxy A-distance's target is the
  ideal one, 2·TV(P_T, P_S).
- ``this fit``: terms with a fitted part have no population value of their own: their
  target is the population value of what the report fitted on this draw's fit split (the
  same fit split and seed, evaluated by ``estimate_bounds`` on 20·n fresh pairs).
  For the probes that is docs/theory.md's quantity; for ideal_joint, ijc_gap and pair_disc it is
  the value of the better of h_T and this draw's probe, which the interval can reach even
  where the fitted probe is far from h*.

The report's settings: fit split of n fresh pairs beside the n evaluation pairs,
``n_bootstrap=500`` (``--n-bootstrap``), 200 permutations, seed = the replicate index.
"""

import argparse
import hashlib
import inspect
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import optimize, stats

from ijckd_bounds import schema
from ijckd_bounds.estimators import estimate_bounds, feat_cka, mmd2
from ijckd_bounds.io import atomic_write_text

N_CLASSES = 3
RADIUS = 1.75
RHO = 0.8
SHIFTS = {"aligned": 0.0, "shifted": 1.5}
TRUTH_SAMPLES = 2_000_000
QUICK_TRUTH_SAMPLES = 200_000
BIG_FACTOR = 20
LEVEL = 0.95
ALPHA = 0.05
N_PERMUTATIONS = 200
BLOCK = 10  # replicates per result file (the unit of resumption)

# (n, d) -> replicates per scenario of the published run: d from 5 to 2n, sized so that a
# 95% coverage is measured to about ±1.5 points at n = 50 (200 replicates: Monte-Carlo
# standard error sqrt(0.95·0.05/200)) and ±2-3 points at n = 200 and 1000; "this fit"
# targets need a second report on 20·n pairs, left out where that costs most
# (n = 1000, d >= 500)
FULL_CELLS = {(50, 5): 200, (50, 100): 200, (200, 5): 100, (200, 400): 100, (1000, 5): 50,
              (1000, 500): 20}
QUICK_CELLS = {(50, 5): 10, (50, 100): 10}
NO_THIS_FIT = {(1000, 500), (1000, 2000)}
# debiased CKA alone (the report's term function, the same draws): more replicates, and
# d up to 2n at n = 1000
FULL_CKA = {(50, 5): 300, (50, 100): 300, (200, 5): 200, (200, 400): 200, (1000, 5): 60,
            (1000, 2000): 30}
QUICK_CKA = {(50, 5): 10, (50, 100): 10}
# the permutation test alone: (n, d) -> replicates per mean shift
FULL_MMD = {(50, 5): 400, (50, 100): 200, (200, 5): 120, (200, 400): 120, (1000, 5): 40,
            (1000, 2000): 20}
QUICK_MMD = {(50, 5): 20}
MMD_SHIFTS = (0.0, 0.25, 0.5)
# the term -> which target its coverage is measured against, first the primary one
FITTED_TERMS = ("student_probe_err", "teacher_probe_err", "connected_probe_err",
                "proxy_a_linear", "proxy_a_mlp", "joint_err_T", "joint_err_S",
                "ideal_joint", "ijc_gap", "pair_disc", "bound_ideal_joint",
                "bound_ben_david")


# ----------------------------------------------------------------------------------------
# The generating model


@dataclass(frozen=True)
class Model:
    """The simulated teacher/student pair of the module docstring."""

    dim: int
    shift: float
    n_classes: int = N_CLASSES
    radius: float = RADIUS
    rho: float = RHO

    def plane_means(self):
        """Class means in the plane of the means (K, 2)."""
        angle = 2 * np.pi * np.arange(self.n_classes) / self.n_classes
        return self.radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)

    def plane_shift(self):
        return np.array([self.shift, 0.0])

    def classifier(self):
        """h_T as ``(weight (K, d), bias (K,))`` float64 tensors: the nearest class mean."""
        means = self.plane_means()
        weight = np.zeros((self.n_classes, self.dim))
        weight[:, :2] = means
        bias = -0.5 * (means ** 2).sum(axis=1)
        return torch.from_numpy(weight), torch.from_numpy(bias)

    def sample(self, n, rng):
        """n paired draws: dict of float32 tensors ``z_t``, ``z_s``, ``student_logits``
        (n, ·) and long ``y`` (n,)."""
        y = rng.integers(0, self.n_classes, size=n)
        means = np.zeros((self.n_classes, self.dim), dtype=np.float32)
        means[:, :2] = self.plane_means()
        noise = rng.standard_normal((n, self.dim), dtype=np.float32)
        z_t = means[y] + noise
        z_s = z_t * np.float32(self.rho)
        z_s += means[y] * np.float32(1 - self.rho)
        z_s += np.float32(math.sqrt(1 - self.rho ** 2)) * \
            rng.standard_normal((n, self.dim), dtype=np.float32)
        z_s[:, 0] += np.float32(self.shift)
        weight, bias = self.classifier()
        # the student's own head: nearest moved class mean
        own_bias = bias - weight[:, 0] * self.shift
        logits = torch.from_numpy(z_s).double() @ weight.T + own_bias
        return {"z_t": torch.from_numpy(z_t), "z_s": torch.from_numpy(z_s),
                "y": torch.from_numpy(y), "student_logits": logits.float()}

    def plane_sample(self, n, rng):
        """n paired draws reduced to the plane of the means: ``y`` (n,), ``u_t``, ``u_s``
        (n, 2) the first two coordinates of z_T, z_S, and ``rest_sq`` (n,) the squared
        norm of the other d − 2 coordinates of z_S − z_T (2(1 − ρ)·χ²_{d−2})."""
        y = rng.integers(0, self.n_classes, size=n)
        means = self.plane_means()
        noise = rng.standard_normal((n, 2))
        u_t = means[y] + noise
        u_s = means[y] + self.rho * noise + math.sqrt(1 - self.rho ** 2) \
            * rng.standard_normal((n, 2)) + self.plane_shift()
        rest_sq = 2 * (1 - self.rho) * rng.chisquare(self.dim - 2, size=n) \
            if self.dim > 2 else np.zeros(n)
        return {"y": y, "u_t": u_t, "u_s": u_s, "rest_sq": rest_sq}


# ----------------------------------------------------------------------------------------
# Population values


def _plane_logits(u, weight, bias):
    return u @ weight.T + bias


def _geometric_margin(logits, weight):
    """γ = min over j ≠ top of (h_top − h_j)/‖w_top − w_j‖ (n,), numpy reference."""
    top = logits.argmax(axis=1)
    gap = logits[np.arange(len(top)), top][:, None] - logits
    norm = np.linalg.norm(weight[:, None, :] - weight[None, :, :], axis=2)[top]
    ratio = np.where(norm > 0, gap / np.where(norm > 0, norm, 1.0), np.inf)
    ratio[np.arange(len(top)), top] = np.inf
    return ratio.min(axis=1)


def _markov_minimum(margin, sq_mean, teacher_err):
    """min over τ of teacher_err + P[margin < τ] + sq_mean/τ² on a sample of margins."""
    taus = np.quantile(margin[np.isfinite(margin)], np.linspace(0.0005, 0.9995, 4000))
    below = np.searchsorted(np.sort(margin), taus, side="left") / margin.size
    return float(teacher_err + np.min(np.append(below + sq_mean / taus ** 2, 1.0)))


def _joint_error(plane, weight, bias):
    """ε_T(h) + ε_S(h) of a plane classifier, and its two parts."""
    err_t = float(np.mean(_plane_logits(plane["u_t"], weight, bias).argmax(1) != plane["y"]))
    err_s = float(np.mean(_plane_logits(plane["u_s"], weight, bias).argmax(1) != plane["y"]))
    return err_t + err_s, err_t, err_s


def _best_joint_classifier(model, weight, bias, plane, seed):
    """The linear classifier (in the plane; noise coordinates only add noise) minimising
    ε_T + ε_S: a smoothed 0-1 loss minimised from h_T and from the nearest midpoint mean,
    the exact joint error compared on ``plane`` (independent of the fitting sample), h_T
    kept unless another classifier beats it by more than three standard errors.
    Returns ``((weight, bias), (joint error, ε_T, ε_S))``."""
    train = model.plane_sample(100_000, np.random.default_rng(seed))
    u = torch.from_numpy(np.concatenate([train["u_t"], train["u_s"]]))
    y = torch.from_numpy(np.concatenate([train["y"], train["y"]]))
    k = model.n_classes

    def smoothed(theta, beta):
        w, b = theta[:2 * k].view(k, 2), theta[2 * k:]
        return 1.0 - torch.softmax(beta * (u @ w.T + b), dim=1).gather(1, y[:, None]).mean()

    candidates = [(weight, bias)]
    halfway = bias - 0.5 * weight @ model.plane_shift()
    for start in (np.concatenate([weight.ravel(), bias]),
                  np.concatenate([weight.ravel(), halfway])):
        x = start
        for beta in (2.0, 8.0, 32.0):
            def objective(x, beta=beta):
                theta = torch.tensor(x, dtype=torch.float64, requires_grad=True)
                loss = smoothed(theta, beta)
                loss.backward()
                return float(loss.detach()), theta.grad.numpy().copy()
            x = optimize.minimize(objective, x, jac=True, method="L-BFGS-B").x
        candidates.append((x[:2 * k].reshape(k, 2), x[2 * k:]))
    errors = [_joint_error(plane, w, b) for w, b in candidates]
    best = int(np.argmin([e[0] for e in errors]))
    se = math.sqrt(2 * errors[0][0] / plane["y"].size)
    if errors[best][0] > errors[0][0] - 3 * se:
        best = 0
    return candidates[best], errors[best]


def _mixture_gauss_kernel_mean(means_a, means_b, dim, sigma):
    """E k(a, b) for independent a, b: a from the equal mixture of N(m, I_d) over the rows
    m of means_a (d-dim means zero outside the plane), b likewise from means_b."""
    diff = means_a[:, None, :] - means_b[None, :, :]
    sq = (diff ** 2).sum(axis=2)
    # a − b ~ N(m, 2I): E exp(−‖x‖²/(2σ²)) = (1 + 2/σ²)^(−d/2) exp(−‖m‖²/(2(σ² + 2)))
    return float(np.mean((1 + 2 / sigma ** 2) ** (-dim / 2) * np.exp(-sq / (2 * (sigma ** 2 + 2)))))


def population_median_distance(model):
    """Median of ‖a − b‖ for a, b independent draws of the pooled law ½(P_T + P_S)."""
    means = model.plane_means()
    pooled = np.concatenate([means, means + model.plane_shift()])
    diff = pooled[:, None, :] - pooled[None, :, :]
    noncentral = ((diff ** 2).sum(axis=2) / 2).ravel()  # a − b ~ N(m, 2I): ‖·‖²/2 ~ ncχ²

    def cdf(r):
        x = r * r / 2
        central = noncentral == 0
        out = np.empty_like(noncentral)
        out[central] = stats.chi2.cdf(x, model.dim)
        out[~central] = stats.ncx2.cdf(x, model.dim, noncentral[~central])
        return float(out.mean()) - 0.5

    return optimize.brentq(cdf, 1e-6, 10 * math.sqrt(2 * model.dim + 4 * model.radius ** 2
                                                      + 4 * model.shift ** 2 + 10))


def population_mmd2(model, sigma):
    means = model.plane_means()
    moved = means + model.plane_shift()
    return (_mixture_gauss_kernel_mean(means, means, model.dim, sigma)
            + _mixture_gauss_kernel_mean(moved, moved, model.dim, sigma)
            - 2 * _mixture_gauss_kernel_mean(means, moved, model.dim, sigma))


def population_cka(model):
    """Linear CKA ‖Σ_TS‖²_F / (‖Σ_TT‖_F ‖Σ_SS‖_F); Σ_μ has two eigenvalues r²/2."""
    between = model.radius ** 2 / 2
    cross = 2 * (between + model.rho) ** 2 + (model.dim - 2) * model.rho ** 2
    auto = 2 * (between + 1) ** 2 + (model.dim - 2)
    return cross / auto


def _best_linear_domain_error(plane):
    """Smallest error of a linear rule telling u_t (domain 0) from u_s (1) in the plane:
    a threshold on a projection, over a fine grid of directions."""
    pooled = np.concatenate([plane["u_t"], plane["u_s"]])
    label = np.concatenate([np.zeros(len(plane["u_t"])), np.ones(len(plane["u_s"]))])
    best = 0.5
    for angle in np.linspace(0, np.pi, 361):
        proj = pooled @ np.array([np.cos(angle), np.sin(angle)])
        order = np.argsort(proj)
        lab = label[order]
        # rule "domain 1 above the threshold": errors = domain-1 below + domain-0 above
        ones_below = np.concatenate([[0], np.cumsum(lab)])
        zeros_above = (1 - lab).sum() - np.concatenate([[0], np.cumsum(1 - lab)])
        err = (ones_below + zeros_above) / lab.size
        best = min(best, float(err.min()), float((1 - err).min()))
    return best


def _bayes_domain_error(model, plane):
    """Bayes error of telling z_T from z_S (equal priors): E_pooled[min(p_T, p_S)/(p_T+p_S)]."""
    means = model.plane_means()

    def density(u, shift):
        sq = ((u[:, None, :] - (means + shift)[None]) ** 2).sum(axis=2)
        return np.exp(-sq / 2).mean(axis=1)

    pooled = np.concatenate([plane["u_t"], plane["u_s"]])
    p_t, p_s = density(pooled, 0.0), density(pooled, model.plane_shift())
    return float(np.mean(np.minimum(p_t, p_s) / (p_t + p_s)))


def _softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    return p / p.sum(axis=1, keepdims=True)


def _fidelity_values(logits_t, logits_own, y, n_bins=15):
    """Population fidelity and calibration terms (docs/theory.md) of p_T = softmax(h_T(z_T)) and
    the student's own head p_S, on a large sample; binned ECE as docs/theory.md defines it."""
    p_t, p_s = _softmax(logits_t), _softmax(logits_own)
    rows = np.arange(y.size)
    onehot = np.zeros_like(p_t)
    onehot[rows, y] = 1.0
    out = {
        "top1_agreement": float(np.mean(p_t.argmax(1) == p_s.argmax(1))),
        "pred_kl": float(np.mean((p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1))),
    }
    for name, p in (("teacher", p_t), ("student", p_s)):
        pred = p.argmax(1)
        conf = p[rows, pred]
        residual = (pred == y) - conf
        bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
        out[f"{name}_nll"] = float(np.mean(-np.log(p[rows, y])))
        out[f"{name}_brier"] = float(np.mean(((p - onehot) ** 2).sum(axis=1)))
        out[f"{name}_ece"] = float(np.abs(np.bincount(bins, residual, n_bins)).sum() / y.size)
    return out


def plane_values(model, seed=12345, samples=None):
    """The population values that do not depend on d (the logits live in the plane of
    the means): error rates, disagreement, λ* and h*, the domain-classifier targets and
    the fidelity terms, on ``samples`` draws. dict term -> float."""
    weight_full, bias_t = model.classifier()
    weight, bias = weight_full.numpy()[:, :2], bias_t.numpy()
    plane = model.plane_sample(samples or TRUTH_SAMPLES, np.random.default_rng(seed))
    y = plane["y"]
    logits_t = _plane_logits(plane["u_t"], weight, bias)
    logits_s = _plane_logits(plane["u_s"], weight, bias)
    own_logits = _plane_logits(plane["u_s"], weight, bias - weight[:, 0] * model.shift)
    pred_t, pred_s = logits_t.argmax(1), logits_s.argmax(1)
    top2 = np.sort(logits_t, axis=1)[:, -2:]
    out = {
        "teacher_err": float(np.mean(pred_t != y)),
        "student_err": float(np.mean(pred_s != y)),
        "student_own_err": float(np.mean(own_logits.argmax(1) != y)),
        "disagreement": float(np.mean(pred_s != pred_t)),
        "logit_msd": float((weight[:, 0] * model.shift) @ (weight[:, 0] * model.shift)
                           + 2 * (1 - model.rho) * (weight ** 2).sum()),
        "feat_cka": math.nan,  # d-dependent: see population_values
    }
    out["bound_coupled"] = out["teacher_err"] + out["disagreement"]
    out["bound_logit_markov"] = _markov_minimum((top2[:, 1] - top2[:, 0]) / 2,
                                                out["logit_msd"], out["teacher_err"])
    (w_star, b_star), (lam_star, err_t_star, err_s_star) = _best_joint_classifier(
        model, weight, bias, plane, seed + 7)
    out["ideal_joint"] = lam_star
    out["joint_err_T"], out["joint_err_S"] = err_t_star, err_s_star
    out["ijc_lambda"] = out["teacher_err"] + out["student_err"]
    out["ijc_gap"] = out["ijc_lambda"] - lam_star
    star_t = _plane_logits(plane["u_t"], w_star, b_star).argmax(1)
    star_s = _plane_logits(plane["u_s"], w_star, b_star).argmax(1)
    out["pair_disc"] = abs(float(np.mean(star_s != pred_s)) - float(np.mean(star_t != pred_t)))
    out["bound_ideal_joint"] = out["teacher_err"] + lam_star + out["pair_disc"]
    if model.shift == 0:  # one law: every domain classifier errs half the time
        out["proxy_a_linear"] = out["proxy_a_mlp"] = 0.0
    else:
        small = {k: v[:100_000] for k, v in plane.items()}
        out["proxy_a_linear"] = max(0.0, 2 * (1 - 2 * _best_linear_domain_error(small)))
        out["proxy_a_mlp"] = max(0.0, 2 * (1 - 2 * _bayes_domain_error(model, small)))
    out["bound_ben_david"] = out["teacher_err"] + 0.5 * out["proxy_a_mlp"] + lam_star
    out.update(_fidelity_values(logits_t, own_logits, y))
    # both heads are the Bayes posteriors of their own domain: perfectly calibrated, so
    # the population ECE is 0 (the sample above gives it up to Monte-Carlo noise)
    out["teacher_ece"] = out["student_ece"] = 0.0
    return out


def population_values(model, plane=None, seed=12345, samples=None):
    """Every population value of the module docstring: dict term -> float. ``plane``:
    the result of ``plane_values`` for this model's scenario (computed when None)."""
    out = dict(plane if plane is not None else plane_values(model, seed, samples))
    weight_full, bias_t = model.classifier()
    weight, bias = weight_full.numpy()[:, :2], bias_t.numpy()
    sample = model.plane_sample((samples or TRUTH_SAMPLES) // 2,
                                np.random.default_rng(seed + 1))
    logits_t = _plane_logits(sample["u_t"], weight, bias)
    pred_t = logits_t.argmax(1)
    pred_s = _plane_logits(sample["u_s"], weight, bias).argmax(1)
    gamma = _geometric_margin(logits_t, weight)
    dist_sq = ((sample["u_s"] - sample["u_t"]) ** 2).sum(axis=1) + sample["rest_sq"]
    out["delta_gamma"] = float(np.mean((pred_s != pred_t) | (np.sqrt(dist_sq) >= gamma)))
    out["bound_margin"] = out["teacher_err"] + out["delta_gamma"]
    out["feat_msd"] = model.shift ** 2 + 2 * (1 - model.rho) * model.dim
    out["feat_rel"] = math.sqrt(out["feat_msd"] / (model.dim + model.radius ** 2))
    out["bound_feat_markov"] = _markov_minimum(gamma, out["feat_msd"], out["teacher_err"])
    out["feat_cka"] = population_cka(model)
    sigma = population_median_distance(model)
    out["mmd2"] = population_mmd2(model, sigma)
    out["mmd_bandwidth"] = sigma
    return out


# ----------------------------------------------------------------------------------------
# One replicate: a fit split, an evaluation split, one report; a big evaluation split for
# the "this fit" targets


def interval_terms():
    """Every column of the report that carries an interval (``<term>_lo/_hi``)."""
    return list(schema.INTERVAL_TERMS + schema.BOUNDS)


def _seed(*parts):
    """A seed for numpy from strings and ints (stable across processes and runs)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _options(**wanted):
    """The options of ``estimate_bounds`` among ``wanted`` that this version accepts."""
    accepted = inspect.signature(estimate_bounds).parameters
    return {k: v for k, v in wanted.items() if k in accepted}


def big_eval_size(n):
    """Pairs of the big evaluation split: 20·n. Its own noise then adds about 5% to the
    spread of (estimate − target), which lowers a 95% interval's coverage by about 0.6
    points: the "this fit" coverages are slightly pessimistic."""
    return BIG_FACTOR * n


def run_replicate(scenario, n, d, rep, *, n_bootstrap, this_fit=True):
    """One report on fresh data: list of dicts (one per interval term) with value, lo,
    hi and the ``this fit`` target (NaN for terms without a fitted part), plus a dict
    of per-replicate extras (mmd_p, which joint classifier was chosen)."""
    model, fit, evaluation, rng = _draws(scenario, n, d, rep)
    weight, bias = model.classifier()
    fit_split = (fit["z_t"], fit["z_s"], fit["y"])

    def report_on(data, **settings):
        return estimate_bounds(data["z_t"], data["z_s"], data["y"], weight, bias,
                               fit=fit_split, s=data["z_s"], s_fit=fit["z_s"],
                               student_logits=data["student_logits"], seed=rep,
                               **settings)

    report = report_on(evaluation, n_bootstrap=n_bootstrap, n_permutations=N_PERMUTATIONS,
                       **_options(cka_bootstrap=None))
    row = report.row()
    big_row = {}
    if this_fit:
        big = model.sample(big_eval_size(n), rng)
        big_row = report_on(big, n_bootstrap=1, n_permutations=1, mmd_max_n=20,
                            **_options(cka_bootstrap=1)).row()
    records = []
    for term in interval_terms():
        fitted = term in FITTED_TERMS and this_fit
        records.append({"scenario": scenario, "n": n, "d": d, "rep": rep, "term": term,
                        "value": row[term], "lo": row[f"{term}_lo"],
                        "hi": row[f"{term}_hi"],
                        "this_fit": big_row[term] if fitted else math.nan})
    extras = {"scenario": scenario, "n": n, "d": d, "rep": rep, "mmd_p": row["mmd_p"],
              "joint_chosen": report.details.get("joint_chosen"),
              "joint_probe_share": row.get("joint_probe_share", math.nan),
              "seconds": sum(report.details.get("timings_s", {}).values())}
    return records, extras


def _draws(scenario, n, d, rep):
    """The model, fit split, evaluation split and the generator (for more draws) of one
    replicate."""
    model = Model(d, SHIFTS[scenario])
    rng = np.random.default_rng(_seed(scenario, n, d, rep))
    return model, model.sample(n, rng), model.sample(n, rng), rng


def run_cka_replicate(scenario, n, d, rep, *, n_bootstrap):
    """``feat_cka`` (the report's CKA term function) on the evaluation split of replicate
    ``rep``: the same draws as ``run_replicate`` (a bootstrap interval, where the term
    has one, gets ``n_bootstrap`` resamples, all of them used)."""
    _, _, evaluation, _ = _draws(scenario, n, d, rep)
    accepted = inspect.signature(feat_cka).parameters
    wanted = {"n_bootstrap": n_bootstrap, "seed": rep, "max_bootstrap": None}
    estimate = feat_cka(evaluation["z_t"], evaluation["z_s"],
                        **{k: v for k, v in wanted.items() if k in accepted})
    return {"scenario": scenario, "n": n, "d": d, "rep": rep, "term": "feat_cka",
            "value": estimate.value, "lo": estimate.lo, "hi": estimate.hi,
            "this_fit": math.nan}


def run_mmd_replicate(n, d, shift, rep):
    """The permutation test alone on n exchangeable pairs moved by ``shift`` (0: the null
    holds exactly): 1 when it rejects at ALPHA."""
    model = Model(d, shift)
    data = model.sample(n, np.random.default_rng(_seed("mmd", n, d, shift, rep)))
    test = mmd2(data["z_t"], data["z_s"], n_permutations=N_PERMUTATIONS, n_bootstrap=1,
                seed=rep)
    return {"n": n, "d": d, "shift": shift, "rep": rep, "mmd_p": test.p_value,
            "reject": int(test.p_value <= ALPHA)}


# ----------------------------------------------------------------------------------------
# Blocks of replicates: the unit of work and of resumption


def code_tag(n_bootstrap, *, with_cka=False):
    """Hash of the estimators' sources and the settings: results of other code are not
    reused. The report's blocks leave cka.py out (their feat_cka column is replaced by the
    CKA blocks, whose tag includes it)."""
    root = Path(__file__).resolve().parents[1] / "ijckd_bounds"
    design = (N_CLASSES, RADIUS, RHO, SHIFTS, TRUTH_SAMPLES, BIG_FACTOR, N_PERMUTATIONS,
              MMD_SHIFTS, BLOCK, n_bootstrap)
    digest = hashlib.sha256(repr(design).encode())
    for path in sorted((root / "estimators").glob("*.py")) + [root / "schema.py"]:
        if with_cka or path.name != "cka.py":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _blocks(total):
    return [(start, min(start + BLOCK, total)) for start in range(0, total, BLOCK)]


def plan(cells, cka_cells, mmd_cells, work, cka_work):
    """Every block of work with its result file, ``(kind, key, path)``."""
    tasks = []
    for (n, d), reps in cka_cells.items():
        for scenario in SHIFTS:
            for start, stop in _blocks(reps):
                path = cka_work / "cka" / f"{scenario}_n{n}_d{d}_r{start:04d}-{stop:04d}.csv"
                tasks.append(("cka", (scenario, n, d, start, stop), path))
    for (n, d), reps in cells.items():
        for scenario in SHIFTS:
            for start, stop in _blocks(reps):
                path = work / "cells" / f"{scenario}_n{n}_d{d}_r{start:04d}-{stop:04d}.csv"
                tasks.append(("cell", (scenario, n, d, start, stop), path))
    for (n, d), reps in mmd_cells.items():
        for shift in MMD_SHIFTS:
            for start, stop in _blocks(reps):
                path = work / "mmd" / f"n{n}_d{d}_shift{shift}_r{start:04d}-{stop:04d}.csv"
                tasks.append(("mmd", (n, d, shift, start, stop), path))
    # first blocks of every cell first: a run cut short still covers every cell
    return sorted(tasks, key=lambda task: task[1][-2])


def _write_csv(frame, path):
    atomic_write_text(path, frame.to_csv(index=False))


def run_task(kind, key, path, n_bootstrap):
    """Compute one block and write its file (atomically: a killed run leaves none)."""
    t0 = time.process_time()
    if kind == "cell":
        scenario, n, d, start, stop = key
        records, extras = [], []
        for rep in range(start, stop):
            rows, extra = run_replicate(scenario, n, d, rep, n_bootstrap=n_bootstrap,
                                        this_fit=(n, d) not in NO_THIS_FIT)
            records += rows
            extras.append(extra)
        _write_csv(pd.DataFrame(extras), path.with_suffix(".extras.csv"))
        _write_csv(pd.DataFrame(records), path)
    elif kind == "cka":
        scenario, n, d, start, stop = key
        _write_csv(pd.DataFrame([run_cka_replicate(scenario, n, d, rep,
                                                   n_bootstrap=n_bootstrap)
                                 for rep in range(start, stop)]), path)
    else:
        n, d, shift, start, stop = key
        _write_csv(pd.DataFrame([run_mmd_replicate(n, d, shift, rep)
                                 for rep in range(start, stop)]), path)
    return time.process_time() - t0


def truths(cells, work, samples=None):
    """Population values per (scenario, d) on ``samples`` draws (default
    ``TRUTH_SAMPLES``), cached as JSON under ``work``."""
    out = {}
    for scenario, shift in SHIFTS.items():
        plane_path = work / "truth" / f"{scenario}_plane.json"
        if plane_path.exists():
            plane = json.loads(plane_path.read_text())
        else:
            plane = plane_values(Model(2, shift), samples=samples)
            atomic_write_text(plane_path, json.dumps(plane, indent=1))
        for d in sorted({d for _, d in cells}):
            path = work / "truth" / f"{scenario}_d{d}.json"
            if path.exists():
                values = json.loads(path.read_text())
            else:
                values = population_values(Model(d, shift), plane, samples=samples)
                atomic_write_text(path, json.dumps(values, indent=1))
            out[scenario, d] = values
    return out


# ----------------------------------------------------------------------------------------
# Tables


def coverage_table(records, truth):
    """One row per scenario × n × d × term × target: replicates, coverage, its Monte-Carlo
    standard error, the share of intervals wholly below / above the target, mean estimate,
    mean target, mean width."""
    rows = []
    records = records.copy()
    records["population"] = [truth[s, d].get(t, math.nan) for s, d, t in
                             zip(records["scenario"], records["d"], records["term"], strict=True)]
    for (scenario, n, d, term), group in records.groupby(["scenario", "n", "d", "term"],
                                                         sort=False):
        for target in ("population", "this_fit"):
            goal = group[target].to_numpy(dtype=float)
            lo, hi = group["lo"].to_numpy(dtype=float), group["hi"].to_numpy(dtype=float)
            ok = np.isfinite(goal) & np.isfinite(lo) & np.isfinite(hi)
            if not ok.any():
                continue
            goal, lo, hi = goal[ok], lo[ok], hi[ok]
            covered = (lo <= goal) & (goal <= hi)
            reps = int(ok.sum())
            coverage = float(covered.mean())
            rows.append({
                "scenario": scenario, "n": n, "d": d, "term": term,
                "target": target.replace("_", " "), "reps": reps, "coverage": coverage,
                "mc_se": math.sqrt(max(coverage * (1 - coverage), 0.95 * 0.05) / reps),
                "below": float((hi < goal).mean()), "above": float((lo > goal).mean()),
                "mean_value": float(group["value"].to_numpy(dtype=float)[ok].mean()),
                "mean_target": float(goal.mean()), "mean_width": float((hi - lo).mean()),
            })
    return pd.DataFrame(rows)


def mmd_table(records):
    """Rejection rate at ALPHA per n × d × shift (shift 0: the level) with its SE."""
    out = records.groupby(["n", "d", "shift"])["reject"].agg(["mean", "count"]).reset_index()
    out = out.rename(columns={"mean": "reject_rate", "count": "reps"})
    out["mc_se"] = np.sqrt(np.maximum(out["reject_rate"] * (1 - out["reject_rate"]),
                                      ALPHA * (1 - ALPHA)) / out["reps"])
    return out


def _cell_label(n, d):
    return f"{n}/{d}"


def markdown(coverage, mmd, extras, *, command, cpu_minutes):
    """The README's table: coverage per term × target (rows) and n/d cell (columns), one
    table per scenario; cells under 93% in bold; then the permutation test."""
    lines = [f"Made by `{command}` ({cpu_minutes:.0f} CPU-minutes). Entries: share of 95% "
             "intervals covering the target; **bold** below 0.93. Columns: n/d "
             "(evaluation pairs / feature width; the fit split has n more pairs).", ""]
    cells = sorted({(n, d) for n, d in zip(coverage["n"], coverage["d"], strict=True)})
    for scenario in SHIFTS:
        part = coverage[coverage["scenario"] == scenario]
        if part.empty:
            continue
        def reps_of(term, part=part):
            rows = part[part["term"] == term]
            return {(n, d): int(rows[(rows["n"] == n) & (rows["d"] == d)]["reps"].max())
                    for n, d in cells if ((rows["n"] == n) & (rows["d"] == d)).any()}

        reps, cka_reps = reps_of("teacher_err"), reps_of("feat_cka")
        lines += [f"**{scenario}** (c = {SHIFTS[scenario]})", "",
                  "| term | target | " + " | ".join(_cell_label(*c) for c in cells) + " |",
                  "|---|---|" + "---:|" * len(cells)]
        for term in interval_terms():
            for target in ("population", "this fit"):
                rows = part[(part["term"] == term) & (part["target"] == target)]
                if rows.empty:
                    continue
                entries = []
                for n, d in cells:
                    hit = rows[(rows["n"] == n) & (rows["d"] == d)]
                    if hit.empty:
                        entries.append("–")
                        continue
                    value = float(hit["coverage"].iloc[0])
                    text = f"{value:.2f}"
                    entries.append(f"**{text}**" if value < 0.93 else text)
                lines.append(f"| `{term}` | {target} | " + " | ".join(entries) + " |")
        def listing(counts):
            return " · ".join(f"{_cell_label(*c)}: {r} ({math.sqrt(0.95 * 0.05 / r):.3f})"
                              for c, r in counts.items())

        lines += ["", f"Reports per cell (Monte-Carlo SE of a 0.95 coverage): "
                  f"{listing(reps)}; `feat_cka` from its term function on the same "
                  f"draws: {listing(cka_reps)}.", ""]
        chosen = extras[extras["scenario"] == scenario]
        if not chosen.empty and "joint_chosen" in chosen:
            share = chosen.groupby(["n", "d"])["joint_chosen"].apply(
                lambda c: float((c == "probe").mean()))
            lines += ["Share of reports whose ĥ* is the probe: " + " · ".join(
                f"{_cell_label(n, d)}: {v:.2f}" for (n, d), v in share.items()) + ".", ""]
    if not mmd.empty:
        shifts = sorted(mmd["shift"].unique())
        lines += [f"**Permutation test** (`mmd_p` ≤ {ALPHA}; shift 0 is the level, the "
                  "others the power against a mean shift c = shift·e₁ of an otherwise "
                  "exchangeable pair)", "",
                  "| n/d | reps | " + " | ".join(f"shift {s:g}" for s in shifts) + " |",
                  "|---|---:|" + "---:|" * len(shifts)]
        for (n, d), group in mmd.groupby(["n", "d"]):
            rates = {float(r.shift): (r.reject_rate, r.mc_se) for r in group.itertuples()}
            lines.append(f"| {n}/{d} | {int(group['reps'].max())} | " + " | ".join(
                f"{rates[s][0]:.3f} ± {rates[s][1]:.3f}" for s in shifts) + " |")
        lines.append("")
    return "\n".join(lines)


def _cpu_key(path):
    return f"{path.parent.parent.name}/{path.parent.name}/{path.name}"


def _read_all(paths):
    frames = [pd.read_csv(p) for p in paths if p.exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid, for smoke tests")
    parser.add_argument("--out", default=None,
                        help="where the tables go (default experiments/validity, "
                             "or runs/validity-quick with --quick)")
    parser.add_argument("--work", default=None,
                        help="per-block results go to <work>/<code tag> "
                             "(default runs/validity[-quick])")
    parser.add_argument("--n-bootstrap", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="recompute every block")
    parser.add_argument("--tables-only", action="store_true",
                        help="only write the tables from the blocks finished so far")
    args = parser.parse_args(argv)
    cells, cka_cells, mmd_cells = ((QUICK_CELLS, QUICK_CKA, QUICK_MMD) if args.quick
                                   else (FULL_CELLS, FULL_CKA, FULL_MMD))
    suffix = "-quick" if args.quick else ""
    out = Path(args.out or (f"runs/validity{suffix}" if args.quick else "experiments/validity"))
    base = Path(args.work or f"runs/validity{suffix}")
    work = base / code_tag(args.n_bootstrap)
    cka_work = base / f"cka-{code_tag(args.n_bootstrap, with_cka=True)}"
    tasks = plan(cells, cka_cells, mmd_cells, work, cka_work)
    todo = [t for t in tasks if args.force or not t[2].exists()]
    if args.tables_only:
        todo = []
    print(f"validity: {len(tasks) - len(todo)} of {len(tasks)} blocks done in {base}",
          file=sys.stderr)
    truth = truths(list(cells) + list(cka_cells), work,
                   QUICK_TRUTH_SAMPLES if args.quick else None)
    cpu_path = work / "cpu_seconds.json"
    spent = json.loads(cpu_path.read_text()) if cpu_path.exists() else {}
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="blocks", file=sys.stderr) as bar:
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads,
                                     initargs=(1,)) as pool:
                futures = {pool.submit(run_task, *t, args.n_bootstrap): t for t in todo}
                for future in as_completed(futures):
                    spent[_cpu_key(futures[future][2])] = future.result()
                    atomic_write_text(cpu_path, json.dumps(spent))
                    bar.update()
        else:
            for task in todo:
                spent[_cpu_key(task[2])] = run_task(*task, args.n_bootstrap)
                atomic_write_text(cpu_path, json.dumps(spent))
                bar.update()
    cell_paths = [t[2] for t in tasks if t[0] == "cell"]
    records = _read_all(cell_paths)
    cka_records = _read_all([t[2] for t in tasks if t[0] == "cka"])
    if not records.empty and not cka_records.empty:
        records = pd.concat([records[records["term"] != "feat_cka"], cka_records],
                            ignore_index=True)
    if records.empty:
        print("validity: no finished blocks yet", file=sys.stderr)
        return 0
    extras = _read_all([p.with_suffix(".extras.csv") for p in cell_paths])
    mmd_records = _read_all([t[2] for t in tasks if t[0] == "mmd"])
    coverage = coverage_table(records, truth)
    mmd = mmd_table(mmd_records)
    command = "python experiments/validity.py" + (" --quick" if args.quick else "")
    if args.n_bootstrap != 500:
        command += f" --n-bootstrap {args.n_bootstrap}"
    text = markdown(coverage, mmd, extras, command=command,
                    cpu_minutes=sum(spent.get(_cpu_key(t[2]), 0.0) for t in tasks) / 60)
    _write_csv(coverage, out / "coverage.csv")
    _write_csv(mmd, out / "mmd_test.csv")
    truth_rows = [{"scenario": s, "d": d, **values} for (s, d), values in truth.items()]
    _write_csv(pd.DataFrame(truth_rows), out / "population.csv")
    atomic_write_text(out / "table.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
