"""Small teacher/student pairs for the quick data sets (``digits`` (1, 8, 8), ``mnist1d`` (1, 40)).

- ``mlp_large`` / ``mlp_small``: MLPs on the flattened input; the "map" is the last hidden
  vector (n, D) after its ReLU, which is also the feature vector.
- ``cnn_large`` / ``cnn_small``: Conv-BN-ReLU stacks, ``Conv2d`` for image inputs (C, H, W)
  and ``Conv1d`` for sequence inputs (C, L); the map is the last conv output
  (n, C, H, W) / (n, C, L), globally averaged into the features.
"""

import math

import torch.nn as nn

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models import MODELS
from ijckd_bounds.models.base import ZooModel
from ijckd_bounds.models.common import check_input_shape, check_num_classes, he_init


class MLP(ZooModel):
    """Flatten, then ``Linear -> ReLU`` per hidden width; ``classifier`` reads the last one.

    Input (n, *input_shape); ``forward_map`` returns (n, hidden_sizes[-1]).
    """

    def __init__(self, input_shape, hidden_sizes, num_classes):
        super().__init__()
        self.input_shape = tuple(input_shape)
        layers = [nn.Flatten()]
        width = math.prod(self.input_shape)
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        # stages: every hidden layer's ReLU but the last, which is the pooled stage
        self.stage_layers = {f"hidden{k + 1}": f"body.{2 * k + 2}"
                             for k in range(len(hidden_sizes) - 1)}

    def forward_map(self, x):
        """The last hidden layer (n, d) of ``x`` (n, *input_shape): an MLP's map is a vector."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise IJCKDError(f"`x` must have shape (n, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        return self.body(x)


class ConvNet(ZooModel):
    """``Conv -> BatchNorm -> ReLU`` per entry of ``channels`` (with its stride).

    1-D convolutions for inputs (n, C, L), 2-D for (n, C, H, W); padding ``kernel_size // 2``
    keeps the size except where the stride halves it. ``forward_map`` returns the last
    block's output, (n, channels[-1], L') or (n, channels[-1], H', W').
    """

    def __init__(self, input_shape, channels, strides, kernel_size, num_classes):
        super().__init__()
        if len(channels) != len(strides):
            raise IJCKDError(f"`strides` must have one entry per conv layer like `channels` "
                             f"({len(channels)}), got {len(strides)}")
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if len(input_shape) == 2 else (nn.Conv2d,
                                                                                nn.BatchNorm2d)
        layers = []
        width = input_shape[0]
        for out_channels, stride in zip(channels, strides, strict=True):
            layers += [conv(width, out_channels, kernel_size, stride=stride,
                            padding=kernel_size // 2, bias=False),
                       norm(out_channels), nn.ReLU(inplace=True)]
            width = out_channels
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        # stages: every block's ReLU but the last, which is the pooled stage
        self.stage_layers = {f"conv{k + 1}": f"body.{3 * k + 2}"
                             for k in range(len(channels) - 1)}
        he_init(self)

    def forward_map(self, x):
        """The last conv map (n, C, ...) of ``x`` (n, *input_shape)."""
        return self.body(x)


def _mlp(name, num_classes, input_shape, hidden_sizes):
    check_num_classes(name, num_classes)
    input_shape = check_input_shape(name, input_shape)
    hidden_sizes = tuple(hidden_sizes)
    if not hidden_sizes or not all(isinstance(h, int) and h > 0 for h in hidden_sizes):
        raise IJCKDError(f"`hidden_sizes` of model {name!r} must be a non-empty list of "
                         f"positive integers, got {hidden_sizes!r}")
    return MLP(input_shape, hidden_sizes, num_classes)


def _cnn(name, num_classes, input_shape, channels, strides, kernel_size):
    check_num_classes(name, num_classes)
    input_shape = check_input_shape(name, input_shape, ndims=(2, 3))
    channels, strides = tuple(channels), tuple(strides)
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise IJCKDError(f"`channels` of model {name!r} must be a non-empty list of positive "
                         f"integers, got {channels!r}")
    if kernel_size is None:
        # Sequences need a wider window than 8x8 images to see a digit's stroke.
        kernel_size = 5 if len(input_shape) == 2 else 3
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise IJCKDError(f"`kernel_size` of model {name!r} must be odd (size-preserving "
                         f"padding), got {kernel_size!r}")
    return ConvNet(input_shape, channels, strides, kernel_size, num_classes)


@MODELS.register("mlp_large")
def mlp_large(num_classes, input_shape, hidden_sizes=(256, 256)):
    """Teacher MLP: two hidden layers of 256; features (n, 256)."""
    return _mlp("mlp_large", num_classes, input_shape, hidden_sizes)


@MODELS.register("mlp_small")
def mlp_small(num_classes, input_shape, hidden_sizes=(32,)):
    """Student MLP: one hidden layer of 32; features (n, 32)."""
    return _mlp("mlp_small", num_classes, input_shape, hidden_sizes)


@MODELS.register("cnn_large")
def cnn_large(num_classes, input_shape, channels=(64, 128, 128), strides=(1, 2, 2),
              kernel_size=None):
    """Teacher CNN: three Conv-BN-ReLU layers (64, 128, 128 channels, the last two with
    stride 2); kernel 5 on sequences, 3 on images; features (n, 128)."""
    return _cnn("cnn_large", num_classes, input_shape, channels, strides, kernel_size)


@MODELS.register("cnn_small")
def cnn_small(num_classes, input_shape, channels=(8, 32), strides=(2, 2), kernel_size=None):
    """Student CNN: two Conv-BN-ReLU layers (8, 32 channels, both with stride 2);
    features (n, 32). Deliberately weaker than ``cnn_large`` so distillation has a gap
    to close (on MNIST-1D, 40 epochs of Adam: about 93% against the teacher's 99%)."""
    return _cnn("cnn_small", num_classes, input_shape, channels, strides, kernel_size)
