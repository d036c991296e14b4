"""The suite's shared ground: tiny digits runs built once per test session, the command
line helpers, and the small models and image trees that several test files use.

Fixtures, not imports: no test module imports another. Session-scoped runs are shared by
every test that asks for them, so a test must not write into them: copy a run first
(``shutil.copytree``) to track, resume or corrupt it.
"""

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

# what every tiny digits run is trained with
DIGITS_COMMON = ("data.name=digits", "data.batch_size=64", "optim.epochs=2", "optim.lr=0.05",
                 "run.device=cpu", "run.progress=false")


def _main(argv):
    from ijckd_bounds.app.cli import main

    return main([str(a) for a in argv])


def _cli_ok(*argv):
    code = _main(argv)
    assert code == 0, f"ijckd-bounds {' '.join(map(str, argv))} exited {code}"


# ------------------------------------------------------------------- command line


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv) -> (exit code, stdout, stderr)``: ``ijckd-bounds`` in-process."""

    def run(*argv):
        code = _main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def cli(run_cli):
    """``cli(*argv) -> (stdout, stderr)``: the command must exit 0."""

    def ok(*argv):
        code, out, err = run_cli(*argv)
        assert code == 0, f"ijckd-bounds {' '.join(map(str, argv))} exited {code}: {err}"
        return out, err

    return ok


@pytest.fixture(scope="session")
def cli_setup():
    """``cli_setup(*argv)``: ``ijckd-bounds`` in-process, output not captured; it must exit
    0. For module- and session-scoped fixtures, which cannot use ``capsys``."""
    return _cli_ok


@pytest.fixture
def cli_fails(run_cli):
    """``cli_fails(*argv, code=2)``: the command exits ``code`` with exactly one stderr
    line, ``ijckd-bounds <subcommand>: error: ...``, and no traceback; returns that line."""

    def fails(*argv, code=2):
        got, _, err = run_cli(*argv)
        assert got == code, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"ijckd-bounds {argv[0]}: error: "), err
        return err.rstrip("\n")

    return fails


# ---------------------------------------------------------------- tiny digits runs


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """The root of three untracked runs on digits, 2 epochs each (read-only: copy one
    before writing into it):

    - ``teacher/``: mlp_large trained with cross-entropy, seed 0;
    - ``kd/``: an mlp_small KD student of it (predicts with its own head);
    - ``ijckd/``: an mlp_small IJCKD student of it (predicts with the teacher's classifier).
    """
    root = tmp_path_factory.mktemp("digits_runs")
    _cli_ok("train-teacher", "model.teacher=mlp_large", "method.name=ce",
            f"run.run_dir={root / 'teacher'}", *DIGITS_COMMON)
    for method in ("kd", "ijckd"):
        _cli_ok("distill", f"method.name={method}", "model.student=mlp_small",
                f"model.teacher_checkpoint={root / 'teacher' / 'teacher.pt'}",
                f"run.run_dir={root / method}", *DIGITS_COMMON)
    return root


@pytest.fixture(scope="session")
def copy_run():
    """``copy_run(run_dir, parent) -> parent / run_dir.name``: a copy to write into (same
    directory name, so the same ``run`` column)."""

    def copy(run_dir, parent):
        target = Path(parent) / Path(run_dir).name
        shutil.copytree(run_dir, target)
        return target

    return copy


@pytest.fixture
def poison_kd_loss(monkeypatch):
    """``poison_kd_loss(at_call, factor)``: from the ``at_call``-th call of KD's forward on,
    its ``kl`` term (and so the loss) is multiplied by ``factor`` (nan, inf): a run that
    diverges at a known step. Returns ``cure()``, which puts the real forward back."""
    from ijckd_bounds.train import objectives

    def poison(at_call, factor):
        original = objectives.HintonKD.forward
        calls = {"n": 0}

        def poisoned(self, x, y):
            terms, logits = original(self, x, y)
            calls["n"] += 1
            if calls["n"] >= at_call:
                terms["kl"] = terms["kl"] * factor
                terms["loss"] = terms["loss"] + terms["kl"]
            return terms, logits

        monkeypatch.setattr(objectives.HintonKD, "forward", poisoned)
        return lambda: monkeypatch.setattr(objectives.HintonKD, "forward", original)

    return poison


# ------------------------------------------------------------------------- models


def _count_parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="session")
def count_parameters():
    """``count_parameters(module) -> int``: the number of parameter entries."""
    return _count_parameters


class TinyBasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyTorchvisionResNet(nn.Module):
    """torchvision's ResNet layout and names at toy widths (8, 16, 16, 32)."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(TinyBasicBlock(8, 8))
        self.layer2 = nn.Sequential(TinyBasicBlock(8, 16, 2))
        self.layer3 = nn.Sequential(TinyBasicBlock(16, 16, 2))
        self.layer4 = nn.Sequential(TinyBasicBlock(16, 32, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.fixture(scope="session")
def tiny_torchvision_resnet():
    """The class ``TinyTorchvisionResNet``: a user's module, not of the zoo."""
    return TinyTorchvisionResNet


@pytest.fixture(scope="session")
def wrapped_resnet():
    """``wrapped_resnet(seed=0, map_layer="layer4")``: a ``TinyTorchvisionResNet`` (seeded
    initialisation) wrapped in ``FeatureModel`` (features from avgpool, head fc)."""
    from ijckd_bounds.models.feature_model import FeatureModel

    def build(seed=0, map_layer="layer4"):
        torch.manual_seed(seed)
        return FeatureModel(TinyTorchvisionResNet(), "avgpool", "fc", map_layer=map_layer)

    return build


# -------------------------------------------------------------------- image trees


def write_image_tree(root, *, classes, per_split, sizes, seed=0):
    """An ImageFolder tree of JPEGs: ``root/<split>/n<k:08d>/img<i:02d>.JPEG``, ``per_split``
    images per class of each split (e.g. ``{"train": 8, "val": 6}``), random sides in
    ``sizes`` = (smallest, largest) pixels, a class-dependent colour. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for k in range(classes):
            folder = Path(root) / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = rng.integers(sizes[0], sizes[1] + 1, size=2)
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                pixels[..., k % 3] = pixels[..., k % 3] // 4 + 40 * k
                Image.fromarray(pixels).save(folder / f"img{i:02d}.JPEG", quality=90)
    return Path(root)


@pytest.fixture(scope="session")
def image_tree():
    """``image_tree(root, *, classes, per_split, sizes, seed=0)``: see ``write_image_tree``."""
    return write_image_tree


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _save_torchvision_style(state_dict, folder, name):
    """Save like torchvision's files: ``<name>-<first 8 hex of the sha256>.pth``."""
    tmp = Path(folder) / f"{name}.tmp"
    torch.save(state_dict, tmp)
    path = Path(folder) / f"{name}-{_sha256(tmp)[:8]}.pth"
    tmp.rename(path)
    return path


IMAGENET_TOY_CLASSES = 4
IMAGENET_TOY_IMAGES = {"image_size": 32, "resize": 36}


def _write_imagenet_toy_tree(root, seed=0):
    """4 classes; 8 train and 6 val JPEGs each (val: 12 fit + 12 eval), 36-52 pixels."""
    return write_image_tree(root, classes=IMAGENET_TOY_CLASSES,
                            per_split={"train": 8, "val": 6}, sizes=(36, 52), seed=seed)


def _imagenet_toy_config(tree, run_dir, **sections):
    """A distill config tree (dict) for ResNet-18 -> ResNet-18 IJCKD on the toy tree at 32
    pixels, 2 epochs; ``sections`` update its sections key by key."""
    base = {"data": {"name": "imagefolder", "data_dir": str(tree),
                     "options": dict(IMAGENET_TOY_IMAGES), "batch_size": 8,
                     "eval_batch_size": 16},
            "model": {"teacher": "resnet18", "student": "resnet18"},
            "method": {"name": "ijckd", "ce_weight": 1.0, "logit_weight": 1.0,
                       "feat_weight": 1.0},
            "optim": {"epochs": 2, "lr": 0.01, "weight_decay": 1e-4, "schedule": "multistep",
                      "milestones": [1]},
            "run": {"run_dir": str(run_dir), "device": "cpu", "progress": False},
            "track": {"n_bootstrap": 50, "n_permutations": 20, "chunk_size": 8,
                      "batch_size": 8}}
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return base


@pytest.fixture(scope="session")
def imagenet_toy():
    """The ImageNet recipe at toy scale: ``classes``, ``images`` (the imagefolder options),
    ``write_tree(root, seed=0)``, ``distill_config(tree, run_dir, **sections)``,
    ``save_torchvision_style(state_dict, folder, name)`` and ``sha256(path)``."""
    return SimpleNamespace(classes=IMAGENET_TOY_CLASSES, images=dict(IMAGENET_TOY_IMAGES),
                           write_tree=_write_imagenet_toy_tree,
                           distill_config=_imagenet_toy_config,
                           save_torchvision_style=_save_torchvision_style, sha256=_sha256)
