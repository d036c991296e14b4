"""The audit's "Fidelity and calibration" section (docs/theory.md, "Fidelity and calibration"),
written from plain numbers: a bounds row and the ECE difference ``ece_gap`` of the report's
details (``{"value", "lo", "hi", ...}``, student_ece − teacher_ece from the same
paired-bootstrap replicates)."""

import math

__all__ = ["calibration_sentence", "fidelity_section"]

CALIBRATION_ROWS = (("NLL (nats)", "nll", False), ("Brier score", "brier", False),
                    ("ECE, 15 bins (%)", "ece", True))


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def _value(value, percent, signed=False):
    if _missing(value):
        return "n/a"
    sign = "+" if signed else ""
    return f"{100 * value:{sign}.1f}%" if percent else f"{value:{sign}.4g}"


def _with_interval(value, lo, hi, *, percent, signed=False):
    text = _value(value, percent, signed)
    if not (_missing(lo) or _missing(hi)):
        text += f" [{_value(lo, percent, signed)}, {_value(hi, percent, signed)}]"
    return text


def _term(row, term, *, percent):
    return _with_interval(row.get(term), row.get(f"{term}_lo"), row.get(f"{term}_hi"),
                          percent=percent)


def calibration_sentence(ece_gap):
    """One plain sentence on whether the student is markedly less (or more) calibrated
    than the teacher: "markedly" when the 95% interval of the ECE difference excludes 0.
    None when the difference was not measured."""
    if not ece_gap or any(_missing(ece_gap.get(k)) for k in ("value", "lo", "hi")):
        return None
    gap = _with_interval(ece_gap["value"], ece_gap["lo"], ece_gap["hi"], percent=True,
                         signed=True)
    points = f"{100 * abs(ece_gap['value']):.1f} points"
    if ece_gap["lo"] > 0:
        return (f"The student is markedly **less calibrated** than the teacher: its ECE is "
                f"{points} higher (student − teacher {gap}, paired bootstrap).")
    if ece_gap["hi"] < 0:
        return (f"The student is markedly **better calibrated** than the teacher: its ECE is "
                f"{points} lower (student − teacher {gap}, paired bootstrap).")
    return (f"The student is not clearly more or less calibrated than the teacher: the ECE "
            f"difference student − teacher is {gap}, an interval that contains 0.")


def fidelity_section(row, ece_gap=None):
    """Markdown lines of the section: agreement and predictive KL with their intervals, a
    teacher-beside-student table of NLL, Brier score and ECE, and the calibration
    sentence. ``row``: a bounds row (dict); ``ece_gap``: see the module docstring.
    Empty when the row holds no fidelity terms."""
    if _missing(row.get("top1_agreement")):
        return []
    n_eval = row.get("n_eval")
    lines = ["## Fidelity and calibration", "",
             "Does the student behave like the teacher, and can its confidence be trusted? "
             "The student's predictive distribution is its own head's where it has one, "
             "else softmax(h_T(z_S)); temperature 1.", "",
             f"- **Top-1 agreement** with the teacher: {_term(row, 'top1_agreement', percent=True)}"
             f" (Clopper–Pearson): the share of the {n_eval} evaluation samples on which the "
             f"student predicts the teacher's class.",
             f"- **Predictive KL** KL(p_T ‖ p_S): {_term(row, 'pred_kl', percent=False)} nats "
             f"(paired bootstrap); 0 only when the two distributions coincide.", "",
             "| measure | teacher | student |", "|---|---:|---:|"]
    for label, name, percent in CALIBRATION_ROWS:
        lines.append(f"| {label} | {_term(row, f'teacher_{name}', percent=percent)} | "
                     f"{_term(row, f'student_{name}', percent=percent)} |")
    lines.append("")
    sentence = calibration_sentence(ece_gap)
    if sentence:
        lines += [sentence, ""]
    lines += [f"Binned ECE is biased upwards at small n (here n_eval = {n_eval}); lower is "
              "better for NLL, Brier score and ECE.", ""]
    return lines
