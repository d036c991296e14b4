"""Time ``estimate_bounds`` against a reference stack doing the same job with well-known
libraries, and check that both give the same estimates within their intervals.

Data. For each configuration (n evaluation samples, feature width d, K classes)
synthetic Gaussian-class features are drawn: teacher features ``z_T`` (class means at a
separation that gives the Bayes teacher an error near 15%), student features
``z_S = z_T + 0.5·noise + shift``, the Bayes classifier of ``z_T`` as ``h_T``, and a fit
split of another n samples. Both stacks get the same float32 arrays, each in its own
subprocess (so that ``ru_maxrss`` is the peak memory of that stack alone), with
``--threads`` threads for torch, BLAS and OpenMP. Only the estimation is timed (not the
imports nor the data); each stack runs ``--repeats`` times in fresh processes and the
table shows the best and the median.

``ijckd_bounds``: ``estimate_bounds`` with ``--bootstrap`` paired-bootstrap resamples and
``--permutations`` MMD sign flips: every term, bound and interval of the report.

Reference (numpy float64, scipy, scikit-learn), the same job written plainly:

- classifier terms, margins (δ_γ, margin bound, both Markov bounds with the exact best τ
  and a 64-quantile τ grid per bootstrap replicate), Clopper–Pearson intervals from
  ``scipy.stats.beta``, per-class rows;
- student probe: ``StandardScaler`` + ``LogisticRegression`` (lbfgs, tol 1e-4, at most
  100 iterations, as in ``LogisticProbe``) on ``z_S`` of the fit split, the L2 strength
  chosen from the same grid (1e-4 ... 1e-1, ``C = 1/(l2·n_train)``, strongest first with
  ``warm_start``) on a stratified 25% held-out part (ties to the larger l2), then a refit
  on the whole fit split warm-started from the chosen fit;
- joint probe: the same selection and refit on the union of teacher and student features
  of 75% of the fit pairs (the inner held-out part splits pairs, keeping both features
  of an input together), compared with ``h_T`` by joint error on the other 25% (ties to
  ``h_T``);
- domain classifiers on ``[z_T; z_S]`` of the fit split: ``LogisticRegression`` with
  ``l2 = 1e-3`` (``C = 2/(l2·2n)``: ours is a two-class softmax penalising both rows,
  which equals a binary logistic regression with half the penalty), at most 50
  iterations; ``MLPClassifier`` with one hidden ReLU layer of 64, lbfgs, at most 50
  iterations, ``alpha = l2·2n`` (sklearn divides the penalty by the sample count);
- MMD²: the n×n float64 matrix ``H`` formed in full (at the bandwidth ours reports, so
  both compute the same statistic), the p-value from a loop over 200 sign vectors
  (``εᵀHε`` each);
- debiased linear CKA in feature space (O(n·d²): Gram matrices of width d);
- the paired bootstrap: a Python loop over ``--bootstrap`` resamples of the evaluation
  samples; each recomputes every composite term from weighted means, MMD² as the
  weighted U-statistic ``wᵀHw / Σ_{i≠j} w_i w_j`` (one matrix-vector product with ``H``),
  and, for the first 200 resamples (as ours), debiased CKA on the resampled rows.
  Percentile intervals, widened to contain the estimate (as ours).

The matrix-vector products with ``H`` (200 + ``--bootstrap`` of them, each reading the
n×n matrix from memory) are most of the reference's time at n = 10,000. ``--batched``
makes it a less straightforward reference that does them as two matrix products
``H·[ε_1 … ε_B]`` and ``H·[w_1 … w_B]`` (what ours does block by block).

The reference is skipped where its n×n float64 matrix would not fit
(``--reference-max-n``). The check compares every term both stacks estimate: terms with
one definition and no fitting (errors, feature and logit distances, MMD², CKA, the
coupled bound) must agree to 1e-4 relative; the other terms (fitted classifiers with
different optimisers and held-out splits; margins, where ties round differently) must
have each stack's estimate inside the other's 95% interval, except the MLP domain
classifier's (proxy_a_mlp and bound_ben_david), whose intervals must overlap: after 50
iterations it depends on its initialisation (sklearn's Glorot or ours, nn.Linear's)
beyond the sampling noise; the two MMD p-values (different random sign vectors) must
agree within their Monte-Carlo error.

    python benchmarks/bench_estimators.py                    # quick subset
    python benchmarks/bench_estimators.py --n 10000 --d 512 --k 100 --repeats 3
    python benchmarks/bench_estimators.py --n 1000 10000 50000 --d 64 512 --k 10 100 \\
        --repeats 3 --markdown benchmarks/results/estimators.md
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

QUICK = [(1000, 64, 10), (10000, 512, 100)]
LEVEL = 0.95
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # LogisticProbe's default grid
DOMAIN_L2 = 1e-3  # DomainClassifier's default
CKA_REPLICATES = 200  # ours: ijckd_bounds.estimators.cka.CKA_BOOTSTRAP
MARKOV_GRID = 64  # ours: ijckd_bounds.estimators.terms.MARKOV_GRID

# one definition, no fitting: must agree to rounding
EXACT_TERMS = ("teacher_err", "student_err", "disagreement", "feat_msd", "feat_rel",
               "logit_msd", "bound_coupled", "ijc_lambda", "mmd2", "feat_cka")
# fitted classifiers or tie-sensitive margins: each estimate inside the other's interval
INTERVAL_TERMS = ("delta_gamma", "bound_margin", "bound_feat_markov", "bound_logit_markov",
                  "student_probe_err", "joint_err_T", "joint_err_S", "ideal_joint",
                  "ijc_gap", "pair_disc", "bound_ideal_joint", "proxy_a_linear")
# the MLP domain classifier stops after 50 iterations, where its result depends on its
# initialisation (sklearn: Glorot; ours: nn.Linear's, narrower) beyond the sampling
# noise: the intervals must overlap
OVERLAP_TERMS = ("proxy_a_mlp", "bound_ben_david")


def synthetic(n, d, k, seed=0):
    """Evaluation and fit arrays (numpy float32 features) for one configuration."""
    import numpy as np

    rng = np.random.default_rng(seed)
    # class means at a separation where the Bayes teacher errs on about 15% (K = 10 or
    # 100, d = 64 or 512) and the noisier student on about 20-27%
    means = rng.normal(size=(k, d)) * (1.5 / np.sqrt(d)) * np.sqrt(np.log(k) + 1)
    shift = rng.normal(size=d) * 0.2 / np.sqrt(d)

    def draw(m):
        y = rng.integers(0, k, size=m)
        z_t = means[y] + rng.normal(size=(m, d))
        z_s = z_t + 0.5 * rng.normal(size=(m, d)) + shift
        return z_t.astype(np.float32), z_s.astype(np.float32), y

    weight = means.astype(np.float32)
    bias = (-0.5 * (means * means).sum(1)).astype(np.float32)
    z_t, z_s, y = draw(n)
    z_t_fit, z_s_fit, y_fit = draw(n)
    return {"z_t": z_t, "z_s": z_s, "y": y, "weight": weight, "bias": bias,
            "z_t_fit": z_t_fit, "z_s_fit": z_s_fit, "y_fit": y_fit}


class StageClock:
    """Seconds per stage."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.stages = {}

    def stop(self, stage):
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 4)
        self.last = now

    def total(self):
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------------------------
# ijckd_bounds


def run_ours(data, args):
    import scipy.optimize  # noqa: F401  (imported before the clock, like the reference's)
    import scipy.stats  # noqa: F401
    import torch

    from ijckd_bounds import schema
    from ijckd_bounds.estimators import estimate_bounds

    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    start = time.perf_counter()
    report = estimate_bounds(tensors["z_t"], tensors["z_s"], tensors["y"], tensors["weight"],
                             tensors["bias"],
                             fit=(tensors["z_t_fit"], tensors["z_s_fit"], tensors["y_fit"]),
                             n_permutations=args.permutations, n_bootstrap=args.bootstrap,
                             seed=0)
    elapsed = time.perf_counter() - start
    row = report.row()
    terms = {name: [row[name], row[f"{name}_lo"], row[f"{name}_hi"]]
             for name in schema.INTERVAL_TERMS + schema.BOUNDS}
    details = {k: report.details[k] for k in ("joint_chosen", "joint_l2", "probe_l2")}
    return {"seconds": elapsed, "terms": terms, "mmd_p": row["mmd_p"],
            "mmd_bandwidth": row["mmd_bandwidth"], "details": details,
            "stages": report.details["timings_s"]}


# ----------------------------------------------------------------------------------------
# the reference stack


def _clopper_pearson(k, n):
    from scipy.stats import beta

    alpha = 1 - LEVEL
    lo = beta.ppf(alpha / 2, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(1 - alpha / 2, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def _proportion(indicator):
    k, n = int(indicator.sum()), indicator.size
    return [k / n, *_clopper_pearson(k, n)]


def _percentile(value, replicates):
    import numpy as np

    alpha = (1 - LEVEL) / 2
    lo, hi = np.nanpercentile(replicates, [100 * alpha, 100 * (1 - alpha)])
    return [float(value), float(min(lo, value)), float(max(hi, value))]


def _probe_with_l2_choice(x_train, y_train, x_held, y_held, x_all, y_all, max_iter=100):
    """StandardScaler + LogisticRegression: l2 chosen on (x_held, y_held) from L2_GRID
    (strongest first, warm-started), then refit on (x_all, y_all) from the chosen fit.
    Returns (predict function on raw features, chosen l2)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    x_train_std, x_held_std = scaler.transform(x_train), scaler.transform(x_held)
    clf = LogisticRegression(warm_start=True, max_iter=max_iter, tol=1e-4)
    best = None
    for l2 in sorted(L2_GRID, reverse=True):
        clf.set_params(C=1.0 / (l2 * len(y_train))).fit(x_train_std, y_train)
        error = np.mean(clf.predict(x_held_std) != y_held)
        if best is None or error < best[0]:  # strict: ties keep the larger l2
            best = (error, l2, clf.coef_.copy(), clf.intercept_.copy())
    _, l2, coef, intercept = best
    scaler_all = StandardScaler().fit(x_all)
    final = LogisticRegression(warm_start=True, max_iter=max_iter, tol=1e-4,
                               C=1.0 / (l2 * len(y_all)))
    if np.array_equal(np.unique(y_all), clf.classes_):  # else a class was held out: cold
        final.coef_, final.intercept_ = coef, intercept  # warm_start reads these
    final.fit(scaler_all.transform(x_all), y_all)
    return (lambda x: final.predict(scaler_all.transform(x))), l2


def _debiased_cka(x, y):
    """Debiased linear CKA (Song et al. 2012 HSIC_u) of x (n, d), y (n, d) in feature
    space: tr(K̃L̃) = ‖xᵀy‖² − Σ‖x_i‖²‖y_i‖², 1ᵀK̃1 = ‖Σx_i‖² − Σ‖x_i‖², (K̃1)_i =
    x_i·Σx − ‖x_i‖²."""
    import numpy as np

    def hsic(a, b, gram_ab):
        n = len(a)
        na, nb = (a * a).sum(1), (b * b).sum(1)
        sa, sb = a.sum(0), b.sum(0)
        trace = (gram_ab * gram_ab).sum() - na @ nb
        sum_a, sum_b = sa @ sa - na.sum(), sb @ sb - nb.sum()
        rows = (a @ sa - na) @ (b @ sb - nb)
        return (trace + sum_a * sum_b / ((n - 1) * (n - 2)) - 2 * rows / (n - 2)) / (n * (n - 3))

    xy, xx, yy = x.T @ y, x.T @ x, y.T @ y
    denominator = hsic(x, x, xx) * hsic(y, y, yy)
    return hsic(x, y, xy) / np.sqrt(denominator) if denominator > 0 else np.nan


def _markov_parts(teacher_wrong, margin, sq):
    """Exact ``min_τ teacher_err + P[margin < τ] + mean(sq)/τ²`` (over the distinct
    positive margins and τ → ∞), and the per-sample columns (n, 65) of the τ grid
    (64 quantiles of those margins + the best τ) whose weighted means the bootstrap
    minimises."""
    import numpy as np

    n = teacher_wrong.size
    teacher_wrong = teacher_wrong.astype(np.float64)
    ordered = np.sort(margin[np.isfinite(margin)])
    candidates = np.unique(ordered[ordered > 0])
    values = (teacher_wrong.sum() + np.searchsorted(ordered, candidates, side="left")
              + sq.sum() / candidates ** 2) / n
    at_infinity = (teacher_wrong.sum() + ordered.size) / n
    if candidates.size and values.min() <= at_infinity:
        value, tau = values.min(), candidates[values.argmin()]
    else:
        value, tau = at_infinity, np.inf
    grid = np.append(np.quantile(candidates, np.linspace(0, 1, MARKOV_GRID))
                     if candidates.size else np.empty(0), tau)
    with np.errstate(divide="ignore", invalid="ignore"):
        markov = np.where(sq[:, None] > 0, sq[:, None] / grid[None] ** 2, 0.0)
    return value, teacher_wrong[:, None] + (margin[:, None] < grid[None]).astype(float) + markov


def _mmd_matrix(t, s, sigma):
    """H (n, n) float64 of the paired MMD² U-statistic, zero diagonal."""
    import numpy as np

    def kernel(a, b):
        d2 = a @ b.T
        d2 *= -2.0
        d2 += (a * a).sum(1)[:, None]
        d2 += (b * b).sum(1)[None]
        np.maximum(d2, 0.0, out=d2)
        d2 *= -1.0 / (2.0 * sigma ** 2)
        return np.exp(d2, out=d2)

    h = kernel(t, t)
    h += kernel(s, s)
    cross = kernel(t, s)
    h -= cross
    h -= cross.T
    del cross
    np.fill_diagonal(h, 0.0)
    return h


def run_reference(data, args):
    import warnings

    import numpy as np
    import scipy.stats  # noqa: F401  (imported before the clock, like ours)
    from scipy.spatial.distance import cdist
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    rng = np.random.default_rng(0)
    clock = StageClock()
    out = {}

    # classifier terms, margins, per-class rows
    y, n_classes = data["y"], data["weight"].shape[0]
    t64, s64 = data["z_t"].astype(np.float64), data["z_s"].astype(np.float64)
    n = len(y)
    weight, bias = data["weight"].astype(np.float64), data["bias"].astype(np.float64)
    logits_t, logits_s = t64 @ weight.T + bias, s64 @ weight.T + bias
    pred_t, pred_s = logits_t.argmax(1), logits_s.argmax(1)
    teacher_wrong, student_wrong = pred_t != y, pred_s != y
    disagree = pred_t != pred_s
    for name, indicator in (("teacher_err", teacher_wrong), ("student_err", student_wrong),
                            ("disagreement", disagree)):
        out[name] = _proportion(indicator)
    sq = ((s64 - t64) ** 2).sum(1)
    distance = np.sqrt(sq)
    rows = np.arange(n)
    gap = logits_t[rows, pred_t][:, None] - logits_t
    norm = cdist(weight, weight)[pred_t]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(norm > 0, gap / norm, np.inf)
    ratio[rows, pred_t] = np.inf
    gamma = ratio.min(1)
    crossing = disagree | (distance >= gamma)
    out["delta_gamma"] = _proportion(crossing)
    top2 = np.sort(logits_t, axis=1)[:, -2:]
    logit_margin = top2[:, 1] - top2[:, 0]
    logit_gap = logits_s - logits_t
    logit_gap_sq = (logit_gap ** 2).sum(1)
    feat_markov, feat_markov_cols = _markov_parts(teacher_wrong, gamma, sq)
    logit_markov, logit_markov_cols = _markov_parts(teacher_wrong, logit_margin / 2,
                                                    logit_gap_sq)
    per_class = []
    for c in range(n_classes):
        members = y == c
        if members.any():
            per_class.append([_proportion(x[members])
                              for x in (student_wrong, teacher_wrong, disagree)])
    centred_t = t64 - t64.mean(0)
    spread = (centred_t ** 2).sum(1)
    clock.stop("classifier and feature terms")

    # the student probe
    t_fit, s_fit, y_fit = data["z_t_fit"], data["z_s_fit"], data["y_fit"]
    pairs = np.arange(len(y_fit))

    def split(idx, seed):
        """A 25% held-out part of the pairs idx, stratified by class where every class
        has two members (sklearn's condition)."""
        labels = y_fit[idx]
        stratify = labels if np.bincount(labels)[np.unique(labels)].min() >= 2 else None
        return train_test_split(idx, test_size=0.25, stratify=stratify, random_state=seed)

    inner, held = split(pairs, 0)
    probe, _ = _probe_with_l2_choice(s_fit[inner], y_fit[inner], s_fit[held], y_fit[held],
                                     s_fit, y_fit)
    probe_wrong = probe(data["z_s"]) != y
    out["student_probe_err"] = _proportion(probe_wrong)
    clock.stop("student probe")

    # the joint classifier: the better of h_T and a probe on teacher + student features
    part, held = split(pairs, 1)
    inner, inner_held = split(part, 2)

    def union(idx):
        return np.concatenate([t_fit[idx], s_fit[idx]]), np.concatenate([y_fit[idx]] * 2)

    joint_probe, _ = _probe_with_l2_choice(*union(inner), *union(inner_held), *union(part))

    def teacher(x):
        return (x.astype(np.float64) @ weight.T + bias).argmax(1)

    def joint_error(predict):
        return (np.mean(predict(t_fit[held]) != y_fit[held])
                + np.mean(predict(s_fit[held]) != y_fit[held]))

    joint = joint_probe if joint_error(joint_probe) < joint_error(teacher) else teacher
    joint_t, joint_s = (pred_t, pred_s) if joint is teacher else (joint(data["z_t"]),
                                                                  joint(data["z_s"]))
    joint_t_wrong, joint_s_wrong = joint_t != y, joint_s != y
    out["joint_err_T"], out["joint_err_S"] = _proportion(joint_t_wrong), \
        _proportion(joint_s_wrong)
    differ_t, differ_s = pred_t != joint_t, pred_s != joint_s
    clock.stop("joint probe")

    # domain classifiers, fitted on the fit split, evaluated per input of the eval split
    domain_x = np.concatenate([t_fit, s_fit])
    domain_y = np.r_[np.zeros(len(t_fit)), np.ones(len(s_fit))]
    classifiers = {
        "linear": LogisticRegression(C=2.0 / (DOMAIN_L2 * len(domain_y)), max_iter=50,
                                     tol=1e-4),
        "mlp": MLPClassifier(hidden_layer_sizes=(64,), solver="lbfgs", max_iter=50, tol=1e-4,
                             alpha=DOMAIN_L2 * len(domain_y), random_state=0),
    }
    domain_error = {}
    for kind, clf in classifiers.items():
        clf = make_pipeline(StandardScaler(), clf).fit(domain_x, domain_y)
        domain_error[kind] = 0.5 * ((clf.predict(data["z_t"]) != 0).astype(np.float64)
                                    + (clf.predict(data["z_s"]) != 1))
        clock.stop(f"domain classifier ({kind})")

    # MMD²: the full matrix and a loop over sign vectors
    sigma = args.bandwidth
    pooled_mean = 0.5 * (t64.mean(0) + s64.mean(0))
    h = _mmd_matrix(t64 - pooled_mean, s64 - pooled_mean, sigma)
    pairs_count = n * (n - 1)
    mmd2 = h.sum() / pairs_count
    if args.batched:  # all sign vectors in one matrix product
        signs = rng.choice([-1.0, 1.0], size=(n, args.permutations))
        permuted = np.einsum("ib,ib->b", signs, h @ signs) / pairs_count
        exceed = int((permuted >= mmd2).sum())
    else:
        exceed = 0
        for _ in range(args.permutations):
            signs = rng.choice([-1.0, 1.0], size=n)
            exceed += signs @ (h @ signs) / pairs_count >= mmd2
    out["mmd_p"] = (1 + exceed) / (1 + args.permutations)
    clock.stop("MMD² (matrix, permutations)")

    centred_s = s64 - s64.mean(0)
    cka = _debiased_cka(centred_t, centred_s)
    clock.stop("CKA")

    # the paired bootstrap, one resample at a time
    columns = np.stack([teacher_wrong, student_wrong, disagree, crossing, sq, spread,
                        logit_gap_sq, joint_t_wrong, joint_s_wrong, differ_t, differ_s,
                        domain_error["linear"], domain_error["mlp"]], axis=1).astype(float)

    def composites(mean, mean_t, feat_markov_value, logit_markov_value):
        (teacher, student, disagreeing, crossing_, msd, spread_, logit_msd, joint_t_, joint_s_,
         differ_t_, differ_s_, domain_linear, domain_mlp) = mean
        ideal = joint_t_ + joint_s_
        pair = abs(differ_s_ - differ_t_)
        proxy_mlp = min(max(2 * (1 - 2 * domain_mlp), 0.0), 2.0)
        variance = spread_ - mean_t @ mean_t
        return {"feat_msd": msd, "logit_msd": logit_msd,
                "feat_rel": np.sqrt(msd / variance) if variance > 0 else np.nan,
                "bound_coupled": teacher + disagreeing, "bound_margin": teacher + crossing_,
                "bound_feat_markov": feat_markov_value,
                "bound_logit_markov": logit_markov_value,
                "ideal_joint": ideal, "ijc_lambda": teacher + student,
                "ijc_gap": teacher + student - ideal, "pair_disc": pair,
                "bound_ideal_joint": teacher + ideal + pair,
                "proxy_a_linear": min(max(2 * (1 - 2 * domain_linear), 0.0), 2.0),
                "proxy_a_mlp": proxy_mlp, "bound_ben_david": teacher + proxy_mlp / 2 + ideal}

    point = composites(columns.mean(0), centred_t.mean(0), feat_markov, logit_markov)
    point.update({"mmd2": mmd2, "feat_cka": cka})
    replicates = {name: [] for name in point}
    all_counts = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n)
                           for _ in range(args.bootstrap)]).astype(np.float64)
    if args.batched:  # every wᵀHw in one matrix product
        mmd_forms = np.einsum("bi,bi->b", all_counts, all_counts @ h)
    for b, counts in enumerate(all_counts):
        replicate = composites(counts @ columns / n, counts @ centred_t / n,
                               (counts @ feat_markov_cols / n).min(),
                               (counts @ logit_markov_cols / n).min())
        form = mmd_forms[b] if args.batched else counts @ (h @ counts)
        replicate["mmd2"] = form / (n * n - counts @ counts)
        if b < CKA_REPLICATES:
            drawn = np.repeat(rows, counts.astype(np.int64))
            replicate["feat_cka"] = _debiased_cka(centred_t[drawn], centred_s[drawn])
        for name, value in replicate.items():
            replicates[name].append(value)
    for name, value in point.items():
        out[name] = _percentile(value, np.asarray(replicates[name], dtype=np.float64))
    clock.stop("bootstrap (composites, MMD², CKA)")
    elapsed = clock.total()
    details = {"joint_chosen": "teacher" if joint is teacher else "probe"}
    terms = {k: [float(x) for x in v] for k, v in out.items() if k != "mmd_p"}
    return {"seconds": elapsed, "terms": terms, "mmd_p": float(out["mmd_p"]),
            "details": details, "stages": clock.stages}


def worker(args):
    """Run one stack on one configuration; print JSON with the peak RSS."""
    import resource

    if args.stack == "ours":  # the reference never imports torch
        import torch

        torch.set_num_threads(args.threads)
    data = synthetic(args.n[0], args.d[0], args.k[0])
    result = run_ours(data, args) if args.stack == "ours" else run_reference(data, args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, default=float))


# ----------------------------------------------------------------------------------------
# the driver


def run_stack(stack, n, d, k, args, bandwidth=None):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    command = [sys.executable, __file__, "--worker", stack, "--n", str(n), "--d", str(d),
               "--k", str(k), "--threads", str(args.threads), "--bootstrap",
               str(args.bootstrap), "--permutations", str(args.permutations)]
    if bandwidth is not None:
        command += ["--bandwidth", repr(float(bandwidth))]
    if args.batched:
        command.append("--batched")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{stack} failed on n={n}, d={d}, K={k}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _inside(value, interval, slack=1e-9):
    lo, hi = interval
    return lo - slack <= value <= hi + slack


def compare(ours, reference, n_permutations):
    """'ok (m terms)' when the stacks agree (see the module docstring), else the terms
    that disagree."""
    import math

    bad = []
    compared = 0
    for term in EXACT_TERMS + INTERVAL_TERMS + OVERLAP_TERMS:
        if term not in reference["terms"]:
            continue
        compared += 1
        value, lo, hi = ours["terms"][term]
        ref_value, ref_lo, ref_hi = reference["terms"][term]
        if term in EXACT_TERMS:
            agree = abs(ref_value - value) <= 1e-4 * max(1e-3, abs(value))
        elif term in INTERVAL_TERMS:
            agree = _inside(ref_value, (lo, hi)) and _inside(value, (ref_lo, ref_hi))
        else:
            agree = ref_lo <= hi and lo <= ref_hi
        if not agree:
            bad.append(f"{term} ref={ref_value:.4g} [{ref_lo:.4g}, {ref_hi:.4g}] "
                       f"ours={value:.4g} [{lo:.4g}, {hi:.4g}]")
    # two Monte-Carlo estimates of one permutation p-value
    p, ref_p = ours["mmd_p"], reference["mmd_p"]
    pooled = min(max(0.5 * (p + ref_p), 1.0 / n_permutations), 0.5)
    tolerance = 4 * math.sqrt(2 * pooled * (1 - pooled) / n_permutations) + 2 / n_permutations
    compared += 1
    if abs(p - ref_p) > tolerance:
        bad.append(f"mmd_p ref={ref_p:.4g} ours={p:.4g}")
    return f"ok ({compared} terms)" if not bad else "; ".join(bad)


def _summary(runs):
    times = [r["seconds"] for r in runs]
    best = min(runs, key=lambda r: r["seconds"])
    return {"best": min(times), "median": statistics.median(times), "times": times,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "best_run": best}


def _machine():
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs; python {platform.python_version()}, "
            f"torch {torch.__version__}, scikit-learn {sklearn.__version__}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", help="evaluation samples (fit: as many)")
    parser.add_argument("--d", type=int, nargs="+", help="feature widths")
    parser.add_argument("--k", type=int, nargs="+", help="class counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh runs of each stack per configuration (best and median)")
    parser.add_argument("--reference-repeats", type=int,
                        help="runs of the reference (default: --repeats)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--batched", action="store_true",
                        help="reference: MMD sign flips and bootstrap forms as one matrix "
                             "product each instead of a loop of matrix-vector products")
    parser.add_argument("--reference-max-n", type=int, default=20000,
                        help="skip the reference above this n (its n×n float64 matrix)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--markdown", help="also write the table (markdown) to this file")
    parser.add_argument("--worker", choices=("ours", "reference"), dest="stack",
                        help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stack:
        return worker(args)

    if args.n or args.d or args.k:
        configs = list(itertools.product(args.n or [1000], args.d or [64], args.k or [10]))
    else:
        configs = QUICK
    reference_repeats = args.reference_repeats or args.repeats
    setting = (f"threads={args.threads}, bootstrap={args.bootstrap}, "
               f"permutations={args.permutations}, repeats={args.repeats} "
               f"(reference {reference_repeats}{', batched MMD forms' if args.batched else ''})"
               "; fit split = n more samples")
    header = (f"{'n':>6} {'d':>4} {'K':>4} | {'ours best':>9} {'median':>7} {'peak MB':>8} | "
              f"{'ref best':>9} {'median':>7} {'peak MB':>8} | {'ratio':>6} | check")
    lines = [setting, header, "-" * len(header)]
    print("\n".join(lines), flush=True)
    load_before = os.getloadavg()
    results = []
    for n, d, k in configs:
        ours = _summary([run_stack("ours", n, d, k, args) for _ in range(args.repeats)])
        line = (f"{n:>6} {d:>4} {k:>4} | {ours['best']:>9.2f} {ours['median']:>7.2f} "
                f"{ours['peak_rss_mb']:>8.0f} | ")
        entry = {"n": n, "d": d, "K": k, "ours": ours}
        reference = None
        if args.no_reference:
            line += f"{'-':>9} {'-':>7} {'-':>8} | {'-':>6} | reference not run"
        elif n > args.reference_max_n:
            gigabytes = 8 * n * n / 1e9
            line += (f"{'-':>9} {'-':>7} {'-':>8} | {'-':>6} | reference skipped "
                     f"(n×n matrix would need {gigabytes:.0f} GB)")
        else:
            # the same MMD bandwidth (ours: median of a seeded subsample) for both
            bandwidth = ours["best_run"]["mmd_bandwidth"]
            reference = _summary([run_stack("reference", n, d, k, args, bandwidth)
                                  for _ in range(reference_repeats)])
            ratio = reference["best"] / ours["best"]
            check = compare(ours["best_run"], reference["best_run"], args.permutations)
            line += (f"{reference['best']:>9.2f} {reference['median']:>7.2f} "
                     f"{reference['peak_rss_mb']:>8.0f} | {ratio:>6.1f} | {check}")
            entry.update({"reference": reference, "ratio": ratio, "check": check})
        print(line, flush=True)
        lines.append(line)
        for name, result in (("ours", ours), ("reference", reference)):
            if result:
                stages = ", ".join(f"{stage} {seconds:.2f}"
                                   for stage, seconds in result["best_run"]["stages"].items())
                stage_line = f"{'':>17}{name} stages (s): {stages}"
                print(stage_line, flush=True)
                lines.append(stage_line)
        results.append(entry)
    load = (f"load average (1/5/15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
            f"after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(load)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    if args.markdown:
        command = "python benchmarks/bench_estimators.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]))
        with open(args.markdown, "w") as fh:
            fh.write("# estimate_bounds vs. a reference stack\n\n")
            fh.write(f"`{command}`\n\n{_machine()}; {load}\n\n```\n")
            fh.write("\n".join(lines) + "\n```\n\n")
            fh.write("Seconds of the estimation alone (best and median of the fresh runs), "
                     "peak resident memory of the stack's process, ratio = reference best / "
                     "ours best, check = whether the two stacks agree on every term they "
                     "both estimate (see the docstring of benchmarks/bench_estimators.py); "
                     "stages are those of the best run.\n")


if __name__ == "__main__":
    main()
