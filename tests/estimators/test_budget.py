"""The error budget of docs/theory.md ("Audit: an error budget") on per-sample indicators whose
pieces are known by construction: exact sums, the report's own bootstrap, the naming rule."""

import pytest
import torch

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators.budget import error_budget
from ijckd_bounds.estimators.intervals import PairedBootstrap, percentile_interval
from ijckd_bounds.reporting import audit_markdown, diagnosis_text, next_steps
from ijckd_bounds.schema import UNDETERMINED

KEYS = ("teacher_wrong", "teacher_probe_wrong", "student_probe_wrong",
        "connected_probe_wrong", "student_wrong", "own_wrong")


def _indicators(groups, seed=0):
    """Per-sample indicators from ``groups``: a list of (count, pattern), pattern a dict of
    KEYS -> 0/1 (missing keys 0); rows shuffled with ``seed``."""
    rows = []
    for count, pattern in groups:
        rows += [[pattern.get(k, 0) for k in KEYS]] * count
    table = torch.tensor(rows, dtype=torch.bool)
    table = table[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
    return {k: table[:, j] for j, k in enumerate(KEYS)}


def _bern(p, n, gen):
    return torch.rand(n, generator=gen) < p


def _random_indicators(n, rates, gen):
    return {k: _bern(p, n, gen) for k, p in zip(KEYS, rates, strict=True)}


def _budget(ind, *, own=False, s=True, **kwargs):
    return error_budget(teacher_wrong=ind["teacher_wrong"], student_wrong=ind["student_wrong"],
                        teacher_probe_wrong=ind["teacher_probe_wrong"],
                        connected_probe_wrong=ind["connected_probe_wrong"],
                        student_probe_wrong=ind["student_probe_wrong"] if s else None,
                        own_wrong=ind["own_wrong"] if own else None, **kwargs)


@pytest.mark.parametrize(("own", "s", "names", "target"), [
    (False, True, ["teacher", "fit", "capacity", "connector", "alignment"], "student_err"),
    (False, False, ["teacher", "fit", "representation", "alignment"], "student_err"),
    (True, True, ["teacher", "fit", "capacity", "head"], "student_own_err"),
    (True, False, ["teacher", "fit", "representation", "head"], "student_own_err"),
])
def test_pieces_sum_exactly_to_the_target_in_every_variant(own, s, names, target):
    gen = torch.Generator().manual_seed(1)
    n = 501
    ind = _random_indicators(n, (0.05, 0.09, 0.14, 0.2, 0.3, 0.25), gen)
    budget = _budget(ind, own=own, s=s, n_bootstrap=200, seed=3)
    assert budget.target == target
    assert [p.name for p in budget.pieces] == names
    wrong = ind["own_wrong" if own else "student_wrong"]
    assert sum(p.count for p in budget.pieces) == int(wrong.sum()) == budget.total_count
    assert abs(sum(p.value for p in budget.pieces) - wrong.double().mean().item()) < 1e-12
    for p in budget.pieces:
        assert p.lo <= p.value <= p.hi
        assert p.formula and p.meaning
    # each piece is the difference docs/theory.md names
    expected_head = ind["own_wrong"].double() - (
        ind["student_probe_wrong"] if s else ind["connected_probe_wrong"]).double()
    reference = {
        "teacher": ind["teacher_wrong"].double(),
        "fit": ind["teacher_probe_wrong"].double() - ind["teacher_wrong"].double(),
        "capacity": ind["student_probe_wrong"].double() - ind["teacher_probe_wrong"].double(),
        "connector": ind["connected_probe_wrong"].double()
        - ind["student_probe_wrong"].double(),
        "alignment": ind["student_wrong"].double() - ind["connected_probe_wrong"].double(),
        "representation": ind["connected_probe_wrong"].double()
        - ind["teacher_probe_wrong"].double(),
        "head": expected_head,
    }
    for p in budget.pieces:
        assert p.value == pytest.approx(reference[p.name].mean().item(), abs=1e-12)
    assert budget.own_features == s
    assert bool(budget.notes) == (not s)


def test_intervals_come_from_the_given_bootstrap():
    gen = torch.Generator().manual_seed(2)
    n = 300
    ind = _random_indicators(n, (0.05, 0.08, 0.12, 0.2, 0.3, 0.25), gen)
    bootstrap = PairedBootstrap(n, 150, seed=11)
    given = _budget(ind, bootstrap=bootstrap)
    # the budget's own bootstrap of the same size and seed is the same resampling
    assert given == _budget(ind, n_bootstrap=150, seed=11)
    assert given != _budget(ind, n_bootstrap=150, seed=12)
    # independent reference: the percentile interval of each piece's replicate means
    for p in given.pieces:
        column = {"fit": ind["teacher_probe_wrong"].double() - ind["teacher_wrong"].double(),
                  "teacher": ind["teacher_wrong"].double()}.get(p.name)
        if column is None:
            continue
        lo, hi = percentile_interval(bootstrap.weights.double() @ column / n,
                                     column.mean().item(), 0.95)
        assert (p.lo, p.hi) == pytest.approx((lo, hi), abs=1e-12)
    with pytest.raises(IJCKDError, match="resamples 299 samples"):
        _budget(ind, bootstrap=PairedBootstrap(n - 1, 10, seed=0))


def test_the_difference_of_two_pieces_is_judged_on_the_same_replicates():
    # capacity and alignment move together on the same samples (T) and differ only on V:
    # their marginal intervals overlap, their paired difference lies clearly above 0
    groups = [(80, {"student_probe_wrong": 1, "student_wrong": 1, "own_wrong": 1}),  # T
              (12, {"student_wrong": 1, "own_wrong": 1}),  # V
              (308, {})]
    budget = _budget(_indicators(groups), n_bootstrap=400, seed=0)
    capacity, alignment = budget.piece("capacity"), budget.piece("alignment")
    assert alignment.lo < capacity.hi  # overlapping marginal intervals
    assert budget.separation.lo > 0
    assert budget.diagnosis == "alignment" and not budget.tie
    assert budget.named == ("alignment",) and budget.runner_up == "capacity"
    assert budget.advice == ("alignment",)


def test_close_pieces_are_a_tie_and_the_report_says_what_separates_them():
    gen = torch.Generator().manual_seed(3)
    n = 400
    # teacher right everywhere; capacity and alignment pieces of ~10% each, independent
    cap, ali = _bern(0.10, n, gen), _bern(0.11, n, gen)
    zero = torch.zeros(n, dtype=torch.bool)
    ind = {"teacher_wrong": zero, "teacher_probe_wrong": zero, "student_probe_wrong": cap,
           "connected_probe_wrong": zero, "student_wrong": ali, "own_wrong": zero}
    # connector piece = -cap: the target is ali, the pieces teacher 0, fit 0, cap, -cap, ali
    budget = _budget(ind, n_bootstrap=300, seed=1)
    assert budget.tie and set(budget.named) == {"capacity", "alignment"}
    assert budget.separation.lo <= 0 <= budget.separation.hi
    assert budget.diagnosis == budget.named[0] != UNDETERMINED
    text = diagnosis_text(budget.as_dict())
    assert "tied with" in text and "What separates them" in text
    assert "evaluation samples (now 400)" in text
    assert set(budget.advice) == set(budget.named)  # both intervals lie above 0


def test_undetermined_when_the_fit_piece_is_largest_or_ties():
    # the probes lose 12% on the teacher's own features; the student adds 2% capacity
    groups = [(20, {"teacher_wrong": 1, "teacher_probe_wrong": 1, "student_probe_wrong": 1,
                    "connected_probe_wrong": 1, "student_wrong": 1}),
              (48, {"teacher_probe_wrong": 1, "student_probe_wrong": 1,
                    "connected_probe_wrong": 1, "student_wrong": 1}),
              (8, {"student_probe_wrong": 1, "connected_probe_wrong": 1, "student_wrong": 1}),
              (324, {})]
    budget = _budget(_indicators(groups), n_bootstrap=300, seed=0, n_fit=150)
    assert budget.piece("fit").value == pytest.approx(0.12)
    assert budget.diagnosis == UNDETERMINED and "fit" in budget.named
    assert budget.advice == ()
    as_dict = budget.as_dict()
    text = diagnosis_text(as_dict)
    assert text.startswith("**undetermined**") and "n_fit = 150" in text
    steps = "\n".join(next_steps(as_dict))
    assert "more fit samples" in steps and "150" in steps
    assert "fix" not in steps

    # a student piece just above a large fit piece is not named either
    groups = [(40, {"teacher_probe_wrong": 1, "student_probe_wrong": 1,
                    "connected_probe_wrong": 1, "student_wrong": 1}),
              (44, {"connected_probe_wrong": 1, "student_wrong": 1}),
              (316, {})]
    budget = _budget(_indicators(groups, seed=4), n_bootstrap=300, seed=0, n_fit=90)
    assert budget.ranked()[0].name == "connector"
    assert budget.diagnosis == UNDETERMINED
    assert not budget.fit_margins["connector"].lo > 0
    assert budget.runner_up == "fit"
    assert "cannot be told from the fit piece" in diagnosis_text(budget.as_dict())


def test_a_student_clearly_worse_than_its_teacher_is_never_teacher_limited():
    # the teacher piece is the largest single piece, but the student is clearly worse
    groups = [(28, {"teacher_wrong": 1, "teacher_probe_wrong": 1, "student_probe_wrong": 1,
                    "connected_probe_wrong": 1, "student_wrong": 1}),
              (20, {"student_probe_wrong": 1, "connected_probe_wrong": 1, "student_wrong": 1}),
              (20, {"connected_probe_wrong": 1, "student_wrong": 1}),
              (20, {"student_wrong": 1}),
              (912, {})]
    budget = _budget(_indicators(groups), n_bootstrap=300, seed=0)
    assert budget.ranked()[0].name == "teacher"
    assert budget.clearly_worse and budget.teacher_gap.lo > 0
    assert "teacher" not in budget.named and budget.diagnosis != "teacher"
    assert "teacher" not in budget.advice
    text = diagnosis_text(budget.as_dict())
    assert "not teacher-limited" in text and "**teacher-limited**" not in text


def test_the_naming_rule_holds_on_random_budgets():
    gen = torch.Generator().manual_seed(5)
    named_teacher = 0
    for trial in range(60):
        n = int(torch.randint(40, 400, (1,), generator=gen))
        rates = (torch.rand(6, generator=gen) * 0.3).tolist()
        ind = _random_indicators(n, rates, gen)
        own, s = bool(trial % 2), bool(trial % 3)
        budget = _budget(ind, own=own, s=s, n_bootstrap=100, seed=trial, n_fit=n)
        values = {p.name: p for p in budget.pieces}
        assert sum(p.count for p in budget.pieces) == budget.total_count
        if "teacher" in budget.named:
            named_teacher += 1
            assert not budget.teacher_gap.lo > 0
        for name in budget.advice:
            assert name in budget.named and values[name].lo > 0
        if budget.diagnosis == UNDETERMINED:
            assert budget.advice == ()
        else:
            assert "fit" not in budget.named
            assert budget.diagnosis == budget.named[0]
            for name in budget.named:
                if name not in ("teacher", "fit"):
                    assert budget.fit_margins[name].lo > 0
        assert budget.tie == (not budget.separation.lo > 0)
    assert named_teacher > 0  # the rule was exercised with the teacher named too


def test_the_demo_case_gives_no_contradictory_advice():
    # an own-head student at 5.6% under a teacher at 1.4%: the head piece is about as large
    # as the teacher piece, and the marginal intervals overlap
    groups = [(14, {"teacher_wrong": 1, "teacher_probe_wrong": 1, "student_probe_wrong": 1,
                    "own_wrong": 1}),
              (4, {"teacher_probe_wrong": 1, "student_probe_wrong": 1, "own_wrong": 1}),
              (12, {"student_probe_wrong": 1, "own_wrong": 1}),
              (26, {"own_wrong": 1}),
              (944, {})]
    budget = _budget(_indicators(groups), own=True, n_bootstrap=400, seed=0, n_fit=1000)
    assert budget.total.value == pytest.approx(0.056)
    assert budget.piece("teacher").value == pytest.approx(0.014)
    teacher, head = budget.piece("teacher"), budget.piece("head")
    assert teacher.hi > head.lo  # the marginal intervals overlap, as in the demo
    assert budget.clearly_worse and "teacher" not in budget.named + budget.advice
    row = {"n_eval": 1000, "n_fit": 1000, "dim": 64, "n_classes": 10}
    import pandas as pd

    per_class = pd.DataFrame({"class": [0], "n": [1000], "student_err": [0.056],
                              "teacher_err": [0.014], "disagreement": [0.05]})
    text = audit_markdown(title="demo", row=row, budgets=[budget.as_dict()],
                          per_class=per_class)
    diagnosis = text.split("## Diagnosis")[1].split("## Error budget")[0]
    assert "**teacher-limited**" not in diagnosis
    assert "a better teacher is the fix" not in diagnosis
    assert "not teacher-limited" in diagnosis


def test_seed_reproduces_and_bad_indicators_fail_with_one_line():
    gen = torch.Generator().manual_seed(6)
    ind = _random_indicators(80, (0.1, 0.2, 0.2, 0.2, 0.3, 0.3), gen)
    assert _budget(ind, n_bootstrap=50, seed=7) == _budget(ind, n_bootstrap=50, seed=7)
    short = dict(ind, student_wrong=ind["student_wrong"][:-1])
    with pytest.raises(IJCKDError, match="`student_wrong` must have 80 entries"):
        _budget(short)
    counts = dict(ind, connected_probe_wrong=ind["connected_probe_wrong"].long() * 2)
    with pytest.raises(IJCKDError, match="0/1"):
        _budget(counts)


def test_report_sections_from_the_extension_point_are_appended_in_order(monkeypatch):
    import pandas as pd

    from ijckd_bounds import reporting

    gen = torch.Generator().manual_seed(8)
    budget = _budget(_random_indicators(120, (0.1, 0.2, 0.2, 0.2, 0.3, 0.3), gen),
                     n_bootstrap=50)
    row = {"n_eval": 120, "n_fit": 60, "dim": 8, "n_classes": 3}
    per_class = pd.DataFrame({"class": [0], "n": [120], "student_err": [0.3],
                              "teacher_err": [0.1], "disagreement": [0.2]})
    seen = []

    def layers(row, details):
        seen.append((row["n_eval"], details["seed"]))
        return "## Layers\n\nstage 3 falls behind\n"

    monkeypatch.setattr(reporting, "EXTRA_SECTIONS", [layers, lambda row, details: None])
    text = audit_markdown(title=reporting.Subject("x", teacher="`t.pt` (cnn, epoch 3)",
                                                  student="`s.pt` (kd, epoch 2)"),
                          row=row, budgets=[budget.as_dict()], per_class=per_class,
                          figures=["margins.png"], details={"seed": 4},
                          sections=["## Fidelity and calibration\n\nclose to the teacher"])
    assert seen == [(120, 4)]
    order = [text.index(h) for h in ("## What was read", "## Diagnosis", "## Error budget",
                                     "## Classes that carry the gap", "## Layers",
                                     "## Fidelity and calibration", "## Figures")]
    assert order == sorted(order)
    assert "- teacher: `t.pt` (cnn, epoch 3)" in text and "- student: `s.pt` (kd, epoch 2)" in text
