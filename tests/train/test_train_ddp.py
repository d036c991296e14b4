"""Two gloo processes (the environment torchrun sets) train what one process trains."""

import csv
import sys

import pytest
import torch
import yaml

from ijckd_bounds.checkpoint import read_checkpoint
from ijckd_bounds.train import TrainConfig, distill, train_teacher
from ijckd_bounds.typed_yaml import from_dict
from tests.gloo_ranks import run_two_ranks


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    teacher = train_teacher(from_dict(TrainConfig, {
        "model": {"teacher": "mlp_large"}, "method": {"name": "ce"}, "optim": {"epochs": 1},
        "run": {"run_dir": str(tmp_path / "teacher"), "progress": False}}))
    # MLPs have no batch norm, so per-rank batch statistics cannot make the runs differ:
    # only the order of floating-point sums does.
    tree = {"model": {"student": "mlp_small", "teacher_checkpoint": str(teacher.teacher_path)},
            "method": {"name": "kd"}, "data": {"batch_size": 64},
            "optim": {"epochs": 2, "lr": 0.1},
            "run": {"ckpt_every": 1, "device": "cpu", "progress": False}}
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump(tree))
    single = distill(from_dict(TrainConfig, {**tree, "run": {**tree["run"],
                                                             "run_dir": str(tmp_path / "one")}}))

    run_two_ranks([sys.executable, "-m", "ijckd_bounds", "distill", "--config", str(config),
                   f"run.run_dir={tmp_path / 'two'}"])

    one = read_checkpoint(single.checkpoint)
    two = read_checkpoint(tmp_path / "two" / "checkpoints" / "epoch_0002.pt")
    assert one["step"] == two["step"] == 2 * (1078 // 64)  # same global batches, same steps
    for key, value in one["model"]["state_dict"].items():
        torch.testing.assert_close(two["model"]["state_dict"][key], value, rtol=1e-4, atol=1e-5)
    # The checkpoint moved: a 2-process run that did nothing would fail the check above.
    first = read_checkpoint(tmp_path / "two" / "checkpoints" / "epoch_0001.pt")
    assert not torch.equal(first["model"]["state_dict"]["classifier.weight"],
                           two["model"]["state_dict"]["classifier.weight"])
    # Rank 0 alone wrote the logs; the epoch metrics are reduced over both ranks.
    history_one, history_two = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert len(history_two) == 2
    for row_one, row_two in zip(history_one, history_two, strict=True):
        for key in ("train_loss", "train_ce", "train_kl", "train_acc", "eval_acc"):
            assert float(row_two[key]) == pytest.approx(float(row_one[key]), abs=1e-4), key
