"""Golden values of every distillation loss, computed independently in numpy.

The reference below re-implements each formula from its definition (no call into the
objectives' code): convolutions as explicit loops, batch norm in training mode (batch
mean, biased variance, eps 1e-5), cross-entropy and KL from log-sum-exp. Only parameter
values are read from the modules.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import build_model
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.connectors import BottleneckConnector, FitNetRegressor, build_connector
from ijckd_bounds.train.config import MethodConfig
from ijckd_bounds.train.objectives import METHODS, build_objective, method_weights

K = 5  # classes


# ------------------------------------------------------------------ tiny fixed models


class TinyConvStudent(ZooModel):
    """(1, 4, 4) -> relu(1x1 conv) map (3, 4, 4) -> pooled (3,) -> logits (5,)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.classifier = nn.Linear(3, K)

    def forward_map(self, x):
        return torch.relu(self.conv(x))


class TinyConvTeacher(ZooModel):
    """(1, 4, 4) -> relu(2x2 stride-2 conv) map (4, 2, 2) -> pooled (4,) -> logits (5,)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 2, stride=2)
        self.classifier = nn.Linear(4, K)

    def forward_map(self, x):
        return torch.relu(self.conv(x))


class TinyMLP(ZooModel):
    """(1, 4, 4) -> flatten -> relu(linear) vector (width,) -> logits (5,)."""

    def __init__(self, width):
        super().__init__()
        self.hidden = nn.Linear(16, width)
        self.classifier = nn.Linear(width, K)

    def forward_map(self, x):
        return torch.relu(self.hidden(x.flatten(1)))


def _randomize(module, generator):
    """Every parameter (BN affine ones too) to a random value: nothing stays at 0/1."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.7)


# --------------------------------------------------------------- numpy reference math


def np_(t):
    return t.detach().double().numpy()


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0)):
    """x (n, C, H, W), w (O, C, kh, kw): explicit-loop cross-correlation."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * pad[0], wd + 2 * pad[1]))
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    out_h = (h + 2 * pad[0] - kh) // stride[0] + 1
    out_w = (wd + 2 * pad[1] - kw) // stride[1] + 1
    out = np.zeros((n, o, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            for oc in range(o):
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def batchnorm_train(x, gamma, beta, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased, as BN normalises with
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


def relu(x):
    return np.maximum(x, 0.0)


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits, y):
    return -log_softmax(logits)[np.arange(len(y)), y].mean()


def kd_kl(z_s, z_t, temperature):
    """T² · mean_i Σ_k p_t log(p_t / p_s) with p = softmax(z / T)."""
    log_p_t = log_softmax(z_t / temperature)
    log_p_s = log_softmax(z_s / temperature)
    return temperature ** 2 * (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=1).mean()


def mse(a, b):
    return ((a - b) ** 2).mean()


def gap(fmap):
    return fmap.reshape(fmap.shape[0], fmap.shape[1], -1).mean(axis=2) if fmap.ndim > 2 else fmap


def avg_pool_to(fmap, size):
    """Average pooling by an integer factor (the sizes in these tests divide evenly)."""
    n, c, h, w = fmap.shape
    fh, fw = h // size[0], w // size[1]
    return fmap.reshape(n, c, size[0], fh, size[1], fw).mean(axis=(3, 5))


def linear(x, layer):
    out = x @ np_(layer.weight).T
    return out + np_(layer.bias) if layer.bias is not None else out


def conv_or_linear(x, layer, pad):
    if isinstance(layer, nn.Linear):
        return linear(x, layer)
    return conv2d(x, np_(layer.weight), None if layer.bias is None else np_(layer.bias),
                  stride=layer.stride, pad=(pad, pad))


def student_np(model, x):
    """(map, pooled, logits) of the tiny student models, from their parameters."""
    if isinstance(model, TinyConvStudent):
        fmap = relu(conv2d(x, np_(model.conv.weight), np_(model.conv.bias)))
    else:
        fmap = relu(linear(x.reshape(len(x), -1), model.hidden))
    pooled = gap(fmap)
    return fmap, pooled, linear(pooled, model.classifier)


def teacher_np(model, x):
    if isinstance(model, TinyConvTeacher):
        fmap = relu(conv2d(x, np_(model.conv.weight), np_(model.conv.bias), stride=(2, 2)))
    else:
        fmap = relu(linear(x.reshape(len(x), -1), model.hidden))
    pooled = gap(fmap)
    return fmap, pooled, linear(pooled, model.classifier)


def bottleneck_np(connector, s_map):
    """SimKD projector: [1x1 conv - BN - ReLU, 3x3 conv - BN - ReLU, 1x1 conv - BN - ReLU]."""
    layers = list(connector.transfer)
    out = s_map
    if s_map.ndim == 4 and connector.input_size is not None:
        out = avg_pool_to(out, connector.input_size)
    for conv, bn, pad in ((layers[0], layers[1], 0), (layers[3], layers[4], 1),
                          (layers[6], layers[7], 0)):
        out = relu(batchnorm_train(conv_or_linear(out, conv, pad), np_(bn.weight), np_(bn.bias)))
    return out


def reference_terms(method, weights, student, teacher, connector, x, y):
    """Every loss term of ``method`` and the logits the student predicts with."""
    x = np_(x)
    y = y.numpy()
    s_map, s_pooled, s_logits = student_np(student, x)
    t_map, t_pooled, t_logits = teacher_np(teacher, x)
    w_t, b_t = np_(teacher.classifier.weight), np_(teacher.classifier.bias)
    terms = {}
    if method == "ce":
        terms["ce"] = cross_entropy(s_logits, y)
        terms["loss"] = weights["ce_weight"] * terms["ce"]
        return terms, s_logits
    if method == "kd":
        terms["ce"] = cross_entropy(s_logits, y)
        terms["kl"] = kd_kl(s_logits, t_logits, weights["temperature"])
        terms["loss"] = weights["ce_weight"] * terms["ce"] + weights["kl_weight"] * terms["kl"]
        return terms, s_logits
    if method == "fitnet":
        if s_map.ndim == 4:  # student 4x4 = 2 x teacher 2x2: 3x3 stride-2 conv, padding 1
            regressed = conv2d(s_map, np_(connector.conv.weight), np_(connector.conv.bias),
                               stride=(2, 2), pad=(1, 1))
        else:
            regressed = linear(s_map, connector.conv)
        regressed = relu(batchnorm_train(regressed, np_(connector.bn.weight),
                                         np_(connector.bn.bias)))
        terms["ce"] = cross_entropy(s_logits, y)
        terms["kl"] = 0.0
        terms["hint_mse"] = mse(regressed, t_map)
        terms["loss"] = (weights["ce_weight"] * terms["ce"]
                         + weights["feat_weight"] * terms["hint_mse"])
        return terms, s_logits
    if method == "srrl":
        lin, bn = connector.transfer[0], connector.transfer[1]
        projected = relu(batchnorm_train(s_pooled @ np_(lin.weight).T, np_(bn.weight),
                                         np_(bn.bias)))
        terms["ce"] = cross_entropy(s_logits, y)
        terms["kl"] = kd_kl(s_logits, t_logits, weights["temperature"])
        terms["feat_mse"] = mse(projected, t_pooled)
        terms["logit_mse"] = mse(projected @ w_t.T + b_t, t_logits)
        terms["loss"] = (weights["ce_weight"] * terms["ce"] + weights["kl_weight"] * terms["kl"]
                         + weights["feat_weight"] * (terms["feat_mse"] + terms["logit_mse"]))
        return terms, s_logits
    # simkd / ijckd: projector on the student map, teacher classifier on the pooled result
    projected = bottleneck_np(connector, s_map)
    target = t_map
    if projected.ndim == 4 and projected.shape[2:] != t_map.shape[2:]:
        target = avg_pool_to(t_map, projected.shape[2:])
    logits = gap(projected) @ w_t.T + b_t
    terms["feat_mse"] = mse(projected, target)
    if method == "simkd":
        terms["loss"] = weights["feat_weight"] * terms["feat_mse"]
        return terms, logits
    if method == "ce_connector":
        terms = {"ce": cross_entropy(logits, y)}
        terms["loss"] = weights["ce_weight"] * terms["ce"]
        return terms, logits
    terms["ce"] = cross_entropy(logits, y)
    terms["logit_mse"] = mse(logits, t_logits)
    terms["loss"] = (weights["ce_weight"] * terms["ce"]
                     + weights["logit_weight"] * terms["logit_mse"]
                     + weights["feat_weight"] * terms["feat_mse"])
    return terms, logits


# ---------------------------------------------------------------------------- fixtures


def _models(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "conv":
        return TinyConvStudent(), TinyConvTeacher()
    return TinyMLP(6), TinyMLP(8)


def _batch(seed=1, n=6):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=generator)
    y = torch.randint(0, K, (n,), generator=generator)
    return x, y


METHOD_NAMES = ["ce", "kd", "fitnet", "srrl", "simkd", "ijckd", "ce_connector"]


@pytest.mark.parametrize("kind", ["conv", "vector"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_loss_terms_equal_independent_reference(method, kind):
    student, teacher = _models(kind)
    x, y = _batch()
    objective = build_objective(MethodConfig(name=method), student, teacher, x[:2])
    _randomize(objective, torch.Generator().manual_seed(7))
    _randomize(teacher, torch.Generator().manual_seed(8))
    objective.train()
    terms, logits = objective(x, y)
    expected, expected_logits = reference_terms(method, objective.weights, student, teacher,
                                                objective.connector, x, y)
    assert list(terms)[0] == "loss" and set(terms) == set(expected) == set(
        objective.term_names)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name
    np.testing.assert_allclose(np_(logits), expected_logits, rtol=1e-5, atol=1e-6)
    assert terms["loss"].item() > 0


def test_reference_defaults_of_each_method():
    """The documented reference weights (RepDistiller / SimKD scripts)."""
    expect = {
        "ce": {"ce_weight": 1.0},
        "kd": {"ce_weight": 0.1, "kl_weight": 0.9, "temperature": 4.0},
        "fitnet": {"ce_weight": 1.0, "kl_weight": 0.0, "feat_weight": 100.0, "temperature": 4.0},
        "srrl": {"ce_weight": 1.0, "kl_weight": 1.0, "feat_weight": 1.0, "temperature": 4.0},
        "simkd": {"feat_weight": 1.0, "reduction": 2},
        "ijckd": {"ce_weight": 1.0, "logit_weight": 1.0, "feat_weight": 1.0, "reduction": 2},
        "ce_connector": {"ce_weight": 1.0, "reduction": 2},
    }
    for name, weights in expect.items():
        assert method_weights(MethodConfig(name=name)) == weights, name
    assert METHODS.names() == sorted(expect)


def test_configured_weights_change_the_loss_as_the_formula_says():
    student, teacher = _models("conv")
    x, y = _batch()
    objective = build_objective(MethodConfig(name="ijckd", ce_weight=0.5, logit_weight=3.0,
                                              feat_weight=0.25),
                                student, teacher, x[:2])
    terms, _ = objective(x, y)
    combined = 0.5 * terms["ce"] + 3.0 * terms["logit_mse"] + 0.25 * terms["feat_mse"]
    assert terms["loss"].item() == pytest.approx(combined.item(), rel=1e-6)


def test_unknown_method_and_unused_weight_fail_with_one_line():
    student, teacher = _models("conv")
    x, _ = _batch()
    with pytest.raises(IJCKDError, match=r"unknown method 'ijkd'.*did you mean 'ijckd'.*valid: ce, "
                                         r"ce_connector, fitnet, ijckd, kd, simkd, srrl"):
        build_objective(MethodConfig(name="ijkd"), student, teacher, x[:2])
    with pytest.raises(IJCKDError, match=r"method.logit_weight is not used by method 'kd'; it uses "
                                         r"ce_weight, kl_weight, temperature"):
        build_objective(MethodConfig(name="kd", logit_weight=1.0), student, teacher, x[:2])
    with pytest.raises(IJCKDError, match="needs a teacher"):
        build_objective(MethodConfig(name="simkd"), student, None, x[:2])
    with pytest.raises(IJCKDError, match="temperature must be positive"):
        build_objective(MethodConfig(name="kd", temperature=0.0), student, teacher, x[:2])


@pytest.mark.parametrize("method", ["kd", "fitnet", "srrl", "simkd", "ijckd", "ce_connector"])
def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient(method):
    student, teacher = _models("conv")
    x, y = _batch()
    teacher.train()  # the objective must put it in eval mode itself
    objective = build_objective(MethodConfig(name=method), student, teacher, x[:2])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective.train()
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=0.5)
    terms, _ = objective(x, y)
    terms["loss"].backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    # The teacher is not part of what gets trained or saved.
    assert not any(k.startswith("teacher") for k in objective.state_dict())
    assert {id(p) for p in objective.trainable_parameters()}.isdisjoint(
        id(p) for p in teacher.parameters())
    # The student (and connector) did receive gradients.
    grads = [p.grad for p in objective.trainable_parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("method", ["simkd", "ijckd", "ce_connector"])
def test_teacher_classifier_students_never_train_their_own_head(method):
    student, teacher = _models("conv")
    x, y = _batch()
    objective = build_objective(MethodConfig(name=method), student, teacher, x[:2])
    trainable = {id(p) for p in objective.trainable_parameters()}
    assert id(student.classifier.weight) not in trainable
    assert objective.predicts_with == "teacher_classifier"
    objective.eval()
    predicted = objective.predict(x)
    manual = teacher.classifier(objective.connector.pooled(student.forward_map(x)))
    torch.testing.assert_close(predicted, manual)


def test_simkd_projector_matches_the_reference_layout():
    """1x1 -> 3x3 -> 1x1 conv without bias, BN + ReLU after *each* (also the last),
    reduction 2 (DefangChen/SimKD models/util.py)."""
    connector = BottleneckConnector(32, 128, dims=2, reduction=2)
    layers = list(connector.transfer)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 3
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(32, 64), (64, 64), (64, 128)]
    assert all(c.bias is None for c in convs)
    rebuilt = build_connector(connector.spec)
    assert [type(m) for m in rebuilt.transfer] == [type(m) for m in layers]


def test_fitnet_regressor_picks_the_convreg_kernel():
    cases = {((8, 8, 8), (16, 4, 4)): ("Conv2d", (3, 3), (2, 2)),
             ((8, 4, 4), (16, 8, 8)): ("ConvTranspose2d", (4, 4), (2, 2)),
             ((8, 6, 6), (16, 4, 4)): ("Conv2d", (3, 3), (1, 1)),
             ((8, 4, 4), (16, 4, 4)): ("Conv2d", (1, 1), (1, 1))}
    for (s_shape, t_shape), (kind, kernel, stride) in cases.items():
        reg = FitNetRegressor(s_shape, t_shape)
        assert type(reg.conv).__name__ == kind
        assert reg.conv.kernel_size == kernel and reg.conv.stride == stride
        out = reg(torch.randn(2, *s_shape))
        assert out.shape == (2, *t_shape)


@pytest.mark.parametrize("method", ["fitnet", "simkd", "ijckd", "srrl"])
@pytest.mark.parametrize("student_name", ["cnn_small", "mlp_small"])
def test_zoo_models_on_sequences_get_working_connectors(method, student_name):
    """mnist1d-shaped inputs (1, 40): Conv1d maps meet Conv1d connectors; an MLP student
    (vector map) meets a conv teacher's globally pooled map."""
    torch.manual_seed(0)
    student = build_model(student_name, 10, (1, 40))
    teacher = build_model("cnn_large", 10, (1, 40))
    x = torch.randn(8, 1, 40)
    y = torch.randint(0, 10, (8,))
    objective = build_objective(MethodConfig(name=method), student, teacher, x[:2])
    if method in ("simkd", "ijckd") and student_name == "cnn_small":
        assert any(isinstance(m, nn.Conv1d) for m in objective.connector.modules())
    terms, logits = objective(x, y)
    assert logits.shape == (8, 10)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert all(p.grad is not None for p in objective.trainable_parameters())


def test_one_d_and_two_d_maps_cannot_meet():
    with pytest.raises(IJCKDError, match=r"student map \(n, 8, 40\) and the teacher map "
                                         r"\(n, 16, 4, 4\) must be of the same kind"):
        FitNetRegressor((8, 40), (16, 4, 4))
