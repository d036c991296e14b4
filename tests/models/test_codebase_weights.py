"""Teachers trained by RepDistiller and mdistiller load into the CIFAR zoo models.

``tests/files/cifar_codebase_keys.json.gz`` lists, for each CIFAR zoo architecture, the state-dict
keys and shapes of the same architecture as RepDistiller's and mdistiller's model
definitions build it for 100 classes (recorded from their ``state_dict()``; both code bases
give the same list). Each test builds a file in that code base's layout from the list (its
key names and shapes, in its checkpoint container), saves it with ``torch.save`` and loads
it; no file is downloaded. Every tensor of a file holds its own position in the file's
order, so a test can check where each tensor landed: both code bases define the modules in
the zoo's order, so the k-th tensor of their state dict must become the k-th of the zoo's.
"""

import gzip
import json
from pathlib import Path

import pytest
import torch
import yaml

from ijckd_bounds.checkpoint import load_teacher_weights
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import build_model
from ijckd_bounds.models.weights import load_torchvision_weights

KEYS_FILE = Path(__file__).resolve().parents[1] / "files" / "cifar_codebase_keys.json.gz"
LAYOUTS = json.loads(gzip.decompress(KEYS_FILE.read_bytes()))["models"]
CLASSES = 100
SHAPE = (3, 32, 32)


def their_state_dict(zoo_name, prefix=""):
    """The architecture's state dict in their key names; tensor k holds the value k.

    Each tensor is one number broadcast to its shape: ``torch.save`` then stores one
    element per tensor, so even vgg13's 9.5M parameters make a file of a few kB.
    """
    state = {}
    for position, (key, shape) in enumerate(LAYOUTS[zoo_name]["keys"]):
        dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
        state[prefix + key] = torch.full((1,) * len(shape), position, dtype=dtype).expand(shape)
    return state


def optimizer_state():
    """What ``optimizer.state_dict()`` of an SGD run holds (numbers, lists, tensors)."""
    return {"state": {0: {"momentum_buffer": torch.zeros(3)}},
            "param_groups": [{"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                              "nesterov": False, "params": [0]}]}


def repdistiller_file(path, zoo_name):
    """``train_teacher.py``'s checkpoint: {'epoch', 'model', 'accuracy', 'optimizer'}."""
    torch.save({"epoch": 240, "model": their_state_dict(zoo_name), "accuracy": 71.2,
                "optimizer": optimizer_state()}, path)
    return path


def mdistiller_file(path, zoo_name, *, kind="latest"):
    """mdistiller's trainer: ``latest``/``epoch_N``/``best`` hold the DataParallel-wrapped
    distiller (``module.student.*``, and for a distilling method ``module.teacher.*``);
    ``student_latest`` holds the student's own state dict."""
    if kind == "student":
        obj = {"model": their_state_dict(zoo_name)}
    else:
        model = their_state_dict(zoo_name, prefix="module.student.")
        if kind == "distiller":  # a KD-style run: its frozen teacher and its own modules
            model.update(their_state_dict("resnet8x4", prefix="module.teacher."))
            model["module.conv_reg.weight"] = torch.zeros(8, 4, 1, 1)
        obj = {"epoch": 240, "model": model, "optimizer": optimizer_state(), "best_acc": 70.4}
    torch.save(obj, path)
    return path


def assert_loaded_in_order(model, zoo_name):
    state = model.state_dict()
    assert len(state) == len(LAYOUTS[zoo_name]["keys"])
    for position, (key, tensor) in enumerate(state.items()):
        assert tensor.flatten()[0].item() == position, (zoo_name, key)
        assert torch.all(tensor == position), (zoo_name, key)


@pytest.mark.parametrize("zoo_name", sorted(LAYOUTS))
def test_repdistiller_checkpoints_load_into_the_zoo_model(tmp_path, zoo_name):
    path = repdistiller_file(tmp_path / "ckpt_epoch_240.pth", zoo_name)
    model = load_torchvision_weights(build_model(zoo_name, CLASSES, SHAPE), path)
    assert_loaded_in_order(model, zoo_name)


@pytest.mark.parametrize("kind", ["latest", "student", "distiller"])
@pytest.mark.parametrize("zoo_name", ["resnet32x4", "wrn_40_2", "vgg13", "mobilenetv2",
                                      "shufflenetv2"])
def test_mdistiller_checkpoints_load_into_the_zoo_model(tmp_path, zoo_name, kind):
    path = mdistiller_file(tmp_path / kind, zoo_name, kind=kind)
    model = load_torchvision_weights(build_model(zoo_name, CLASSES, SHAPE), path)
    assert_loaded_in_order(model, zoo_name)


def test_the_head_named_fc_becomes_the_zoo_classifier(tmp_path):
    """The teacher's classifier is what the bounds use: check it by name and value."""
    path = repdistiller_file(tmp_path / "resnet56.pth", "resnet56")
    keys = [key for key, _ in LAYOUTS["resnet56"]["keys"]]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    teacher = load_teacher_weights(path, "resnet56", CLASSES, SHAPE)
    assert torch.all(teacher.model.classifier.weight == len(keys) - 2)
    assert torch.all(teacher.model.classifier.bias == len(keys) - 1)
    assert teacher.model.classifier.weight.shape == (CLASSES, 64)


@pytest.mark.parametrize(("file_arch", "model_arch", "message"), [
    ("resnet56", "resnet110", "missing key 'layer1.9.conv1.weight'"),
    ("resnet110", "resnet56", "unexpected key 'layer1.9.conv1.weight'"),
    ("wrn_40_2", "wrn_16_2",
     "unexpected key 'block1.2.bn1.weight' (the file's 'block1.layer.2.bn1.weight')"),
    # vgg8's conv/BN layers take the file's first ten; block2 of vgg8 has one conv only
    ("vgg13", "vgg8", "unexpected key 'block2.3.weight' (0 missing, 35 unexpected"),
    ("vgg8", "vgg13", "missing key 'features.17.weight' (30 missing, 0 unexpected"),
    ("resnet8x4", "resnet32x4", "missing key 'layer1.1.conv1.weight'"),
])
def test_a_file_of_another_architecture_names_the_first_mismatching_key(
        tmp_path, file_arch, model_arch, message):
    path = repdistiller_file(tmp_path / f"{file_arch}.pth", file_arch)
    with pytest.raises(IJCKDError) as caught:
        load_torchvision_weights(build_model(model_arch, CLASSES, SHAPE), path)
    text = str(caught.value)
    assert message in text and "RepDistiller/mdistiller key names" in text
    assert "\n" not in text


def test_the_zoo_layout_still_loads_and_foreign_names_do_not_leak_into_it(tmp_path):
    zoo = build_model("wrn_16_2", CLASSES, SHAPE)
    torch.save({"model": zoo.state_dict()}, tmp_path / "zoo.pt")
    again = load_torchvision_weights(build_model("wrn_16_2", CLASSES, SHAPE),
                                     tmp_path / "zoo.pt")
    for key, value in zoo.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    # a resnet's `fc` head is not renamed for a model whose layout has no `fc`
    state = their_state_dict("resnet56")
    torch.save(state, tmp_path / "r56.pth")
    with pytest.raises(IJCKDError, match="does not fit MobileNetV2: missing key"):
        load_torchvision_weights(build_model("mobilenetv2", CLASSES, SHAPE),
                                 tmp_path / "r56.pth")


def test_a_repdistiller_teacher_of_another_architecture_is_refused_at_the_cli(
        tmp_path, imagenet_toy, cli_fails):
    tree = imagenet_toy.write_tree(tmp_path / "tree")
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump(imagenet_toy.distill_config(
        tree, tmp_path / "run", model={"teacher": "resnet32x4", "student": "resnet8x4"})))
    small = {k: v[:1] if k.startswith("fc.") else v
             for k, v in their_state_dict("resnet8x4").items()}
    torch.save({"epoch": 240, "model": small, "optimizer": optimizer_state()},
               tmp_path / "resnet8x4_best.pth")
    err = cli_fails("distill", "--config", str(config), "--teacher-weights",
                    str(tmp_path / "resnet8x4_best.pth"))
    assert "does not fit CifarResNet: missing key 'layer1.1.conv1.weight'" in err
    assert "RepDistiller/mdistiller key names" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
