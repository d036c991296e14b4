"""estimate_bounds: the row schema, exact bounds, invariances, files and input checks."""

import json
import math

import numpy as np
import pytest
import torch

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.estimators import estimate_bounds, estimate_bounds_from_file
from ijckd_bounds.estimators.intervals import Estimate

FAST = {"n_bootstrap": 200, "n_permutations": 50}


def _case(n=240, d=6, k=3, noise=0.6, seed=0, spread=1.2, dtype=torch.float32):
    """Gaussian classes; the teacher classifier is the Bayes classifier of z_T."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    z_t = means[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    z_s = z_t + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = means.clone()
    bias = -0.5 * (means * means).sum(dim=1)
    return z_t.to(dtype), z_s.to(dtype), y, weight.to(dtype), bias.to(dtype)


def _split(case, n_eval):
    z_t, z_s, y, weight, bias = case
    fit = (z_t[n_eval:], z_s[n_eval:], y[n_eval:])
    return (z_t[:n_eval], z_s[:n_eval], y[:n_eval], weight, bias), fit


@pytest.fixture(scope="module")
def report():
    args, fit = _split(_case(), 120)
    return estimate_bounds(*args, fit=fit, **FAST)


def _interval_terms():
    return schema.INTERVAL_TERMS + schema.BOUNDS


def test_row_has_exactly_the_schema_columns(report):
    row = report.row()
    assert tuple(row) == schema.ESTIMATE_COLUMNS
    assert row["n_eval"] == 120 and row["n_fit"] == 120
    assert row["dim"] == 6 and row["n_classes"] == 3
    assert all(isinstance(v, (int, float)) for k, v in row.items()
               if k not in schema.TEXT_SCALARS)
    assert row["joint_chosen"] in ("teacher", "probe")
    assert 0.0 <= row["joint_probe_share"] <= 1.0


def test_every_interval_contains_its_value(report):
    row = report.row()
    for term in _interval_terms():
        value, lo, hi = row[term], row[f"{term}_lo"], row[f"{term}_hi"]
        if term in schema.OPTIONAL_TERMS and math.isnan(value):
            assert math.isnan(lo) and math.isnan(hi)
            continue
        assert lo <= value <= hi, term
    # the case is informative: errors, discrepancies and bounds are neither 0 nor trivial
    assert 0 < row["student_err"] <= row["bound_coupled"] < row["bound_margin"] < 1
    assert row["mmd2"] > 0 and row["mmd_p"] < 0.05 and 0 < row["feat_cka"] < 1


def test_exact_bounds_hold_and_compositions_add_up(report):
    row = report.row()
    for name in schema.EXACT_BOUNDS:
        assert row[name] >= row["student_err"], name
    assert row["bound_coupled"] == pytest.approx(row["teacher_err"] + row["disagreement"])
    assert row["bound_margin"] == pytest.approx(row["teacher_err"] + row["delta_gamma"])
    assert row["ideal_joint"] == pytest.approx(row["joint_err_T"] + row["joint_err_S"])
    assert row["ijc_lambda"] == pytest.approx(row["teacher_err"] + row["student_err"])
    assert row["ijc_gap"] == pytest.approx(row["ijc_lambda"] - row["ideal_joint"])
    assert row["bound_ideal_joint"] == pytest.approx(
        row["teacher_err"] + row["ideal_joint"] + row["pair_disc"])
    assert row["bound_ben_david"] == pytest.approx(
        row["teacher_err"] + 0.5 * row["proxy_a_mlp"] + row["ideal_joint"])
    assert "not a guaranteed bound" in report["bound_ben_david"].method
    assert report["teacher_err"].method == "clopper-pearson"
    assert report["bound_coupled"].method.startswith("paired bootstrap")


def test_indicators_and_margins_agree_with_the_terms(report):
    ind = report.indicators()
    row = report.row()
    assert np.mean(ind["teacher_wrong"]) == pytest.approx(row["teacher_err"])
    assert np.mean(ind["student_wrong"]) == pytest.approx(row["student_err"])
    assert np.mean(ind["joint_s_wrong"]) == pytest.approx(row["joint_err_S"])
    # no student features: the student probe is missing, probe_wrong is the connected one
    assert math.isnan(row["student_probe_err"]) and ind["student_probe_wrong"] is None
    assert np.mean(ind["probe_wrong"]) == pytest.approx(row["connected_probe_err"])
    assert np.mean(ind["teacher_probe_wrong"]) == pytest.approx(row["teacher_probe_err"])
    assert np.mean(ind["connected_probe_wrong"]) == pytest.approx(row["connected_probe_err"])
    assert ind["own_wrong"] is None
    margins = report.margins()
    assert set(margins) >= {"sample", "gamma", "distance", "logit_margin", "disagree"}
    assert all(len(v) == 120 for v in margins.values())
    assert np.mean(margins["disagree"]) == pytest.approx(row["disagreement"])
    assert np.mean(margins["crossing"]) == pytest.approx(row["delta_gamma"])
    assert np.all(margins["distance"][margins["disagree"]]
                  >= margins["gamma"][margins["disagree"]] * (1 - 1e-9))
    assert list(margins["sample"]) == list(range(120))


def test_per_class_table(report):
    df = report.per_class()
    expected = ["class", "n"]
    for name in ("student_err", "teacher_err", "disagreement", "top1_agreement"):
        expected += [name, f"{name}_lo", f"{name}_hi"]
    assert list(df.columns) == expected
    assert df["n"].sum() == 120
    row = report.row()
    for name in ("student_err", "teacher_err", "disagreement", "top1_agreement"):
        assert (df[name] * df["n"]).sum() / 120 == pytest.approx(row[name])
        assert np.all((df[f"{name}_lo"] <= df[name]) & (df[name] <= df[f"{name}_hi"]))


def test_json_and_accessors(report):
    data = json.loads(report.to_json())
    assert set(data["row"]) == set(schema.ESTIMATE_COLUMNS)
    assert data["row"]["student_own_err"] is None  # NaN becomes null
    assert data["methods"]["teacher_err"] == "clopper-pearson"
    assert len(data["per_class"]) == 3
    assert report.student_err is report["student_err"]
    assert report["mmd_p"] == report.row()["mmd_p"]
    with pytest.raises(AttributeError):
        _ = report.no_such_term
    # every term reads back as an Estimate, by key and by attribute, holding the row's
    # value and interval; the JSON row holds the same numbers
    row = report.row()
    for name in _interval_terms():
        estimate = getattr(report, name)
        assert isinstance(estimate, Estimate), name
        assert report[name] is estimate
        for got, column in ((estimate.value, name), (estimate.lo, f"{name}_lo"),
                            (estimate.hi, f"{name}_hi")):
            if math.isnan(row[column]):
                assert math.isnan(got) and data["row"][column] is None, column
            else:
                assert got == row[column] == pytest.approx(data["row"][column]), column


def test_identical_domains():
    args, fit = _split(_case(n=300, noise=0.0), 150)
    z_t, z_s, y, weight, bias = args
    assert torch.equal(z_t, z_s)
    r = estimate_bounds(*args, fit=fit, **FAST)
    row = r.row()
    assert row["disagreement"] == 0 and row["feat_msd"] == 0
    assert row["student_err"] == row["teacher_err"]
    assert abs(row["mmd2"]) < 1e-6 and row["mmd_p"] > 0.5
    assert row["proxy_a_linear"] <= 0.1 and row["proxy_a_mlp"] <= 0.1
    assert -0.02 <= row["ijc_gap"] <= 0.05
    assert row["feat_cka"] == pytest.approx(1.0)
    assert row["delta_gamma"] == 0.0  # no teacher margin is exactly 0 here


def _adversarial(seed):
    rng = np.random.default_rng(seed)
    n, d, k = 80, int(rng.integers(1, 4)), int(rng.integers(2, 5))
    weight = rng.integers(-2, 3, size=(k, d)).astype(float)
    weight[1] = weight[0]  # duplicate rows: tied logits everywhere
    if rng.random() < 0.5:
        weight[1] *= 1 + 1e-15 * rng.normal(size=d)
    bias = np.zeros(k)
    z_t = rng.integers(-3, 4, size=(2 * n, d)).astype(float) + 1e-3 * np.arange(2 * n)[:, None]
    z_s = z_t + rng.choice([0.0, 1e-13, 1.0]) * rng.normal(size=z_t.shape)
    y = np.argmax(z_t @ weight.T + bias, axis=1)
    flip = rng.random(2 * n) < 0.2
    y[flip] = rng.integers(0, k, size=flip.sum())
    t = [torch.tensor(a) for a in (z_t, z_s, y, weight, bias)]
    return (t[0][:n], t[1][:n], t[2][:n], t[3], t[4]), (t[0][n:], t[1][n:], t[2][n:])


@pytest.mark.parametrize("seed", range(6))
def test_exact_bounds_hold_on_adversarial_data(seed):
    args, fit = _adversarial(seed)
    row = estimate_bounds(*args, fit=fit, n_bootstrap=50, n_permutations=10).row()
    for name in schema.EXACT_BOUNDS:
        assert row[name] >= row["student_err"], (name, row[name], row["student_err"])


def test_sample_order_does_not_change_the_report(report):
    args, fit = _split(_case(), 120)
    z_t, z_s, y, weight, bias = args
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(1))
    fit_perm = torch.randperm(120, generator=torch.Generator().manual_seed(2))
    permuted = estimate_bounds(z_t[perm], z_s[perm], y[perm], weight, bias,
                               fit=tuple(a[fit_perm] for a in fit), **FAST)
    a, b = report.row(), permuted.row()
    for column in schema.ESTIMATE_COLUMNS:
        if isinstance(a[column], float) and math.isnan(a[column]):
            assert math.isnan(b[column])
        elif isinstance(a[column], str):
            assert b[column] == a[column], column
        else:
            assert b[column] == pytest.approx(a[column], rel=1e-9, abs=1e-12), column
    # per-sample outputs follow the samples
    ma, mb = report.margins(), permuted.margins()
    assert np.allclose(mb["gamma"], ma["gamma"][perm.numpy()])
    assert np.array_equal(mb["disagree"], ma["disagree"][perm.numpy()])


def test_same_seed_same_report_other_seed_other_intervals():
    args, fit = _split(_case(n=160), 80)
    first = estimate_bounds(*args, fit=fit, seed=3, **FAST).row()
    again = estimate_bounds(*args, fit=fit, seed=3, **FAST).row()
    other = estimate_bounds(*args, fit=fit, seed=4, **FAST).row()
    assert first == pytest.approx(again, nan_ok=True)
    assert first["student_err"] == other["student_err"]
    assert first["feat_msd_lo"] != other["feat_msd_lo"]


def test_internal_split_is_stratified_and_noted():
    z_t, z_s, y, weight, bias = _case(n=200)
    r = estimate_bounds(z_t, z_s, y, weight, bias, **FAST)
    row = r.row()
    assert row["n_eval"] + row["n_fit"] == 200
    assert any("no fit split given" in note for note in r.notes)
    eval_rows = r.margins()["sample"]
    assert len(set(eval_rows.tolist())) == row["n_eval"]
    counts = np.bincount(y.numpy()[eval_rows], minlength=3)
    assert np.all(np.abs(counts - np.bincount(y.numpy(), minlength=3) / 2) <= 1)
    assert r.details["split"] == "internal"


def test_student_features_logits_and_subsample():
    args, fit = _split(_case(n=240), 120)
    z_t, z_s, y, weight, bias = args
    g = torch.Generator().manual_seed(5)
    mix = torch.randn(6, 9, generator=g)
    s, s_fit = z_s @ mix, fit[1] @ mix
    own = z_s.double() @ weight.double().T + 0.3 * torch.randn(120, 3, generator=g,
                                                                dtype=torch.float64)
    r = estimate_bounds(z_t, z_s, y, weight, bias, fit=fit, s=s, s_fit=s_fit,
                        student_logits=own, mmd_max_n=60, **FAST)
    row = r.row()
    assert r.details["probe_features"] == "s"
    ind = r.indicators()
    assert np.mean(ind["student_probe_wrong"]) == pytest.approx(row["student_probe_err"])
    assert np.array_equal(ind["probe_wrong"], ind["student_probe_wrong"])
    # the same recipe on three inputs: fit rows, L2 grid, nested selection and seed
    from ijckd_bounds.estimators.bounds import _canonical_order
    from ijckd_bounds.estimators.intervals import derived_seed
    from ijckd_bounds.estimators.probes import LogisticProbe

    fit_rows = _canonical_order([fit[0], fit[1], fit[2], s_fit])  # the report's fit order
    for name, x_fit, x in (("teacher", fit[0], z_t), ("student", s_fit, s),
                           ("connected", fit[1], z_s)):
        probe = LogisticProbe(seed=derived_seed(0, "probes") % 2**31).fit(
            x_fit, fit[2], num_classes=3, rows=fit_rows)
        expected = float((probe.predict(x) != y).double().mean())
        assert row[f"{name}_probe_err"] == pytest.approx(expected), name
        assert r.details[f"{name}_probe_l2"] == probe.l2_, name
    expected_own = float((own.argmax(1) != y).double().mean())
    assert row["student_own_err"] == pytest.approx(expected_own)
    assert row["student_own_err_lo"] <= row["student_own_err"] <= row["student_own_err_hi"]
    assert r.indicators()["own_wrong"] is not None
    assert r["mmd2"].n == 60 and any("subsample of 60" in note for note in r.notes)


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_from_file_roundtrip(tmp_path, suffix):
    args, fit = _split(_case(n=160), 80)
    names = ("z_t", "z_s", "y", "weight", "bias")
    arrays = {k: v.numpy() for k, v in zip(names, args, strict=True)}
    arrays.update({k: v.numpy() for k, v in zip(("z_t_fit", "z_s_fit", "y_fit"), fit, strict=True)})
    path = tmp_path / f"features{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    from_file = estimate_bounds_from_file(path, **FAST).row()
    direct = estimate_bounds(*args, fit=fit, **FAST).row()
    assert from_file == pytest.approx(direct, nan_ok=True)
    as_dict = estimate_bounds(*args,
                              fit=dict(zip(("z_t_fit", "z_s_fit", "y_fit"), fit, strict=True)),
                              **FAST).row()
    assert as_dict == pytest.approx(direct, nan_ok=True)


def test_from_file_errors(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, z_t=np.zeros((20, 2)), z_s=np.zeros((20, 2)))
    with pytest.raises(IJCKDError, match="missing array"):
        estimate_bounds_from_file(path)
    args, fit = _split(_case(n=60), 30)
    arrays = {k: v.numpy()
              for k, v in zip(("z_t", "z_s", "y", "weight", "bias"), args, strict=True)}
    np.savez(path, z_t_fit=fit[0].numpy(), **arrays)
    with pytest.raises(IJCKDError, match="needs all three"):
        estimate_bounds_from_file(path)
    with pytest.raises(IJCKDError, match="does not exist"):
        estimate_bounds_from_file(tmp_path / "nope.npz")


def _bad_inputs():
    args, fit = _split(_case(n=80), 40)
    z_t, z_s, y, weight, bias = args
    nan_z = z_s.clone()
    nan_z[3, 1] = float("nan")
    return {
        "width": ((z_t, z_s[:, :4], y, weight, bias), {"fit": fit},
                  r"`z_s` must have shape \(n, 6\) like `z_t`, got \(n, 4\)"),
        "rows": ((z_t, z_s[:30], y, weight, bias), {"fit": fit}, "must have 40 rows"),
        "nan": ((z_t, nan_z, y, weight, bias), {"fit": fit}, "NaN or infinite"),
        "fractional labels": ((z_t, z_s, y + 0.5, weight, bias), {"fit": fit}, "integer"),
        "label range": ((z_t, z_s, y + 3, weight, bias), {"fit": fit}, r"in \[0, 3\)"),
        "weight width": ((z_t, z_s, y, weight[:, :5], bias), {"fit": fit}, "`weight`"),
        "bias": ((z_t, z_s, y, weight, bias[:2]), {"fit": fit}, "`bias` must have shape"),
        "one class": ((z_t, z_s, y * 0, weight[:1], bias[:1]), {"fit": fit},
                      "at least 2 classes"),
        "same tensor": ((z_t, z_s, y, weight, bias), {"fit": (z_t, z_s, y)},
                        "evaluation features themselves"),
        "overlap": ((z_t, z_s, y, weight, bias),
                    {"fit": (torch.cat([fit[0], z_t[:5]]), torch.cat([fit[1], z_s[:5]]),
                             torch.cat([fit[2], y[:5]]))}, "overlaps"),
        "too few eval": ((z_t[:5], z_s[:5], y[:5], weight, bias), {"fit": fit},
                         "at least 10 evaluation"),
        "too few to split": ((z_t[:15], z_s[:15], y[:15], weight, bias), {},
                             "at least 20 samples"),
        "s without s_fit": ((z_t, z_s, y, weight, bias), {"fit": fit, "s": z_s},
                            "`s` needs `s_fit`"),
        "s_fit without fit": ((z_t, z_s, y, weight, bias), {"s_fit": z_s}, "needs `fit`"),
        "logits width": ((z_t, z_s, y, weight, bias),
                         {"fit": fit, "student_logits": torch.zeros(40, 4)}, "student_logits"),
        "fit tuple": ((z_t, z_s, y, weight, bias), {"fit": (z_t,)}, "`fit` must be"),
        "level": ((z_t, z_s, y, weight, bias), {"fit": fit, "level": 95}, "level"),
        "bootstrap": ((z_t, z_s, y, weight, bias), {"fit": fit, "n_bootstrap": 0},
                      "n_bootstrap"),
    }


@pytest.mark.parametrize("name", sorted(_bad_inputs()))
def test_input_errors_are_one_line(name):
    args, kwargs, message = _bad_inputs()[name]
    with pytest.raises(IJCKDError, match=message) as info:
        estimate_bounds(*args, **{**FAST, **kwargs})
    assert "\n" not in str(info.value)


def test_canonical_indicators_and_the_reports_own_bootstrap(report):
    """``indicators(canonical=True)`` with ``paired_bootstrap()`` rebuild the report's own
    intervals."""
    given, canonical = report.indicators(), report.indicators(canonical=True)
    assert set(given) == set(canonical)
    sample = canonical["sample"]
    assert sorted(sample.tolist()) == list(range(120))
    assert np.array_equal(given["sample"], np.arange(120))
    for name, values in canonical.items():
        if values is not None:
            assert np.array_equal(values, given[name][sample]), name
    bootstrap = report.paired_bootstrap()
    assert bootstrap.weights.shape == (report.details["n_bootstrap"], 120)
    wrong = canonical["teacher_wrong"].astype(np.float64) \
        + canonical["student_wrong"].astype(np.float64)
    replicates = bootstrap.weights.double().numpy() @ wrong / 120
    rebuilt = bootstrap.estimate(wrong.mean(), torch.from_numpy(replicates))
    assert (rebuilt.lo, rebuilt.hi) == pytest.approx(
        (report["ijc_lambda"].lo, report["ijc_lambda"].hi), abs=1e-12)


def test_joint_choice_is_made_on_the_evaluation_split_with_teacher_on_a_tie():
    """h_T is the Bayes classifier of both domains (z_S = z_T): the probe can at best tie,
    so ĥ* = h_T, ijc_gap = 0 and every replicate's gap is >= 0."""
    args, fit = _split(_case(n=240, noise=0.0), 120)
    r = estimate_bounds(*args, fit=fit, **FAST)
    row = r.row()
    counts = r.indicators()
    teacher = counts["teacher_wrong"].sum() + counts["student_wrong"].sum()
    assert row["ijc_gap"] >= 0 and row["ijc_gap_lo"] >= 0
    if row["joint_chosen"] == "teacher":
        assert row["ideal_joint"] == pytest.approx(teacher / 120)
    else:  # the probe's count is strictly smaller on the evaluation split
        joint = counts["joint_t_wrong"].sum() + counts["joint_s_wrong"].sum()
        assert joint < teacher
    assert row["bound_ideal_joint"] >= row["student_err"]


def test_a_better_probe_is_chosen_and_its_gap_interval_is_above_zero():
    # the student is shifted across h_T's boundaries; a joint linear probe fixes part of it
    z_t, z_s, y, weight, bias = _case(n=400, noise=0.3, seed=3)
    z_s = z_s + 1.5 * weight[0] / weight[0].norm()
    args, fit = _split((z_t, z_s, y, weight, bias), 200)
    row = estimate_bounds(*args, fit=fit, **FAST).row()
    assert row["joint_chosen"] == "probe" and row["joint_probe_share"] > 0.9
    assert row["ijc_gap"] > 0 and row["ijc_gap_lo"] > 0
    assert row["ideal_joint"] < row["ijc_lambda"]
    assert row["bound_ideal_joint"] >= row["student_err"]


def test_duplicate_features_lose_only_mmd_and_keep_the_bounds():
    """Most feature rows equal: no median bandwidth, so mmd2/mmd_p are missing with a
    note; the report and bounds 1-3 are still there."""
    z_t, z_s, y, weight, bias = _case(n=200, seed=4)
    dup = torch.arange(200) % 10 != 0  # 90% of the rows are one point
    z_t, z_s = z_t.clone(), z_s.clone()
    point = z_t[0].clone()
    z_t[dup] = point
    z_s[dup] = point
    args, fit = _split((z_t, z_s, y, weight, bias), 100)
    r = estimate_bounds(*args, fit=fit, **FAST)
    row = r.row()
    assert math.isnan(row["mmd2"]) and math.isnan(row["mmd2_lo"]) and math.isnan(row["mmd_p"])
    assert "not measured" in r["mmd2"].method
    note = next(note for note in r.notes if note.startswith("mmd2 and mmd_p not measured"))
    assert "bandwidth" in note and "pass" not in note
    for name in schema.EXACT_BOUNDS:
        assert row[name] >= row["student_err"], name
    assert not math.isnan(row["bound_ideal_joint"]) and not math.isnan(row["feat_cka"])
