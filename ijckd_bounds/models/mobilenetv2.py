"""MobileNetV2 (Sandler et al. 2018) at width 0.5, CRD's ``mobile_half`` for CIFAR.

Definition follows the CRD/RepDistiller code base (``models/mobilenetv2.py``): a stride-2
3x3 stem, inverted residual blocks with expansion 6 (the first with expansion 1, which
still keeps its 1x1 expansion conv, unlike the ImageNet MobileNetV2), the second group's
stride reduced from 2 to 1 for 32-pixel inputs, a 1x1 conv to 1280 channels (never
narrowed below 1280), global average pooling and one linear layer. The parameter count
for 100 classes equals the reference's exactly (812,836).

``forward_map`` returns the 1280-channel map after its ReLU, (n, 1280, H/16, W/16)
(rounded up).
"""

import torch.nn as nn

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import MODELS
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.common import check_input_shape, check_num_classes, he_init

# (expansion, output channels at width 1, blocks, stride of the first block);
# an expansion of None stands for the model's ``expansion`` argument.
SETTINGS = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def conv_bn_relu(in_channels, out_channels, kernel_size, stride=1):
    """Conv (``kernel_size``, ``stride``, same padding, no bias) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> BN -> ReLU -> 3x3 depthwise -> BN -> ReLU -> 1x1 project -> BN
    (linear bottleneck), plus ``x`` when stride is 1 and the widths agree."""

    def __init__(self, in_channels, out_channels, stride, expansion):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x):
        """The block's output (n, C_out, H/stride, W/stride) for ``x`` (n, C_in, H, W)."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(ZooModel):
    """Input (n, C, H, W); ``forward_map`` -> (n, last_channels, ceil(H/16), ceil(W/16))."""

    def __init__(self, num_classes, in_channels=3, width_mult=0.5, expansion=6):
        super().__init__()
        width = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, width, 3, stride=2)
        self.blocks = nn.ModuleList()
        for block_expansion, channels, num_blocks, stride in SETTINGS:
            out_channels = int(channels * width_mult)
            group = []
            for index in range(num_blocks):
                group.append(InvertedResidual(width, out_channels, stride if index == 0 else 1,
                                              block_expansion or expansion))
                width = out_channels
            self.blocks.append(nn.Sequential(*group))
        # stages: each group of inverted residuals, then the pooled 1x1 conv
        self.stage_layers = {f"blocks{k + 1}": f"blocks.{k}" for k in range(len(self.blocks))}
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(width, last_channels, 1)
        self.classifier = nn.Linear(last_channels, num_classes)
        he_init(self)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_map(self, x):
        """The last 1x1 conv's map (n, last_channels, ceil(H/16), ceil(W/16)) of ``x``."""
        out = self.conv1(x)
        for group in self.blocks:
            out = group(out)
        return self.conv2(out)


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes, input_shape, width_mult=0.5, expansion=6):
    """MobileNetV2 at ``width_mult`` (default 0.5: 0.81M parameters for 100 classes);
    features (n, 1280)."""
    check_num_classes("mobilenetv2", num_classes)
    input_shape = check_input_shape("mobilenetv2", input_shape, ndims=(3,))
    if not width_mult > 0 or int(16 * width_mult) < 1:
        raise IJCKDError(f"`width_mult` of model 'mobilenetv2' must be at least 1/16, "
                         f"got {width_mult!r}")
    if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
        raise IJCKDError(f"`expansion` of model 'mobilenetv2' must be a positive integer, "
                         f"got {expansion!r}")
    return MobileNetV2(num_classes, in_channels=input_shape[0], width_mult=width_mult,
                       expansion=expansion)
