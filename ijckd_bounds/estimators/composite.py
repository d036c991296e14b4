"""The composite terms of docs/theory.md: sums and differences of per-sample error rates.

One public function per column, each returning an ``Estimate`` whose interval comes from
the given ``PairedBootstrap`` (so the intervals of a bound and of its pieces come from the
same resamples):

- ``choose_joint`` makes docs/theory.md's choice of ``ĥ*`` between ``h_T`` and the joint probe:
  the candidate with the smaller joint error ``ε_T(h) + ε_S(h)`` on the evaluation
  split, compared as integer counts, ``h_T`` on a tie, and the same choice again in every
  bootstrap replicate (on that replicate's weighted counts, which are integers too). It
  returns a ``JointChoice``, the input of the terms with the choice inside:
- ``joint_errors`` (``joint_err_T``, ``joint_err_S``), ``ideal_joint``, ``ijc_lambda``,
  ``ijc_gap``, ``pair_disc``, ``bound_ideal_joint``, ``bound_ben_david``;
- ``proxy_a`` (``proxy_a_linear``, ``proxy_a_mlp``) from a domain classifier's
  per-sample errors.

Because ``h_T``'s joint error is ``ijc_lambda`` itself, the per-replicate minimum makes
``ijc_gap ≥ 0`` in every replicate, and so ``ijc_gap_lo ≥ 0``; where the probe is close
to ``h_T``, the replicates that choose it give ``ijc_gap``, ``pair_disc`` and
``ideal_joint`` intervals of non-zero width even when ``h_T`` won on the full sample.
"""

from dataclasses import dataclass

import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.intervals import Estimate, PairedBootstrap, proportion_from_counts
from ijckd_bounds.estimators.probes import proxy_a_distance
from ijckd_bounds.schema import LEVEL

__all__ = [
    "JointChoice",
    "choose_joint",
    "joint_errors",
    "ideal_joint",
    "ijc_lambda",
    "ijc_gap",
    "pair_disc",
    "bound_ideal_joint",
    "proxy_a",
    "bound_ben_david",
]

# the per-sample columns behind the choice, in the order of ``JointChoice.sums``
_COLUMNS = ("teacher_t", "teacher_s", "probe_t", "probe_s", "differ_t", "differ_s")


@dataclass(frozen=True)
class JointChoice:
    """ĥ* chosen on the evaluation split, on the full sample and in every replicate.

    chosen: ``"teacher"`` or ``"probe"`` on the full sample.
    probe_share: share of the bootstrap replicates in which the probe is ĥ* (its joint
        error count strictly below h_T's; a tie goes to h_T).
    n: evaluation samples.
    counts: dict column -> int, the full-sample counts of ``teacher_t`` (h_T wrong on
        z_T), ``teacher_s`` (h_T wrong on z_S), ``probe_t``, ``probe_s`` (the probe wrong),
        ``differ_t``, ``differ_s`` (the probe's prediction differs from h_T's on z_T, z_S).
    sums: dict column -> (B,) float64, the same counts weighted by each replicate's
        bootstrap count weights (exact integers).
    probe_b: (B,) bool, whether replicate b chose the probe.
    wrong_t, wrong_s: (n,) bool, the errors of the full-sample ĥ* on z_T and z_S.
    """

    chosen: str
    probe_share: float
    n: int
    counts: dict
    sums: dict
    probe_b: torch.Tensor
    wrong_t: torch.Tensor
    wrong_s: torch.Tensor

    def chosen_counts(self) -> tuple[int, int, int, int]:
        """``(ĥ* wrong on z_T, ĥ* wrong on z_S, ĥ* differs from h_T on z_T, on z_S)``."""
        c = self.counts
        if self.chosen == "probe":
            return c["probe_t"], c["probe_s"], c["differ_t"], c["differ_s"]
        return c["teacher_t"], c["teacher_s"], 0, 0

    def chosen_sums(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The per-replicate (B,) float64 sums of ``chosen_counts``, each replicate with
        its own ĥ*."""
        s, probe = self.sums, self.probe_b
        zero = torch.zeros_like(s["teacher_t"])
        return (torch.where(probe, s["probe_t"], s["teacher_t"]),
                torch.where(probe, s["probe_s"], s["teacher_s"]),
                torch.where(probe, s["differ_t"], zero),
                torch.where(probe, s["differ_s"], zero))


def _indicator(x, name, n):
    x = torch.as_tensor(x)
    if x.dim() != 1 or x.shape[0] != n:
        raise IJCKDError(f"`{name}` must be a 1-D indicator array of {n} samples, "
                         f"got shape {tuple(x.shape)}")
    return x.to(torch.bool)


def choose_joint(teacher_wrong: torch.Tensor, student_wrong: torch.Tensor,
                 probe_t_wrong: torch.Tensor, probe_s_wrong: torch.Tensor,
                 differ_t: torch.Tensor, differ_s: torch.Tensor, *,
                 bootstrap: PairedBootstrap) -> JointChoice:
    """Choose ĥ* between h_T and the joint probe on the evaluation split (docs/theory.md joint_err).

    All inputs are (n,) bool indicators over the evaluation samples, in the order of the
    bootstrap's rows: ``teacher_wrong`` (h_T wrong on z_T), ``student_wrong`` (h_T wrong
    on z_S), ``probe_t_wrong``, ``probe_s_wrong`` (the probe wrong on z_T, z_S),
    ``differ_t``, ``differ_s`` (the probe's prediction differs from h_T's on z_T, z_S).
    ``bootstrap``: the report's ``PairedBootstrap`` over the n samples.

    The probe is chosen where its joint error count is strictly smaller than h_T's, on
    the full sample and separately in each replicate. Returns a ``JointChoice``.
    """
    n = bootstrap.n
    columns = [_indicator(x, name, n) for x, name in zip(
        (teacher_wrong, student_wrong, probe_t_wrong, probe_s_wrong, differ_t, differ_s),
        _COLUMNS, strict=True)]
    counts = {name: int(x.sum()) for name, x in zip(_COLUMNS, columns, strict=True)}
    matrix = torch.stack([x.to(torch.float64) for x in columns], dim=1)
    # weighted sums of 0/1 columns with integer count weights: exact integers in float64
    sums_matrix = bootstrap.weights_like(matrix) @ matrix
    sums = {name: sums_matrix[:, i] for i, name in enumerate(_COLUMNS)}
    probe_full = counts["probe_t"] + counts["probe_s"] < counts["teacher_t"] + counts["teacher_s"]
    probe_b = (sums["probe_t"] + sums["probe_s"]) < (sums["teacher_t"] + sums["teacher_s"])
    chosen = "probe" if probe_full else "teacher"
    wrong_t, wrong_s = (columns[2], columns[3]) if probe_full else (columns[0], columns[1])
    return JointChoice(chosen=chosen, probe_share=float(probe_b.double().mean()), n=n,
                       counts=counts, sums=sums, probe_b=probe_b,
                       wrong_t=wrong_t, wrong_s=wrong_s)


def joint_errors(choice: JointChoice, *, level: float = LEVEL) -> tuple[Estimate, Estimate]:
    """``(joint_err_T, joint_err_S)``: the errors of the full-sample ĥ* on z_T and z_S,
    proportions of the evaluation samples with Clopper–Pearson intervals."""
    wrong_t, wrong_s, _, _ = choice.chosen_counts()
    return (proportion_from_counts(wrong_t, choice.n, level),
            proportion_from_counts(wrong_s, choice.n, level))


def _ideal_counts(choice):
    wrong_t, wrong_s, _, _ = choice.chosen_counts()
    sums_t, sums_s, _, _ = choice.chosen_sums()
    return wrong_t + wrong_s, sums_t + sums_s


def ideal_joint(choice: JointChoice, *, bootstrap: PairedBootstrap) -> Estimate:
    """``ideal_joint = joint_err_T + joint_err_S``, ``λ̂*``: the minimum of the two
    candidates' joint errors, the minimum taken again in every replicate."""
    count, sums = _ideal_counts(choice)
    return bootstrap.estimate(count / choice.n, sums / choice.n)


def ijc_lambda(choice: JointChoice, *, bootstrap: PairedBootstrap) -> Estimate:
    """``ijc_lambda = λ(h_T) = ε_T(h_T) + ε_S(h_T)``, the joint error of h_T."""
    c, s = choice.counts, choice.sums
    return bootstrap.estimate((c["teacher_t"] + c["teacher_s"]) / choice.n,
                              (s["teacher_t"] + s["teacher_s"]) / choice.n)


def ijc_gap(choice: JointChoice, *, bootstrap: PairedBootstrap) -> Estimate:
    """``ijc_gap = ijc_lambda − ideal_joint``: ``≥ 0`` on the sample and in every replicate
    (h_T is one of the candidates of the minimum)."""
    c, s = choice.counts, choice.sums
    count, sums = _ideal_counts(choice)
    return bootstrap.estimate((c["teacher_t"] + c["teacher_s"] - count) / choice.n,
                              (s["teacher_t"] + s["teacher_s"] - sums) / choice.n)


def _pair_disc_counts(choice):
    _, _, differ_t, differ_s = choice.chosen_counts()
    _, _, sums_t, sums_s = choice.chosen_sums()
    return abs(differ_s - differ_t), (sums_s - sums_t).abs()


def pair_disc(choice: JointChoice, *, bootstrap: PairedBootstrap) -> Estimate:
    """``pair_disc = |P_S[h_T ≠ ĥ*] − P_T[h_T ≠ ĥ*]|`` (0 where ĥ* = h_T), each replicate
    with its own ĥ*."""
    count, sums = _pair_disc_counts(choice)
    return bootstrap.estimate(count / choice.n, sums / choice.n)


def bound_ideal_joint(choice: JointChoice, *, bootstrap: PairedBootstrap) -> Estimate:
    """Bound 3, ``teacher_err + ideal_joint + pair_disc``, from integer counts (exact on
    the sample: never below ``student_err``)."""
    ideal, ideal_sums = _ideal_counts(choice)
    pair, pair_sums = _pair_disc_counts(choice)
    return bootstrap.estimate(
        (choice.counts["teacher_t"] + ideal + pair) / choice.n,
        (choice.sums["teacher_t"] + ideal_sums + pair_sums) / choice.n)


def _proxy(err):
    return (2.0 * (1.0 - 2.0 * err)).clamp(0.0, 2.0)


def _domain_parts(err_t, err_s, bootstrap):
    err_t = _indicator(err_t, "err_t", bootstrap.n)
    err_s = _indicator(err_s, "err_s", bootstrap.n)
    # both features of one input are resampled together: one per-sample error rate
    per_sample = 0.5 * (err_t.to(torch.float64) + err_s.to(torch.float64))
    return proxy_a_distance(err_t, err_s), _proxy(bootstrap.means(per_sample))


def proxy_a(err_t: torch.Tensor, err_s: torch.Tensor, *,
            bootstrap: PairedBootstrap) -> Estimate:
    """Proxy A-distance ``clip(2(1 − 2·err_dom), 0, 2)`` of a domain classifier from its
    per-sample errors on the evaluation split: ``err_t`` (n,) its teacher feature called a
    student one, ``err_s`` (n,) the converse (``probes.domain_errors``)."""
    value, replicates = _domain_parts(err_t, err_s, bootstrap)
    return bootstrap.estimate(value, replicates)


def bound_ben_david(choice: JointChoice, err_t: torch.Tensor, err_s: torch.Tensor, *,
                    bootstrap: PairedBootstrap) -> Estimate:
    """``bound_ben_david = teacher_err + ½·proxy_a_mlp + ideal_joint`` (an estimate of
    Ben-David et al.'s bound, not a guaranteed one). ``err_t``, ``err_s``: the MLP domain
    classifier's per-sample errors (see ``proxy_a``)."""
    proxy_value, proxy_b = _domain_parts(err_t, err_s, bootstrap)
    ideal, ideal_sums = _ideal_counts(choice)
    return bootstrap.estimate(
        choice.counts["teacher_t"] / choice.n + 0.5 * proxy_value + ideal / choice.n,
        (choice.sums["teacher_t"] + ideal_sums) / choice.n + 0.5 * proxy_b,
        method=f"{bootstrap.method}; an estimate, not a guaranteed bound")
