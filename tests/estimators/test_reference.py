"""Every column of a report against the independent reference stack
(``ijckd_bounds.estimators.reference``: numpy, scipy, scikit-learn)."""

import math

import numpy as np
import pytest
import torch

from ijckd_bounds import schema
from ijckd_bounds.estimators import estimate_bounds
from ijckd_bounds.estimators.reference import reference_report

# one definition and no fitting: the same value and, with the report's own bootstrap
# weights, the same interval
SAME = ("teacher_err", "student_err", "student_own_err", "disagreement", "delta_gamma",
        "feat_msd", "feat_rel", "feat_cka", "logit_msd", "mmd2", "ijc_lambda",
        "bound_coupled", "bound_margin", "bound_feat_markov", "bound_logit_markov",
        "top1_agreement", "pred_kl", "teacher_nll", "student_nll", "teacher_brier",
        "student_brier", "teacher_ece", "student_ece")
# fitted by another optimiser on another held-out split: each estimate inside the
# other's interval
FITTED = ("teacher_probe_err", "student_probe_err", "connected_probe_err", "joint_err_T",
          "joint_err_S", "ideal_joint", "ijc_gap", "pair_disc", "bound_ideal_joint",
          "proxy_a_linear")
# the MLP domain classifier after 50 iterations depends on its initialisation beyond
# the sampling noise: the intervals overlap
OVERLAP = ("proxy_a_mlp", "bound_ben_david")


def _data(n=300, d=8, k=4, seed=0):
    """Gaussian classes; the student's own features s are a random linear map of a noisy,
    shifted copy of z_T; z_S is s mapped back; the student's own head is noisy."""
    rng = np.random.default_rng(seed)
    means = 1.6 * rng.normal(size=(k, d))
    mix = rng.normal(size=(d, 12))
    back = np.linalg.pinv(mix)

    def draw(m):
        y = rng.integers(0, k, size=m)
        z_t = means[y] + rng.normal(size=(m, d))
        s = (z_t + 0.6 * rng.normal(size=(m, d)) + 0.8) @ mix
        return z_t, s @ back, s, y

    z_t, z_s, s, y = draw(n)
    z_t_fit, z_s_fit, s_fit, y_fit = draw(n)
    weight, bias = means, -0.5 * (means * means).sum(1)
    logits = z_s @ weight.T + bias + 0.8 * rng.normal(size=(n, k))
    return {"z_t": z_t, "z_s": z_s, "s": s, "y": y, "weight": weight, "bias": bias,
            "z_t_fit": z_t_fit, "z_s_fit": z_s_fit, "s_fit": s_fit, "y_fit": y_fit,
            "student_logits": logits}


@pytest.mark.slow
def test_every_column_of_a_report_agrees_with_the_reference_stack():
    data = _data()
    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    report = estimate_bounds(
        tensors["z_t"], tensors["z_s"], tensors["y"], tensors["weight"], tensors["bias"],
        fit=(tensors["z_t_fit"], tensors["z_s_fit"], tensors["y_fit"]), s=tensors["s"],
        s_fit=tensors["s_fit"], student_logits=tensors["student_logits"],
        n_bootstrap=400, n_permutations=200, seed=1)
    row = report.row()
    # the reference sees the evaluation rows in the report's canonical order, so that the
    # report's own bootstrap weights resample the same samples
    sample = report.indicators(canonical=True)["sample"]
    ordered = dict(data)
    for key in ("z_t", "z_s", "s", "y", "student_logits"):
        ordered[key] = data[key][sample]
    ref = reference_report(ordered, bandwidth=row["mmd_bandwidth"], n_permutations=200,
                           weights=report.paired_bootstrap().weights.numpy())
    terms = ref["terms"]
    assert set(schema.INTERVAL_TERMS + schema.BOUNDS) == set(SAME + FITTED + OVERLAP)
    for name in SAME:
        ours = (row[name], row[f"{name}_lo"], row[f"{name}_hi"])
        assert ours == pytest.approx(tuple(terms[name]), rel=1e-9, abs=1e-12), name
    for name in FITTED:
        value, lo, hi = row[name], row[f"{name}_lo"], row[f"{name}_hi"]
        ref_value, ref_lo, ref_hi = terms[name]
        assert lo - 1e-12 <= ref_value <= hi + 1e-12, (name, terms[name], (value, lo, hi))
        assert ref_lo - 1e-12 <= value <= ref_hi + 1e-12, (name, terms[name], (value, lo, hi))
    for name in OVERLAP:
        ref_value, ref_lo, ref_hi = terms[name]
        assert ref_lo <= row[f"{name}_hi"] and row[f"{name}_lo"] <= ref_hi, name
    # the informative case: the probe is the better joint classifier for both stacks
    assert row["joint_chosen"] == ref["details"]["joint_chosen"] == "probe"
    assert abs(row["joint_probe_share"] - ref["details"]["joint_probe_share"]) < 0.2
    # two Monte-Carlo estimates of one permutation p-value (different sign vectors)
    p, ref_p = row["mmd_p"], ref["mmd_p"]
    pooled = min(max(0.5 * (p + ref_p), 1 / 200), 0.5)
    assert abs(p - ref_p) <= 4 * math.sqrt(2 * pooled * (1 - pooled) / 200) + 2 / 200
    assert (row["n_eval"], row["n_fit"], row["dim"], row["n_classes"]) == (300, 300, 8, 4)
