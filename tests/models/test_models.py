"""The model zoo: shapes, the (logits, features) contract, exact parameter counts
against the reference definitions, and the FeatureModel wrapper."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import ZooModel, build_model, model_names
from ijckd_bounds.models.feature_model import FeatureModel
from ijckd_bounds.models.shufflenetv2 import channel_shuffle

CIFAR = (3, 32, 32)

# Exact parameter counts for 100 classes, counted on the CRD/RepDistiller reference
# definitions (HobbitLong/RepDistiller, models/*.py: resnet8x4, resnet32x4, resnet20,
# resnet56, resnet110, wrn_40_2, wrn_16_2, vgg8_bn, vgg13_bn, mobile_half, ShuffleV2).
REFERENCE_PARAMETERS = {
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet20": 278_324,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "wrn_40_2": 2_255_156,
    "wrn_16_2": 703_284,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "mobilenetv2": 812_836,
    "shufflenetv2": 1_355_528,
}

# Feature width and last map shape for a 32x32 input.
CIFAR_MAPS = {
    "resnet8x4": (256, 8, 8),
    "resnet32x4": (256, 8, 8),
    "resnet20": (64, 8, 8),
    "resnet56": (64, 8, 8),
    "resnet110": (64, 8, 8),
    "wrn_40_2": (128, 8, 8),
    "wrn_16_2": (128, 8, 8),
    "vgg8": (512, 4, 4),
    "vgg13": (512, 4, 4),
    "mobilenetv2": (1280, 2, 2),
    "shufflenetv2": (1024, 4, 4),
}

SMALL = ("mlp_large", "mlp_small", "cnn_large", "cnn_small")


# ---------------------------------------------------------------- registry


def test_every_model_is_registered():
    assert set(model_names()) >= set(REFERENCE_PARAMETERS) | set(SMALL)


def test_unknown_model_lists_valid_names():
    with pytest.raises(IJCKDError) as info:
        build_model("nope", 10, (1, 8, 8))
    message = str(info.value)
    assert "'nope'" in message
    for name in ("resnet56", "mlp_small", "cnn_large", "shufflenetv2"):
        assert name in message


def test_unknown_model_suggests_closest_name():
    with pytest.raises(IJCKDError, match="did you mean 'resnet56'"):
        build_model("resnet65", 10, CIFAR)


# ---------------------------------------------------------------- CIFAR zoo


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
def test_cifar_parameter_count_matches_reference(name, count_parameters):
    model = build_model(name, 100, CIFAR)
    assert count_parameters(model) == REFERENCE_PARAMETERS[name]


def closed_form_resnet_parameters(depth, widths, num_classes):
    """Count of a CIFAR ResNet from its definition (no model built)."""
    blocks = (depth - 2) // 6

    def conv_bn(c_in, c_out, k):
        return k * k * c_in * c_out + 2 * c_out

    total = conv_bn(3, widths[0], 3)
    in_channels = widths[0]
    for stage, out_channels in enumerate(widths[1:]):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            total += conv_bn(in_channels, out_channels, 3) + conv_bn(out_channels, out_channels, 3)
            if stride != 1 or in_channels != out_channels:
                total += conv_bn(in_channels, out_channels, 1)
            in_channels = out_channels
    return total + widths[-1] * num_classes + num_classes


def closed_form_wrn_parameters(depth, widen, num_classes):
    blocks = (depth - 4) // 6
    widths = (16, 16 * widen, 32 * widen, 64 * widen)
    total = 9 * 3 * widths[0]
    in_channels = widths[0]
    for out_channels in widths[1:]:
        for _ in range(blocks):
            total += 2 * in_channels + 9 * in_channels * out_channels       # bn1, conv1
            total += 2 * out_channels + 9 * out_channels * out_channels     # bn2, conv2
            if in_channels != out_channels:
                total += in_channels * out_channels                          # 1x1 shortcut
            in_channels = out_channels
    return total + 2 * widths[-1] + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize(("name", "depth", "widths"), [
    ("resnet20", 20, (16, 16, 32, 64)),
    ("resnet110", 110, (16, 16, 32, 64)),
    ("resnet8x4", 8, (32, 64, 128, 256)),
    ("resnet32x4", 32, (32, 64, 128, 256)),
])
def test_resnet_parameter_count_matches_closed_form(name, depth, widths, count_parameters):
    for num_classes in (10, 100):
        model = build_model(name, num_classes, CIFAR)
        assert count_parameters(model) == closed_form_resnet_parameters(depth, widths,
                                                                        num_classes)


@pytest.mark.parametrize(("name", "depth"), [("wrn_40_2", 40), ("wrn_16_2", 16)])
def test_wrn_parameter_count_matches_closed_form(name, depth, count_parameters):
    assert count_parameters(build_model(name, 10, CIFAR)) == closed_form_wrn_parameters(
        depth, 2, 10)


def check_contract(model, x, num_classes):
    """The ZooModel contract on one batch; returns (logits, features, fmap)."""
    assert isinstance(model, ZooModel)
    assert isinstance(model.classifier, nn.Linear)
    logits, features, fmap = model.forward_with_map(x)
    n = x.shape[0]
    assert logits.shape == (n, num_classes)
    assert features.shape == (n, model.feature_dim)
    assert model.num_classes == num_classes
    # The features are exactly what the classifier reads ...
    assert torch.equal(logits, model.classifier(features))
    # ... and the global average of the last map.
    if fmap.dim() == 2:
        assert torch.equal(fmap, features)
    else:
        torch.testing.assert_close(features, fmap.flatten(2).mean(2), rtol=1e-5, atol=1e-6)
    plain_logits, plain_features = model(x)
    assert torch.equal(plain_logits, logits) and torch.equal(plain_features, features)
    return logits, features, fmap


@pytest.mark.parametrize("name", sorted(CIFAR_MAPS))
def test_cifar_forward_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, 100, CIFAR).eval()
    with torch.no_grad():
        _, features, fmap = check_contract(model, torch.randn(2, *CIFAR), 100)
    channels = CIFAR_MAPS[name][0]
    assert model.feature_dim == channels
    assert fmap.shape == (2, *CIFAR_MAPS[name])
    # Every map is taken after a final ReLU (CRD's "preact" maps are not offered).
    assert fmap.min() >= 0


def test_cifar_model_trains_in_train_mode_and_takes_grey_images():
    torch.manual_seed(0)
    model = build_model("resnet20", 7, (1, 28, 28)).train()
    logits, features, fmap = check_contract(model, torch.randn(2, 1, 28, 28), 7)
    assert fmap.shape == (2, 64, 7, 7)
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_vgg_pools_before_its_last_stage_only_for_large_inputs(count_parameters):
    small = build_model("vgg8", 10, (3, 32, 32))
    large = build_model("vgg8", 10, (3, 64, 64))
    pools = lambda m: sum(isinstance(layer, nn.MaxPool2d) for layer in m.modules())  # noqa: E731
    assert (pools(small), pools(large)) == (3, 4)
    assert count_parameters(small) == count_parameters(large)
    with torch.no_grad():
        _, _, fmap = large.eval().forward_with_map(torch.randn(2, 3, 64, 64))
    assert fmap.shape == (2, 512, 4, 4)


def test_channel_shuffle_interleaves_the_two_halves():
    n, channels = 1, 6
    x = torch.arange(channels, dtype=torch.float32).view(1, channels, 1, 1).expand(n, -1, 2, 3)
    shuffled = channel_shuffle(x, groups=2)
    # Channels (0, 1, 2 | 3, 4, 5) -> (0, 3, 1, 4, 2, 5).
    assert shuffled[0, :, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize(("name", "shape", "match"), [
    ("resnet56", (1, 40), r"\(C, H, W\)"),
    ("wrn_16_2", (3, 32), r"\(C, H, W\)"),
    ("vgg8", (3, 4, 4), "at least 8 pixels"),
    ("mobilenetv2", (3, 0, 32), "positive integer"),
    ("cnn_large", (64,), r"\(C, L\) or \(C, H, W\)"),
    ("mlp_small", "abc", "positive integer"),
])
def test_bad_input_shapes_raise_one_line_errors(name, shape, match):
    with pytest.raises(IJCKDError, match=match):
        build_model(name, 10, shape)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_classes": 0}, "num_classes"),
    ({"num_classes": 10, "kernel_size": 4}, "kernel_size"),
    ({"num_classes": 10, "channels": (8, 16), "strides": (1,)}, "strides"),
    ({"num_classes": 10, "channels": ()}, "channels"),
])
def test_bad_small_model_options_raise(kwargs, match):
    with pytest.raises(IJCKDError, match=match):
        build_model("cnn_large", input_shape=(1, 40), **kwargs)


# ---------------------------------------------------------------- small models


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40)])
@pytest.mark.parametrize(("name", "feature_dim"), [("mlp_large", 256), ("mlp_small", 32),
                                              ("cnn_large", 128), ("cnn_small", 32)])
def test_small_models_contract(name, feature_dim, shape):
    torch.manual_seed(0)
    model = build_model(name, 10, shape)
    _, _, fmap = check_contract(model, torch.randn(2, *shape), 10)
    assert model.feature_dim == feature_dim
    if name.startswith("mlp"):
        assert fmap.shape == (2, feature_dim)
    else:
        # Conv1d for sequences (C, L), Conv2d for images (C, H, W).
        assert fmap.dim() == 1 + len(shape)
        conv_type = nn.Conv1d if len(shape) == 2 else nn.Conv2d
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        assert convs and all(type(m) is conv_type for m in convs)
        assert any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    assert fmap.min() >= 0


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40)])
def test_students_are_clearly_smaller_than_teachers(shape, count_parameters):
    for teacher, student in (("mlp_large", "mlp_small"), ("cnn_large", "cnn_small")):
        big = count_parameters(build_model(teacher, 10, shape))
        small = count_parameters(build_model(student, 10, shape))
        assert small * 10 < big


def test_mlp_features_equal_a_manual_forward():
    torch.manual_seed(0)
    model = build_model("mlp_large", 10, (1, 8, 8))
    x = torch.randn(3, 1, 8, 8)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    first, second, head = linears
    assert head is model.classifier
    flat = x.reshape(3, 64)
    hidden = torch.relu(flat @ first.weight.T + first.bias)
    expected = torch.relu(hidden @ second.weight.T + second.bias)
    logits, features = model(x)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(logits, expected @ head.weight.T + head.bias)


def test_mlp_rejects_inputs_of_another_shape():
    model = build_model("mlp_small", 10, (1, 40))
    with pytest.raises(IJCKDError, match=r"`x` must have shape \(n, 1, 40\), got \(2, 1, 41\)"):
        model(torch.randn(2, 1, 41))


def _adam_fit_and_score(model, x, y, x_test, y_test, *, epochs, batch_size, lr=1e-2):
    """Train ``model`` with Adam and cross-entropy on shuffled batches (torch's global
    generator); return its accuracy on (x_test, y_test)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(batch_size):
            loss = F.cross_entropy(model(x[batch])[0], y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(x_test)[0].argmax(1) == y_test).float().mean().item()


def test_cnn_large_learns_digits_quickly():
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1200], order[1200:]
    torch.manual_seed(0)
    model = build_model("cnn_large", 10, (1, 8, 8))
    accuracy = _adam_fit_and_score(model, x[train], y[train], x[test], y[test], epochs=3,
                                   batch_size=64)
    assert accuracy > 0.9


@pytest.mark.slow
def test_cnn_large_is_a_real_cnn_on_mnist1d():
    # Published MNIST-1D baselines: about 68% for an MLP, 94% for a CNN. Five epochs of
    # Adam must already put cnn_large well above anything an MLP reaches.
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x = torch.tensor(data["x"], dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data["y"])
    x_test = torch.tensor(data["x_test"], dtype=torch.float32).unsqueeze(1)
    y_test = torch.tensor(data["y_test"])
    torch.manual_seed(0)
    model = build_model("cnn_large", 10, (1, 40))
    accuracy = _adam_fit_and_score(model, x, y, x_test, y_test, epochs=5, batch_size=100)
    assert accuracy > 0.85


# ---------------------------------------------------------------- FeatureModel


def test_feature_model_matches_the_wrapped_module(wrapped_resnet):
    model = wrapped_resnet().eval()
    inner = model.module
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, features, fmap = check_contract(model, x, 5)
        # Manual forward through the module's own layers.
        stem = inner.maxpool(inner.relu(inner.bn1(inner.conv1(x))))
        last_map = inner.layer4(inner.layer3(inner.layer2(inner.layer1(stem))))
        assert torch.equal(logits, inner(x))
        assert torch.equal(fmap, last_map)
        torch.testing.assert_close(features, last_map.mean(dim=(2, 3)))
    assert fmap.shape == (2, 32, 1, 1)
    assert model.classifier is inner.fc
    assert model.feature_dim == 32
    # Hooks live only for the call.
    assert all(not m._forward_hooks for m in inner.modules())


def test_feature_model_without_map_layer_returns_features_as_map(wrapped_resnet):
    model = wrapped_resnet(map_layer=None).eval()
    with torch.no_grad():
        _, features, fmap = model.forward_with_map(torch.randn(2, 3, 32, 32))
    assert fmap is features


def test_feature_model_gradients_reach_the_wrapped_module(wrapped_resnet):
    model = wrapped_resnet().train()
    logits, features = model(torch.randn(2, 3, 32, 32))
    (F.cross_entropy(logits, torch.tensor([1, 2])) + features.square().mean()).backward()
    assert model.module.conv1.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0


def test_feature_model_state_dict_has_the_module_keys(wrapped_resnet, tiny_torchvision_resnet):
    model = wrapped_resnet(seed=0)
    bare = tiny_torchvision_resnet()
    assert list(model.state_dict()) == list(bare.state_dict())
    # A bare module's checkpoint loads into a wrapper and vice versa.
    torch.manual_seed(1)
    other = tiny_torchvision_resnet().eval()
    model.load_state_dict(other.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[0], other(x))
    fresh = tiny_torchvision_resnet().eval()
    fresh.load_state_dict(wrapped_resnet(seed=2).state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), wrapped_resnet(seed=2).eval()(x)[0])


def test_feature_model_state_dict_inside_a_container(wrapped_resnet):
    holder = nn.ModuleDict({"student": wrapped_resnet(seed=0), "head": nn.Linear(3, 2)})
    keys = list(holder.state_dict())
    assert "student.layer1.0.conv1.weight" in keys and "head.weight" in keys
    assert not any(".module." in key or key.startswith("module.") for key in keys)
    torch.manual_seed(5)
    copy_holder = nn.ModuleDict({"student": wrapped_resnet(seed=3), "head": nn.Linear(3, 2)})
    copy_holder.load_state_dict(holder.state_dict())
    for (name, a), (_, b) in zip(holder.named_parameters(), copy_holder.named_parameters(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_feature_model_reports_missing_keys_without_the_wrapper_prefix(wrapped_resnet):
    model = wrapped_resnet()
    state = model.state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["fc.bias"]
    assert result.unexpected_keys == ["extra.weight"]


def test_feature_model_survives_deepcopy(wrapped_resnet):
    model = wrapped_resnet()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.classifier.weight.add_(1.0)
    assert not torch.equal(twin.classifier.weight, model.classifier.weight)
    assert twin.classifier is twin.module.fc
    assert list(twin.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x)[0], twin.module(x))


def test_feature_model_unknown_layer_lists_close_names(tiny_torchvision_resnet):
    with pytest.raises(IJCKDError, match=r"`feature_layer` 'avgpol'.*close names: avgpool"):
        FeatureModel(tiny_torchvision_resnet(), "avgpol", "fc")
    with pytest.raises(IJCKDError, match=r"`map_layer` 'layer5'.*layer4"):
        FeatureModel(tiny_torchvision_resnet(), "avgpool", "fc", map_layer="layer5")


def test_feature_model_classifier_must_be_linear(tiny_torchvision_resnet):
    with pytest.raises(IJCKDError, match=r"`classifier_layer` 'layer4' must be an nn.Linear, "
                                         r"got Sequential"):
        FeatureModel(tiny_torchvision_resnet(), "avgpool", "layer4")


def test_feature_model_checks_the_feature_width(tiny_torchvision_resnet):
    model = FeatureModel(tiny_torchvision_resnet(), "layer3", "fc")
    with pytest.raises(IJCKDError, match=r"must give \(n, 32\) features"):
        model(torch.randn(2, 3, 32, 32))


def test_feature_model_layer_never_called(tiny_torchvision_resnet):
    module = tiny_torchvision_resnet()
    module.unused = nn.Identity()
    model = FeatureModel(module, "avgpool", "fc", map_layer="unused")
    with pytest.raises(IJCKDError, match="'unused'.*not called"):
        model(torch.randn(2, 3, 32, 32))


def test_unknown_model_option_is_a_clear_error():
    from ijckd_bounds.errors import IJCKDError
    from ijckd_bounds.models import FeatureModel, build_model

    with pytest.raises(IJCKDError,
                       match=r"model 'mlp_small' has no option 'hiden_sizes'.*hidden_sizes"):
        build_model("mlp_small", 10, (1, 8, 8), hiden_sizes=(4,))
    assert FeatureModel.__name__ == "FeatureModel"
