"""What a new user meets on a first run: no silently wrong answer, messages that say what
is wrong and what was expected, help that shows every flag's default, progress and logs.

Every case runs the command line in-process (``ijckd_bounds.cli.main``) where the problem
shows at the command line.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from ijckd_bounds.cli import main

COMMON = ["data.batch_size=64", "optim.lr=0.05", "run.device=cpu", "run.progress=false"]
FAST = ["--n-bootstrap", "20", "--n-permutations", "10"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(capsys, *argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    return out, err


def fails(capsys, *argv, code=2):
    """Exit ``code`` with exactly one stderr line and no traceback; returns that line."""
    got, _, err = run_cli(capsys, *argv)
    assert got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"ijckd-bounds {argv[0]}: error: "), err
    return err.rstrip("\n")


def tensors_file(path, n_per_class=50, n_classes=3, dim=6, seed=0):
    """Three Gaussian blobs: a data set small enough for a test to track in seconds."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = (rng.normal(size=(len(y), dim)) + 2 * y[:, None]).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two MLP teachers (1 epoch, seeds 0 and 1) on a small tensors file and a KD student
    (2 epochs) with its own tracking settings in its config."""
    root = tmp_path_factory.mktemp("first_run")
    data = ["data.name=tensors", f"data.options.path={tensors_file(root / 'blobs.npz')}"]
    for name, seed in (("teacher", 0), ("teacher_b", 1)):
        assert main(["train-teacher", "model.teacher=mlp_large", "method.name=ce",
                     "optim.epochs=1", f"run.seed={seed}", f"run.run_dir={root / name}",
                     *data, *COMMON]) == 0
    assert main(["distill", "method.name=kd", "model.student=mlp_small", "optim.epochs=2", *data,
                 f"model.teacher_checkpoint={root / 'teacher' / 'teacher.pt'}",
                 "track.n_bootstrap=37", "track.n_permutations=11", "track.seed=5",
                 f"run.run_dir={root / 'kd'}", *COMMON]) == 0
    return root


def student_of(runs, epoch=2):
    return runs / "kd" / "checkpoints" / f"epoch_{epoch:04d}.pt"


# ------------------------------------------------------------ wrong answers, silently


def test_audit_refuses_a_student_checkpoint_as_the_teacher(runs, tmp_path, capsys):
    student = student_of(runs)
    err = fails(capsys, "audit", "--teacher", student_of(runs, 1), "--student", student,
                "--out", tmp_path / "audit", *FAST)
    assert f"--teacher {str(student_of(runs, 1))!r} is a kd student checkpoint, not a " \
           f"teacher" in err
    assert "--allow-other-teacher" in err
    assert not (tmp_path / "audit" / "report.md").exists()


def test_audit_refuses_another_teacher_than_the_recorded_one(runs, tmp_path, capsys):
    other = runs / "teacher_b" / "teacher.pt"
    err = fails(capsys, "audit", "--teacher", other, "--student", student_of(runs),
                "--out", tmp_path / "audit", *FAST)
    assert re.search(r"is not the teacher student checkpoint .* was distilled from \(sha256 "
                     r"[0-9a-f]{12}\.\.\., recorded [0-9a-f]{12}\.\.\.\); omit --teacher", err)


def test_audit_with_allow_other_teacher_warns_in_the_report(runs, tmp_path, capsys):
    out = tmp_path / "audit"
    ok(capsys, "audit", "--teacher", student_of(runs, 1), "--student", student_of(runs),
       "--allow-other-teacher", "--out", out, *FAST)
    report = (out / "report.md").read_text()
    assert "WARNING: --teacher" in report and "not a teacher" in report
    assert any("WARNING" in n for n in json.loads((out / "bounds.json").read_text())["notes"])
    # the recorded teacher given explicitly is no warning
    ok(capsys, "audit", "--teacher", runs / "teacher" / "teacher.pt", "--student",
       student_of(runs), "--out", tmp_path / "plain", *FAST)
    assert "WARNING" not in (tmp_path / "plain" / "report.md").read_text()


def _spy_settings(monkeypatch):
    import ijckd_bounds.tracking.track as track

    seen = []
    real = track.estimate_bounds

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("n_bootstrap", "n_permutations", "seed")})
        return real(*args, **kwargs)

    monkeypatch.setattr(track, "estimate_bounds", spy)
    return seen


def test_track_follows_the_runs_settings_unless_a_flag_is_given(runs, tmp_path, capsys,
                                                               monkeypatch):
    import shutil

    run = tmp_path / "kd"
    shutil.copytree(runs / "kd", run)
    seen = _spy_settings(monkeypatch)
    ok(capsys, "track", run)
    assert seen == [{"n_bootstrap": 37, "n_permutations": 11, "seed": 5}] * 2
    (run / "bounds.csv").unlink()
    seen.clear()
    ok(capsys, "track", run, "--n-bootstrap", 23)
    assert seen == [{"n_bootstrap": 23, "n_permutations": 11, "seed": 5}] * 2


def test_interrupted_tracked_distill_resumes_to_one_row_per_checkpoint(runs, tmp_path,
                                                                      capsys, monkeypatch):
    """Ctrl-C while epoch 2's checkpoint is being tracked (written, not yet in
    bounds.csv); ``distill --resume --track`` must track it too."""
    import ijckd_bounds.tracking.track as track

    argv = ["distill", "method.name=kd", "model.student=mlp_small", "optim.epochs=3",
            "data.name=tensors", f"data.options.path={runs / 'blobs.npz'}",
            f"model.teacher_checkpoint={runs / 'teacher' / 'teacher.pt'}",
            "track.n_bootstrap=20", "track.n_permutations=10",
            f"run.run_dir={tmp_path / 'kd'}", *COMMON, "--track"]
    real, calls = track.estimate_checkpoint, []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(track, "estimate_checkpoint", interrupted_at_the_second)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130
    assert err.strip().endswith(f"interrupted; continue with: ijckd-bounds "
                                f"{' '.join(argv)} --resume"), err
    assert pd.read_csv(tmp_path / "kd" / "bounds.csv")["checkpoint"].tolist() == [
        "epoch_0001.pt"]
    monkeypatch.setattr(track, "estimate_checkpoint", real)
    ok(capsys, *argv, "--resume")
    tracked = pd.read_csv(tmp_path / "kd" / "bounds.csv")["checkpoint"]
    assert sorted(tracked) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
