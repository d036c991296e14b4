"""VGG with batch norm for CIFAR, as used in the distillation literature.

Definition follows the CRD/RepDistiller code base (``models/vgg.py``, the ``*_bn`` variants
that CRD registers as ``vgg8``/``vgg13``): five stages of ``3x3 conv (with bias) -> BN ->
ReLU``, max-pooling after the first three stages, global average pooling and a single
linear layer (no fully connected stack). The reference max-pools after the fourth stage
only for 64-pixel inputs; here that pool is kept when the input side is 64 or more, fixed
when the model is built. Parameter counts for 100 classes equal the reference's exactly
(vgg8: 3,965,028; vgg13: 9,462,180).

``forward_map`` returns the last stage's output after its ReLU: (n, 512, H/8, W/8) for
inputs under 64 pixels, (n, 512, H/16, W/16) otherwise.
"""

import torch.nn as nn

from ijckd_bounds.models import MODELS
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.common import check_input_shape, check_num_classes, he_init

# Channels of each conv layer, stage by stage.
STAGES = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


class VGG(ZooModel):
    """Input (n, C, H, W); ``forward_map`` -> (n, stages[-1][-1], H', W')."""

    def __init__(self, stages, num_classes, in_channels=3, pool_before_last_stage=False):
        super().__init__()
        layers = []
        width = in_channels
        # stages: the last ReLU of each conv stage but the last, which is the pooled stage
        self.stage_layers = {}
        for index, stage in enumerate(stages):
            for out_channels in stage:
                layers += [nn.Conv2d(width, out_channels, 3, padding=1),
                           nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
                width = out_channels
            if index < len(stages) - 1:
                self.stage_layers[f"stage{index + 1}"] = f"features.{len(layers) - 1}"
            if index < 3 or (index == 3 and pool_before_last_stage):
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        he_init(self)
        # The reference starts the linear layer small (std 0.01), so first logits are ~0.
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_map(self, x):
        """The last conv stage's map (n, stages[-1][-1], H', W') of ``x`` (n, C_in, H, W)."""
        return self.features(x)


def _vgg(name, num_classes, input_shape):
    check_num_classes(name, num_classes)
    input_shape = check_input_shape(name, input_shape, ndims=(3,), min_size=8)
    return VGG(STAGES[name], num_classes, in_channels=input_shape[0],
               pool_before_last_stage=min(input_shape[1:]) >= 64)


@MODELS.register("vgg8")
def vgg8(num_classes, input_shape):
    """VGG-8 with BN (3.97M parameters for 100 classes); features (n, 512)."""
    return _vgg("vgg8", num_classes, input_shape)


@MODELS.register("vgg13")
def vgg13(num_classes, input_shape):
    """VGG-13 with BN (9.46M parameters for 100 classes); features (n, 512)."""
    return _vgg("vgg13", num_classes, input_shape)
