"""Fidelity and calibration (docs/theory.md, "Fidelity and calibration") as pure functions.

Shapes: ``n`` evaluation samples, ``K`` classes. ``logits_t`` (n, K) are the teacher's
logits ``h_T(z_T)``; ``logits_s`` (n, K) the logits the student predicts with (its own
head where it has one, else ``h_T(z_S)``); ``y`` (n,) labels in ``0..K-1``. Predictive
distributions are ``softmax`` of the logits at temperature 1, computed in float64 a block
of rows at a time (the extra memory is O(block·K) whatever n is).

Predictions go through ``terms.predict`` (first index on ties), so the accuracy inside
the ECE of the teacher is exactly ``1 − teacher_err`` and ``top1_agreement`` is exactly
``1 − disagreement`` for a student that predicts with ``h_T``. A sample's confidence is
the probability its distribution gives to that predicted class.

Calibration bins. ``n_bins`` (15) equal-width bins on [0, 1], right-closed: bin ``b``
(0-based) holds the confidences in ``(b/n_bins, (b+1)/n_bins]``, the edges being
``torch.linspace(0, 1, n_bins + 1)`` in float64; a confidence of exactly 1.0 falls in the
last bin and one of exactly 0 (impossible for a softmax) in the first. Guo et al. (2017)
use the same convention. With ``r_i = 1[correct_i] − conf_i``,
``ECE = Σ_b (n_b/n)·|acc_b − conf_b| = Σ_b |Σ_{i∈b} r_i| / n``: a sum of absolute
per-bin means of per-sample columns, so its bootstrap replicates come from the same
weighted means as every other composite term of the report.

Intervals: Clopper–Pearson for ``top1_agreement``; a paired bootstrap (resampling ``x``,
so teacher and student stay paired) for the rest.
"""

import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.intervals import proportion
from ijckd_bounds.estimators.rowwise import row_blocks
from ijckd_bounds.estimators.terms import _bootstrap, predict
from ijckd_bounds.schema import LEVEL, N_BOOTSTRAP

__all__ = [
    "ECE_BINS",
    "MODELS",
    "bin_edges",
    "confidence_bins",
    "predictive_parts",
    "top1_agreement",
    "pred_kl",
    "nll",
    "brier",
    "ece",
    "ece_gap",
    "terms",
    "reliability_bins",
    "calibration_rows",
]

ECE_BINS = 15
MODELS = ("teacher", "student")
_ROW_BLOCK = 8192


def _check_logits(logits, name):
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] == 0:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise IJCKDError(f"`{name}` must be a non-empty (n, K) tensor of logits, got {shape}")
    return logits


def _check_labels(y, logits, name):
    y = torch.as_tensor(y)
    if y.shape != (logits.shape[0],):
        raise IJCKDError(f"`y` must have shape ({logits.shape[0]},) like the rows of "
                         f"`{name}`, got {tuple(y.shape)}")
    return y.to(device=logits.device, dtype=torch.long)


def _check_pair(logits_t, logits_s):
    _check_logits(logits_t, "logits_t")
    _check_logits(logits_s, "logits_s")
    if logits_s.shape != logits_t.shape:
        raise IJCKDError(f"`logits_s` must have shape {tuple(logits_t.shape)} like "
                         f"`logits_t`, got {tuple(logits_s.shape)}")
    return logits_t, logits_s.to(logits_t.device)


def _check_bins(n_bins):
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise IJCKDError(f"`n_bins` must be a positive integer, got {n_bins!r}")
    return n_bins


def bin_edges(n_bins=ECE_BINS, *, device=None):
    """The ``n_bins + 1`` bin edges (float64) ``0, 1/n_bins, ..., 1``."""
    return torch.linspace(0.0, 1.0, _check_bins(n_bins) + 1, dtype=torch.float64,
                          device=device)


def confidence_bins(confidence, n_bins=ECE_BINS):
    """Bin index (n,) long of each confidence (n,) in [0, 1]: bin ``b`` holds
    ``(edges[b], edges[b + 1]]`` (right-closed); 1.0 is in the last bin, 0 in the first."""
    confidence = torch.as_tensor(confidence, dtype=torch.float64)
    inner = bin_edges(n_bins, device=confidence.device)[1:-1].contiguous()
    # searchsorted(right=False): the first inner edge >= c, i.e. the bin (lo, hi] with c <= hi
    return torch.searchsorted(inner, confidence.contiguous(), right=False)


def predictive_parts(logits, y):
    """Per-sample quantities (n,) float64 of ``p = softmax(logits)`` (n, K) against the
    labels y (n,): ``nll`` = −log p(y), ``brier`` = ‖p − e_y‖², ``confidence`` = p of the
    predicted class, ``correct`` (bool) = prediction equals y, and ``pred`` (long)."""
    _check_logits(logits, "logits")
    y = _check_labels(y, logits, "logits")
    n = logits.shape[0]
    out = {name: torch.empty(n, dtype=torch.float64, device=logits.device)
           for name in ("nll", "brier", "confidence")}
    pred = predict(logits)
    for rows in row_blocks(n, _ROW_BLOCK):
        log_p = torch.log_softmax(logits[rows].to(torch.float64), dim=1)
        p = log_p.exp()
        label = y[rows, None]
        out["nll"][rows] = -log_p.gather(1, label)[:, 0]
        residual = p.scatter_add(1, label, torch.full_like(label, -1, dtype=p.dtype))
        out["brier"][rows] = (residual * residual).sum(dim=1)
        out["confidence"][rows] = p.gather(1, pred[rows, None])[:, 0]
    out["correct"] = pred == y
    out["pred"] = pred
    return out


def _kl_per_sample(logits_t, logits_s):
    """``KL(p_T ‖ p_S)`` (n,) float64, per sample; 0 for identical rows."""
    n = logits_t.shape[0]
    out = torch.empty(n, dtype=torch.float64, device=logits_t.device)
    for rows in row_blocks(n, _ROW_BLOCK):
        log_t = torch.log_softmax(logits_t[rows].to(torch.float64), dim=1)
        log_s = torch.log_softmax(logits_s[rows].to(torch.float64), dim=1)
        # KL >= 0 exactly; rounding must not make a near-identical pair negative
        out[rows] = (log_t.exp() * (log_t - log_s)).sum(dim=1).clamp_min(0.0)
    return out


def _ece_columns(parts, n_bins):
    """(n, n_bins) float64: ``1[correct] − confidence`` in the column of the sample's bin,
    0 elsewhere. Column sums / n are the signed per-bin gaps ``(n_b/n)(acc_b − conf_b)``."""
    residual = parts["correct"].to(torch.float64) - parts["confidence"]
    bins = confidence_bins(parts["confidence"], n_bins)
    columns = torch.zeros(residual.shape[0], n_bins, dtype=torch.float64,
                          device=residual.device)
    return columns.scatter_(1, bins[:, None], residual[:, None])


def _ece_from_means(means):
    """ECE from per-bin means (..., n_bins) of ``_ece_columns``."""
    return means.abs().sum(dim=-1)


def top1_agreement(logits_t, logits_s, *, level=LEVEL):
    """``top1_agreement = P[argmax p_S = argmax p_T]``: logits_t, logits_s (n, K).
    Clopper–Pearson interval."""
    logits_t, logits_s = _check_pair(logits_t, logits_s)
    return proportion(predict(logits_s) == predict(logits_t), level)


def pred_kl(logits_t, logits_s, *, level=LEVEL, bootstrap=None, n_bootstrap=N_BOOTSTRAP, seed=0):
    """``pred_kl = E_x KL(p_T ‖ p_S)`` in nats: logits_t, logits_s (n, K)."""
    logits_t, logits_s = _check_pair(logits_t, logits_s)
    kl = _kl_per_sample(logits_t, logits_s)
    bootstrap = _bootstrap(kl.numel(), bootstrap, n_bootstrap, seed, level, kl.device)
    return bootstrap.mean_estimate(kl)


def nll(logits, y, *, level=LEVEL, bootstrap=None, n_bootstrap=N_BOOTSTRAP, seed=0):
    """``E_x −log p(y)`` (``teacher_nll``/``student_nll``): logits (n, K), y (n,)."""
    values = predictive_parts(logits, y)["nll"]
    bootstrap = _bootstrap(values.numel(), bootstrap, n_bootstrap, seed, level, values.device)
    return bootstrap.mean_estimate(values)


def brier(logits, y, *, level=LEVEL, bootstrap=None, n_bootstrap=N_BOOTSTRAP, seed=0):
    """``E_x ‖p − e_y‖²`` (``teacher_brier``/``student_brier``): logits (n, K), y (n,)."""
    values = predictive_parts(logits, y)["brier"]
    bootstrap = _bootstrap(values.numel(), bootstrap, n_bootstrap, seed, level, values.device)
    return bootstrap.mean_estimate(values)


def ece(logits, y, *, n_bins=ECE_BINS, level=LEVEL, bootstrap=None, n_bootstrap=N_BOOTSTRAP,
        seed=0):
    """Expected calibration error ``Σ_b (n_b/n)·|acc_b − conf_b|`` over ``n_bins``
    equal-width, right-closed confidence bins (see the module docstring): logits (n, K),
    y (n,). Biased upwards at small n (and so are its bootstrap replicates)."""
    columns = _ece_columns(predictive_parts(logits, y), _check_bins(n_bins))
    n = columns.shape[0]
    bootstrap = _bootstrap(n, bootstrap, n_bootstrap, seed, level, columns.device)
    return bootstrap.estimate(float(_ece_from_means(columns.sum(dim=0) / n)),
                              _ece_from_means(bootstrap.means(columns)))


def ece_gap(logits_t, logits_s, y, *, n_bins=ECE_BINS, level=LEVEL, bootstrap=None,
            n_bootstrap=N_BOOTSTRAP, seed=0):
    """``student_ece − teacher_ece`` with the paired-bootstrap interval of the difference
    (both ECEs from the same resamples): logits_t, logits_s (n, K), y (n,)."""
    return terms(logits_t, logits_s, y, n_bins=n_bins, level=level, bootstrap=bootstrap,
                 n_bootstrap=n_bootstrap, seed=seed)["ece_gap"]


def terms(logits_t, logits_s, y, *, n_bins=ECE_BINS, level=LEVEL, bootstrap=None,
          n_bootstrap=N_BOOTSTRAP, seed=0):
    """Every fidelity and calibration term from ONE bootstrap matrix of per-sample values.

    logits_t (n, K): the teacher's logits; logits_s (n, K): the logits the student
    predicts with; y (n,). Returns a dict of ``Estimate``: ``top1_agreement``,
    ``pred_kl``, ``teacher_nll``, ``student_nll``, ``teacher_brier``, ``student_brier``,
    ``teacher_ece``, ``student_ece`` (the ``schema.FIDELITY_TERMS``) and ``ece_gap`` =
    ``student_ece − teacher_ece`` (its interval from the same replicates). Each equals
    the single-term function of this module given the same ``bootstrap``.
    """
    logits_t, logits_s = _check_pair(logits_t, logits_s)
    n_bins = _check_bins(n_bins)
    parts = {"teacher": predictive_parts(logits_t, y), "student": predictive_parts(logits_s, y)}
    n = logits_t.shape[0]
    bootstrap = _bootstrap(n, bootstrap, n_bootstrap, seed, level, logits_t.device)
    means = {"pred_kl": _kl_per_sample(logits_t, logits_s)}
    for model in MODELS:
        means[f"{model}_nll"] = parts[model]["nll"]
        means[f"{model}_brier"] = parts[model]["brier"]
    names = list(means)
    ece_columns = [_ece_columns(parts[model], n_bins) for model in MODELS]
    matrix = torch.cat([torch.stack([means[k] for k in names], dim=1)] + ece_columns, dim=1)
    replicates = bootstrap.means(matrix)  # (B, len(names) + 2·n_bins)
    plain = matrix.sum(dim=0) / n

    out = {"top1_agreement": proportion(parts["student"]["pred"] == parts["teacher"]["pred"],
                                        bootstrap.level)}
    for j, name in enumerate(names):
        out[name] = bootstrap.estimate(float(plain[j]), replicates[:, j])
    ece_value, ece_replicates = {}, {}
    for i, model in enumerate(MODELS):
        cols = slice(len(names) + i * n_bins, len(names) + (i + 1) * n_bins)
        ece_value[model] = float(_ece_from_means(plain[cols]))
        ece_replicates[model] = _ece_from_means(replicates[:, cols])
        out[f"{model}_ece"] = bootstrap.estimate(ece_value[model], ece_replicates[model])
    out["ece_gap"] = bootstrap.estimate(
        ece_value["student"] - ece_value["teacher"],
        ece_replicates["student"] - ece_replicates["teacher"],
        method=f"{bootstrap.method}; difference of the paired ECE replicates")
    order = ("top1_agreement", "pred_kl", "teacher_nll", "student_nll", "teacher_brier",
             "student_brier", "teacher_ece", "student_ece", "ece_gap")
    return {name: out[name] for name in order}


def reliability_bins(logits, y, *, n_bins=ECE_BINS):
    """The reliability-diagram data of ``softmax(logits)`` (n, K) against y (n,): a list
    of ``n_bins`` dicts (every bin, empty ones included) with ``bin`` (0-based),
    ``bin_lo``, ``bin_hi``, ``n`` (samples in the bin), ``confidence`` (their mean
    confidence) and ``accuracy`` (their share predicted correctly); both None for an
    empty bin."""
    n_bins = _check_bins(n_bins)
    parts = predictive_parts(logits, y)
    bins = confidence_bins(parts["confidence"], n_bins)
    stacked = torch.stack([torch.ones_like(parts["confidence"]), parts["confidence"],
                           parts["correct"].to(torch.float64)], dim=1)
    sums = torch.zeros(n_bins, 3, dtype=torch.float64, device=stacked.device)
    sums.index_add_(0, bins, stacked)
    sums = sums.cpu()
    edges = bin_edges(n_bins).tolist()
    rows = []
    for b in range(n_bins):
        count = int(round(float(sums[b, 0])))
        rows.append({"bin": b, "bin_lo": edges[b], "bin_hi": edges[b + 1], "n": count,
                     "confidence": float(sums[b, 1]) / count if count else None,
                     "accuracy": float(sums[b, 2]) / count if count else None})
    return rows


def calibration_rows(logits_t, logits_s, y, *, n_bins=ECE_BINS):
    """``reliability_bins`` of the teacher and of the student, each row with its ``model``
    ("teacher" or "student"): 2·n_bins dicts, the teacher's first."""
    logits_t, logits_s = _check_pair(logits_t, logits_s)
    rows = []
    for model, logits in zip(MODELS, (logits_t, logits_s), strict=True):
        rows += [{"model": model, **row} for row in reliability_bins(logits, y, n_bins=n_bins)]
    return rows
