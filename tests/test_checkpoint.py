"""Self-describing checkpoints: weights_only loading, RNG round trips, clear mismatches,
and what a loaded student predicts with."""

import hashlib
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ijckd_bounds.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    capture_rng,
    connector_entry,
    load_state_checked,
    load_student,
    load_teacher,
    model_entry,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import build_model
from ijckd_bounds.models.connectors import bottleneck_for

SHAPE = (1, 8, 8)


def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(2).tolist(), torch.rand(3).tolist())


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.randn(1)  # and one in numpy's
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def _student_payload(method, predicts_with, model, connector=None, teacher=None, epoch=2):
    payload = {
        "package_version": "0.1.0", "kind": "student", "method": method,
        "predicts_with": predicts_with, "epoch": epoch, "step": 10 * epoch, "seed": 0,
        "dataset": {"name": "digits", "seed": 0, "data_dir": None, "options": {},
                    "num_classes": 10, "input_shape": list(SHAPE)},
        "config": {"method": {"name": method}},
        "model": model_entry(model, "cnn_small", 10, SHAPE),
        "connector": connector_entry(connector), "teacher": None, "metrics": {}, "training": None,
    }
    if teacher is not None:
        payload["teacher"] = {"path": "/runs/t/teacher.pt", "sha256": "ab" * 32,
                              "name": "cnn_large", "feature_dim": teacher.feature_dim,
                              "weight": teacher.classifier.weight.detach().clone(),
                              "bias": teacher.classifier.bias.detach().clone()}
    return payload


def test_everything_in_a_training_checkpoint_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn_small", 10, SHAPE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, *SHAPE))[0].sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [3, 6])
    payload = _student_payload("ce", "own_head", model)
    payload["training"] = {"optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "grad_scaler": None,
                           "rng": capture_rng(), "best_eval_acc": 0.5, "best_epoch": 1}
    path = write_checkpoint(payload, tmp_path / "epoch_0002.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    first = next(model.parameters())
    assert raw["training"]["optimizer"]["state"][0]["momentum_buffer"].shape == first.shape
    assert raw["training"]["scheduler"]["milestones"] == {3: 1, 6: 1}
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_loaded_teacher_classifier_student_predicts_like_its_parts(tmp_path):
    torch.manual_seed(1)
    student = build_model("cnn_small", 10, SHAPE)
    teacher = build_model("cnn_large", 10, SHAPE)
    x = torch.randn(6, *SHAPE)
    with torch.no_grad():
        s_map, t_map = student.forward_map(x), teacher.forward_map(x)
    connector = bottleneck_for(s_map.shape[1:], t_map.shape[1:])
    connector.train()
    connector(torch.randn(16, *s_map.shape[1:]))  # move BN running stats off their init
    path = write_checkpoint(_student_payload("ijckd", "teacher_classifier", student, connector,
                                             teacher), tmp_path / "s.pt")
    loaded = load_student(path)
    z_s, s, own_logits, predicted = loaded.features(x)

    connector.eval()
    student.eval()
    with torch.no_grad():
        z_expected = connector(student.forward_map(x)).mean(dim=(2, 3))
        s_expected = student(x)[1]
    assert z_s.shape == (6, 128) and s.shape == (6, 32)
    torch.testing.assert_close(z_s, z_expected)
    torch.testing.assert_close(s, s_expected)
    torch.testing.assert_close(predicted, F.linear(z_expected, teacher.classifier.weight,
                                                   teacher.classifier.bias))
    assert own_logits is None  # the own head of such a student is never trained
    assert loaded.predicts_with == "teacher_classifier"
    assert loaded.meta["method"] == "ijckd" and loaded.meta["epoch"] == 2
    assert loaded.meta["teacher_path"] == "/runs/t/teacher.pt"
    assert loaded.meta["dataset"]["name"] == "digits"
    torch.testing.assert_close(loaded.teacher_weight, teacher.classifier.weight)


def test_loaded_own_head_student_has_no_z_s(tmp_path):
    torch.manual_seed(2)
    student = build_model("cnn_small", 10, SHAPE)
    path = write_checkpoint(_student_payload("kd", "own_head", student), tmp_path / "s.pt")
    loaded = load_student(path)
    x = torch.randn(5, *SHAPE)
    z_s, s, own_logits, predicted = loaded.features(x)
    student.eval()
    with torch.no_grad():
        logits, features = student(x)
    assert z_s is None
    torch.testing.assert_close(own_logits, logits)
    torch.testing.assert_close(predicted, logits)
    torch.testing.assert_close(s, features)


def test_load_teacher_features_and_hash(tmp_path):
    torch.manual_seed(3)
    teacher = build_model("cnn_large", 10, SHAPE)
    payload = _student_payload("ce", "own_head", teacher)
    payload["kind"] = "teacher"
    payload["model"] = model_entry(teacher, "cnn_large", 10, SHAPE)
    path = write_checkpoint(payload, tmp_path / "teacher.pt")
    loaded = load_teacher(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = torch.randn(4, *SHAPE)
    logits, z_t = loaded(x)
    teacher.eval()
    with torch.no_grad():
        expected_logits, expected_z = teacher(x)
    torch.testing.assert_close(z_t, expected_z)
    torch.testing.assert_close(logits, expected_logits)
    assert not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())


def test_a_student_that_borrows_a_classifier_is_no_teacher(tmp_path):
    torch.manual_seed(4)
    student = build_model("cnn_small", 10, SHAPE)
    teacher = build_model("cnn_large", 10, SHAPE)
    connector = bottleneck_for((32, 4, 4), (128, 2, 2))
    path = write_checkpoint(_student_payload("simkd", "teacher_classifier", student, connector,
                                             teacher), tmp_path / "s.pt")
    with pytest.raises(IJCKDError, match="predicts with another model's classifier"):
        load_teacher(path)


def test_width_mismatch_names_the_first_mismatching_key():
    wide = build_model("cnn_small", 10, SHAPE, channels=(16, 32))
    narrow = build_model("cnn_small", 10, SHAPE, channels=(8, 32))
    with pytest.raises(IJCKDError) as info:
        load_state_checked(narrow, wide.state_dict(), what="checkpoint 'a.pt'")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("checkpoint 'a.pt': 'body.0.weight' has shape (16, 1, 3, 3) in the "
                       "checkpoint, (8, 1, 3, 3) in the model (another width?)")
    state = dict(wide.state_dict())
    state.pop("classifier.bias")
    with pytest.raises(IJCKDError, match="key 'classifier.bias' of the model is missing"):
        load_state_checked(build_model("cnn_small", 10, SHAPE, channels=(16, 32)), state,
                           what="x")
    state = dict(wide.state_dict(), extra=torch.zeros(1))
    with pytest.raises(IJCKDError, match="has key 'extra' that the model lacks"):
        load_state_checked(build_model("cnn_small", 10, SHAPE, channels=(16, 32)), state,
                           what="x")


def test_checkpoint_of_another_width_fails_on_load(tmp_path):
    student = build_model("cnn_small", 10, SHAPE, channels=(16, 32))
    payload = _student_payload("ce", "own_head", student)
    payload["model"]["options"] = {"channels": [8, 32]}  # claims a narrower model
    path = write_checkpoint(payload, tmp_path / "s.pt")
    with pytest.raises(IJCKDError, match=r"does not fit model 'cnn_small': 'body.0.weight' has "
                                         r"shape \(16, 1, 3, 3\) in the checkpoint"):
        load_student(path)


def test_foreign_and_future_files_fail_with_one_line(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(IJCKDError, match="is not an ijckd_bounds checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(IJCKDError, match="upgrade the package"):
        read_checkpoint(tmp_path / "new.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(IJCKDError, match="corrupt, truncated"):
        load_student(tmp_path / "junk.pt")
    with pytest.raises(IJCKDError, match="predicts_with"):
        write_checkpoint({"predicts_with": "oracle"}, tmp_path / "bad.pt")
