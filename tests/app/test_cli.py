"""The command line: help, listing, and one readable line + non-zero exit for bad input."""

import csv
import subprocess
import sys

import pytest

SUBCOMMANDS = ("train-teacher", "distill", "track", "collect", "plot", "audit", "estimate",
               "demo", "list")


def test_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "ijckd_bounds", "--help"],
                            capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_list_names_datasets_models_methods(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    assert "digits" in out and "resnet8x4" in out and "ijckd" in out


@pytest.mark.parametrize(("override", "message"), [
    ("data.name=digitz", "unknown dataset 'digitz' (did you mean 'digits'?); valid: "),
    ("model.teacher=resnet8x5", "unknown model 'resnet8x5' (did you mean 'resnet8x4'?)"),
    ("optim.epoch=3", "unknown config key 'optim.epoch' (did you mean 'epochs'?)"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("method.name=kd", "train-teacher trains with cross-entropy: method.name must be 'ce', "
                       "got 'kd'"),
])
def test_bad_names_and_keys_fail_with_one_line(tmp_path, override, message, run_cli):
    code, _, err = run_cli("train-teacher", "model.teacher=cnn_large", "method.name=ce",
                           f"run.run_dir={tmp_path / 'run'}", override)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_resumed_run_names_its_checkpoint_once_on_stderr(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    argv = ("train-teacher", "model.teacher=mlp_large", "method.name=ce", "data.name=digits",
            "optim.epochs=1", "run.device=cpu", "run.progress=false", f"run.run_dir={run_dir}")
    code, out, err = run_cli(*argv)
    assert code == 0, err
    assert "resuming" not in err
    assert out.strip() == f"teacher written to {run_dir / 'teacher.pt'}"
    steps = int(next(csv.DictReader((run_dir / "history.csv").open()))["step"])

    code, _, err = run_cli(*argv, "--resume")
    assert code == 0, err
    assert err.splitlines() == [f"ijckd-bounds train-teacher: resuming from "
                                f"{run_dir / 'checkpoints' / 'epoch_0001.pt'} "
                                f"(epoch 1, step {steps})"]


def test_unknown_method_lists_valid_methods(tmp_path, run_cli):
    code, _, err = run_cli("distill", "method.name=kdd",
                           f"run.run_dir={tmp_path / 'run'}")
    assert code == 2
    assert "unknown method 'kdd'" in err and "ijckd" in err and "simkd" in err


def test_malformed_yaml_config(tmp_path, run_cli):
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  lr: [0.1\n")
    code, _, err = run_cli("train-teacher", "--config", str(config))
    assert code == 2 and "malformed YAML at line" in err


def test_missing_feature_file(tmp_path, run_cli):
    code, _, err = run_cli("estimate", str(tmp_path / "nope.npz"))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("override", ["optim.weight_decay=-1e-4", "optim.momentum=-0.9"])
def test_negative_optimizer_settings_are_refused(tmp_path, override, run_cli):
    code, _, err = run_cli("train-teacher", "model.teacher=cnn_large", "method.name=ce",
                           f"run.run_dir={tmp_path / 'run'}", override)
    assert code == 2 and "must be >= 0" in err
