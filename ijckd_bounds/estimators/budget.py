"""The audit's error budget (docs/theory.md, "Audit: an error budget").

Pieces that sum exactly to the student's error, each a difference of per-sample error
indicators on the same evaluation samples, so one paired bootstrap (the report's own
``PairedBootstrap``: every piece computed on the same resamples) gives every interval and
the interval of every difference between pieces.

For a student predicting with the teacher classifier ``h_T``::

    student_err = teacher_err                                  teacher piece
                + (teacher_probe_err - teacher_err)            fit piece
                + (student_probe_err - teacher_probe_err)      capacity piece
                + (connected_probe_err - student_probe_err)    connector piece
                + (student_err - connected_probe_err)          alignment piece

For a student with its own head, ``student_own_err`` is the target and the last two pieces
become one head piece ``student_own_err - student_probe_err``. Without the student's own
features ``s``, capacity and connector merge into one representation piece
``connected_probe_err - teacher_probe_err`` (and the head piece becomes
``student_own_err - connected_probe_err``).

Naming rule: the largest piece is named only when the interval of its difference from the
runner-up lies above 0, else a tie of the two; a student whose error is clearly above the
teacher's is never teacher-limited; the diagnosis is ``undetermined`` when the fit piece (a
property of the audit's data, never of the student) is named or a named student piece is
not clearly above it; advice only for named pieces whose own interval lies above 0.
"""

from dataclasses import dataclass, field

import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.intervals import Estimate, PairedBootstrap
from ijckd_bounds.schema import (
    DIAGNOSES,
    LEVEL,
    N_BOOTSTRAP,
    PIECE_DEFINITION_HEAD_WITHOUT_S,
    PIECE_DEFINITIONS,
    STUDENT_PIECES,
    UNDETERMINED,
)

__all__ = ["ErrorBudget", "Piece", "error_budget"]


@dataclass(frozen=True)
class Piece:
    """One piece of the budget: ``estimate`` (paired bootstrap), ``count`` its signed
    integer numerator (the pieces' counts sum to the target's count), and the one-line
    ``formula`` and ``meaning`` the report prints beside it."""

    name: str
    estimate: Estimate
    count: int
    formula: str
    meaning: str

    @property
    def value(self):
        """The piece's point estimate."""
        return self.estimate.value

    @property
    def lo(self):
        """Lower end of the piece's interval."""
        return self.estimate.lo

    @property
    def hi(self):
        """Upper end of the piece's interval."""
        return self.estimate.hi

    @property
    def diagnosis(self):
        """The diagnosis the report gives when this piece is named (e.g. ``teacher-limited``)."""
        return DIAGNOSES[self.name]

    @property
    def definition(self):
        """``formula: meaning``, the line the report prints beside the piece."""
        return f"{self.formula}: {self.meaning}"

    def as_dict(self):
        """The piece as plain values (value, interval, count, formula, meaning)."""
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "count": self.count,
                "formula": self.formula, "meaning": self.meaning}


@dataclass(frozen=True)
class ErrorBudget:
    """Pieces summing exactly to ``total`` (the error named by ``target``) and the
    diagnosis the naming rule allows.

    diagnosis: a piece name or ``"undetermined"``. named: the pieces the diagnosis names
    (one, or two in a tie; for ``undetermined`` the pieces the fit piece could not be told
    from). runner_up: the piece ranked after the largest candidate. separation: the
    interval of (largest − runner-up) on the same replicates. fit_margins: for each named
    student piece, the interval of (piece − fit). teacher_gap: target − teacher_err;
    clearly_worse: its interval lies above 0 (the teacher piece is then no candidate).
    advice: the named pieces whose own interval lies above 0. n_fit: the probes' fit
    samples (None when unknown).
    """

    target: str
    total: Estimate
    total_count: int
    pieces: tuple
    diagnosis: str
    named: tuple
    runner_up: str
    tie: bool
    separation: Estimate
    fit_margins: dict
    teacher_gap: Estimate
    clearly_worse: bool
    advice: tuple
    own_features: bool
    n_fit: int | None = None
    notes: tuple = field(default_factory=tuple)

    @property
    def total_lo(self):
        """Lower end of the target's interval."""
        return self.total.lo

    @property
    def total_hi(self):
        """Upper end of the target's interval."""
        return self.total.hi

    @property
    def undetermined(self):
        """Whether the diagnosis is ``undetermined``: the fit piece (the audit's own data) is
        named, or a named student piece is not clearly above it."""
        return self.diagnosis == UNDETERMINED

    def piece(self, name):
        """The piece called ``name``; ``KeyError`` when there is none."""
        for piece in self.pieces:
            if piece.name == name:
                return piece
        raise KeyError(name)

    def ranked(self):
        """The pieces, largest value first."""
        return tuple(sorted(self.pieces, key=lambda p: p.value, reverse=True))

    def as_dict(self):
        """The budget as plain values, what ``reporting.audit_markdown`` writes from."""
        def interval(est):
            return {"value": est.value, "lo": est.lo, "hi": est.hi}

        return {"target": self.target, "total": self.total.value, "total_lo": self.total.lo,
                "total_hi": self.total.hi, "total_count": self.total_count,
                "n": self.total.n, "n_fit": self.n_fit, "own_features": self.own_features,
                "diagnosis": self.diagnosis, "named": list(self.named),
                "runner_up": self.runner_up, "tie": self.tie,
                "separation": interval(self.separation),
                "fit_margins": {k: interval(v) for k, v in self.fit_margins.items()},
                "teacher_gap": interval(self.teacher_gap),
                "clearly_worse": self.clearly_worse, "advice": list(self.advice),
                "method": self.total.method, "level": self.total.level,
                "notes": list(self.notes),
                "pieces": {p.name: p.as_dict() for p in self.pieces}}


def _indicator(values, name, n=None):
    """``values`` (n,) bool/0-1 -> float64 tensor; None stays None."""
    if values is None:
        return None
    x = torch.as_tensor(values)
    if x.dim() != 1:
        raise IJCKDError(f"`{name}` must be a 1-D array of per-sample error indicators, got "
                         f"shape {tuple(x.shape)}")
    x = x.to(torch.float64).cpu()
    if not bool(((x == 0) | (x == 1)).all()):
        raise IJCKDError(f"`{name}` must hold 0/1 (or bool) error indicators")
    if n is not None and x.numel() != n:
        raise IJCKDError(f"`{name}` must have {n} entries like `teacher_wrong`, "
                         f"got {x.numel()}")
    return x


def _parts(tw, sw, tpw, cpw, spw, ow):
    """(target name, target indicator, [(piece, per-sample difference, formula, meaning)])."""
    own_features = spw is not None
    rows = [("teacher", tw), ("fit", tpw - tw)]
    if own_features:
        rows.append(("capacity", spw - tpw))
    else:
        rows.append(("representation", cpw - tpw))
    if ow is None:
        target, total = "student_err", sw
        if own_features:
            rows.append(("connector", cpw - spw))
        rows.append(("alignment", sw - cpw))
    else:
        target, total = "student_own_err", ow
        rows.append(("head", ow - (spw if own_features else cpw)))
    parts = []
    for name, diff in rows:
        formula, meaning = PIECE_DEFINITIONS[name]
        if name == "head" and not own_features:
            formula, meaning = PIECE_DEFINITION_HEAD_WITHOUT_S
        parts.append((name, diff, formula, meaning))
    return target, total, parts


def error_budget(*, teacher_wrong, student_wrong, teacher_probe_wrong, connected_probe_wrong,
                 student_probe_wrong=None, own_wrong=None, bootstrap=None, n_bootstrap=N_BOOTSTRAP,
                 seed=0, level=LEVEL, n_fit=None):
    """The audit's additive error budget with paired-bootstrap intervals and its diagnosis.

    Args (each indicator (n,) bool or 0/1, over the same evaluation samples, in the row
    order of ``bootstrap``):
        teacher_wrong: ``argmax h_T(z_T) != y``.
        student_wrong: ``argmax h_T(z_S) != y``.
        teacher_probe_wrong, connected_probe_wrong: errors of the same-recipe probes on
            ``t(x)`` and on ``z_S``.
        student_probe_wrong: errors of the same-recipe probe on the student's own features
            ``s(x)``; None when ``s`` was not given (capacity and connector then merge into
            one representation piece).
        own_wrong: errors of the student's own head, for a student that predicts with it
            (the target is then ``student_own_err``); None for students predicting with
            ``h_T``.
        bootstrap: the ``PairedBootstrap`` of the report the indicators come from
            (``BoundsReport.paired_bootstrap()``), so the budget's intervals come from the
            same resamples as the report's. Without it one is built from ``n_bootstrap``,
            ``seed`` and ``level``.
        n_fit: the probes' fit samples, quoted when the diagnosis is undetermined.

    Returns ``ErrorBudget``; its pieces' integer counts sum exactly to the target's count.
    """
    tw = _indicator(teacher_wrong, "teacher_wrong")
    n = tw.numel()
    if n == 0:
        raise IJCKDError("the error budget needs at least one evaluation sample")
    sw = _indicator(student_wrong, "student_wrong", n)
    tpw = _indicator(teacher_probe_wrong, "teacher_probe_wrong", n)
    cpw = _indicator(connected_probe_wrong, "connected_probe_wrong", n)
    spw = _indicator(student_probe_wrong, "student_probe_wrong", n)
    ow = _indicator(own_wrong, "own_wrong", n)
    if bootstrap is None:
        bootstrap = PairedBootstrap(n, n_bootstrap, seed, level=level)
    elif bootstrap.n != n:
        raise IJCKDError(f"the bootstrap resamples {bootstrap.n} samples, the indicators "
                         f"have {n}")
    target, total, parts = _parts(tw, sw, tpw, cpw, spw, ow)

    # columns: target, every piece, target - teacher; one set of replicate means
    per_sample = torch.stack([total] + [diff for _, diff, _, _ in parts] + [total - tw], dim=1)
    replicates = bootstrap.means(per_sample).cpu()  # (B, 2 + pieces)
    counts = [int(round(float(c))) for c in per_sample.sum(dim=0)]

    def estimate(j):
        return bootstrap.estimate(counts[j] / n, replicates[:, j])

    total_est = estimate(0)
    pieces = tuple(Piece(name, estimate(j + 1), counts[j + 1], formula, meaning)
                   for j, (name, _, formula, meaning) in enumerate(parts))
    column = {p.name: j + 1 for j, p in enumerate(pieces)}
    by_name = {p.name: p for p in pieces}
    teacher_gap = estimate(len(parts) + 1)

    def difference(a, b):
        """Interval of piece a − piece b on the same replicates."""
        return bootstrap.estimate((counts[column[a]] - counts[column[b]]) / n,
                                  replicates[:, column[a]] - replicates[:, column[b]])

    notes = []
    if spw is None:
        notes.append("the student's own features s were not given: capacity and connector "
                     "are merged into one representation piece")
    clearly_worse = teacher_gap.lo > 0
    candidates = [p for p in pieces if not (clearly_worse and p.name == "teacher")]
    # stable: among equal values the earlier piece of the budget ranks first
    ranked = sorted(candidates, key=lambda p: p.value, reverse=True)
    best, runner = ranked[0], ranked[1]
    separation = difference(best.name, runner.name)
    tie = not separation.lo > 0
    named = (best.name, runner.name) if tie else (best.name,)
    fit_margins = {name: difference(name, "fit") for name in named if name in STUDENT_PIECES}
    if "fit" in named or any(not m.lo > 0 for m in fit_margins.values()):
        diagnosis = UNDETERMINED
        advice = ()
    else:
        diagnosis = best.name
        advice = tuple(name for name in named if by_name[name].lo > 0)
    return ErrorBudget(target=target, total=total_est, total_count=counts[0], pieces=pieces,
                       diagnosis=diagnosis, named=named, runner_up=runner.name, tie=tie,
                       separation=separation, fit_margins=fit_margins,
                       teacher_gap=teacher_gap, clearly_worse=clearly_worse, advice=advice,
                       own_features=spw is not None,
                       n_fit=None if n_fit is None else int(n_fit), notes=tuple(notes))
