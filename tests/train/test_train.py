"""The trainer end to end on digits with tiny models (a few seconds in all).

Slow companions: test_train_resume.py (SIGKILL + resume), test_train_ddp.py (two gloo
processes).
"""

import csv
import hashlib
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ijckd_bounds.checkpoint import (
    load_student,
    load_teacher,
    model_entry,
    read_checkpoint,
    write_checkpoint,
)
from ijckd_bounds.data import build_dataset
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import build_model
from ijckd_bounds.train import TrainConfig, distill, train_teacher
from ijckd_bounds.typed_yaml import from_dict, load_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
BATCH = 128
STEPS_PER_EPOCH = 1078 // BATCH  # digits train split: 60% of 1,797 images


def teacher_cfg(run_dir, **extra):
    tree = {"model": {"teacher": "mlp_large"}, "method": {"name": "ce"},
            "data": {"batch_size": BATCH},
            "optim": {"epochs": 2, "lr": 0.1}, "run": {"run_dir": str(run_dir), "progress": False}}
    for key, value in extra.items():
        section, name = key.split("__")
        tree.setdefault(section, {})[name] = value
    return from_dict(TrainConfig, tree)


def student_cfg(run_dir, teacher_path, method, **extra):
    tree = {"model": {"student": "mlp_small", "teacher_checkpoint": str(teacher_path)},
            "method": {"name": method}, "data": {"batch_size": BATCH},
            "optim": {"epochs": 1, "lr": 0.05}, "run": {"run_dir": str(run_dir), "progress": False}}
    for key, value in extra.items():
        section, name = key.split("__")
        tree.setdefault(section, {})[name] = value
    return from_dict(TrainConfig, tree)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_teacher(teacher_cfg(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits", seed=0)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def accuracy(logits, labels):
    return (logits.argmax(1) == labels).double().mean().item()


def test_teacher_run_writes_the_documented_layout(teacher, digits):
    run_dir = teacher.run_dir
    assert (run_dir / "config.yaml").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_0001.pt", "epoch_0002.pt"]
    assert teacher.teacher_path == run_dir / "teacher.pt"
    # Everything in a checkpoint loads without running code.
    raw = torch.load(run_dir / "checkpoints" / "epoch_0002.pt", weights_only=True)
    assert raw["kind"] == "teacher" and raw["epoch"] == 2 and raw["step"] == 2 * STEPS_PER_EPOCH
    assert set(raw["training"]) >= {"optimizer", "scheduler", "rng"}
    assert torch.load(teacher.teacher_path, weights_only=True)["training"] is None
    # The config the run saved rebuilds the same config.
    assert load_config(TrainConfig, run_dir / "config.yaml") == teacher_cfg(run_dir)

    history = read_csv(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert list(history[0])[:5] == ["epoch", "step", "lr", "train_loss", "train_ce"]
    best = max(float(r["eval_acc"]) for r in history)
    assert float(history[-1]["best_eval_acc"]) == pytest.approx(best)
    # The logged eval accuracy is what the saved teacher really scores on the eval split.
    loaded = load_teacher(teacher.teacher_path)
    logits, _ = loaded(digits.eval.inputs)
    assert float(history[-1]["eval_acc"]) == pytest.approx(accuracy(logits, digits.eval.labels))
    assert accuracy(logits, digits.eval.labels) > 0.85
    assert loaded.meta["dataset"]["name"] == "digits"
    steps = read_csv(run_dir / "steps.csv")
    assert len(steps) == 2 * STEPS_PER_EPOCH
    assert [int(r["step"]) for r in steps] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    # The epoch means are the batch means averaged (equal batches: drop_last).
    first = [float(r["loss"]) for r in steps if r["epoch"] == "1"]
    assert float(history[0]["train_loss"]) == pytest.approx(sum(first) / len(first), rel=1e-6)


WEIGHTED = {
    "ce": lambda r: r["train_ce"],
    "kd": lambda r: 0.1 * r["train_ce"] + 0.9 * r["train_kl"],
    "fitnet": lambda r: r["train_ce"] + 100 * r["train_hint_mse"],
    "srrl": lambda r: r["train_ce"] + r["train_kl"] + r["train_feat_mse"] + r["train_logit_mse"],
    "simkd": lambda r: r["train_feat_mse"],
    "ijckd": lambda r: r["train_ce"] + r["train_logit_mse"] + r["train_feat_mse"],
}


@pytest.mark.parametrize("method", sorted(WEIGHTED))
def test_each_method_distills_and_its_checkpoint_answers_what_it_predicts(
        method, teacher, digits, tmp_path):
    result = distill(student_cfg(tmp_path / method, teacher.teacher_path, method,
                                 optim__epochs=2, optim__lr=0.1))
    history = read_csv(tmp_path / method / "history.csv")
    row = {k: float(v) for k, v in history[-1].items()}
    # Every term is logged and the total is the documented weighted sum.
    assert row["train_loss"] == pytest.approx(WEIGHTED[method](row), rel=1e-5)

    student = load_student(result.checkpoint)
    expected_with = "teacher_classifier" if method in ("simkd", "ijckd") else "own_head"
    assert student.predicts_with == expected_with
    assert student.meta["method"] == method and student.meta["epoch"] == 2
    assert student.meta["teacher_sha256"] == hashlib.sha256(
        teacher.teacher_path.read_bytes()).hexdigest()
    assert Path(student.meta["teacher_path"]) == teacher.teacher_path.resolve()
    z_s, s, own_logits, predicted = student.features(digits.eval.inputs)
    n = len(digits.eval)
    assert s.shape == (n, 32) and predicted.shape == (n, 10)
    if expected_with == "teacher_classifier":
        assert z_s.shape == (n, 256) and own_logits is None
        teacher_model = load_teacher(teacher.teacher_path).model
        torch.testing.assert_close(student.teacher_weight, teacher_model.classifier.weight)
        # what it predicts is the teacher's classifier read on its connected features
        torch.testing.assert_close(predicted, teacher_model.classifier(z_s))
    else:
        assert z_s is None
        # what it predicts is the saved weights' own head, rebuilt here from the raw file
        saved = torch.load(result.checkpoint, weights_only=True)["model"]
        rebuilt = build_model(saved["name"], saved["num_classes"], tuple(saved["input_shape"]),
                              **saved["options"])
        rebuilt.load_state_dict(saved["state_dict"])
        with torch.no_grad():
            rebuilt_logits, rebuilt_features = rebuilt.eval()(digits.eval.inputs)
        torch.testing.assert_close(s, rebuilt_features)
        torch.testing.assert_close(own_logits, rebuilt_logits)
        torch.testing.assert_close(predicted, rebuilt_logits)
    # The eval accuracy logged by the loop is what the checkpoint alone predicts.
    assert row["eval_acc"] == pytest.approx(accuracy(predicted, digits.eval.labels))
    assert row["eval_acc"] > 0.5  # two epochs already beat chance (0.1) by far


def test_checkpoints_every_k_epochs_and_at_the_end(teacher, tmp_path):
    distill(student_cfg(tmp_path, teacher.teacher_path, "kd", optim__epochs=5,
                        run__ckpt_every=2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_0002.pt", "epoch_0004.pt", "epoch_0005.pt"]


class CrashAfterCheckpoint:
    """Simulates a crash right after the checkpoint of ``epoch`` was written."""

    def __init__(self, epoch):
        self.epoch = epoch
        self.seen = []

    def on_checkpoint(self, path, epoch):
        self.seen.append((Path(path).name, epoch))
        if epoch == self.epoch:
            raise KeyboardInterrupt

    def on_epoch_end(self, epoch, metrics):
        pass


def _final_state(run_dir, epoch):
    payload = read_checkpoint(Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}.pt")
    return payload["model"]["state_dict"], (payload["connector"] or {}).get("state_dict", {})


class RandomDraws:
    """Draws from the global generators at every step, as augmentation or dropout would."""

    def __init__(self):
        self.draws = {}

    def on_step_end(self, step, epoch, values):
        self.draws[step] = (random.random(), float(np.random.rand()), torch.rand(1).item())


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(teacher, tmp_path):
    full_draws, cut_draws = RandomDraws(), RandomDraws()
    full = distill(student_cfg(tmp_path / "full", teacher.teacher_path, "ijckd",
                               optim__epochs=3), callbacks=[full_draws])
    crash = CrashAfterCheckpoint(epoch=1)  # two epochs left: the lr schedule matters too
    cfg = student_cfg(tmp_path / "cut", teacher.teacher_path, "ijckd", optim__epochs=3)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, callbacks=[RandomDraws(), crash])
    assert crash.seen == [("epoch_0001.pt", 1)]
    resumed = distill(cfg, resume=True, callbacks=[cut_draws])
    # The python, numpy and torch generators continue where the checkpoint left them.
    assert min(cut_draws.draws) == STEPS_PER_EPOCH + 1
    assert cut_draws.draws == {k: v for k, v in full_draws.draws.items() if k > STEPS_PER_EPOCH}
    assert resumed.metrics["eval_acc"] == full.metrics["eval_acc"]
    for got, want in zip(_final_state(tmp_path / "cut", 3), _final_state(tmp_path / "full", 3),
                         strict=True):
        assert got.keys() == want.keys() and got
        for key in want:
            assert torch.equal(got[key], want[key]), key
    history = read_csv(tmp_path / "cut" / "history.csv")
    assert [r["epoch"] for r in history] == ["1", "2", "3"]
    full_history = read_csv(tmp_path / "full" / "history.csv")
    for a, b in zip(history, full_history, strict=True):
        a.pop("seconds"), b.pop("seconds")
        assert a == b


def test_resume_drops_history_rows_past_the_checkpoint(teacher, tmp_path):
    cfg = student_cfg(tmp_path, teacher.teacher_path, "kd", optim__epochs=3)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, callbacks=[CrashAfterCheckpoint(epoch=2)])
    # As if killed between writing epoch 2's history row and its checkpoint.
    (tmp_path / "checkpoints" / "epoch_0002.pt").unlink()
    assert len(read_csv(tmp_path / "history.csv")) == 2
    distill(cfg, resume=True)
    assert [r["epoch"] for r in read_csv(tmp_path / "history.csv")] == ["1", "2", "3"]
    steps = read_csv(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 3 * STEPS_PER_EPOCH + 1))


def test_resume_with_another_config_names_the_key(teacher, tmp_path):
    distill(student_cfg(tmp_path, teacher.teacher_path, "kd"))
    with pytest.raises(IJCKDError, match=r"config key optim.lr was 0.05, now 0.2"):
        distill(student_cfg(tmp_path, teacher.teacher_path, "kd", optim__lr=0.2), resume=True)
    with pytest.raises(IJCKDError, match=r"already has checkpoints; pass --resume"):
        distill(student_cfg(tmp_path, teacher.teacher_path, "kd"))


def test_nan_loss_stops_with_step_term_and_last_good_checkpoint(teacher, tmp_path,
                                                                 poison_kd_loss):
    poison_at = STEPS_PER_EPOCH + 3  # the third step of epoch 2
    poison_kd_loss(poison_at, float("nan"))
    with pytest.raises(IJCKDError) as info:
        distill(student_cfg(tmp_path, teacher.teacher_path, "kd", optim__epochs=3))
    message = str(info.value)
    good = tmp_path / "checkpoints" / "epoch_0001.pt"
    assert message == (f"loss term 'kl' is nan at step {poison_at} (epoch 2); stopped before "
                       f"the update. Last good checkpoint: {good}")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0001.pt"]
    state, _ = _final_state(tmp_path, 1)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_unusable_run_dir_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IJCKDError, match="cannot create directory"):
        train_teacher(teacher_cfg(blocker / "run"))


def test_teacher_from_another_dataset_or_class_count_is_refused(teacher, tmp_path):
    payload = read_checkpoint(teacher.teacher_path)
    payload["dataset"] = dict(payload["dataset"], name="mnist1d")
    write_checkpoint(payload, tmp_path / "other_data.pt")
    with pytest.raises(IJCKDError, match=r"trained on dataset 'mnist1d', this run distills "
                                         r"on 'digits'"):
        distill(student_cfg(tmp_path / "a", tmp_path / "other_data.pt", "kd"))

    payload = read_checkpoint(teacher.teacher_path)
    five_way = build_model("mlp_large", 5, (1, 8, 8))
    payload["model"] = model_entry(five_way, "mlp_large", 5, (1, 8, 8))
    write_checkpoint(payload, tmp_path / "five.pt")
    with pytest.raises(IJCKDError, match=r"predicts 5 classes, dataset 'digits' has 10"):
        distill(student_cfg(tmp_path / "b", tmp_path / "five.pt", "kd"))

    with pytest.raises(IJCKDError, match=r"model.teacher is 'cnn_large' but teacher checkpoint"):
        distill(student_cfg(tmp_path / "c", teacher.teacher_path, "kd", model__teacher="cnn_large"))


def test_teacher_from_another_split_seed_warns_of_leakage(teacher, tmp_path):
    with pytest.warns(UserWarning, match=r"data.seed=0 .*this run uses data.seed=1.*may have "
                                         r"seen this run's fit/eval samples"):
        distill(student_cfg(tmp_path, teacher.teacher_path, "ce", data__seed=1))


def test_configuration_errors_are_one_line(teacher, tmp_path):
    with pytest.raises(IJCKDError,
                       match=r"unknown method 'fitnets'.*valid: ce, ce_connector, fitnet"):
        distill(student_cfg(tmp_path, teacher.teacher_path, "fitnets"))
    with pytest.raises(IJCKDError, match=r"method.name must be 'ce', got 'kd'"):
        train_teacher(teacher_cfg(tmp_path, method__name="kd"))
    with pytest.raises(IJCKDError, match=r"batch_size \(2000\) exceeds the training split"):
        distill(student_cfg(tmp_path / "b", teacher.teacher_path, "kd", data__batch_size=2000))
    with pytest.raises(IJCKDError, match="optim.milestones"):
        from_dict(TrainConfig, {"optim": {"schedule": "multistep"}})
    with pytest.raises(IJCKDError, match=r"run.amp must be one of"):
        from_dict(TrainConfig, {"run": {"amp": "fp8"}})


def test_amp_and_channels_last_are_ignored_on_cpu_with_a_warning(teacher, tmp_path):
    cfg = student_cfg(tmp_path, teacher.teacher_path, "kd", run__amp="bf16",
                      run__channels_last=True, run__device="cpu")
    with pytest.warns(UserWarning, match="(?i)is ignored on cpu") as record:
        result = distill(cfg)
    messages = {str(w.message) for w in record}
    assert "run.amp=bf16 is ignored on cpu: training in float32" in messages
    assert "run.channels_last is ignored on CPU" in messages
    assert math.isfinite(result.metrics["train_loss"])
    state, _ = _final_state(tmp_path, 1)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_multistep_schedule_and_adam(teacher, tmp_path):
    distill(student_cfg(tmp_path, teacher.teacher_path, "ce", optim__epochs=3,
                        optim__schedule="multistep", optim__milestones=[1, 2],
                        optim__gamma=0.5, optim__name="adam", optim__lr=0.01))
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "history.csv")]
    assert lrs == pytest.approx([0.01, 0.005, 0.0025])


@pytest.mark.parametrize("name", ["digits_teacher", "digits_student", "mnist1d_teacher",
                                  "mnist1d_student"])
def test_experiment_configs_load_and_name_real_parts(name):
    from ijckd_bounds.data import dataset_names
    from ijckd_bounds.models import model_names

    cfg = load_config(TrainConfig, EXPERIMENTS / f"{name}.yaml", ["method.name=kd"]
                      if name.endswith("student") else [])
    assert cfg.data.name in dataset_names()
    assert cfg.model.student in model_names()
    if name.endswith("teacher"):
        assert cfg.model.teacher in model_names() and cfg.method.name == "ce"
    else:
        assert cfg.model.teacher_checkpoint.endswith("teacher.pt")
        assert cfg.method.name == "kd"
