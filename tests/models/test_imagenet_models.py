"""ImageNet models and weight loading.

References, written here independently of ``models.imagenet``:
- torchvision's state-dict layout (names, shapes, order), generated from the
  architecture as torchvision's ``models/resnet.py`` defines it;
- a functional forward pass (F.conv2d / F.batch_norm) that reads those names, so the
  stride placement (ResNet-50 v1.5: on the 3x3 conv) and pooling are checked, not only
  the shapes;
- parameter counts: torchvision's published ones for the ResNets, a closed form from
  the MobileNet paper's Table 1 for MobileNet.
"""

import hashlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import build_model, model_names
from ijckd_bounds.models.feature_model import FeatureModel
from ijckd_bounds.models.weights import hash_prefix_in_name, load_torchvision_weights

RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}
BOTTLENECK = {"resnet18": False, "resnet34": False, "resnet50": True}
# torchvision's documented parameter counts (ResNet18/34/50_Weights.IMAGENET1K_V1 "num_params").
TORCHVISION_PARAMETERS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
# MobileNet (Howard et al. 2017, Table 1): (in, out, stride) of the 13 depthwise-separable
# blocks after the 3x3 stride-2 conv to 32 channels.
MOBILENET_TABLE = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
                   (256, 512, 2)] + [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]

_BUILT = {}


def imagenet_model(name, num_classes=1000):
    """Models are cached: building ResNet-50 for 1,000 classes takes a moment."""
    key = (name, num_classes)
    if key not in _BUILT:
        _BUILT[key] = build_model(name, num_classes, (3, 224, 224))
    return _BUILT[key]


def bn_entries(prefix, channels):
    return [(f"{prefix}.weight", (channels,)), (f"{prefix}.bias", (channels,)),
            (f"{prefix}.running_mean", (channels,)), (f"{prefix}.running_var", (channels,)),
            (f"{prefix}.num_batches_tracked", ())]


def torchvision_resnet_layout(blocks, bottleneck, num_classes, in_channels=3):
    """[(key, shape)] of torchvision's ResNet state dict, in registration order."""
    expansion = 4 if bottleneck else 1
    entries = [("conv1.weight", (64, in_channels, 7, 7))] + bn_entries("bn1", 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), start=1):
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            p = f"layer{stage}.{index}"
            if bottleneck:
                entries += [(f"{p}.conv1.weight", (planes, inplanes, 1, 1))]
                entries += bn_entries(f"{p}.bn1", planes)
                entries += [(f"{p}.conv2.weight", (planes, planes, 3, 3))]
                entries += bn_entries(f"{p}.bn2", planes)
                entries += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1))]
                entries += bn_entries(f"{p}.bn3", planes * 4)
            else:
                entries += [(f"{p}.conv1.weight", (planes, inplanes, 3, 3))]
                entries += bn_entries(f"{p}.bn1", planes)
                entries += [(f"{p}.conv2.weight", (planes, planes, 3, 3))]
                entries += bn_entries(f"{p}.bn2", planes)
            if stride != 1 or inplanes != planes * expansion:
                entries += [(f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1))]
                entries += bn_entries(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return entries + [("fc.weight", (num_classes, inplanes)), ("fc.bias", (num_classes,))]


def mobilenet_layout(num_classes):
    entries = [("model.0.0.weight", (32, 3, 3, 3))] + bn_entries("model.0.1", 32)
    for k, (c_in, c_out, _) in enumerate(MOBILENET_TABLE, start=1):
        entries += [(f"model.{k}.0.weight", (c_in, 1, 3, 3))] + bn_entries(f"model.{k}.1", c_in)
        entries += [(f"model.{k}.3.weight", (c_out, c_in, 1, 1))]
        entries += bn_entries(f"model.{k}.4", c_out)
    return entries + [("fc.weight", (num_classes, 1024)), ("fc.bias", (num_classes,))]


def layout(model):
    return [(key, tuple(t.shape)) for key, t in model.state_dict().items()]


# ------------------------------------------------------------ structure and counts


def test_models_are_registered():
    assert {"resnet18", "resnet34", "resnet50", "mobilenetv1"} <= set(model_names())


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMETERS))
def test_resnet_parameter_count_and_layout_equal_torchvision(name, count_parameters):
    model = imagenet_model(name)
    assert count_parameters(model) == TORCHVISION_PARAMETERS[name]
    assert layout(model) == torchvision_resnet_layout(RESNET_BLOCKS[name], BOTTLENECK[name], 1000)


def test_mobilenet_parameter_count_by_formula_and_layout(count_parameters):
    # Stem: 3x3x3x32 conv + BN(32); each block: 3x3 depthwise (9c) + BN(c) + 1x1 (c*o) + BN(o);
    # BN contributes 2 parameters per channel; fc: 1024 x 1000 + 1000.
    expected = 27 * 32 + 2 * 32
    expected += sum(9 * c + 2 * c + c * o + 2 * o for c, o, _ in MOBILENET_TABLE)
    expected += 1024 * 1000 + 1000
    assert expected == 4_231_976
    model = imagenet_model("mobilenetv1")
    assert count_parameters(model) == expected
    assert layout(model) == mobilenet_layout(1000)


def test_input_channels_and_classes_shape_the_layout():
    model = build_model("resnet18", 7, (1, 40, 40))
    assert layout(model) == torchvision_resnet_layout((2, 2, 2, 2), False, 7, in_channels=1)


# ------------------------------------------------------------ forward vs reference


def _randomise_batch_norm(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return model.eval()


def _bn(state, prefix, x):
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)


def reference_resnet(state, x, blocks, bottleneck):
    """torchvision's ResNet forward in eval mode, from the state dict alone."""
    out = F.relu(_bn(state, "bn1", F.conv2d(x, state["conv1.weight"], stride=2, padding=3)))
    out = F.max_pool2d(out, 3, stride=2, padding=1)
    for stage, count in enumerate(blocks, start=1):
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            p = f"layer{stage}.{index}"
            if bottleneck:  # v1.5: the stride sits on the 3x3 conv
                y = F.relu(_bn(state, f"{p}.bn1", F.conv2d(out, state[f"{p}.conv1.weight"])))
                y = F.relu(_bn(state, f"{p}.bn2", F.conv2d(y, state[f"{p}.conv2.weight"],
                                                            stride=stride, padding=1)))
                y = _bn(state, f"{p}.bn3", F.conv2d(y, state[f"{p}.conv3.weight"]))
            else:
                y = F.relu(_bn(state, f"{p}.bn1", F.conv2d(out, state[f"{p}.conv1.weight"],
                                                            stride=stride, padding=1)))
                y = _bn(state, f"{p}.bn2", F.conv2d(y, state[f"{p}.conv2.weight"], padding=1))
            if f"{p}.downsample.0.weight" in state:
                shortcut = _bn(state, f"{p}.downsample.1",
                               F.conv2d(out, state[f"{p}.downsample.0.weight"], stride=stride))
            else:
                shortcut = out
            out = F.relu(y + shortcut)
    features = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return features @ state["fc.weight"].T + state["fc.bias"], features, out


def reference_mobilenet(state, x):
    out = F.relu(_bn(state, "model.0.1", F.conv2d(x, state["model.0.0.weight"], stride=2,
                                                  padding=1)))
    for k, (c_in, _, stride) in enumerate(MOBILENET_TABLE, start=1):
        out = F.conv2d(out, state[f"model.{k}.0.weight"], stride=stride, padding=1, groups=c_in)
        out = F.relu(_bn(state, f"model.{k}.1", out))
        out = F.relu(_bn(state, f"model.{k}.4", F.conv2d(out, state[f"model.{k}.3.weight"])))
    features = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return features @ state["fc.weight"].T + state["fc.bias"], features, out


@pytest.mark.parametrize(("name", "side"), [("resnet18", 48), ("resnet34", 32), ("resnet50", 48),
                                       ("mobilenetv1", 48)])
def test_forward_equals_functional_reference(name, side):
    torch.manual_seed(0)
    model = _randomise_batch_norm(build_model(name, 10, (3, side, side)), seed=1)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
    state = model.state_dict()
    with torch.no_grad():
        logits, features, fmap = model.forward_with_map(x)
        logits_only, features_only = model(x)
        if name == "mobilenetv1":
            expected = reference_mobilenet(state, x)
        else:
            expected = reference_resnet(state, x, RESNET_BLOCKS[name], BOTTLENECK[name])
    width = {"resnet50": 2048, "mobilenetv1": 1024}.get(name, 512)
    spatial = -(-side // 32)  # ceil(side / 32)
    assert fmap.shape == (2, width, spatial, spatial)
    assert features.shape == (2, width) and logits.shape == (2, 10)
    torch.testing.assert_close(fmap, expected[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features, expected[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits_only, logits)
    torch.testing.assert_close(features_only, features)


def test_resnet50_stride_is_on_the_3x3_conv():
    """Moving the stride to the first 1x1 conv (ResNet v1) keeps every shape but changes
    the output, so the reference comparison above can tell the two apart."""
    model = _randomise_batch_norm(build_model("resnet50", 10, (3, 48, 48)), seed=3)
    block = model.layer2[0]
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)
    with torch.no_grad():
        v15 = model(x)[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
        v1 = model(x)[0]
    assert v15.shape == v1.shape
    assert not torch.allclose(v15, v1, atol=1e-3)


def test_small_batches_train_mode_backward():
    model = build_model("resnet18", 5, (3, 32, 32))
    logits, features = model(torch.randn(2, 3, 32, 32))
    F.cross_entropy(logits, torch.tensor([0, 4])).backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()
    assert features.shape == (2, 512)


# ------------------------------------------------------------ classifier alias


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv1"])
def test_classifier_is_fc_without_extra_keys(name):
    model = build_model(name, 6, (3, 32, 32))
    assert model.classifier is model.fc
    assert not any(key.startswith("classifier") for key in model.state_dict())
    assert model.num_classes == 6 and model.feature_dim == model.fc.in_features
    keys_before = list(model.state_dict())
    new_head = nn.Linear(model.feature_dim, 6)
    model.classifier = new_head  # replaces fc, adds nothing
    assert model.fc is new_head and model.classifier is new_head
    assert list(model.state_dict()) == keys_before
    with torch.no_grad():
        logits, features = model(torch.randn(2, 3, 32, 32))
        torch.testing.assert_close(logits, new_head(features))


def test_bad_shapes_and_options_fail_with_one_line():
    with pytest.raises(IJCKDError, match="input_shape"):
        build_model("resnet18", 10, (32, 32))
    with pytest.raises(IJCKDError, match="num_classes"):
        build_model("mobilenetv1", 0, (3, 32, 32))
    with pytest.raises(IJCKDError, match="has no option 'width_mult'"):
        build_model("mobilenetv1", 10, (3, 32, 32), width_mult=0.5)


# ------------------------------------------------------------ weights files


def _save_named_by_hash(state, folder, stem):
    """torch.save ``state`` as ``<stem>-<sha256[:8]>.pth``, torchvision's naming."""
    tmp = folder / f"{stem}.tmp"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(5)
    source = _randomise_batch_norm(build_model("resnet18", 10, (3, 64, 64)), seed=6)
    return {key: value.clone() for key, value in source.state_dict().items()}


def _assert_loaded(model, state):
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_torchvision_file_loads(tmp_path, resnet18_state):
    path = _save_named_by_hash(resnet18_state, tmp_path, "resnet18")
    assert hash_prefix_in_name(path) == path.stem.split("-")[-1]
    model = build_model("resnet18", 10, (3, 64, 64))
    assert load_torchvision_weights(model, path) is model
    _assert_loaded(model, resnet18_state)


def test_wrapped_prefixed_and_old_files_load(tmp_path, resnet18_state):
    # A checkpoint dict with a DataParallel prefix and no BN counters (torchvision's
    # pre-0.4 files lack num_batches_tracked); a plain name, so no hash check.
    stripped = {f"module.{k}": v for k, v in resnet18_state.items()
                if not k.endswith("num_batches_tracked")}
    path = tmp_path / "teacher.pth"
    torch.save({"model": stripped, "epoch": 90}, path)
    model = build_model("resnet18", 10, (3, 64, 64))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.num_batches_tracked.fill_(7)
    load_torchvision_weights(model, path)
    expected = {k: (torch.tensor(0) if k.endswith("num_batches_tracked") else v)
                for k, v in resnet18_state.items()}
    _assert_loaded(model, expected)


def test_file_loads_into_feature_model_wrapper(tmp_path, resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    inner = build_model("resnet18", 10, (3, 64, 64))
    wrapped = FeatureModel(inner, feature_layer="layer4", classifier_layer="fc")
    load_torchvision_weights(wrapped, path)
    _assert_loaded(inner, resnet18_state)


def _one_line_error(model, path, match, **kwargs):
    with pytest.raises(IJCKDError, match=match) as info:
        load_torchvision_weights(model, path, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_wrong_key_fails_naming_it(tmp_path, resnet18_state):
    renamed = dict(resnet18_state)
    renamed["layer1.0.conv_1.weight"] = renamed.pop("layer1.0.conv1.weight")
    path = _save_named_by_hash(renamed, tmp_path, "resnet18")
    message = _one_line_error(build_model("resnet18", 10, (3, 64, 64)), path,
                              "missing key 'layer1.0.conv1.weight'")
    assert "1 missing, 1 unexpected" in message

    extra = dict(resnet18_state, **{"head.weight": torch.zeros(3)})
    path = tmp_path / "extra.pth"
    torch.save(extra, path)
    _one_line_error(build_model("resnet18", 10, (3, 64, 64)), path, "unexpected key 'head.weight'")


def test_wrong_shape_fails_naming_it(tmp_path, resnet18_state):
    path = _save_named_by_hash(resnet18_state, tmp_path, "resnet18")
    message = _one_line_error(build_model("resnet18", 1000, (3, 64, 64)), path, "'fc.weight'")
    assert "(10, 512) in the file but (1000, 512) in the model" in message


def test_wrong_hash_prefix_fails(tmp_path, resnet18_state):
    good = _save_named_by_hash(resnet18_state, tmp_path, "resnet18")
    actual = good.stem.split("-")[-1]
    wrong = "0" * 8 if actual != "0" * 8 else "1" * 8
    bad = good.rename(tmp_path / f"resnet18-{wrong}.pth")
    model = build_model("resnet18", 10, (3, 64, 64))
    message = _one_line_error(model, bad, f"named for sha256 {wrong}")
    assert f"sha256 is {actual}" in message
    load_torchvision_weights(model, bad, check_hash=False)  # the content itself is fine
    _assert_loaded(model, resnet18_state)


def test_unusable_files_fail(tmp_path):
    model = build_model("mobilenetv1", 10, (3, 32, 32))
    _one_line_error(model, tmp_path / "absent.pth", "does not exist")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    _one_line_error(model, path, "must hold a state dict")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    _one_line_error(model, garbage, "corrupt, truncated or not a torch file")
