"""track -> plot -> audit end to end on a tiny run, and the audit on students with a
known defect."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ijckd_bounds import schema

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_runs(digits_runs, tmp_path_factory, cli_setup):
    """The shared KD and IJCKD digits runs, copied here and tracked (both checkpoints)."""
    copies = tmp_path_factory.mktemp("e2e")
    runs = []
    for method in ("kd", "ijckd"):
        run = shutil.copytree(digits_runs / method, copies / method)
        cli_setup("track", run, "--n-bootstrap", 100, "--n-permutations", 50)
        runs.append(run)
    return digits_runs, runs


@pytest.mark.slow
def test_track_plot_audit_end_to_end(tiny_runs, tmp_path, cli):
    root, runs = tiny_runs
    for run in runs:
        df = pd.read_csv(run / "bounds.csv")
        assert list(df.columns) == list(schema.TABLE_COLUMNS)
        assert sorted(df["epoch"]) == [1, 2]
        for bound in schema.EXACT_BOUNDS:
            assert (df[bound] >= df["student_err"] - 1e-12).all(), bound
        for term in schema.INTERVAL_TERMS + schema.BOUNDS:
            ok = df[term].isna() | ((df[f"{term}_lo"] <= df[term] + 1e-12)
                                    & (df[term] <= df[f"{term}_hi"] + 1e-12))
            assert ok.all(), term
    kd = pd.read_csv(runs[0] / "bounds.csv")
    ij = pd.read_csv(runs[1] / "bounds.csv")
    assert kd["student_own_err"].notna().all()  # own head: its error is reported
    assert ij["student_own_err"].isna().all()  # predicts with h_T: no own head
    # fidelity: an h_T student agrees exactly where it does not disagree
    assert np.allclose(ij["top1_agreement"], 1.0 - ij["disagreement"])
    for run in runs:
        calibration = pd.read_csv(run / "calibration.csv")
        assert sorted(calibration["checkpoint"].unique()) == ["epoch_0001.pt", "epoch_0002.pt"]
        per_checkpoint = calibration.groupby(["checkpoint", "model"])["n"]
        assert (per_checkpoint.sum() == pd.read_csv(run / "bounds.csv")["n_eval"].iloc[0]).all()
        assert (per_checkpoint.count() == 15).all()
        per_class = pd.read_csv(run / "per_class.csv")
        assert per_class["top1_agreement"].between(0, 1).all()

    # re-running track adds nothing and duplicates nothing
    cli("track", runs[0], "--n-bootstrap", 100, "--n-permutations", 50)
    assert len(pd.read_csv(runs[0] / "bounds.csv")) == 2

    cli("collect", *runs, "--out", tmp_path / "all.csv")
    assert len(pd.read_csv(tmp_path / "all.csv")) == 4

    figures = tmp_path / "figures"
    cli("plot", *runs, "--out", figures)
    pngs = sorted(figures.glob("*.png"))
    assert len(pngs) >= 6
    assert {"fidelity.png", "reliability_kd.png", "reliability_ijckd.png"} <= {
        p.name for p in pngs}
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
        assert png.with_suffix(".pdf").stat().st_size > 1000

    audit = tmp_path / "audit"
    cli("audit", "--student", runs[0] / "checkpoints" / "epoch_0002.pt", "--out", audit,
        "--n-bootstrap", 100)
    text = (audit / "report.md").read_text()
    assert "## Diagnosis" in text and "## Error budget" in text
    assert "## Fidelity and calibration" in text and "calibrated" in text
    payload = json.loads((audit / "bounds.json").read_text())
    assert payload["ece_gap"]["lo"] <= payload["ece_gap"]["value"] <= payload["ece_gap"]["hi"]
    primary = payload["budgets"][0]
    assert primary["target"] == "student_own_err"
    assert set(primary["pieces"]) == {"teacher", "fit", "capacity", "head"}
    # the report names the teacher and the student it read: file, architecture, epoch
    student = runs[0] / "checkpoints" / "epoch_0002.pt"
    assert f"- teacher: `{root / 'teacher' / 'teacher.pt'}` (mlp_large, epoch 2" in text
    assert f"- student: `{student}` (kd student, mlp_small, epoch 2; predicts with its own head)" \
        in text
    assert f"n_eval = {payload['terms']['n_eval']}" in text
    assert (audit / "margins.png").read_bytes()[:8] == PNG_MAGIC


def _features(rng, n, d, k):
    """Teacher features of k well-separated classes and a linear teacher classifier."""
    means = rng.normal(size=(k, d)) * 4.0
    y = rng.integers(0, k, size=n)
    z_t = means[y] + rng.normal(size=(n, d))
    weight = means / np.linalg.norm(means, axis=1, keepdims=True)
    bias = -0.5 * (means * weight).sum(axis=1)
    return z_t, y, weight, bias


def _write_defect(path, kind, seed=0, n=600, d=8, k=4):
    rng = np.random.default_rng(seed)
    z_t, y, weight, bias = _features(rng, 2 * n, d, k)
    if kind == "shift":
        # a large constant shift: still separable, but out of h_T's decision regions
        shift = 6.0 * (weight[0] - weight[1])
        z_s = z_t + shift
        s = z_s.copy()
    elif kind == "capacity":
        # the student's own features carry no class information at all
        s = rng.normal(size=(2 * n, d))
        z_s = np.repeat(z_t.mean(axis=0, keepdims=True), 2 * n, axis=0) + 0.01 * s
    else:
        raise ValueError(kind)
    arrays = {"z_t": z_t[:n], "z_s": z_s[:n], "y": y[:n], "s": s[:n],
              "z_t_fit": z_t[n:], "z_s_fit": z_s[n:], "y_fit": y[n:], "s_fit": s[n:],
              "weight": weight, "bias": bias}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("kind", "diagnosis"), [("shift", "alignment"), ("capacity", "capacity")])
def test_audit_names_a_known_defect(tmp_path, kind, diagnosis, cli):
    features = _write_defect(tmp_path / f"{kind}.npz", kind)
    cli("audit", "--features", features, "--out", tmp_path / "audit", "--n-bootstrap", 200)
    payload = json.loads((tmp_path / "audit" / "bounds.json").read_text())
    budget = payload["budgets"][0]
    assert budget["diagnosis"] == diagnosis
    assert not budget["tie"]
    text = (tmp_path / "audit" / "report.md").read_text()
    expected = {"alignment": "alignment-limited (IJC violated)",
                "capacity": "capacity-limited"}[diagnosis]
    assert f"**{expected}**" in text


@pytest.mark.slow
def test_the_audit_margin_figure_names_the_student_it_read(tiny_runs, tmp_path, monkeypatch, cli):
    """It was titled "student: audit, epoch 0" whatever the checkpoint."""
    import ijckd_bounds.plotting as plotting

    _root, runs = tiny_runs
    titles = []
    save = plotting.save_figure

    def recording_save(fig, path, **kwargs):
        titles.append(fig.get_suptitle())
        return save(fig, path, **kwargs)

    monkeypatch.setattr(plotting, "save_figure", recording_save)
    cli("audit", "--student", runs[0] / "checkpoints" / "epoch_0001.pt", "--out",
        tmp_path / "audit", "--n-bootstrap", 50)
    assert len(titles) == 1
    assert titles[0].startswith("KD: epoch_0001.pt, epoch 1 (")
