"""Input checks and weight initialisation shared by the model factories."""

import torch.nn as nn

from ijckd_bounds.errors import IJCKDError


def check_num_classes(model_name, num_classes):
    """``num_classes`` must be a positive integer; returns it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise IJCKDError(f"`num_classes` of model {model_name!r} must be a positive integer, "
                         f"got {num_classes!r}")
    return num_classes


def check_input_shape(model_name, input_shape, *, ndims=(1, 2, 3), min_size=1):
    """Check one sample's shape and return it as a tuple of ints.

    ``ndims`` lists the accepted lengths: 1 is a flat vector (D,), 2 a sequence (C, L),
    3 an image (C, H, W). Every size must be positive, and spatial sizes at least
    ``min_size`` (models that max-pool need room to shrink).
    """
    expected = {1: "(D,)", 2: "(C, L)", 3: "(C, H, W)"}
    wanted = " or ".join(expected[k] for k in ndims)
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise IJCKDError(f"`input_shape` of model {model_name!r} must be {wanted}, "
                         f"got {input_shape!r}") from None
    if len(shape) not in ndims or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise IJCKDError(f"`input_shape` of model {model_name!r} must be {wanted} with "
                         f"positive integer sizes, got {input_shape!r}")
    if len(shape) >= 2 and min(shape[1:]) < min_size:
        raise IJCKDError(f"model {model_name!r} needs inputs of at least {min_size} pixels "
                         f"per side, got input_shape {shape}")
    return shape


def he_init(model):
    """He (fan-out) normal init for convolutions, unit/zero batch norm, as in the
    reference CIFAR code bases (fb.resnet.torch, WRN, CRD); linear layers keep the
    PyTorch default."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
