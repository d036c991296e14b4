"""The audit's "Fidelity and calibration" section: values with their intervals, and the
calibration sentence only when the interval of the ECE difference excludes 0."""

import json
import math

import numpy as np
import pytest

from ijckd_bounds.app.cli import main
from ijckd_bounds.reporting_fidelity import calibration_sentence, fidelity_section


def _row(**overrides):
    row = {"n_eval": 500}
    for name, value in {"top1_agreement": 0.912, "pred_kl": 0.0734, "teacher_nll": 0.21,
                        "student_nll": 0.35, "teacher_brier": 0.11, "student_brier": 0.16,
                        "teacher_ece": 0.021, "student_ece": 0.064}.items():
        row.update({name: value, f"{name}_lo": value * 0.8, f"{name}_hi": value * 1.2})
    row.update(overrides)
    return row


def _gap(value, lo, hi):
    return {"value": value, "lo": lo, "hi": hi, "n": 500, "level": 0.95, "method": "b"}


def test_section_shows_agreement_kl_and_the_calibration_table_with_intervals():
    text = "\n".join(fidelity_section(_row(), _gap(0.043, 0.02, 0.066)))
    assert text.startswith("## Fidelity and calibration")
    assert "91.2% [73.0%, 109.4%]" in text  # agreement in percent with its interval
    assert "0.0734 [0.05872, 0.08808] nats" in text
    assert "| ECE, 15 bins (%) | 2.1% [1.7%, 2.5%] | 6.4% [5.1%, 7.7%] |" in text
    assert "| NLL (nats) | 0.21 [0.168, 0.252] | 0.35 [0.28, 0.42] |" in text
    assert "500 evaluation samples" in text and "n_eval = 500" in text
    assert "markedly **less calibrated**" in text and "+4.3% [+2.0%, +6.6%]" in text


def test_the_sentence_names_the_direction_only_when_the_interval_excludes_zero():
    assert "less calibrated" in calibration_sentence(_gap(0.03, 0.001, 0.05))
    better = calibration_sentence(_gap(-0.04, -0.07, -0.01))
    assert "better calibrated" in better and "4.0 points lower" in better
    unclear = calibration_sentence(_gap(0.01, -0.005, 0.03))
    assert "not clearly" in unclear and "contains 0" in unclear
    assert calibration_sentence(None) is None
    assert calibration_sentence(_gap(math.nan, math.nan, math.nan)) is None


def test_no_section_without_fidelity_terms():
    assert fidelity_section({"n_eval": 10}) == []
    assert fidelity_section(_row(top1_agreement=math.nan)) == []


def _write_features(path, seed=0, n=500, d=6, k=4, own_temperature=0.25):
    """A teacher with calibrated logits and a student whose own head is an over-confident
    (sharpened) copy of the teacher's: markedly less calibrated, same predictions."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 1.2
    weight = means
    bias = -0.5 * (means * means).sum(axis=1)

    def draw(m):
        z_t = means[rng.integers(0, k, size=m)] + rng.normal(size=(m, d))
        logits = z_t @ weight.T + bias
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        y = (rng.random((m, 1)) > p.cumsum(axis=1)).sum(axis=1).clip(max=k - 1)
        return z_t, y, logits

    z_t, y, logits = draw(n)
    z_t_fit, y_fit, _ = draw(n)
    np.savez(path, z_t=z_t, z_s=z_t + 0.3 * rng.normal(size=z_t.shape), y=y,
             z_t_fit=z_t_fit, z_s_fit=z_t_fit + 0.3 * rng.normal(size=z_t_fit.shape),
             y_fit=y_fit, weight=weight, bias=bias, student_logits=logits / own_temperature)
    return path


def test_audit_report_has_the_section_and_bounds_json_the_ece_gap(tmp_path):
    features = _write_features(tmp_path / "f.npz")
    assert main(["audit", "--features", str(features), "--out", str(tmp_path / "a"),
                 "--n-bootstrap", "200"]) == 0
    text = (tmp_path / "a" / "report.md").read_text()
    section = text[text.index("## Fidelity and calibration"):]
    section = section[:section.index("\n## ", 1)]
    # the own head is a sharpened copy of h_T(z_T): it agrees on every sample
    assert "**Top-1 agreement** with the teacher: 100.0%" in section
    assert "markedly **less calibrated**" in section
    payload = json.loads((tmp_path / "a" / "bounds.json").read_text())
    gap = payload["ece_gap"]
    assert gap["lo"] > 0 and gap["lo"] <= gap["value"] <= gap["hi"]
    assert gap["value"] == pytest.approx(payload["terms"]["student_ece"]
                                         - payload["terms"]["teacher_ece"])
