"""ShuffleNetV2 (Ma et al. 2018) at width 1.0 for CIFAR, CRD's ``ShuffleV2``.

Definition follows the CRD/RepDistiller code base (``models/ShuffleNetv2.py``): a 1x1 stem
with 24 channels (no stride, no max-pool, for 32-pixel inputs), three stages (116, 232,
464 channels; 3, 7, 3 basic units), each led by a stride-2 down-sampling unit, a 1x1 conv
to 1024 channels, global average pooling and one linear layer. The parameter count for
100 classes equals the reference's exactly (1,355,528).

``forward_map`` returns the 1024-channel map after its ReLU, (n, 1024, H/8, W/8) (rounded up).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ijckd_bounds.models import MODELS
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.common import check_input_shape, check_num_classes, he_init

STAGE_CHANNELS = (116, 232, 464)
STAGE_UNITS = (3, 7, 3)
LAST_CHANNELS = 1024


def channel_shuffle(x, groups=2):
    """(n, C, H, W) -> (n, C, H, W) with channel ``g * (C/groups) + i`` moved to
    ``i * groups + g``, so the next unit mixes both branches."""
    n, channels, height, width = x.shape
    return (x.view(n, groups, channels // groups, height, width).transpose(1, 2)
            .reshape(n, channels, height, width))


class BasicUnit(nn.Module):
    """Split the channels in halves; keep the first, transform the second with
    1x1 -> BN -> ReLU -> 3x3 depthwise -> BN -> 1x1 -> BN -> ReLU; concatenate, shuffle."""

    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x):
        """The unit's output, the same shape as ``x`` (n, C, H, W)."""
        half = x.shape[1] // 2
        kept, transformed = x[:, :half], x[:, half:]
        out = F.relu(self.bn1(self.conv1(transformed)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], dim=1))


class DownUnit(nn.Module):
    """Stride-2 unit: both branches see the whole input, each gives half the output
    channels; (n, C_in, H, W) -> (n, C_out, ceil(H/2), ceil(W/2))."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        half = out_channels // 2
        # left branch: 3x3 depthwise (stride 2) -> BN -> 1x1 -> BN -> ReLU
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        # right branch: 1x1 -> BN -> ReLU -> 3x3 depthwise (stride 2) -> BN -> 1x1 -> BN -> ReLU
        self.conv3 = nn.Conv2d(in_channels, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = nn.Conv2d(half, half, 3, stride=2, padding=1, groups=half, bias=False)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = nn.Conv2d(half, half, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x):
        """The unit's output (n, C_out, ceil(H/2), ceil(W/2)) for ``x`` (n, C_in, H, W)."""
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1))


class ShuffleNetV2(ZooModel):
    """Input (n, C, H, W); ``forward_map`` -> (n, 1024, ceil(H/8), ceil(W/8)).

    Stages: ``layer1``, ``layer2``, ``layer3``, then ``pool`` (the pooled 1x1 conv)."""

    stage_layers = {"layer1": "layer1", "layer2": "layer2", "layer3": "layer3"}

    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        width = 24
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        for channels, units in zip(STAGE_CHANNELS, STAGE_UNITS, strict=True):
            stages.append(nn.Sequential(DownUnit(width, channels),
                                        *[BasicUnit(channels) for _ in range(units)]))
            width = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(width, LAST_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(LAST_CHANNELS)
        self.classifier = nn.Linear(LAST_CHANNELS, num_classes)
        he_init(self)

    def forward_map(self, x):
        """The last 1x1 conv's map (n, 1024, ceil(H/8), ceil(W/8)) of ``x`` (n, C, H, W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.relu(self.bn2(self.conv2(out)))


@MODELS.register("shufflenetv2")
def shufflenetv2(num_classes, input_shape):
    """ShuffleNetV2 1.0x (1.36M parameters for 100 classes); features (n, 1024)."""
    check_num_classes("shufflenetv2", num_classes)
    input_shape = check_input_shape("shufflenetv2", input_shape, ndims=(3,))
    return ShuffleNetV2(num_classes, in_channels=input_shape[0])
