"""CIFAR ResNets of the distillation literature (He et al. 2016, section 4.2).

Definitions follow the CRD/RepDistiller code base (``models/resnet.py``): a 3x3 stem, three
stages of ``n = (depth - 2) / 6`` basic blocks (the second and third start with stride 2),
a 1x1 conv + BN projection shortcut wherever the shape changes, global average pooling
and one linear layer. ``resnet20/56/110`` have stage widths 16/16/32/64 (64-d features),
``resnet8x4/32x4`` widths 32/64/128/256 (256-d features). Parameter counts for 100
classes equal the reference's exactly (e.g. resnet56: 861,620; resnet32x4: 7,433,860).

``forward_map`` returns the last stage's output after its final ReLU, (n, C, H/4, W/4);
CRD's optional pre-ReLU ("preact") output is not offered.
"""

import torch.nn as nn
import torch.nn.functional as F

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import MODELS
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.common import check_input_shape, check_num_classes, he_init


def conv3x3(in_channels, out_channels, stride=1):
    """A 3x3 conv with padding 1 and no bias (BN follows it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def projection_shortcut(in_channels, out_channels, stride):
    """A residual block's shortcut: None (the identity) where the block keeps the shape,
    else a strided 1x1 conv + BN (state-dict keys ``0.weight``, ``1.*``, as torchvision)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; (n, C_in, H, W) ->
    (n, C_out, H/stride, W/stride)."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        """The block's output (n, C_out, H/stride, W/stride) for ``x`` (n, C_in, H, W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(ZooModel):
    """Stem ``conv3x3 -> BN -> ReLU`` with ``widths[0]`` channels, then three stages of
    ``(depth - 2) // 6`` basic blocks with ``widths[1:]`` channels.

    Input (n, C, H, W); ``forward_map`` -> (n, widths[3], H/4, W/4); features
    (n, widths[3]). Stages: ``layer1``, ``layer2``, then ``pool`` (the pooled ``layer3``).
    """

    stage_layers = {"layer1": "layer1", "layer2": "layer2"}

    def __init__(self, depth, widths, num_classes, in_channels=3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise IJCKDError(f"ResNet `depth` must be 6n+2 (8, 20, 32, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], blocks_per_stage, stride=2)
        self.classifier = nn.Linear(widths[3], num_classes)
        he_init(self)

    @staticmethod
    def _stage(in_channels, out_channels, num_blocks, stride):
        blocks = [BasicBlock(in_channels, out_channels, stride)]
        blocks += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward_map(self, x):
        """The last stage's output after its ReLU, (n, widths[3], H/4, W/4), of ``x``."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))


def _resnet(name, depth, widths, num_classes, input_shape):
    check_num_classes(name, num_classes)
    input_shape = check_input_shape(name, input_shape, ndims=(3,))
    return CifarResNet(depth, widths, num_classes, in_channels=input_shape[0])


NARROW = (16, 16, 32, 64)
WIDE_X4 = (32, 64, 128, 256)


@MODELS.register("resnet20")
def resnet20(num_classes, input_shape):
    """ResNet-20 (0.28M parameters for 100 classes); features (n, 64)."""
    return _resnet("resnet20", 20, NARROW, num_classes, input_shape)


@MODELS.register("resnet56")
def resnet56(num_classes, input_shape):
    """ResNet-56 (0.86M parameters for 100 classes); features (n, 64)."""
    return _resnet("resnet56", 56, NARROW, num_classes, input_shape)


@MODELS.register("resnet110")
def resnet110(num_classes, input_shape):
    """ResNet-110 (1.74M parameters for 100 classes); features (n, 64)."""
    return _resnet("resnet110", 110, NARROW, num_classes, input_shape)


@MODELS.register("resnet8x4")
def resnet8x4(num_classes, input_shape):
    """ResNet-8 with 4x widths (1.23M parameters for 100 classes); features (n, 256)."""
    return _resnet("resnet8x4", 8, WIDE_X4, num_classes, input_shape)


@MODELS.register("resnet32x4")
def resnet32x4(num_classes, input_shape):
    """ResNet-32 with 4x widths (7.43M parameters for 100 classes); features (n, 256)."""
    return _resnet("resnet32x4", 32, WIDE_X4, num_classes, input_shape)
