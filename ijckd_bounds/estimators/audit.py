"""The audit's error budget (THEORY.md, "Audit: an error budget").

Four (or three) pieces that sum exactly to the student's error, each a difference of
per-sample error rates on the same evaluation samples, so one paired bootstrap (resampling
samples, pieces computed on the same resample) gives every interval.

For a student predicting with the teacher classifier ``h_T``::

    student_err = teacher_err                              teacher piece
                + (student_probe_err - teacher_err)        capacity piece
                + (joint_err_S - student_probe_err)        connector piece
                + (student_err - joint_err_S)              alignment piece

For a student with its own head, ``student_own_err`` is the target and the last two pieces
become one head piece ``student_own_err - student_probe_err``. Without the student's own
features, capacity and connector merge into ``joint_err_S - teacher_err`` (representation).
"""

from dataclasses import dataclass, field

import torch

DIAGNOSES = {
    "teacher": "teacher-limited",
    "capacity": "capacity-limited",
    "connector": "connector-limited",
    "alignment": "alignment-limited (IJC violated)",
    "head": "head-limited",
    "representation": "representation-limited",
}

ADVICE = {
    "teacher": "The student already does about as well as the teacher's classifier allows: "
               "a better teacher is the fix.",
    "capacity": "The student's own features separate the classes worse than the teacher's: "
                "no head or connector can recover what is not there. Use a larger student "
                "or train longer.",
    "connector": "The student's own features hold the information, but the map into the "
                 "teacher's space loses it: use a wider or deeper connector, or a stronger "
                 "feature loss.",
    "alignment": "The student's features in the teacher's space are linearly separable, just "
                 "not by the teacher's classifier: raise the feature/logit loss weight, train "
                 "longer, or fine-tune the classifier (see the margin figure and delta_gamma).",
    "head": "A linear probe on the student's own features beats its own head: retrain or "
            "fine-tune the head (or distil into the head with a logit loss).",
    "representation": "The student's features in the teacher's space separate the classes "
                      "worse than the teacher's: a larger student, longer training, or a "
                      "better connector (pass the student's own features `s`/`s_fit` to split "
                      "capacity from connector).",
}


@dataclass(frozen=True)
class Piece:
    name: str
    value: float
    lo: float
    hi: float

    @property
    def diagnosis(self):
        return DIAGNOSES[self.name]


@dataclass(frozen=True)
class ErrorBudget:
    """Pieces summing exactly to ``total`` (the error named by ``target``)."""

    target: str
    total: float
    total_lo: float
    total_hi: float
    pieces: tuple
    diagnosis: str
    runner_up: str
    tie: bool
    notes: tuple = field(default_factory=tuple)

    def piece(self, name):
        for piece in self.pieces:
            if piece.name == name:
                return piece
        raise KeyError(name)

    def ranked(self):
        return tuple(sorted(self.pieces, key=lambda p: p.value, reverse=True))

    def as_dict(self):
        return {"target": self.target, "total": self.total, "total_lo": self.total_lo,
                "total_hi": self.total_hi, "diagnosis": self.diagnosis,
                "runner_up": self.runner_up, "tie": self.tie, "notes": list(self.notes),
                "pieces": {p.name: {"value": p.value, "lo": p.lo, "hi": p.hi}
                           for p in self.pieces}}


def _as_float(indicator, name, n=None):
    if indicator is None:
        return None
    x = torch.as_tensor(indicator).reshape(-1).to(torch.float64)
    if n is not None and x.numel() != n:
        raise ValueError(f"`{name}` must have {n} entries like `teacher_wrong`, got {x.numel()}")
    return x


def error_budget(teacher_wrong, student_wrong, joint_s_wrong, probe_wrong=None,
                 own_wrong=None, *, own_features=True, n_bootstrap=1000, level=0.95, seed=0):
    """The audit's additive error budget with paired-bootstrap intervals.

    Args (each (n,) bool/0-1 over the same evaluation samples):
        teacher_wrong: ``argmax h_T(z_T) != y``.
        student_wrong: ``argmax h_T(z_S) != y``.
        joint_s_wrong: ``argmax ĥ*(z_S) != y`` (the ideal-joint classifier on the student).
        probe_wrong: the student probe's errors (on ``s(x)`` when ``own_features``, on
            ``z_S`` otherwise).
        own_wrong: errors of the student's own head, for a student that predicts with it;
            ``None`` for students that predict with ``h_T``.
        own_features: whether ``probe_wrong`` was measured on the student's own features.
    """
    tw = _as_float(teacher_wrong, "teacher_wrong")
    n = tw.numel()
    if n == 0:
        raise ValueError("the error budget needs at least one evaluation sample")
    sw = _as_float(student_wrong, "student_wrong", n)
    jw = _as_float(joint_s_wrong, "joint_s_wrong", n)
    pw = _as_float(probe_wrong, "probe_wrong", n)
    ow = _as_float(own_wrong, "own_wrong", n)
    if pw is None:
        pw, own_features = jw, False
    notes = []
    if own_features:
        if ow is None:
            target, total = "student_err", sw
            parts = [("teacher", tw), ("capacity", pw - tw), ("connector", jw - pw),
                     ("alignment", sw - jw)]
        else:
            target, total = "student_own_err", ow
            parts = [("teacher", tw), ("capacity", pw - tw), ("head", ow - pw)]
    else:
        notes.append("the student's own features were not available: capacity and connector "
                     "are merged into one representation piece")
        if ow is None:
            target, total = "student_err", sw
            parts = [("teacher", tw), ("representation", jw - tw), ("alignment", sw - jw)]
        else:
            target, total = "student_own_err", ow
            parts = [("teacher", tw), ("representation", pw - tw), ("head", ow - pw)]

    per_sample = torch.stack([total] + [p for _, p in parts], dim=1)  # (n, 1 + pieces)
    generator = torch.Generator().manual_seed(int(seed))
    counts = torch.multinomial(torch.full((n,), 1.0 / n, dtype=torch.float64),
                               n * n_bootstrap, replacement=True, generator=generator)
    weights = torch.zeros(n_bootstrap, n, dtype=torch.float64)
    weights.scatter_add_(1, counts.view(n_bootstrap, n),
                         torch.ones(n_bootstrap, n, dtype=torch.float64))
    boot = weights @ per_sample / n  # (B, 1 + pieces)
    alpha = (1.0 - level) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    lo_hi = torch.quantile(boot, q, dim=0)
    means = per_sample.mean(dim=0)

    def interval(j):
        value = float(means[j])
        return value, min(value, float(lo_hi[0, j])), max(value, float(lo_hi[1, j]))

    total_value, total_lo, total_hi = interval(0)
    pieces = tuple(Piece(name, *interval(j + 1)) for j, (name, _) in enumerate(parts))
    ranked = sorted(pieces, key=lambda p: p.value, reverse=True)
    best, second = ranked[0], ranked[1]
    tie = best.lo <= second.hi
    return ErrorBudget(target=target, total=total_value, total_lo=total_lo, total_hi=total_hi,
                       pieces=pieces, diagnosis=best.name, runner_up=second.name, tie=tie,
                       notes=tuple(notes))
