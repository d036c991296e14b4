"""The audit on user models wrapped in FeatureModel (no checkpoints of this toolkit)."""

import json

import torch

from ijckd_bounds.app.audit import audit_models
from ijckd_bounds.data.splits import DatasetSplits, TensorSplit


def _splits(n=120, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(3 * n) % classes
    # class-dependent brightness so the random-init features carry some class signal
    inputs = torch.randn(3 * n, 3, 32, 32, generator=gen) + labels.view(-1, 1, 1, 1).float()
    parts = [TensorSplit(inputs[i::3].contiguous(), labels[i::3].contiguous())
             for i in range(3)]
    return DatasetSplits(name="toy", train=parts[0], fit=parts[1], eval=parts[2],
                         num_classes=classes, input_shape=(3, 32, 32))


def _state_copy(model):
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def test_audit_of_feature_models_with_their_own_heads(tmp_path, wrapped_resnet):
    teacher, student = wrapped_resnet(seed=0), wrapped_resnet(seed=1)
    before = {name: _state_copy(model) for name, model in (("teacher", teacher),
                                                           ("student", student))}
    report = audit_models(teacher, student, _splits(), tmp_path, n_bootstrap=100)
    payload = json.loads((tmp_path / "bounds.json").read_text())
    primary, with_h_t = payload["budgets"]
    assert primary["target"] == "student_own_err"
    assert set(primary["pieces"]) == {"teacher", "fit", "capacity", "head"}
    total = sum(p["value"] for p in primary["pieces"].values())
    assert abs(total - payload["terms"]["student_own_err"]) < 1e-9
    assert with_h_t["target"] == "student_err"
    assert abs(sum(p["value"] for p in with_h_t["pieces"].values())
               - payload["terms"]["student_err"]) < 1e-9
    text = report.read_text()
    assert "post-hoc ridge connector" in text and "## Diagnosis" in text
    assert "- teacher: in-memory FeatureModel" in text
    assert "- student: in-memory FeatureModel; predicts with its own head" in text
    # both models were only evaluated: every parameter and buffer (batch-norm running
    # statistics included) is what it was before the audit
    for name, model in (("teacher", teacher), ("student", student)):
        after = model.state_dict()
        assert after.keys() == before[name].keys()
        for key, value in before[name].items():
            assert torch.equal(after[key], value), f"{name} {key} changed"


def test_audit_models_rejects_a_bare_module(tmp_path, wrapped_resnet):
    import pytest

    from ijckd_bounds.errors import IJCKDError

    with pytest.raises(IJCKDError, match="wrap your module in ijckd_bounds.models.FeatureModel"):
        audit_models(torch.nn.Linear(3, 3), wrapped_resnet(), _splits(), tmp_path)
