"""``estimate_bounds``: every term and bound of docs/theory.md for one student, in one report.

Thin shell around the pure term functions: validate the inputs once, put the evaluation
rows in a canonical order (so that the report does not depend on the order of the
samples), fit the fitted parts on the fit split, compute the terms, and collect them in
a ``BoundsReport``.

Where each column is computed (the report only calls these):

- ``terms``: teacher_err, student_err, student_own_err, disagreement, delta_gamma,
  feat_msd, feat_rel, logit_msd, bound_coupled, bound_margin, bound_feat_markov,
  bound_logit_markov (``proportion`` of ``paired_predictions`` for the rates);
- ``probes.LogisticProbe`` + ``proportion``: teacher_probe_err, student_probe_err,
  connected_probe_err (one recipe, one seed, the same fit rows);
- ``probes.fit_joint_classifier`` + ``composite.choose_joint``: joint_err_T, joint_err_S,
  joint_chosen, joint_probe_share, and from the choice ``composite.ideal_joint``,
  ``ijc_lambda``, ``ijc_gap``, ``pair_disc``, ``bound_ideal_joint``;
- ``probes.DomainClassifier`` + ``composite.proxy_a``: proxy_a_linear, proxy_a_mlp;
  ``composite.bound_ben_david``;
- ``mmd.run_mmd_pass``: mmd2, mmd_p, mmd_bandwidth; ``cka.feat_cka``: feat_cka.

Intervals: proportions use Clopper–Pearson; feat_cka a delete-one jackknife; every other
composite term (feat_rel, ideal_joint, ijc_lambda, ijc_gap, pair_disc, the proxy
A-distances, MMD² and every bound) comes from ONE paired-bootstrap weight matrix over the
evaluation samples, so the intervals of a bound and of its pieces come from the same
resamples.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError, closest
from ijckd_bounds.estimators import composite, fidelity, terms
from ijckd_bounds.estimators.cka import feat_cka
from ijckd_bounds.estimators.intervals import (
    Estimate,
    PairedBootstrap,
    check_level,
    derived_seed,
    proportion,
)
from ijckd_bounds.estimators.mmd import NoBandwidth, run_mmd_pass
from ijckd_bounds.estimators.probes import (
    Array,
    DomainClassifier,
    LogisticProbe,
    as_features,
    as_tensor,
    domain_errors,
    fit_joint_classifier,
    holdout_split,
)
from ijckd_bounds.estimators.rowwise import project64
from ijckd_bounds.schema import LEVEL, N_BOOTSTRAP, N_PERMUTATIONS

if TYPE_CHECKING:  # annotation only: pandas is imported where a frame is made
    import pandas as pd

__all__ = ["BoundsReport", "estimate_bounds", "estimate_bounds_from_file",
           "MIN_EVAL", "MIN_FIT"]

MIN_EVAL = 10
MIN_FIT = 10
# a fit split sharing at least this fraction of the evaluation rows is an error
OVERLAP_ERROR_FRACTION = 0.01


@dataclass(frozen=True)
class BoundsReport:
    """All docs/theory.md terms of one student on one evaluation split.

    terms: dict term name -> ``Estimate`` (every ``schema.INTERVAL_TERMS`` and
    ``schema.BOUNDS`` name). scalars: dict of ``schema.SCALARS``. per_class_rows: list of
    dicts (class, n, Estimates). notes: list of str (how the report was made, warnings).
    details: dict of plain values (which joint classifier was chosen, probe strengths,
    seeds, ``ece_gap`` = student_ece − teacher_ece with its interval, ``calibration`` =
    the reliability bins, ...). ``report["student_err"]`` and ``report.student_err`` give an
    Estimate.
    """

    terms: dict
    scalars: dict
    per_class_rows: list
    notes: list
    details: dict
    _margins: dict = field(repr=False)
    _indicators: dict = field(repr=False)  # canonical order
    _back: np.ndarray = field(repr=False)  # canonical -> given order

    def __getitem__(self, name):
        if name in self.terms:
            return self.terms[name]
        if name in self.scalars:
            return self.scalars[name]
        raise KeyError(name)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        terms_ = object.__getattribute__(self, "terms")
        if name in terms_:
            return terms_[name]
        scalars_ = object.__getattribute__(self, "scalars")
        if name in scalars_:
            return scalars_[name]
        raise AttributeError(f"'BoundsReport' has no attribute {name!r}")

    def row(self) -> dict[str, Any]:
        """One results-table row: exactly ``schema.ESTIMATE_COLUMNS``, floats/ints, and
        strings for ``schema.TEXT_SCALARS`` (``joint_chosen``)."""
        out = {}
        for name in schema.INTERVAL_TERMS + schema.BOUNDS:
            estimate = self.terms[name]
            out[name], out[f"{name}_lo"], out[f"{name}_hi"] = \
                estimate.value, estimate.lo, estimate.hi
        for name in schema.SCALARS:
            out[name] = self.scalars[name]
        return {column: out[column] for column in schema.ESTIMATE_COLUMNS}

    def per_class(self) -> pd.DataFrame:
        """pandas DataFrame, one row per class present in the evaluation split: class, n,
        student_err, teacher_err, disagreement, top1_agreement (of what the student
        predicts with), each with _lo/_hi (Clopper–Pearson)."""
        import pandas as pd

        names = schema.PER_CLASS_TERMS
        columns = list(schema.PER_CLASS_ROW)
        records = []
        for row in self.per_class_rows:
            record = {"class": row["class"], "n": row["n"]}
            for name in names:
                est = row[name]
                record.update({name: est.value, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
            records.append(record)
        return pd.DataFrame.from_records(records, columns=columns)

    def calibration(self) -> pd.DataFrame:
        """pandas DataFrame of the reliability-diagram data (docs/theory.md "Fidelity and
        calibration"): one row per model (teacher, student) x confidence bin, columns
        model, bin, bin_lo, bin_hi, n, confidence, accuracy (NaN for an empty bin)."""
        import pandas as pd

        frame = pd.DataFrame.from_records(self.details.get("calibration", []),
                                          columns=list(schema.CALIBRATION_ROW))
        return frame.astype({"confidence": float, "accuracy": float})

    def margins(self) -> dict[str, np.ndarray]:
        """Per evaluation sample (numpy arrays, in the order of the given samples):
        ``sample`` (row index in the given arrays), ``y``, ``gamma`` γ(z_T),
        ``distance`` ‖z_S − z_T‖, ``logit_margin`` m(z_T) = top1 − top2,
        ``disagree`` (bool), ``crossing`` (bool, counted by δ_γ)."""
        return {k: v.copy() for k, v in self._margins.items()}

    def margin_frame(self) -> pd.DataFrame:
        """``margins()`` as a pandas DataFrame under the column names of ``margins.csv``
        (``schema.MARGIN_TABLE_NAMES``: ``gamma`` is ``teacher_margin``, ``distance`` is
        ``feat_dist``)."""
        import pandas as pd

        return pd.DataFrame(self.margins()).rename(columns=schema.MARGIN_TABLE_NAMES)

    def indicators(self, canonical: bool = False) -> dict[str, np.ndarray | None]:
        """Per evaluation sample error indicators (bool numpy arrays) for the audit.

        Keys: ``teacher_wrong`` (h_T on z_T), ``student_wrong`` (h_T on z_S),
        ``disagree``, ``joint_t_wrong``, ``joint_s_wrong`` (the full-sample ĥ*),
        ``teacher_probe_wrong``, ``student_probe_wrong`` (None without the student's own
        features ``s``), ``connected_probe_wrong`` (the three same-recipe probes of
        docs/theory.md), ``probe_wrong`` (the student probe when ``s`` was given, else the
        connected probe; ``details["probe_features"]`` says which), ``own_wrong`` (None
        without own logits), and ``sample`` (int, the row index of each entry in the
        given evaluation arrays).

        ``canonical=False``: in the order of the given samples (as ``margins``).
        ``canonical=True``: in the report's canonical evaluation order, the order of the
        rows of ``paired_bootstrap()``'s weights, so that ``weights @ indicator`` gives
        the report's own bootstrap replicates.
        """
        order = slice(None) if canonical else self._back
        return {k: (None if v is None else v[order].copy())
                for k, v in self._indicators.items()}

    def paired_bootstrap(self) -> PairedBootstrap:
        """The ``PairedBootstrap`` behind the report's intervals: the same count weights
        (rebuilt from n_eval, n_bootstrap, seed, level and device), rows in the canonical
        evaluation order of ``indicators(canonical=True)``."""
        return PairedBootstrap(self.scalars["n_eval"], self.details["n_bootstrap"],
                               self.details["seed"], level=self.details["level"],
                               device=self.details["device"])

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON values: the row, each term's method, the level, the
        per-class rows, the notes and the details (the content of ``bounds.json``)."""
        return {
            "row": _jsonable(self.row()),
            "methods": {name: est.method for name, est in self.terms.items()},
            "level": self.details.get("level"),
            "per_class": [_jsonable(r) for r in self.per_class().to_dict(orient="records")],
            "notes": list(self.notes),
            "details": _jsonable(self.details),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of ``to_dict()``; NaN and infinities become null."""
        return json.dumps(self.to_dict(), indent=indent)


def _jsonable(mapping):
    out = {}
    for key, value in mapping.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------
# Input checks


def _features(x, name, *, dim=None, like=None, rows="n"):
    """``as_features`` with integer inputs read as float64 (the report computes its sums
    in float64), ``like`` naming a column."""
    return as_features(x, name, dim=dim, like=f"`{like}`" if like else None, rows=rows,
                       integers_as=torch.float64)


def _labels(y, name, n, n_classes, x_name):
    """``y`` as a long tensor (n,) of class indices in ``0..n_classes-1``."""
    if not torch.is_tensor(y):
        y = as_tensor(y, name, "a 1-D array of class indices")
    y = y.detach()
    if y.dim() != 1 or y.shape[0] != n:
        raise IJCKDError(f"`{name}` must have shape ({n},) like the rows of `{x_name}`, "
                         f"got {tuple(y.shape)}")
    if y.dtype == torch.bool or y.is_complex():
        raise IJCKDError(f"`{name}` must hold integer class indices, got dtype {y.dtype}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise IJCKDError(f"`{name}` must hold integer class indices, got non-integer values")
    y = y.long()
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= n_classes:
        raise IJCKDError(f"`{name}` must hold class indices in [0, {n_classes}) (one per row "
                         f"of `weight`), got values from {low} to {high}")
    return y


def _two_classes(y, name, samples):
    """A split of one class has no classification to measure: the probes fitted on it
    predict a constant and the error budget is degenerate."""
    classes = torch.unique(y)
    if classes.numel() < 2:
        raise IJCKDError(f"`{name}` must hold at least 2 classes, got only class "
                         f"{int(classes[0])} in all {y.numel()} {samples}")


def _check_device(device):
    """``device`` as a usable ``torch.device`` (None stays None), or a one-line error."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise IJCKDError(f"`device` must name a torch device such as 'cpu' or 'cuda:0', "
                         f"got {device!r}") from None
    if device.type == "meta":
        raise IJCKDError("`device` must be one that computes, got 'meta'")
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as exc:  # torch asserts when built without CUDA
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise IJCKDError(f"`device` {str(device)!r} cannot be used here ({first[:120]})") \
            from None
    return device


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise IJCKDError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_classifier(weight, bias, dim):
    weight = _features(weight, "weight", dim=dim, like="z_t", rows="K")
    if weight.shape[0] < 2:
        raise IJCKDError(f"`weight` must have one row per class and at least 2 classes, "
                         f"got shape {tuple(weight.shape)}")
    if not torch.is_tensor(bias):
        bias = as_tensor(bias, "bias", "a 1-D array")
    bias = bias.detach()
    if tuple(bias.shape) != (weight.shape[0],):
        raise IJCKDError(f"`bias` must have shape ({weight.shape[0]},) like the rows of "
                         f"`weight`, got {tuple(bias.shape)}")
    if bias.dtype == torch.bool or bias.is_complex():
        raise IJCKDError(f"`bias` must hold real numbers, got dtype {bias.dtype}")
    bias = bias.to(torch.float64)
    if not bool(torch.isfinite(bias).all()):
        raise IJCKDError("`bias` has NaN or infinite values")
    return weight, bias


def _paired(x, name, n, like, *, dim=None):
    x = _features(x, name, dim=dim, like=like)
    if x.shape[0] != n:
        raise IJCKDError(f"`{name}` must have {n} rows like `{like}` (paired samples), "
                         f"got {x.shape[0]}")
    return x


def _unpack_fit(fit):
    if isinstance(fit, dict):
        keys = ("z_t", "z_s", "y") if "z_t" in fit else ("z_t_fit", "z_s_fit", "y_fit")
        missing = [k for k in keys if k not in fit]
        if missing:
            raise IJCKDError(f"`fit` must hold {', '.join(keys)}; missing {', '.join(missing)}")
        return tuple(fit[k] for k in keys)
    if isinstance(fit, (tuple, list)) and len(fit) == 3:
        return tuple(fit)
    raise IJCKDError("`fit` must be a tuple (z_t_fit, z_s_fit, y_fit) or a dict with keys "
                     f"z_t, z_s, y; got {type(fit).__name__}")


def _same_data(a, b):
    """Whether ``a`` and ``b`` are the same array (the same memory seen the same way).
    Partial overlaps are caught by ``_shared_rows``."""
    if a is b:
        return True
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.device == b.device and a.data_ptr() == b.data_ptr() \
            and a.shape == b.shape and a.stride() == b.stride()
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] \
            and a.shape == b.shape and a.strides == b.strides
    return False


def _row_digests(x, dtype):
    rows = np.ascontiguousarray(x.detach().cpu().to(dtype).numpy())
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]


def _shared_rows(z_eval, z_fit):
    """Number of evaluation rows (unique within the evaluation split) found in the fit
    split. Rows repeated inside the evaluation split (constant or dead features) are not
    evidence of a leak and are skipped."""
    dtype = torch.promote_types(z_eval.dtype, z_fit.dtype)
    eval_digests = _row_digests(z_eval, dtype)
    counts = {}
    for digest in eval_digests:
        counts[digest] = counts.get(digest, 0) + 1
    fit_digests = set(_row_digests(z_fit, dtype))
    return sum(1 for digest in eval_digests if counts[digest] == 1 and digest in fit_digests)


def _canonical_order(arrays):
    """Permutation (n,) sorting rows by a fixed random projection of their contents.

    Every random draw of the report (split, bootstrap, sign vectors, subsamples) is made
    in this order, so permuting the given samples permutes nothing in the report. Rows
    with equal contents are interchangeable, so their relative order does not matter.
    """
    generator = torch.Generator().manual_seed(20240611)
    n = arrays[0].shape[0]
    key = torch.zeros(n, dtype=torch.float64, device=arrays[0].device)
    for a in arrays:
        if a is None:
            continue
        flat = a.reshape(n, -1)
        direction = torch.randn(flat.shape[1], generator=generator, dtype=torch.float64)
        key += project64(flat, direction)
    return torch.argsort(key, stable=True)


# ----------------------------------------------------------------------------------------
# The report


@dataclass
class _Inputs:
    """Checked inputs. The feature arrays stay as given (never copied whole): ``order``
    (n_eval,) lists the evaluation rows of z_t, z_s, s and student_logits in canonical
    order, ``fit_order`` (n_fit,) the fit rows of z_t_fit, z_s_fit, s_fit and y_fit (for
    the internal split these are the same arrays). ``y`` holds the evaluation labels in
    canonical order already; ``sample_index`` is ``order`` on the CPU."""

    z_t: torch.Tensor
    z_s: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    s: torch.Tensor | None
    student_logits: torch.Tensor | None
    z_t_fit: torch.Tensor
    z_s_fit: torch.Tensor
    y_fit: torch.Tensor
    s_fit: torch.Tensor | None
    order: torch.Tensor
    fit_order: torch.Tensor
    sample_index: torch.Tensor
    split: str
    notes: list

    def to(self, device):
        # the internal split's fit and eval arrays are one tensor: move it once
        done = {}

        def move(name, value):
            if not torch.is_tensor(value) or name == "sample_index":
                return value
            if id(value) not in done:
                done[id(value)] = value.to(device)
            return done[id(value)]

        return _Inputs(**{name: move(name, value) for name, value in self.__dict__.items()})


def _prepare(z_t, z_s, y, weight, bias, *, fit, s, s_fit, student_logits, seed,
             fit_fraction):
    """Validate every input once (one-line ``IJCKDError``s) and produce ``_Inputs``."""
    z_t_in, z_s_in = z_t, z_s
    z_t = _features(z_t, "z_t")
    n, d = z_t.shape
    z_s = _paired(z_s, "z_s", n, "z_t", dim=d)
    weight, bias = _as_classifier(weight, bias, d)
    n_classes = weight.shape[0]
    y = _labels(y, "y", n, n_classes, "z_t")
    _two_classes(y, "y", "evaluation samples" if fit is not None else "samples")
    if s is not None:
        s = _paired(s, "s", n, "z_t")
    if student_logits is not None:
        student_logits = _paired(student_logits, "student_logits", n, "z_t", dim=n_classes)
    notes = []

    if fit is None:
        if s_fit is not None:
            raise IJCKDError("`s_fit` needs `fit` (the fit split it belongs to); without "
                             "`fit`, pass only `s` and it is split with the samples")
        if isinstance(fit_fraction, bool) or not isinstance(fit_fraction, (int, float)) \
                or not 0 < fit_fraction < 1:
            raise IJCKDError(f"`fit_fraction` must be strictly between 0 and 1, "
                             f"got {fit_fraction!r}")
        if n < MIN_EVAL + MIN_FIT:
            raise IJCKDError(f"need at least {MIN_EVAL + MIN_FIT} samples to split into fit "
                             f"and eval parts (no `fit` given), got {n}")
        order = _canonical_order([z_t, z_s, y, s, student_logits])
        fit_pos, eval_pos = holdout_split(y[order], 1.0 - fit_fraction,
                                             derived_seed(seed, "fit-eval-split"))
        fit_rows, eval_rows = order[fit_pos.to(order.device)], order[eval_pos.to(order.device)]
        if eval_rows.numel() < MIN_EVAL or fit_rows.numel() < MIN_FIT:
            raise IJCKDError(f"the fit/eval split of {n} samples left {fit_rows.numel()} fit "
                             f"and {eval_rows.numel()} eval samples; each needs at least "
                             f"{MIN_FIT}")
        notes.append(f"no fit split given: split the {n} samples into {fit_rows.numel()} fit "
                     f"and {eval_rows.numel()} eval samples (stratified by class, seed={seed})")

        return _Inputs(
            z_t=z_t, z_s=z_s, y=y[eval_rows], weight=weight, bias=bias, s=s,
            student_logits=student_logits, z_t_fit=z_t, z_s_fit=z_s, y_fit=y, s_fit=s,
            order=eval_rows, fit_order=fit_rows, sample_index=eval_rows.cpu(),
            split="internal", notes=notes)

    fit_z_t, fit_z_s, fit_y = _unpack_fit(fit)
    if _same_data(fit_z_t, z_t_in) or _same_data(fit_z_s, z_s_in):
        raise IJCKDError("`fit` holds the evaluation features themselves; the fit split "
                         "must be disjoint from the evaluation samples")
    z_t_fit = _features(fit_z_t, "z_t_fit", dim=d, like="z_t")
    n_fit = z_t_fit.shape[0]
    z_s_fit = _paired(fit_z_s, "z_s_fit", n_fit, "z_t_fit", dim=d)
    y_fit = _labels(fit_y, "y_fit", n_fit, n_classes, "z_t_fit")
    _two_classes(y_fit, "y_fit", "fit samples")
    if s is not None and s_fit is None:
        raise IJCKDError("`s` needs `s_fit` (the student's own features of the fit "
                         "split) when `fit` is given")
    if s_fit is not None:
        if s is None:
            raise IJCKDError("`s_fit` needs `s` (the student's own features of the "
                             "evaluation samples)")
        s_fit = _paired(s_fit, "s_fit", n_fit, "z_t_fit", dim=s.shape[1])
    if n < MIN_EVAL:
        raise IJCKDError(f"need at least {MIN_EVAL} evaluation samples, got {n}")
    if n_fit < MIN_FIT:
        raise IJCKDError(f"need at least {MIN_FIT} fit samples, got {n_fit}")
    shared = _shared_rows(z_t, z_t_fit)
    if shared and (shared >= OVERLAP_ERROR_FRACTION * n or shared >= min(n, n_fit)):
        raise IJCKDError(f"the fit split overlaps the evaluation split: {shared} of the "
                         f"{n} evaluation rows of `z_t` also appear in `z_t_fit`")
    if shared:
        notes.append(f"{shared} evaluation rows of z_t also appear in the fit split "
                     "(below 1%: duplicates in the data?)")
    order = _canonical_order([z_t, z_s, y, s, student_logits])
    fit_order = _canonical_order([z_t_fit, z_s_fit, y_fit, s_fit])
    return _Inputs(
        z_t=z_t, z_s=z_s, y=y[order], weight=weight, bias=bias, s=s,
        student_logits=student_logits, z_t_fit=z_t_fit, z_s_fit=z_s_fit, y_fit=y_fit,
        s_fit=s_fit, order=order, fit_order=fit_order, sample_index=order.cpu(),
        split="given", notes=notes)


def estimate_bounds(z_t: Array, z_s: Array, y: Array, weight: Array, bias: Array, *,
                    fit: tuple | dict | None = None, s: Array | None = None,
                    s_fit: Array | None = None, student_logits: Array | None = None,
                    level: float = LEVEL, n_permutations: int = N_PERMUTATIONS,
                    n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, mmd_max_n: int | None = None,
                    device: torch.device | str | None = None,
                    fit_fraction: float = 0.5) -> BoundsReport:
    """Estimate every docs/theory.md term and bound for one student.

    Args:
        z_t (n, d): teacher features ``t(x)`` of the evaluation samples.
        z_s (n, d): student features in the teacher's space ``p(s(x))``, same rows.
        y (n,): integer labels in ``0..K-1``.
        weight (K, d), bias (K,): the teacher classifier ``h_T``.
        fit: ``(z_t_fit, z_s_fit, y_fit)`` (or a dict with keys z_t, z_s, y or z_t_fit,
            z_s_fit, y_fit): the fit split for the fitted parts (joint probe, student
            probe, domain classifiers), disjoint from the evaluation samples. Without it
            the given samples are split (seeded, stratified by class) into
            ``fit_fraction`` fit / the rest eval, and ``report.notes`` says so.
        s (n, d_s), s_fit (n_fit, d_s): the student's own features before the connector,
            for ``student_probe_err`` (missing without them; ``connected_probe_err`` is
            the probe on z_S either way). With ``fit``, ``s`` needs ``s_fit``; without
            ``fit``, ``s`` is split like the rest.
        student_logits (n, K): logits of the student's own head, for ``student_own_err``
            (NaN when absent).
        level: confidence level of every interval.
        n_permutations: sign-flip permutations of the MMD test.
        n_bootstrap: paired-bootstrap resamples (one weight matrix for every composite).
        seed: every random choice derives from it.
        mmd_max_n: compute MMD² on a seeded subsample of this many evaluation pairs when
            there are more (CKA and its jackknife interval always use every pair).
        device: where to compute (default: the device of ``z_t``).
        fit_fraction: share of the samples used for fitting when ``fit`` is not given.

    Returns:
        ``BoundsReport``.
    """
    clock = _StageClock()
    level = check_level(level)
    n_permutations = _check_int(n_permutations, "n_permutations", 1)
    n_bootstrap = _check_int(n_bootstrap, "n_bootstrap", 1)
    seed = _check_int(seed, "seed", 0)
    if mmd_max_n is not None:
        mmd_max_n = _check_int(mmd_max_n, "mmd_max_n", MIN_EVAL)
    device = _check_device(device)
    data = _prepare(z_t, z_s, y, weight, bias, fit=fit, s=s, s_fit=s_fit,
                    student_logits=student_logits, seed=seed, fit_fraction=fit_fraction)
    device = device if device is not None else data.z_t.device
    data = data.to(device)
    n_eval, d = data.order.numel(), data.z_t.shape[1]
    n_classes = data.weight.shape[0]
    if n_eval < 10 * d:
        data.notes.append(f"n_eval = {n_eval} < 10·dim = {10 * d}: the discrepancy estimates "
                          "(proxy A-distance, CKA, MMD) are measured with few samples per "
                          "dimension")
    clock.stop("input checks and ordering")

    report_terms, scalars, details, per_sample = _compute_terms(
        data, level=level, n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed,
        mmd_max_n=mmd_max_n, clock=clock)
    scalars.update({"n_eval": n_eval, "n_fit": data.fit_order.numel(), "dim": d,
                    "n_classes": n_classes})
    details.update({"split": data.split, "seed": seed, "level": level,
                    "n_bootstrap": n_bootstrap, "n_permutations": n_permutations,
                    "device": str(device)})

    pairs = per_sample.pop("pairs")
    own_logits = None if data.student_logits is None else data.student_logits[data.order]
    per_class_rows = terms.per_class_terms(pairs.logits_t, pairs.logits_s, data.y, n_classes,
                                           level=level, logits_own=own_logits)
    # back to the order of the given samples
    sample_index = data.sample_index
    back = torch.argsort(sample_index)

    def cpu(x):
        return None if x is None else x.detach().cpu()[back].numpy()

    margins = {
        "sample": sample_index[back].numpy(),
        "y": cpu(data.y),
        "gamma": cpu(pairs.gamma),
        "distance": cpu(pairs.distance),
        "logit_margin": cpu(pairs.logit_margin),
        "disagree": cpu(pairs.disagree),
        "crossing": cpu(pairs.crossing),
    }
    indicators = {name: None if value is None else value.detach().cpu().numpy()
                  for name, value in per_sample.items()}
    indicators["sample"] = sample_index.numpy().copy()
    return BoundsReport(terms=report_terms, scalars=scalars, per_class_rows=per_class_rows,
                        notes=data.notes, details=details, _margins=margins,
                        _indicators=indicators, _back=back.numpy())


class _StageClock:
    """Wall-clock seconds per stage of the report (``details["timings_s"]``)."""

    def __init__(self):
        import time

        self._now = time.perf_counter
        self._last = self._now()
        self.stages = {}

    def stop(self, stage):
        now = self._now()
        self.stages[stage] = round(now - self._last, 4)
        self._last = now


def _compute_terms(data, *, level, n_permutations, n_bootstrap, seed, mmd_max_n, clock):
    """The terms on the (canonically ordered) ``_Inputs``. Returns
    ``(terms, scalars, details, per_sample)``."""
    z_t, z_s, y, weight, bias = data.z_t, data.z_s, data.y, data.weight, data.bias
    z_t_fit, z_s_fit, y_fit = data.z_t_fit, data.z_s_fit, data.y_fit
    s, s_fit, student_logits, notes = data.s, data.s_fit, data.student_logits, data.notes
    # the features stay in the given order: every use takes the rows ``order`` (eval) or
    # ``fit_order`` (fit), so no whole copy of them is ever made in canonical order
    order, fit_order = data.order, data.fit_order
    n, n_classes = order.numel(), weight.shape[0]

    def ordered(per_row):
        """Per-row results computed on the arrays as given -> canonical order."""
        return per_row[order.to(per_row.device)]

    out = {}
    details = {}
    bootstrap = PairedBootstrap(n, n_bootstrap, seed, level=level, device=z_t.device)
    # the features keep their dtype: the O(n·d) terms sum in float64 a block of rows at a
    # time (a float64 copy of z_t and z_s would be 1.6 GB at n = 50,000, d = 2,048)

    # classifier terms, margins and the exact bounds 1-2
    pairs = terms.paired_predictions(z_t, z_s, weight, bias, order=order)
    teacher_wrong = pairs.pred_t != y
    student_wrong = pairs.pred_s != y
    out["teacher_err"] = proportion(teacher_wrong, level)
    out["student_err"] = proportion(student_wrong, level)
    out["disagreement"] = proportion(pairs.disagree, level)
    out["delta_gamma"] = terms.delta_gamma(pairs, level=level)
    if student_logits is not None:
        own_wrong = terms.predict(student_logits[order].to(torch.float64)) != y
        out["student_own_err"] = proportion(own_wrong, level)
    else:
        own_wrong = None
        out["student_own_err"] = Estimate.missing(n, level, "no student_logits given")
    out["feat_msd"] = terms.feat_msd(z_t, z_s, bootstrap=bootstrap, order=order)
    out["feat_rel"] = terms.feat_rel(z_t, z_s, bootstrap=bootstrap, order=order)
    out["logit_msd"] = terms.logit_msd(pairs.logits_t, pairs.logits_s, bootstrap=bootstrap)
    out["bound_coupled"] = terms.coupled_bound(pairs, y, bootstrap=bootstrap)
    out["bound_margin"] = terms.margin_bound(pairs, y, bootstrap=bootstrap)
    feat_markov = terms.feat_markov_bound(pairs, y, bootstrap=bootstrap)
    logit_markov = terms.logit_markov_bound(pairs, y, bootstrap=bootstrap)
    out["bound_feat_markov"] = feat_markov.bound
    out["bound_logit_markov"] = logit_markov.bound
    clock.stop("classifier and feature terms")

    # the three same-recipe probes (docs/theory.md teacher/student/connected_probe_err): same fit
    # rows, same L2 grid and nested selection, same seed
    probe_seed = derived_seed(seed, "probes") % 2**31
    probe_l2 = {}

    def probe_wrong_on(x_fit, x, name):
        probe = LogisticProbe(seed=probe_seed)
        probe.fit(x_fit, y_fit, num_classes=n_classes, rows=fit_order)
        probe_l2[name] = probe.l2_
        return ordered(probe.predict(x)).to(y.device) != y

    teacher_probe_wrong = probe_wrong_on(z_t_fit, z_t, "teacher")
    out["teacher_probe_err"] = proportion(teacher_probe_wrong, level)
    clock.stop("teacher probe")
    if s is not None:
        student_probe_wrong = probe_wrong_on(s_fit, s, "student")
        out["student_probe_err"] = proportion(student_probe_wrong, level)
    else:
        student_probe_wrong = None
        out["student_probe_err"] = Estimate.missing(
            n, level, "no student features `s` given")
        notes.append("no student features `s` given: student_probe_err is missing "
                     "(connected_probe_err is the probe on z_S)")
    clock.stop("student probe")
    connected_probe_wrong = probe_wrong_on(z_s_fit, z_s, "connected")
    out["connected_probe_err"] = proportion(connected_probe_wrong, level)
    clock.stop("connected probe")
    # ``probe_wrong``: the probe on the student's own features when given, else on z_S
    probe_wrong = connected_probe_wrong if s is None else student_probe_wrong
    details.update({"probe_features": "s" if s is not None else "z_s",
                    "probe_l2": probe_l2["student" if s is not None else "connected"],
                    **{f"{name}_probe_l2": value for name, value in probe_l2.items()}})

    # ĥ*: the joint probe (fitted on the whole fit split) or h_T, whichever has the
    # smaller joint error on the evaluation split, chosen again in every replicate
    joint_probe = fit_joint_classifier(z_t_fit, z_s_fit, y_fit, weight, bias,
                                       seed=derived_seed(seed, "joint-probe") % 2**31,
                                       rows=fit_order)
    probe_pred_t = terms.predict(terms.classifier_logits(z_t, joint_probe.weight,
                                                         joint_probe.bias, order))
    probe_pred_s = terms.predict(terms.classifier_logits(z_s, joint_probe.weight,
                                                         joint_probe.bias, order))
    joint = composite.choose_joint(teacher_wrong, student_wrong, probe_pred_t != y,
                                   probe_pred_s != y, probe_pred_t != pairs.pred_t,
                                   probe_pred_s != pairs.pred_s, bootstrap=bootstrap)
    joint_t_wrong, joint_s_wrong = joint.wrong_t, joint.wrong_s
    out["joint_err_T"], out["joint_err_S"] = composite.joint_errors(joint, level=level)
    out["ideal_joint"] = composite.ideal_joint(joint, bootstrap=bootstrap)
    out["ijc_lambda"] = composite.ijc_lambda(joint, bootstrap=bootstrap)
    out["ijc_gap"] = composite.ijc_gap(joint, bootstrap=bootstrap)
    out["pair_disc"] = composite.pair_disc(joint, bootstrap=bootstrap)
    out["bound_ideal_joint"] = composite.bound_ideal_joint(joint, bootstrap=bootstrap)
    details.update({"joint_chosen": joint.chosen, "joint_probe_share": joint.probe_share,
                    "joint_l2": joint_probe.l2})
    clock.stop("joint probe")

    # domain classifiers
    for kind in ("linear", "mlp"):
        clf = DomainClassifier(kind=kind, seed=derived_seed(seed, f"domain-{kind}") % 2**31)
        clf.fit(z_t_fit, z_s_fit, rows=fit_order)
        err_t, err_s = (ordered(err) for err in domain_errors(clf, z_t, z_s))
        out[f"proxy_a_{kind}"] = composite.proxy_a(err_t, err_s, bootstrap=bootstrap)
        if kind == "mlp":
            out["bound_ben_david"] = composite.bound_ben_david(joint, err_t, err_s,
                                                               bootstrap=bootstrap)
        clock.stop(f"domain classifier ({kind})")

    # fidelity and calibration of what the student predicts with: its own head where it
    # has one, else h_T(z_S) (docs/theory.md "Fidelity and calibration")
    predictive = pairs.logits_s if student_logits is None else student_logits[order]
    fidelity_terms = fidelity.terms(pairs.logits_t, predictive, y, bootstrap=bootstrap)
    details["ece_gap"] = fidelity_terms.pop("ece_gap").as_dict()
    details["calibration"] = fidelity.calibration_rows(pairs.logits_t, predictive, y)
    out.update(fidelity_terms)
    clock.stop("fidelity and calibration")

    # MMD²: one block pass over the pairwise matrix; the float64 copy of the bootstrap
    # weights (B·n·8 bytes) is not needed there
    bootstrap.release_cache()
    try:
        mmd_test, mmd_pairs = run_mmd_pass(
            z_t, z_s, n_permutations=n_permutations, seed=seed, bootstrap=bootstrap,
            max_n=mmd_max_n, order=order)
    except NoBandwidth as exc:  # degenerate features lose MMD², never the bounds
        mmd_test, mmd_pairs = None, 0
        out["mmd2"] = Estimate.missing(n, level, "no median bandwidth")
        notes.append(f"mmd2 and mmd_p not measured: {exc}")
    else:
        out["mmd2"] = mmd_test.mmd2
        if mmd_pairs < n:
            notes.append(f"MMD² computed on a seeded subsample of {mmd_pairs} of the {n} "
                         "evaluation pairs")
    clock.stop("MMD²")
    out["feat_cka"] = feat_cka(z_t, z_s, level=level, order=order)
    clock.stop("CKA")

    scalars = {"mmd_p": math.nan if mmd_test is None else mmd_test.p_value,
               "mmd_bandwidth": math.nan if mmd_test is None else mmd_test.bandwidth,
               "feat_markov_tau": feat_markov.tau, "logit_markov_tau": logit_markov.tau,
               "joint_chosen": joint.chosen, "joint_probe_share": joint.probe_share}
    details.update({"mmd_pairs": mmd_pairs, "timings_s": clock.stages})
    per_sample = {"pairs": pairs, "teacher_wrong": teacher_wrong,
                  "student_wrong": student_wrong, "disagree": pairs.disagree,
                  "joint_t_wrong": joint_t_wrong, "joint_s_wrong": joint_s_wrong,
                  "probe_wrong": probe_wrong, "own_wrong": own_wrong,
                  "teacher_probe_wrong": teacher_probe_wrong,
                  "student_probe_wrong": student_probe_wrong,
                  "connected_probe_wrong": connected_probe_wrong}
    missing = [k for k in schema.INTERVAL_TERMS + schema.BOUNDS if k not in out]
    if missing:  # pragma: no cover - a programming error, not a user error
        raise RuntimeError(f"terms not computed: {missing}")
    return out, scalars, details, per_sample


# ----------------------------------------------------------------------------------------
# From a feature file

FILE_ARRAYS = ("z_t", "z_s", "y", "weight", "bias")
FIT_ARRAYS = ("z_t_fit", "z_s_fit", "y_fit")
OPTIONAL_ARRAYS = ("s", "s_fit", "student_logits")


def estimate_bounds_from_file(path: str | Path, **kwargs: Any) -> BoundsReport:
    """``estimate_bounds`` on the arrays of a ``.npz`` or ``.pt`` file.

    Required arrays: z_t, z_s, y, weight, bias. Optional: z_t_fit, z_s_fit, y_fit (all
    three, the fit split), s, s_fit, student_logits. Keyword arguments go to
    ``estimate_bounds`` (an argument given there overrides the file's array).
    """
    from ijckd_bounds.io import load_arrays

    arrays = load_arrays(path)
    known = FILE_ARRAYS + FIT_ARRAYS + OPTIONAL_ARRAYS
    unknown = sorted(set(arrays) - set(known))
    if unknown:
        # a misspelled optional array (t_fit, s_fit_) would otherwise change the estimate
        # silently: without its fit split the file is split in two
        hint = closest(unknown[0], known)
        raise IJCKDError(f"feature file {str(path)!r} has unknown array(s) "
                         f"{', '.join(unknown)}"
                         + (f" (did you mean {hint!r} for {unknown[0]!r}?)" if hint else "")
                         + f"; valid: {', '.join(known)}")
    missing = [k for k in FILE_ARRAYS if k not in arrays]
    if missing:
        raise IJCKDError(f"feature file {str(path)!r} is missing array(s) "
                         f"{', '.join(missing)}; it holds {', '.join(sorted(arrays)) or 'none'}")
    present = [k for k in FIT_ARRAYS if k in arrays]
    if present and len(present) != len(FIT_ARRAYS):
        absent = [k for k in FIT_ARRAYS if k not in arrays]
        raise IJCKDError(f"feature file {str(path)!r} has {', '.join(present)} but not "
                         f"{', '.join(absent)}: the fit split needs all three")

    def tensor(key):
        array = np.asarray(arrays[key])
        # torch takes only bool and numeric arrays; strings, dates, ... are the user's mistake
        if array.dtype.kind not in "biufc":
            raise IJCKDError(f"array `{key}` of feature file {str(path)!r} must hold numbers, "
                             f"got dtype {array.dtype}")
        return as_tensor(np.ascontiguousarray(array), key, "an array")

    call = {k: tensor(k) for k in FILE_ARRAYS}
    if present and "fit" not in kwargs:
        kwargs["fit"] = tuple(tensor(k) for k in FIT_ARRAYS)
    for k in OPTIONAL_ARRAYS:
        if k in arrays and k not in kwargs:
            kwargs[k] = tensor(k)
    report = estimate_bounds(call["z_t"], call["z_s"], call["y"], call["weight"], call["bias"],
                             **kwargs)
    return report
