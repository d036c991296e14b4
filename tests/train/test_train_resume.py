"""A run killed with SIGKILL (twice) and resumed ends bit-identical to an uninterrupted one."""

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ijckd_bounds.checkpoint import read_checkpoint
from ijckd_bounds.train import TrainConfig, train_teacher
from ijckd_bounds.typed_yaml import from_dict
from tests.gloo_ranks import one_process_env

EPOCHS = 8


def _launch(config, run_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "ijckd_bounds", "distill", "--config",
                             str(config), f"run.run_dir={run_dir}", *extra],
                            env=one_process_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_when(process, path, *, after=0.0, timeout=120):
    """SIGKILL ``process`` ``after`` seconds once ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended before {path.name} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path.name} did not appear in {timeout} s")
        time.sleep(0.002)
    time.sleep(after)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _history(run_dir):
    with open(Path(run_dir) / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row.pop("seconds")
    return rows


def _steps_per_epoch(run_dir):
    first = _history(run_dir)[0]
    return int(first["step"])


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_uninterrupted_weights(tmp_path):
    teacher_cfg = from_dict(TrainConfig, {
        "model": {"teacher": "cnn_large"}, "method": {"name": "ce"},
        "optim": {"epochs": 1}, "run": {"run_dir": str(tmp_path / "teacher"), "progress": False}})
    teacher = train_teacher(teacher_cfg)
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"student": "cnn_small", "teacher_checkpoint": str(teacher.teacher_path)},
        "method": {"name": "ijckd"}, "data": {"batch_size": 32},
        "optim": {"epochs": EPOCHS, "lr": 0.05},
        "run": {"ckpt_every": 1, "device": "cpu", "progress": False}}))

    full = _launch(config, tmp_path / "full")
    cut_dir = tmp_path / "cut"
    ckpts = cut_dir / "checkpoints"
    final = ckpts / f"epoch_{EPOCHS:04d}.pt"

    first = _launch(config, cut_dir)
    _kill_when(first, ckpts / "epoch_0002.pt")  # right after a checkpoint appears
    assert not final.exists()
    second = _launch(config, cut_dir, "--resume")
    _kill_when(second, ckpts / "epoch_0004.pt", after=0.03)  # somewhere inside epoch 5
    assert not final.exists()
    last = subprocess.run([sys.executable, "-m", "ijckd_bounds", "distill", "--config",
                           str(config), f"run.run_dir={cut_dir}", "--resume"],
                          env=one_process_env(), capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr
    # the command line names the checkpoint it continues from: the last one written
    resumed = [line for line in last.stderr.splitlines() if "resuming from" in line]
    assert resumed == [f"ijckd-bounds distill: resuming from {ckpts / 'epoch_0004.pt'} "
                       f"(epoch 4, step {4 * _steps_per_epoch(cut_dir)})"], last.stderr
    out, _ = full.communicate(timeout=300)
    assert full.returncode == 0, out

    got = read_checkpoint(final)
    want = read_checkpoint(tmp_path / "full" / "checkpoints" / final.name)
    assert got["epoch"] == want["epoch"] == EPOCHS and got["step"] == want["step"]
    for part in ("model", "connector"):
        got_state, want_state = got[part]["state_dict"], want[part]["state_dict"]
        assert got_state.keys() == want_state.keys()
        for key in want_state:
            assert torch.equal(got_state[key], want_state[key]), f"{part}.{key}"
    for key, value in want["training"]["optimizer"]["state"].items():
        assert torch.equal(got["training"]["optimizer"]["state"][key]["momentum_buffer"],
                           value["momentum_buffer"])
    assert _history(cut_dir) == _history(tmp_path / "full")
    assert [int(r["epoch"]) for r in _history(cut_dir)] == list(range(1, EPOCHS + 1))
