"""The audit on students whose defect is known by construction (docs/theory.md, "Audit"; the
students of experiments/audit_known_answers.py): a perfect student, a destroyed connector,
a student misaligned with h_T, and the audit of a feature file through the CLI."""

import json

import numpy as np
import pytest

from experiments.audit_known_answers import D, audit_budget, feature_arrays
from ijckd_bounds.app.cli import main
from ijckd_bounds.schema import UNDETERMINED


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["perfect", "perfect_rotated_s"])
def test_a_perfect_student_is_never_capacity_limited(kind):
    # A wrong name needs the 95% interval of (piece − runner-up) to lie above 0 for a piece
    # that is not the largest in the population: at most 2.5% per run. With 20 runs,
    # P(Binomial(20, 0.025) >= 4) < 0.2%, so a correct implementation fails with p < 1%.
    runs = 20
    wrong = []
    for seed in range(runs):
        budget, report = audit_budget(kind, seed)
        assert report.scalars["n_fit"] == 300 and report.scalars["dim"] == D
        assert abs(budget.piece("capacity").value) <= 0.05
        if budget.diagnosis not in ("teacher", UNDETERMINED):
            wrong.append((seed, budget.diagnosis))
    assert len(wrong) <= 3, wrong


def test_the_fit_piece_carries_the_probes_cost_not_the_capacity_piece():
    budget, report = audit_budget("perfect", 0)
    # the probes fitted on 300 samples in 50 dimensions lose against the Bayes h_T ...
    assert budget.piece("fit").value > 0.02
    # ... and that cost cancels between same-recipe probes on the same features
    assert budget.piece("capacity").value == 0 and budget.piece("connector").value == 0
    assert budget.piece("alignment").value == -budget.piece("fit").value
    assert budget.diagnosis in ("teacher", UNDETERMINED)


def test_a_destroyed_connector_is_connector_limited():
    budget, _ = audit_budget("connector_destroyed", 1)
    assert budget.diagnosis == "connector" and not budget.tie
    assert budget.named == ("connector",) and budget.advice == ("connector",)
    assert budget.piece("connector").lo > 0.3
    assert abs(budget.piece("capacity").value) < 0.05


def test_a_student_misaligned_with_the_teacher_classifier_is_alignment_limited():
    budget, _ = audit_budget("misaligned", 2)
    assert budget.diagnosis == "alignment" and not budget.tie
    assert budget.piece("alignment").lo > 0.3
    assert abs(budget.piece("capacity").value) < 0.05
    assert budget.piece("connector").value == 0


def _cli(*argv):
    code = main([str(a) for a in argv])
    assert code == 0, f"ijckd-bounds {' '.join(map(str, argv))} exited {code}"


@pytest.mark.slow
def test_cli_audit_of_a_perfect_student_at_small_n_fit(tmp_path):
    path = tmp_path / "perfect.npz"
    np.savez(path, **feature_arrays("perfect", 3, n_eval=500, n_fit=150))
    out = tmp_path / "audit"
    _cli("audit", "--features", path, "--out", out, "--n-bootstrap", 200)
    payload = json.loads((out / "bounds.json").read_text())
    budget = payload["budgets"][0]
    assert budget["diagnosis"] in ("teacher", UNDETERMINED)
    assert budget["diagnosis"] != "capacity" and "capacity" not in budget["advice"]
    text = (out / "report.md").read_text()
    assert "capacity-limited" not in text.split("## Error budget")[0]
    # what was read and the sizes behind every number
    assert "## What was read" in text and str(path) in text
    assert "n_eval = 500" in text and "n_fit = 150" in text and f"dim = {D}" in text
    # every piece defined in one line beside its value
    for name, piece in budget["pieces"].items():
        line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert piece["formula"] in line and piece["meaning"] in line
    if budget["diagnosis"] == UNDETERMINED:
        assert "more fit samples" in text and "(the probes had 150)" in text


def test_the_budget_uses_the_reports_own_resamples():
    import torch

    from ijckd_bounds.estimators.intervals import percentile_interval

    budget, report = audit_budget("misaligned", 4, n_eval=300, n_fit=200)
    ind = report.indicators(canonical=True)
    weights = report.paired_bootstrap().weights.double()
    tw = torch.as_tensor(ind["teacher_wrong"]).double()
    sw = torch.as_tensor(ind["student_wrong"]).double()
    n = tw.numel()
    # the report's own ijc_lambda interval comes from these resamples of these rows ...
    lam = report.terms["ijc_lambda"]
    assert (lam.lo, lam.hi) == pytest.approx(
        percentile_interval(weights @ (tw + sw) / n, lam.value, 0.95), abs=1e-12)
    # ... and so do the budget's: the teacher piece and the alignment piece
    cpw = torch.as_tensor(ind["connected_probe_wrong"]).double()
    for name, column in (("teacher", tw), ("alignment", sw - cpw)):
        piece = budget.piece(name)
        assert (piece.lo, piece.hi) == pytest.approx(
            percentile_interval(weights @ column / n, piece.value, 0.95), abs=1e-12)
