"""ImageNet models: torchvision's ResNet-18/34/50 and MobileNet (v1), as zoo models.

ResNets (He et al. 2016) follow torchvision's ``models/resnet.py`` definitions exactly, so
its state dicts (and its pretrained weights, see ``models.weights``) load unchanged: the
same module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``/``.1``,
``fc``), shapes and forward: 7x7 stride-2 stem, BN, ReLU, 3x3 stride-2 max pool, four
stages (64/128/256/512 planes, the last three starting with stride 2), global average
pooling, ``fc``. ResNet-18/34 use basic blocks; ResNet-50 uses bottlenecks with the stride
on the 3x3 convolution (torchvision's "v1.5"). Parameter counts for 1,000 classes:
11,689,512 / 21,797,672 / 25,557,032.

MobileNet (Howard et al. 2017, width 1.0): a 3x3 stride-2 convolution to 32 channels, then
13 depthwise-separable blocks (3x3 depthwise conv, BN, ReLU, 1x1 conv, BN, ReLU) up to
1,024 channels, global average pooling and ``fc``: 4,231,976 parameters for 1,000 classes.
Its module names follow the PyTorch MobileNet-v1 layout used by ImageNet distillation code
(``model.0.0`` stem conv, ``model.<k>.0``/``.1`` depthwise conv/BN, ``model.<k>.3``/``.4``
pointwise conv/BN, ``fc``), so such checkpoints load too. That code pools with a fixed
``AvgPool2d(7)``; global pooling here is the same at 224 pixels and works at any size.

``forward_map`` returns the last stage's output (ResNet ``layer4``; MobileNet the last
block), (n, C, ceil(H/32), ceil(W/32)) for H, W >= 32; features are its spatial mean,
(n, 512) for ResNet-18/34, (n, 2048) for ResNet-50, (n, 1024) for MobileNet. The
classifier is ``fc``; ``model.classifier`` is another name for it that adds nothing to the
state dict (assigning ``model.classifier`` replaces ``fc``).

Initialisation is torchvision's: He (fan-out) normal convolutions, unit/zero batch norm,
PyTorch's default for ``fc``.
"""

import torch.nn as nn
import torch.nn.functional as F

from ijckd_bounds.models import MODELS
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.common import check_input_shape, check_num_classes, he_init
from ijckd_bounds.models.resnet import BasicBlock, projection_shortcut


class Bottleneck(nn.Module):
    """1x1 conv -> BN -> ReLU -> 3x3 conv (``stride``) -> BN -> ReLU -> 1x1 conv (to
    ``4 * planes``) -> BN, plus the shortcut, then ReLU; (n, C_in, H, W) ->
    (n, 4 * planes, H/stride, W/stride)."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        """The block's output (n, 4 * planes, H/stride, W/stride) for ``x`` (n, C_in, H, W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class FcClassifier(ZooModel):
    """A zoo model whose classifier is stored as ``fc`` (torchvision's name):
    ``classifier`` reads and writes ``fc`` without a second state-dict entry."""

    @property
    def classifier(self):
        """The classifier, stored as ``fc``."""
        return self.fc

    def __setattr__(self, name, value):
        # nn.Module.__setattr__ files modules under the given name and would bypass the
        # property, adding a `classifier.*` entry beside `fc`; route it to `fc` instead.
        super().__setattr__("fc" if name == "classifier" else name, value)


class ImageNetResNet(FcClassifier):
    """torchvision's ResNet. Input (n, C, H, W); ``forward_map`` -> (n, 512 * expansion,
    ceil(H/32), ceil(W/32)); features (n, 512 * expansion).

    Args:
        block: ``BasicBlock`` (expansion 1) or ``Bottleneck`` (expansion 4).
        blocks_per_stage: four block counts, e.g. (2, 2, 2, 2) for ResNet-18.

    Stages: ``layer1``, ``layer2``, ``layer3``, then ``pool`` (the pooled ``layer4``).
    """

    stage_layers = {"layer1": "layer1", "layer2": "layer2", "layer3": "layer3"}

    def __init__(self, block, blocks_per_stage, num_classes, in_channels=3):
        super().__init__()
        expansion = getattr(block, "expansion", 1)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        width = 64
        stages = []
        stage_widths = (64, 128, 256, 512)
        for index, (planes, num_blocks) in enumerate(zip(stage_widths, blocks_per_stage,
                                                         strict=True)):
            stride = 1 if index == 0 else 2
            blocks = []
            for position in range(num_blocks):
                blocks.append(block(width, planes, stride if position == 0 else 1))
                width = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(width, num_classes)
        he_init(self)

    def forward_map(self, x):
        """The ``layer4`` map (n, 512 * expansion, ceil(H/32), ceil(W/32)) of ``x``."""
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))


# (input channels, output channels, stride) of MobileNet's 13 depthwise-separable blocks.
MOBILENET_BLOCKS = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1),
    (512, 1024, 2), (1024, 1024, 1),
)


def depthwise_separable(in_channels, out_channels, stride):
    """3x3 depthwise conv (``stride``) -> BN -> ReLU -> 1x1 conv -> BN -> ReLU, as one
    ``nn.Sequential`` (parameter indices 0, 1, 3, 4)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(FcClassifier):
    """MobileNet at width 1.0. Input (n, C, H, W); ``forward_map`` -> (n, 1024,
    ceil(H/32), ceil(W/32)); features (n, 1024). Stages: the last block at each resolution
    (blocks 1, 3, 5 and 11), then ``pool``."""

    stage_layers = {f"block{k}": f"model.{k}" for k in (1, 3, 5, 11)}

    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
        )
        self.model = nn.Sequential(stem, *(depthwise_separable(*spec) for spec in MOBILENET_BLOCKS))
        self.fc = nn.Linear(MOBILENET_BLOCKS[-1][1], num_classes)
        he_init(self)

    def forward_map(self, x):
        """The last block's map (n, 1024, ceil(H/32), ceil(W/32)) of ``x`` (n, C, H, W)."""
        return self.model(x)


def _resnet(name, block, blocks_per_stage, num_classes, input_shape):
    check_num_classes(name, num_classes)
    input_shape = check_input_shape(name, input_shape, ndims=(3,))
    return ImageNetResNet(block, blocks_per_stage, num_classes, in_channels=input_shape[0])


@MODELS.register("resnet18")
def resnet18(num_classes, input_shape):
    """torchvision's ResNet-18 (11.7M parameters for 1,000 classes); features (n, 512)."""
    return _resnet("resnet18", BasicBlock, (2, 2, 2, 2), num_classes, input_shape)


@MODELS.register("resnet34")
def resnet34(num_classes, input_shape):
    """torchvision's ResNet-34 (21.8M parameters for 1,000 classes); features (n, 512)."""
    return _resnet("resnet34", BasicBlock, (3, 4, 6, 3), num_classes, input_shape)


@MODELS.register("resnet50")
def resnet50(num_classes, input_shape):
    """torchvision's ResNet-50 v1.5 (25.6M parameters for 1,000 classes); features
    (n, 2048)."""
    return _resnet("resnet50", Bottleneck, (3, 4, 6, 3), num_classes, input_shape)


@MODELS.register("mobilenetv1")
def mobilenetv1(num_classes, input_shape):
    """MobileNet v1 at width 1.0 (4.2M parameters for 1,000 classes); features (n, 1024)."""
    check_num_classes("mobilenetv1", num_classes)
    input_shape = check_input_shape("mobilenetv1", input_shape, ndims=(3,))
    return MobileNetV1(num_classes, in_channels=input_shape[0])
