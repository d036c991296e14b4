"""What a new user meets on a first run: no silently wrong answer, messages that say what
is wrong and what was expected, help that shows every flag's default, progress and logs.

Every case runs the command line in-process (``ijckd_bounds.app.cli.main``) where the problem
shows at the command line.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from ijckd_bounds.app.cli import main

COMMON = ["data.batch_size=64", "optim.lr=0.05", "run.device=cpu", "run.progress=false"]
FAST = ["--n-bootstrap", "20", "--n-permutations", "10"]


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


def _spy_settings(monkeypatch):
    import ijckd_bounds.tracking.track as track

    seen = []
    real = track.estimate_bounds

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("n_bootstrap", "n_permutations", "seed")})
        return real(*args, **kwargs)

    monkeypatch.setattr(track, "estimate_bounds", spy)
    return seen


def test_audit_refuses_a_student_checkpoint_as_the_teacher(runs, tmp_path, cli_fails):
    student = student_of(runs)
    err = cli_fails("audit", "--teacher", student_of(runs, 1), "--student", student,
                    "--out", tmp_path / "audit", *FAST)
    assert f"--teacher {str(student_of(runs, 1))!r} is a kd student checkpoint, not a " \
           f"teacher" in err
    assert "--allow-other-teacher" in err
    assert not (tmp_path / "audit" / "report.md").exists()


def test_audit_refuses_another_teacher_than_the_recorded_one(runs, tmp_path, cli_fails):
    other = runs / "teacher_b" / "teacher.pt"
    err = cli_fails("audit", "--teacher", other, "--student", student_of(runs),
                    "--out", tmp_path / "audit", *FAST)
    assert re.search(r"is not the teacher student checkpoint .* was distilled from \(sha256 "
                     r"[0-9a-f]{12}\.\.\., recorded [0-9a-f]{12}\.\.\.\); omit --teacher", err)


@pytest.mark.slow
def test_audit_with_allow_other_teacher_warns_in_the_report(runs, tmp_path,
                                                            monkeypatch, cli):
    out = tmp_path / "audit"
    seen = _spy_settings(monkeypatch)
    cli("audit", "--teacher", student_of(runs, 1), "--student", student_of(runs),
        "--allow-other-teacher", "--out", out, "--n-bootstrap", 20, "--n-permutations", 13)
    assert seen == [{"n_bootstrap": 20, "n_permutations": 13, "seed": 0}]  # audit's flags
    report = (out / "report.md").read_text()
    assert "WARNING: --teacher" in report and "not a teacher" in report
    assert any("WARNING" in n for n in json.loads((out / "bounds.json").read_text())["notes"])
    # the recorded teacher given explicitly is no warning
    cli("audit", "--teacher", runs / "teacher" / "teacher.pt", "--student",
        student_of(runs), "--out", tmp_path / "plain", *FAST)
    assert "WARNING" not in (tmp_path / "plain" / "report.md").read_text()


def test_track_follows_the_runs_settings_unless_a_flag_is_given(runs, tmp_path,
                                                               monkeypatch, cli):
    import shutil

    run = tmp_path / "kd"
    shutil.copytree(runs / "kd", run)
    seen = _spy_settings(monkeypatch)
    cli("track", run)
    assert seen == [{"n_bootstrap": 37, "n_permutations": 11, "seed": 5}] * 2
    (run / "bounds.csv").unlink()
    seen.clear()
    cli("track", run, "--n-bootstrap", 23)
    assert seen == [{"n_bootstrap": 23, "n_permutations": 11, "seed": 5}] * 2


def test_interrupted_tracked_distill_resumes_to_one_row_per_checkpoint(runs, tmp_path,
                                                                         monkeypatch, run_cli,
                                                                         cli):
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
    code, _, err = run_cli(*argv)
    assert code == 130
    assert err.strip().endswith(f"interrupted; continue with: ijckd-bounds "
                                f"{' '.join(argv)} --resume"), err
    assert pd.read_csv(tmp_path / "kd" / "bounds.csv")["checkpoint"].tolist() == [
        "epoch_0001.pt"]
    monkeypatch.setattr(track, "estimate_checkpoint", real)
    cli(*argv, "--resume")
    tracked = pd.read_csv(tmp_path / "kd" / "bounds.csv")["checkpoint"]
    assert sorted(tracked) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]


# ------------------------------------------------------------------------ feature files


def feature_arrays(n=60, d=4, k=3, seed=0, fit=True):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 4.0
    y = np.tile(np.arange(k), 2 * n // k + 1)[: 2 * n]
    z = means[y] + rng.normal(size=(2 * n, d))
    arrays = {"z_t": z[:n], "z_s": z[:n] + 0.1 * rng.normal(size=(n, d)), "y": y[:n],
              "weight": means, "bias": np.zeros(k)}
    if fit:
        arrays.update(z_t_fit=z[n:], z_s_fit=z[n:] + 0.1 * rng.normal(size=(n, d)),
                      y_fit=y[n:])
    return arrays


def test_estimate_without_a_fit_split_says_so_on_stderr(tmp_path, cli):
    path = tmp_path / "f.npz"
    np.savez(path, **feature_arrays(fit=False))
    out, err = cli("estimate", path, *FAST)
    assert "student_err" in json.loads(out)
    assert err.startswith("ijckd-bounds estimate: note: no fit split given: split the 60 "
                          "samples into"), err


@pytest.mark.parametrize(("typo", "hint"), [("t_fit", "z_t_fit"), ("s_fit_", "s_fit"),
                                        ("labels_fit", None)])
def test_estimate_refuses_misspelled_arrays_with_the_closest_name(tmp_path, typo,
                                                                  hint, cli_fails):
    arrays = feature_arrays(fit=False)
    arrays[typo] = arrays["z_t"]
    path = tmp_path / "f.npz"
    np.savez(path, **arrays)
    err = cli_fails("estimate", path, *FAST)
    assert f"feature file {str(path)!r} has unknown array(s) {typo}" in err
    if hint:
        assert f"(did you mean {hint!r} for {typo!r}?)" in err
    assert "; valid: z_t, z_s, y, weight, bias, z_t_fit" in err


@pytest.mark.parametrize(("labels", "accepted"), [
    (lambda y: y.astype(np.float32), True),           # whole numbers saved as floats
    (lambda y: y.astype(np.int32), True),
    (lambda y: y + 0.5, False),                       # not class indices
    (lambda y: y == 1, False),                        # booleans
])
def test_estimate_and_the_tensors_dataset_take_the_same_labels(tmp_path, labels,
                                                               accepted, run_cli):
    from ijckd_bounds.data import build_dataset
    from ijckd_bounds.errors import IJCKDError

    arrays = feature_arrays()
    arrays["y"], arrays["y_fit"] = labels(arrays["y"]), labels(arrays["y_fit"])
    np.savez(tmp_path / "f.npz", **arrays)
    code, _, err = run_cli("estimate", tmp_path / "f.npz", *FAST)
    assert code == (0 if accepted else 2), err
    x = np.concatenate([arrays["z_t"], arrays["z_t_fit"]]).astype(np.float32)
    y = np.concatenate([arrays["y"], arrays["y_fit"]])
    np.savez(tmp_path / "t.npz", x=x, y=y)
    if accepted:
        splits = build_dataset("tensors", path=tmp_path / "t.npz")
        assert splits.num_classes == 3 and splits.train.labels.dtype == torch.int64
    else:
        with pytest.raises(IJCKDError, match="must hold integer class indices"):
            build_dataset("tensors", path=tmp_path / "t.npz")
        assert "must hold integer class indices" in err


# ------------------------------------------------------------------ messages that mislead


def test_a_directory_where_a_file_is_expected(runs, tmp_path, cli_fails):
    folder = tmp_path / "folder"
    folder.mkdir()
    err = cli_fails("estimate", folder)
    assert err.endswith(f"feature file {str(folder)!r} is a directory, expected a .npz or "
                        f".pt file")
    err = cli_fails("audit", "--features", folder, "--out", tmp_path / "a")
    assert f"{str(folder)!r} is a directory, expected a .npz or .pt file" in err
    err = cli_fails("audit", "--student", folder, "--out", tmp_path / "a")
    assert err.endswith(f"student checkpoint {str(folder)!r} is a directory, expected a .pt "
                        f"file")
    err = cli_fails("train-teacher", "--config", folder)
    assert err.endswith(f"config file {str(folder)!r} is a directory, expected a YAML file")


def test_a_file_where_a_run_directory_is_expected(runs, tmp_path, cli_fails):
    table = tmp_path / "F.csv"
    table.write_text("run,epoch\n")
    err = cli_fails("track", table)
    assert err.endswith(f"{str(table)!r} is a file, expected a run directory (the "
                        f"run.run_dir of a distill run, holding checkpoints/)")


def test_estimate_out_a_directory_names_the_users_path(tmp_path, cli_fails):
    np.savez(tmp_path / "f.npz", **feature_arrays())
    folder = tmp_path / "out"
    folder.mkdir()
    err = cli_fails("estimate", tmp_path / "f.npz", "--out", folder, *FAST)
    assert f"--out {str(folder)!r} is a directory, expected the path of a JSON file" in err
    assert ".tmp" not in err


def test_a_garbage_npz_is_not_called_pickled_data(tmp_path, cli_fails):
    garbage = tmp_path / "f.npz"
    garbage.write_bytes(b"\x80\x04 these bytes are no archive" * 10)
    err = cli_fails("estimate", garbage)
    assert "pickle" not in err and "unsafe" not in err
    assert err.endswith(f"feature file {str(garbage)!r} is not a readable .npz file (no zip "
                        f"structure: corrupt, truncated or another format); write it with "
                        f"numpy.savez")


def test_torch_messages_are_not_cut_mid_sentence(runs, tmp_path, cli_fails):
    import pathlib

    path = tmp_path / "unsafe.pt"
    torch.save({"x": pathlib.PurePosixPath("a")}, path)  # an object weights_only refuses
    err = cli_fails("audit", "--student", path, "--out", tmp_path / "a")
    assert err.endswith(f"student checkpoint {str(path)!r} holds Python objects that a safe "
                        f"load (weights_only=True) refuses: Unsupported global: GLOBAL "
                        f"pathlib.PurePosixPath was not an allowed global by default. Save "
                        f"tensors, dicts, lists, strings and numbers only"), err
    assert "\x1b" not in err
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(student_of(runs).read_bytes()[:2000])
    err = cli_fails("audit", "--student", truncated, "--out", tmp_path / "a")
    reason = re.search(r"not a torch file \((.*)\)$", err).group(1)
    assert reason and not reason.endswith(("'", ",")), reason


def test_resume_skips_a_corrupt_latest_checkpoint_with_a_warning(runs, tmp_path, cli):
    import shutil

    run = tmp_path / "kd"
    shutil.copytree(runs / "kd", run)
    latest = run / "checkpoints" / "epoch_0002.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # cut short
    _, err = cli("distill", "method.name=kd", "model.student=mlp_small",
                 "optim.epochs=2", "data.name=tensors", f"data.options.path={runs / 'blobs.npz'}",
                 f"model.teacher_checkpoint={runs / 'teacher' / 'teacher.pt'}",
                 "track.n_bootstrap=37", "track.n_permutations=11", "track.seed=5",
                 f"run.run_dir={run}", *COMMON, "--resume")
    assert err.startswith(f"ijckd-bounds distill: warning: checkpoint {str(latest)!r} is "
                          f"corrupt, truncated or not a torch file"), err
    warning, resumed = err.splitlines()  # the warning, then the checkpoint it resumes from
    assert warning.endswith(f"resuming from the previous complete checkpoint "
                            f"{str(run / 'checkpoints' / 'epoch_0001.pt')!r} (epoch 1) instead")
    assert resumed.startswith(f"ijckd-bounds distill: resuming from "
                              f"{run / 'checkpoints' / 'epoch_0001.pt'} (epoch 1, step ")
    # epoch 2 trained again from epoch 1 is the epoch 2 of the uninterrupted run
    again = torch.load(latest, weights_only=True)["model"]["state_dict"]
    first = torch.load(student_of(runs), weights_only=True)["model"]["state_dict"]
    assert all(torch.equal(again[k], first[k]) for k in first)


@pytest.mark.slow
def test_a_tensors_run_is_tracked_and_audited_from_another_directory(tmp_path,
                                                                     monkeypatch, cli):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    tensors_file(work / "blobs.npz")
    monkeypatch.chdir(work)  # the run made with paths relative to here
    data = ["data.name=tensors", "data.options.path=blobs.npz"]
    cli("train-teacher", "model.teacher=mlp_large", "method.name=ce", "optim.epochs=1",
        "run.run_dir=teacher", *data, *COMMON)
    cli("distill", "method.name=kd", "model.student=mlp_small", "optim.epochs=1",
        "model.teacher_checkpoint=teacher/teacher.pt", "run.run_dir=kd", *data, *COMMON)
    recorded = torch.load(work / "kd" / "checkpoints" / "epoch_0001.pt",
                          weights_only=True)["dataset"]["options"]["path"]
    assert recorded == str(work / "blobs.npz")
    monkeypatch.chdir(elsewhere)
    cli("track", work / "kd", *FAST)
    cli("audit", "--student", work / "kd" / "checkpoints" / "epoch_0001.pt",
        "--out", "audit", *FAST)
    assert (elsewhere / "audit" / "report.md").is_file()


def test_demo_with_other_epochs_over_an_earlier_demo_is_refused(tmp_path, cli_fails):
    """An earlier 15-epoch demo in the folder: ``demo --epochs 10`` must not show its
    results as its own (nothing is trained: the check comes first)."""
    import yaml

    from ijckd_bounds.app.demo import EXPERIMENTS, _config
    from ijckd_bounds.typed_yaml import to_dict

    out = tmp_path / "demo_out"
    run_dir = out / "students" / "kd-s0"
    earlier = _config("digits", EXPERIMENTS["digits"], run_dir=run_dir, seed=0,
                      teacher_mode=False, method="kd", teacher_ckpt=out / "teacher" / "teacher.pt",
                      epochs=15)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(earlier)))
    err = cli_fails("demo", "--epochs", 10, "--out", out)
    assert err.endswith(f"{str(out)!r} holds a demo made with optim.epochs=15 "
                        f"({str(run_dir)!r}), this command asks for 10; pass --epochs 15 to "
                        f"show it, or choose another --out (or delete {str(out)!r}) to start "
                        f"over"), err
    assert not (out / "teacher").exists()


# ------------------------------------------------------------------------ help and list


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_estimator_flags_show_help_and_defaults(capsys):
    text = _help(capsys, "track")
    for flag, default in (("--n-bootstrap N", "track.n_bootstrap, else 1000"),
                          ("--n-permutations N", "track.n_permutations, else 200"),
                          ("--seed SEED", "track.seed, else 0")):
        assert flag in text and f"(default: the run's {default})" in text, text
    for command in ("estimate", "audit"):
        text = _help(capsys, command)
        assert "paired-bootstrap resamples of every interval (default 1000)" in text, text
        assert "sign flips of the MMD² permutation test (default 200)" in text, text
        assert "(default 0)" in text
    assert "--allow-other-teacher" in _help(capsys, "audit")
    assert "--dataset {digits,mnist1d}" in _help(capsys, "demo")


def test_a_flag_typo_prints_the_subcommands_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["track", str(tmp_path), "--n-bootsrap", "5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ijckd-bounds track [-h]"), err
    assert "error: unrecognized arguments: --n-bootsrap" in err


def test_list_shows_model_options_and_config_keys(cli):
    out, _ = cli("list")
    assert re.search(r"^  mlp_small +hidden_sizes=\(32,\)$", out, re.M), out
    assert re.search(r"^  cnn_large +channels=\(64, 128, 128\), strides=\(1, 2, 2\), "
                     r"kernel_size=None$", out, re.M)
    for key in ("data.options = {}", "optim.epochs = 10", "track.n_bootstrap = 1000",
                "run.progress = None", "model.teacher_weights = None"):
        assert f"  {key}\n" in out


# ------------------------------------------------------------------ progress and logging


@pytest.fixture(scope="module")
def logged_run(runs, tmp_path_factory):
    """A KD student distilled and tracked with run.progress left to the output (stdout is
    captured, so not a terminal) and run.tensorboard=true when the package is there."""
    import contextlib
    import io

    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    run = tmp_path_factory.mktemp("logged") / "kd"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["distill", "method.name=kd", "model.student=mlp_small", "optim.epochs=2",
                     "data.name=tensors", f"data.options.path={runs / 'blobs.npz'}",
                     f"model.teacher_checkpoint={runs / 'teacher' / 'teacher.pt'}",
                     "track.n_bootstrap=20", "track.n_permutations=10", "data.batch_size=64",
                     "optim.lr=0.05", "run.device=cpu", "run.tensorboard=true",
                     f"run.run_dir={run}", "--track"])
    assert code == 0
    return run, out.getvalue()


@pytest.mark.slow
def test_one_line_per_epoch_and_tracked_checkpoint_when_stdout_is_no_terminal(logged_run):
    _, out = logged_run
    lines = out.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2
    assert re.fullmatch(r"epoch 1/2: loss [\d.e+-]+, ce [\d.e+-]+, kl [\d.e+-]+, train acc "
                        r"0\.\d{4}, eval acc [01]\.\d{4}, \d+\.\d s", epochs[0]), epochs[0]
    tracked = [line for line in lines if line.startswith("tracked ")]
    assert [t.split(":")[0] for t in tracked] == ["tracked epoch_0001.pt",
                                                 "tracked epoch_0002.pt"]
    assert re.search(r"student_err \d+\.\d%, teacher_err \d+\.\d%, bound_coupled \d+\.\d% "
                     r"\(\d+\.\d s\)$", tracked[0]), tracked[0]
    # an epoch's line comes before its checkpoint's
    assert lines.index(epochs[1]) < lines.index(tracked[1])


@pytest.mark.slow
def test_resolved_config_and_parameter_counts_are_printed_and_written(logged_run):
    from ijckd_bounds.checkpoint import load_student

    run, out = logged_run
    params = json.loads((run / "params.json").read_text())
    student = load_student(run / "checkpoints" / "epoch_0001.pt")
    expected = sum(p.numel() for p in student.model.parameters())
    assert params == {"model": "mlp_small", "model_trainable": expected, "connector": None,
                      "connector_trainable": 0, "teacher": "mlp_large",
                      "teacher_frozen": params["teacher_frozen"]}
    assert params["teacher_frozen"] > expected
    assert f"{run}: kd student mlp_small, {expected:,} trainable parameters; teacher " \
           f"mlp_large {params['teacher_frozen']:,} (frozen)" in out
    assert f"resolved config (all of it in {run / 'config.yaml'}):" in out
    assert re.search(r"^  optim: name=sgd lr=0\.05 .*epochs=2", out, re.M)


@pytest.mark.slow
def test_tensorboard_logs_every_loss_and_bound_term_per_epoch(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ijckd_bounds import schema

    run, _ = logged_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    history = pd.read_csv(run / "history.csv")
    for column in ("train_loss", "train_ce", "train_kl", "train_acc"):
        got = events.Scalars(f"train/{column[6:]}")
        assert [e.step for e in got] == history["epoch"].tolist()
        assert [e.value for e in got] == pytest.approx(history[column].tolist(), rel=1e-6)
    bounds = pd.read_csv(run / "bounds.csv").sort_values("epoch")
    for term in schema.INTERVAL_TERMS + schema.BOUNDS:
        if bounds[term].notna().all():
            got = events.Scalars(f"bounds/{term}")
            assert [e.step for e in got] == bounds["epoch"].tolist()
            assert [e.value for e in got] == pytest.approx(bounds[term].tolist(), rel=1e-6)


def test_tensorboard_missing_is_one_line(runs, tmp_path, monkeypatch, cli_fails):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    err = cli_fails("train-teacher", "model.teacher=mlp_large", "method.name=ce",
                    "optim.epochs=1", "data.name=tensors",
                    f"data.options.path={runs / 'blobs.npz'}",
                    "run.tensorboard=true", f"run.run_dir={tmp_path / 't'}", *COMMON)
    assert err.endswith("run.tensorboard=true needs the tensorboard package: pip install "
                        "'ijckd_bounds[tensorboard]' (or tensorboard)")


def test_the_demo_index_lists_every_figure_and_table_written(tmp_path):
    from ijckd_bounds.app.demo import write_index

    out = tmp_path / "demo_out"
    files = ["figures/final_comparison.png", "figures/final_comparison.pdf",
             "figures/terms.png", "figures/per_class_kd-s0.png", "figures/margins_ce-s0.png",
             "figures/final_table.md", "figures/final_table.tex", "figures/layers.png",
             "students/kd-s0/bounds.csv", "students/kd-s0/checkpoints/epoch_0001.pt",
             "students/kd-s0/.bounds.csv.h0-1.x.tmp", "audit/report.md", "audit/margins.png",
             "audit/.cache/teacher_features.pt"]
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    text = write_index(out).read_text()
    entries = [line for line in text.splitlines() if line.startswith("- ")]
    listed = [re.match(r"- \[`([^`]+)`\]", line).group(1) for line in entries]
    assert sorted(listed) == sorted(["figures/final_comparison.png", "figures/terms.png",
                                     "figures/per_class_kd-s0.png", "figures/margins_ce-s0.png",
                                     "figures/final_table.md", "figures/layers.png",
                                     "students/kd-s0/bounds.csv", "audit/report.md",
                                     "audit/margins.png"])
    line = dict(zip(listed, entries, strict=True))
    assert line["figures/final_comparison.png"].startswith(
        "- [`figures/final_comparison.png`](figures/final_comparison.png) (and .pdf): final "
        "student error per method")
    assert "(and .tex)" in line["figures/final_table.md"]
    assert "disagreement per class" in line["figures/per_class_kd-s0.png"]
    assert "teacher margin" in line["figures/margins_ce-s0.png"]
    # a figure without a description (another version's) is listed by its name alone
    assert line["figures/layers.png"] == "- [`figures/layers.png`](figures/layers.png)"
    assert text.index("## Figures") < text.index("## Tables") < text.index("## Audit")


@pytest.mark.slow
def test_the_demo_says_what_to_open_first_and_writes_its_index(tmp_path, capsys,
                                                               monkeypatch):
    from ijckd_bounds.app import demo

    tiny = demo.ExperimentSettings(teacher="mlp_large", student="mlp_small", teacher_epochs=1,
                                   student_epochs=1, batch_size=64, lr=0.05)
    monkeypatch.setitem(demo.EXPERIMENTS, "digits", tiny)
    import dataclasses

    import ijckd_bounds.track_config as track_config

    @dataclasses.dataclass(frozen=True)
    class FewResamples(track_config.TrackConfig):  # the demo's 1000 resamples take minutes
        n_bootstrap: int = 20
        n_permutations: int = 10

    monkeypatch.setattr(track_config, "TrackConfig", FewResamples)
    result = demo.run_experiment("digits", tmp_path / "out", methods=("ce", "kd"),
                                 audit=False)  # audited in test_audit_* above
    out = capsys.readouterr().out
    index = tmp_path / "out" / "index.md"
    assert result["index"] == index
    closing = out.strip().splitlines()[-1]
    assert closing == (f"open first: {index} (every figure and table, one line each), then "
                       f"{tmp_path / 'out' / 'figures' / 'final_comparison.png'}")
    text = index.read_text()
    for figure in result["figures"]:
        if figure.suffix == ".png":
            assert f"[`{figure.relative_to(tmp_path / 'out').as_posix()}`]" in text
    assert "students/kd-s0/bounds.csv" in text and "students/ce-s0/history.csv" in text


@pytest.mark.parametrize(("setting", "stderr_tty", "stdout_tty", "expected"), [
    (None, True, True, (True, False)),     # a terminal: bars, no lines
    (None, False, False, (False, True)),   # a log file: lines
    (None, True, False, (True, True)),     # `distill > log`: bars on screen, lines in the log
    (True, False, False, (True, True)),
    (False, True, False, (False, False)),  # quiet
])
def test_progress_shows_bars_on_a_terminal_and_lines_in_a_log(monkeypatch, setting,
                                                              stderr_tty, stdout_tty,
                                                              expected):
    import sys

    from ijckd_bounds.runtime import progress_modes

    monkeypatch.setattr(sys.stderr, "isatty", lambda: stderr_tty, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: stdout_tty, raising=False)
    assert progress_modes(setting) == expected
