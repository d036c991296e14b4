"""An independent reference for the whole report row: numpy, scipy and scikit-learn.

``reference_report`` computes every column of ``estimate_bounds``'s row the plain way:

- classifier terms, margins (δ_γ, margin bound, both Markov bounds with the exact best τ
  and a 64-quantile τ grid per bootstrap replicate), Clopper–Pearson intervals from
  ``scipy.stats.beta``, per-class rows;
- the three same-recipe probes (``teacher_probe_err`` on t(x), ``student_probe_err`` on
  s(x) when given, ``connected_probe_err`` on z_S): ``StandardScaler`` +
  ``LogisticRegression`` (lbfgs, tol 1e-4, at most 100 iterations, as in
  ``LogisticProbe``), the L2 strength chosen from the same grid (1e-4 ... 1e-1,
  ``C = 1/(l2·n_train)``, strongest first with ``warm_start``) on one stratified 25%
  held-out part of the fit rows (ties to the larger l2), then a refit on the whole fit
  split warm-started from the chosen fit;
- the joint probe: the same selection and refit on the union of teacher and student
  features of the whole fit split (the held-out part for its L2 keeps both features of
  an input together); ĥ* is h_T or the probe, whichever has the smaller joint error
  count on the evaluation split (h_T on a tie), chosen again in every bootstrap replicate;
- domain classifiers on ``[z_T; z_S]`` of the fit split: ``LogisticRegression`` with
  ``l2 = 1e-3`` (``C = 2/(l2·2n)``: ours is a two-class softmax penalising both rows,
  which equals a binary logistic regression with half the penalty), at most 50
  iterations; ``MLPClassifier`` with one hidden ReLU layer of 64, lbfgs, at most 50
  iterations, ``alpha = l2·2n`` (sklearn divides the penalty by the sample count);
- MMD²: the n×n float64 matrix ``H`` formed in full, the p-value from a loop over the
  sign vectors (``εᵀHε`` each);
- debiased linear CKA from the n×n kernel matrices, its interval a delete-one jackknife
  (each leave-one-out piece from the full kernel matrices minus row k's terms);
- the paired bootstrap: a Python loop over the resamples; each recomputes every composite
  term from weighted sums, ĥ*'s choice included, and MMD² as the weighted U-statistic
  ``wᵀHw / Σ_{i≠j} w_i w_j``. Percentile intervals, widened to contain the estimate.

It is the reference of ``tests/estimators/test_reference.py`` (every column of a report) and the
stack ``benchmarks/bench_estimators.py`` times against the report. Memory: two to three
n×n float64 matrices.
"""

import math
import warnings

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ijckd_bounds.schema import LEVEL, N_BOOTSTRAP, N_PERMUTATIONS

__all__ = ["reference_report", "L2_GRID", "DOMAIN_L2", "MARKOV_GRID"]

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # LogisticProbe's default grid
DOMAIN_L2 = 1e-3  # DomainClassifier's default
MARKOV_GRID = 64  # ijckd_bounds.estimators.terms.MARKOV_GRID


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
    alpha = (1 - LEVEL) / 2
    lo, hi = np.nanpercentile(replicates, [100 * alpha, 100 * (1 - alpha)])
    return [float(value), float(min(lo, value)), float(max(hi, value))]


def _probe_with_l2_choice(x_train, y_train, x_held, y_held, x_all, y_all, max_iter=100):
    """StandardScaler + LogisticRegression: l2 chosen on (x_held, y_held) from L2_GRID
    (strongest first, warm-started), then refit on (x_all, y_all) from the chosen fit.
    Returns (predict function on raw features, chosen l2)."""
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


def _hsic_pieces(k_gram, l_gram):
    """``(tr(K̃L̃), 1ᵀK̃1, 1ᵀL̃1, 1ᵀK̃L̃1)`` of kernel matrices with zeroed diagonals."""
    ones = np.ones(len(k_gram))
    return ((k_gram * l_gram).sum(), ones @ k_gram @ ones, ones @ l_gram @ ones,
            (k_gram @ ones) @ (l_gram @ ones))


def _hsic(pieces, n):
    trace, sum_k, sum_l, cross = pieces
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def _cka_jackknife(x, y):
    """Debiased linear CKA (Song et al. 2012 HSIC_u) of x (n, d), y (n, d) from the n×n
    kernel matrices, and its delete-one jackknife: the pieces without sample k are the
    full pieces minus row k's terms (``K̃`` and ``L̃`` zero-diagonal)::

        tr₋ₖ = tr − 2 Σ_j K̃_kj L̃_kj,  1ᵀK̃1₋ₖ = 1ᵀK̃1 − 2 (K̃1)_k,
        1ᵀK̃L̃1₋ₖ = Σ_{i≠k} ((K̃1)_i − K̃_ik)((L̃1)_i − L̃_ik).

    Returns ``(value, lo, hi)``: the t interval ``value ± t_{n−1}·se_jack``."""
    from scipy.stats import t as student_t

    n = len(x)
    kernels = {"k": x @ x.T, "l": y @ y.T}
    for matrix in kernels.values():
        np.fill_diagonal(matrix, 0.0)
    k_gram, l_gram = kernels["k"], kernels["l"]

    def pieces_and_loo(a, b):
        row_a, row_b = a.sum(1), b.sum(1)
        full = _hsic_pieces(a, b)
        cross_rows = (a * b).sum(1)
        loo = (full[0] - 2 * cross_rows, full[1] - 2 * row_a, full[2] - 2 * row_b,
               full[3] - row_a * row_b - b @ row_a - a @ row_b + cross_rows)
        return _hsic(full, n), _hsic(loo, n - 1)

    (kl, kl_loo), (kk, kk_loo), (ll, ll_loo) = (pieces_and_loo(k_gram, l_gram),
                                                pieces_and_loo(k_gram, k_gram),
                                                pieces_and_loo(l_gram, l_gram))
    value = kl / np.sqrt(kk * ll) if kk * ll > 0 else np.nan
    loo = kl_loo / np.sqrt(kk_loo * ll_loo)
    se = np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum())
    half = student_t.ppf(0.5 + LEVEL / 2, n - 1) * se
    return [float(value), float(value - half), float(value + half)]


def _markov_parts(teacher_wrong, margin, sq):
    """Exact ``min_τ teacher_err + P[margin < τ] + mean(sq)/τ²`` (over the distinct
    positive margins and τ → ∞), and the per-sample columns (n, 65) of the τ grid
    (64 quantiles of those margins + the best τ) whose weighted means the bootstrap
    minimises."""
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


def _fidelity_reference(logits_t, logits_p, y, all_counts, n_bins=15):
    """The fidelity and calibration terms with numpy: ``logits_p`` (n, K) is what the
    student predicts with. Means are resampled with the count weights ``all_counts``
    (B, n); ECE is re-binned on every resample. Bins ``(b/n_bins, (b+1)/n_bins]``."""
    from scipy.special import log_softmax

    n = len(y)
    rows = np.arange(n)
    log_t, log_p = log_softmax(logits_t, axis=1), log_softmax(logits_p, axis=1)
    p_t, p_p = np.exp(log_t), np.exp(log_p)
    onehot = np.eye(logits_t.shape[1])[y]
    per_sample = {
        "pred_kl": (p_t * (log_t - log_p)).sum(1),
        "teacher_nll": -log_t[rows, y], "student_nll": -log_p[rows, y],
        "teacher_brier": ((p_t - onehot) ** 2).sum(1),
        "student_brier": ((p_p - onehot) ** 2).sum(1),
    }

    def ece_of(probs, weights):
        confidence, correct = probs.max(1), probs.argmax(1) == y
        bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
        total = 0.0
        for b in range(n_bins):
            members = bins == b
            mass = weights[members].sum()
            if mass > 0:
                total += abs((weights[members] * correct[members]).sum()
                             - (weights[members] * confidence[members]).sum())
        return total / weights.sum()

    out = {"top1_agreement": _proportion(logits_p.argmax(1) == logits_t.argmax(1))}
    for name, values in per_sample.items():
        out[name] = _percentile(values.mean(), all_counts @ values / n)
    for name, probs in (("teacher_ece", p_t), ("student_ece", p_p)):
        out[name] = _percentile(ece_of(probs, np.ones(n)),
                                np.array([ece_of(probs, w) for w in all_counts]))
    return out


def reference_report(data, *, bandwidth, n_bootstrap=N_BOOTSTRAP, n_permutations=N_PERMUTATIONS,
                     weights=None, seed=0, batched=False, clock=None):
    """Every term of the report, written plainly with numpy, scipy and scikit-learn.

    data: dict of numpy arrays ``z_t``, ``z_s`` (n, d), ``y`` (n,), ``weight`` (K, d),
        ``bias`` (K,), ``z_t_fit``, ``z_s_fit``, ``y_fit`` (the fit split), and optionally
        ``s``, ``s_fit`` (the student's own features).
    bandwidth: the MMD kernel bandwidth σ (the report's ``mmd_bandwidth``; both then
        compute the same statistic).
    weights: (B, n) bootstrap count weights in the row order of ``data`` (e.g. a report's
        ``paired_bootstrap().weights`` with the rows of ``data`` in its canonical order:
        the bootstrap intervals are then comparable one to one); default: ``n_bootstrap``
        multinomial draws from ``numpy.random.default_rng(seed)``.
    batched: do the 200 + B quadratic forms with the n×n MMD matrix as two matrix
        products instead of a loop of matrix-vector products.
    clock: optional object with ``stop(stage)`` (per-stage timings).

    Returns ``{"terms": {column: [value, lo, hi]}, "mmd_p": float, "details": {...}}``
    with every ``schema.INTERVAL_TERMS`` and ``schema.BOUNDS`` column.
    """
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    rng = np.random.default_rng(seed)
    clock = clock if clock is not None else _NoClock()
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
    if data.get("student_logits") is not None:
        out["student_own_err"] = _proportion(np.asarray(data["student_logits"]).argmax(1) != y)
    else:
        out["student_own_err"] = [math.nan] * 3
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

    # the three same-recipe probes: one held-out split of the fit rows, one L2 grid
    t_fit, s_fit, y_fit = data["z_t_fit"], data["z_s_fit"], data["y_fit"]
    pairs = np.arange(len(y_fit))

    def split(idx, seed):
        """A 25% held-out part of the pairs idx, stratified by class where every class
        has two members (sklearn's condition)."""
        labels = y_fit[idx]
        stratify = labels if np.bincount(labels)[np.unique(labels)].min() >= 2 else None
        return train_test_split(idx, test_size=0.25, stratify=stratify, random_state=seed)

    inner, held = split(pairs, 0)
    probe_inputs = {"teacher": (t_fit, data["z_t"]), "connected": (s_fit, data["z_s"])}
    if data.get("s") is not None:
        probe_inputs["student"] = (data["s_fit"], data["s"])
    probe_wrong = {}
    for name, (x_fit, x_eval) in probe_inputs.items():
        probe, _ = _probe_with_l2_choice(x_fit[inner], y_fit[inner], x_fit[held],
                                         y_fit[held], x_fit, y_fit)
        probe_wrong[name] = probe(x_eval) != y
        out[f"{name}_probe_err"] = _proportion(probe_wrong[name])
        clock.stop(f"{name} probe")
    if "student" not in probe_inputs:
        out["student_probe_err"] = [math.nan] * 3

    # the joint probe on teacher + student features of the whole fit split (the inner
    # held-out part for its L2 keeps both features of an input on one side); the choice
    # between it and h_T is made on the evaluation split, per bootstrap replicate
    inner, inner_held = split(pairs, 2)

    def union(idx):
        return np.concatenate([t_fit[idx], s_fit[idx]]), np.concatenate([y_fit[idx]] * 2)

    joint_probe, _ = _probe_with_l2_choice(*union(inner), *union(inner_held), *union(pairs))
    probe_t, probe_s = joint_probe(data["z_t"]), joint_probe(data["z_s"])
    probe_t_wrong, probe_s_wrong = probe_t != y, probe_s != y
    differ_t, differ_s = pred_t != probe_t, pred_s != probe_s
    teacher_count = int(teacher_wrong.sum() + student_wrong.sum())
    probe_count = int(probe_t_wrong.sum() + probe_s_wrong.sum())
    chose_probe = probe_count < teacher_count  # integer counts, h_T on a tie
    joint_t_wrong, joint_s_wrong = (probe_t_wrong, probe_s_wrong) if chose_probe else \
        (teacher_wrong, student_wrong)
    out["joint_err_T"], out["joint_err_S"] = _proportion(joint_t_wrong), \
        _proportion(joint_s_wrong)
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
    sigma = bandwidth
    pooled_mean = 0.5 * (t64.mean(0) + s64.mean(0))
    h = _mmd_matrix(t64 - pooled_mean, s64 - pooled_mean, sigma)
    pairs_count = n * (n - 1)
    mmd2 = h.sum() / pairs_count
    if batched:  # all sign vectors in one matrix product
        signs = rng.choice([-1.0, 1.0], size=(n, n_permutations))
        permuted = np.einsum("ib,ib->b", signs, h @ signs) / pairs_count
        exceed = int((permuted >= mmd2).sum())
    else:
        exceed = 0
        for _ in range(n_permutations):
            signs = rng.choice([-1.0, 1.0], size=n)
            exceed += signs @ (h @ signs) / pairs_count >= mmd2
    out["mmd_p"] = (1 + exceed) / (1 + n_permutations)
    clock.stop("MMD² (matrix, permutations)")

    out["feat_cka"] = _cka_jackknife(centred_t, s64 - s64.mean(0))
    clock.stop("CKA")

    # the paired bootstrap, one resample at a time
    columns = np.stack([teacher_wrong, student_wrong, disagree, crossing, sq, spread,
                        logit_gap_sq, probe_t_wrong, probe_s_wrong, differ_t, differ_s,
                        domain_error["linear"], domain_error["mlp"]], axis=1).astype(float)

    def composites(total, mean_t, feat_markov_value, logit_markov_value, replicate=False):
        """Every composite term from the column sums ``total`` of one resample of n
        (``replicate``: a bootstrap resample, whose variance is centred on the sample's
        unbiased one, see ``terms.feat_rel``)."""
        (teacher, student, disagreeing, crossing_, msd, spread_, logit_msd, probe_t_, probe_s_,
         differ_t_, differ_s_, domain_linear, domain_mlp) = total / n
        # ĥ*: the probe where its joint error count is strictly below h_T's
        probe_chosen = round(total[7] + total[8]) < round(total[0] + total[1])
        ideal = probe_t_ + probe_s_ if probe_chosen else teacher + student
        pair = abs(differ_s_ - differ_t_) if probe_chosen else 0.0
        proxy_mlp = min(max(2 * (1 - 2 * domain_mlp), 0.0), 2.0)
        variance = (spread_ - mean_t @ mean_t) * n / (n - 1)  # the unbiased variance
        if replicate:
            variance *= n / (n - 1)
        return {"feat_msd": msd, "logit_msd": logit_msd,
                "feat_rel": np.sqrt(msd / variance) if variance > 0 else np.nan,
                "bound_coupled": teacher + disagreeing, "bound_margin": teacher + crossing_,
                "bound_feat_markov": feat_markov_value,
                "bound_logit_markov": logit_markov_value,
                "ideal_joint": ideal, "ijc_lambda": teacher + student,
                "ijc_gap": teacher + student - ideal, "pair_disc": pair,
                "bound_ideal_joint": teacher + ideal + pair,
                "proxy_a_linear": min(max(2 * (1 - 2 * domain_linear), 0.0), 2.0),
                "proxy_a_mlp": proxy_mlp, "bound_ben_david": teacher + proxy_mlp / 2 + ideal,
                "probe_chosen": float(probe_chosen)}

    point = composites(columns.sum(0), centred_t.mean(0), feat_markov, logit_markov)
    point["mmd2"] = mmd2
    replicates = {name: [] for name in point}
    if weights is None:
        all_counts = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n)
                               for _ in range(n_bootstrap)]).astype(np.float64)
    else:
        all_counts = np.asarray(weights, dtype=np.float64)
    if batched:  # every wᵀHw in one matrix product
        mmd_forms = np.einsum("bi,bi->b", all_counts, all_counts @ h)
    for b, counts in enumerate(all_counts):
        replicate = composites(counts @ columns, counts @ centred_t / n,
                               (counts @ feat_markov_cols / n).min(),
                               (counts @ logit_markov_cols / n).min(), replicate=True)
        form = mmd_forms[b] if batched else counts @ (h @ counts)
        replicate["mmd2"] = form / (n * n - counts @ counts)
        for name, value in replicate.items():
            replicates[name].append(value)
    share = float(np.mean(replicates.pop("probe_chosen")))
    point.pop("probe_chosen")
    for name, value in point.items():
        out[name] = _percentile(value, np.asarray(replicates[name], dtype=np.float64))
    clock.stop("bootstrap (composites, MMD²)")
    own = data.get("student_logits")
    predictive = logits_s if own is None else np.asarray(own, dtype=np.float64)
    out.update(_fidelity_reference(logits_t, predictive, y, all_counts))
    clock.stop("fidelity and calibration")
    details = {"joint_chosen": "probe" if chose_probe else "teacher",
               "joint_probe_share": share}
    terms = {k: [float(x) for x in v] for k, v in out.items() if k != "mmd_p"}
    return {"terms": terms, "mmd_p": float(out["mmd_p"]), "details": details,
            "per_class": per_class}


class _NoClock:
    def stop(self, stage):
        pass
