"""Wide ResNets (Zagoruyko & Komodakis 2016) as used in the distillation literature.

Definition follows the CRD/RepDistiller code base (``models/wrn.py``): a 3x3 stem with 16
channels, three stages of ``(depth - 4) / 6`` pre-activation blocks with widths
16k/32k/64k (the second and third start with stride 2), then ``BN -> ReLU``, global
average pooling and one linear layer. Parameter counts for 100 classes equal the
reference's exactly (wrn_40_2: 2,255,156; wrn_16_2: 703,284).

``forward_map`` returns the final ``relu(bn(.))`` map, (n, 64k, H/4, W/4).
"""

import torch.nn as nn
import torch.nn.functional as F

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import MODELS
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.common import check_input_shape, check_num_classes, he_init


class PreActBlock(nn.Module):
    """``shortcut + conv2(relu(bn2(conv1(relu(bn1(x))))))``.

    When the shape changes, the shortcut is a 1x1 conv of the *activated* input
    ``relu(bn1(x))``, as in the reference WRN code; otherwise it is ``x`` itself.
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = None
        # The reference compares channel counts only: a stride-2 block with equal widths
        # would keep an identity shortcut (never happens for the standard widths).
        if in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x):
        """The block's output (n, C_out, H/stride, W/stride) for ``x`` (n, C_in, H, W)."""
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        return shortcut + out


class WideResNet(ZooModel):
    """WRN-``depth``-``widen``: input (n, C, H, W); ``forward_map`` -> (n, 64*widen, H/4, W/4).

    Stages: ``block1``, ``block2``, ``block3`` (before the final BN-ReLU), ``pool``."""

    stage_layers = {"block1": "block1", "block2": "block2", "block3": "block3"}

    def __init__(self, depth, widen, num_classes, in_channels=3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise IJCKDError(f"WRN `depth` must be 6n+4 (10, 16, 28, 40, ...), got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = self._stage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.block2 = self._stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.block3 = self._stage(widths[2], widths[3], blocks_per_stage, stride=2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.classifier = nn.Linear(widths[3], num_classes)
        he_init(self)
        nn.init.zeros_(self.classifier.bias)

    @staticmethod
    def _stage(in_channels, out_channels, num_blocks, stride):
        blocks = [PreActBlock(in_channels, out_channels, stride)]
        blocks += [PreActBlock(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward_map(self, x):
        """The activated ``block3`` map (n, 64 * widen, H/4, W/4) of ``x`` (n, C, H, W)."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn(out))


def _wrn(name, depth, widen, num_classes, input_shape):
    check_num_classes(name, num_classes)
    input_shape = check_input_shape(name, input_shape, ndims=(3,))
    return WideResNet(depth, widen, num_classes, in_channels=input_shape[0])


@MODELS.register("wrn_40_2")
def wrn_40_2(num_classes, input_shape):
    """WRN-40-2 (2.26M parameters for 100 classes); features (n, 128)."""
    return _wrn("wrn_40_2", 40, 2, num_classes, input_shape)


@MODELS.register("wrn_16_2")
def wrn_16_2(num_classes, input_shape):
    """WRN-16-2 (0.70M parameters for 100 classes); features (n, 128)."""
    return _wrn("wrn_16_2", 16, 2, num_classes, input_shape)
