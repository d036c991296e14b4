"""Estimators of the docs/theory.md bound terms: pure functions on tensors, one report shell.

``estimate_bounds(z_t, z_s, y, weight, bias, ...) -> BoundsReport`` computes everything;
the term functions below compute one term each and return an ``Estimate``: the classifier
and feature terms in ``terms``, ``feat_cka`` in ``cka``, ``mmd2`` in ``mmd``, the composite
terms (``ideal_joint``, ``ijc_lambda``, ``ijc_gap``, ``pair_disc``, ``bound_ideal_joint``,
``bound_ben_david``, ``proxy_a``) in ``composite``.
"""

from ijckd_bounds.estimators.bounds import (
    BoundsReport,
    estimate_bounds,
    estimate_bounds_from_file,
)
from ijckd_bounds.estimators.cka import cka_jackknife, debiased_cka, feat_cka, hsic_terms
from ijckd_bounds.estimators.composite import (
    JointChoice,
    bound_ben_david,
    bound_ideal_joint,
    choose_joint,
    ideal_joint,
    ijc_gap,
    ijc_lambda,
    joint_errors,
    pair_disc,
    proxy_a,
)
from ijckd_bounds.estimators.intervals import (
    Estimate,
    PairedBootstrap,
    bootstrap_weights,
    clopper_pearson,
    percentile_interval,
    proportion,
)
from ijckd_bounds.estimators.mmd import MMDTest, NoBandwidth, median_bandwidth, mmd2
from ijckd_bounds.estimators.probes import (
    DomainClassifier,
    JointClassifier,
    LogisticProbe,
    domain_errors,
    fit_joint_classifier,
    proxy_a_distance,
)
from ijckd_bounds.estimators.ridge_connector import RidgeConnector, fit_connector
from ijckd_bounds.estimators.terms import (
    MarkovBound,
    PairedPredictions,
    classifier_logits,
    coupled_bound,
    delta_gamma,
    disagreement,
    feat_markov_bound,
    feat_msd,
    feat_rel,
    geometric_margin,
    logit_margin,
    logit_markov_bound,
    logit_msd,
    margin_bound,
    paired_predictions,
    per_class_terms,
    predict,
    student_err,
    teacher_err,
)

__all__ = [
    # the composite terms, the choice of ĥ*, the probes and CKA's jackknife
    "DomainClassifier",
    "JointChoice",
    "JointClassifier",
    "LogisticProbe",
    "NoBandwidth",
    "bound_ben_david",
    "bound_ideal_joint",
    "choose_joint",
    "cka_jackknife",
    "domain_errors",
    "fit_joint_classifier",
    "ideal_joint",
    "ijc_gap",
    "ijc_lambda",
    "joint_errors",
    "pair_disc",
    "proxy_a",
    "proxy_a_distance",
    # the report and the classifier and feature terms
    "BoundsReport",
    "Estimate",
    "MMDTest",
    "MarkovBound",
    "PairedBootstrap",
    "PairedPredictions",
    "RidgeConnector",
    "bootstrap_weights",
    "classifier_logits",
    "clopper_pearson",
    "coupled_bound",
    "debiased_cka",
    "delta_gamma",
    "disagreement",
    "estimate_bounds",
    "estimate_bounds_from_file",
    "feat_cka",
    "feat_markov_bound",
    "feat_msd",
    "feat_rel",
    "fit_connector",
    "geometric_margin",
    "hsic_terms",
    "logit_margin",
    "logit_markov_bound",
    "logit_msd",
    "margin_bound",
    "median_bandwidth",
    "mmd2",
    "paired_predictions",
    "per_class_terms",
    "percentile_interval",
    "predict",
    "proportion",
    "student_err",
    "teacher_err",
]
