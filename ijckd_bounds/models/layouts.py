"""Key names of CIFAR teachers trained by other distillation code bases.

RepDistiller (Tian et al., the CRD code base, ``models/*.py``) and mdistiller (Zhao et
al., ``mdistiller/models/cifar/*.py``) define the CIFAR models of the distillation
literature with the same modules as this zoo, under other attribute names. Their state
dicts are identical to each other, so one layout serves both; the difference between the
two code bases is the container a checkpoint file holds (see ``models.weights``).

Names that differ, per zoo architecture (every other key is the zoo's own):

=====================  ==========================================  =========================
zoo model              their key                                   zoo key
=====================  ==========================================  =========================
resnet8x4/32x4/56/110  ``fc.*``                                    ``classifier.*``
wrn_40_2, wrn_16_2     ``blockB.layer.I.*``                        ``blockB.I.*``
                       ``blockB.layer.I.convShortcut.weight``      ``blockB.I.shortcut.weight``
                       ``bn1.*`` (the final BN)                    ``bn.*``
                       ``fc.*``                                    ``classifier.*``
vgg8, vgg13            ``blockB.I.*`` (conv/BN layers, 5 stages)   ``features.J.*``
mobilenetv2            ``classifier.0.*``                          ``classifier.*``
shufflenetv2           ``linear.*``                                ``classifier.*``
=====================  ==========================================  =========================

VGG's index ``J`` counts the zoo's ``features`` sequence, which holds ReLU and max-pool
layers between the stages that their ``blockB`` sequences do not; the ``k``-th conv/BN
layer of the file (ordered by stage, then position) is the ``k``-th conv/BN layer of the
zoo model. Their ShuffleNetV1 (``ShuffleV1``) and ResNet50/ResNet18 for CIFAR have no
counterpart in the zoo.
"""

import re

import torch.nn as nn

from ijckd_bounds.models.mobilenetv2 import MobileNetV2
from ijckd_bounds.models.resnet import CifarResNet
from ijckd_bounds.models.shufflenetv2 import ShuffleNetV2
from ijckd_bounds.models.vgg import VGG
from ijckd_bounds.models.wrn import WideResNet

CIFAR_CODEBASES = "RepDistiller/mdistiller"


def _rename_head(state, their_head):
    prefix = f"{their_head}."
    return {(f"classifier.{key[len(prefix):]}" if key.startswith(prefix) else key): key
            for key in state}


def _resnet_names(model, state):
    return _rename_head(state, "fc")


def _mobilenetv2_names(model, state):
    return _rename_head(state, "classifier.0")


def _shufflenetv2_names(model, state):
    return _rename_head(state, "linear")


WRN_BLOCK = re.compile(r"^(block\d+)\.layer\.(\d+)\.(.+)$")


def _wrn_names(model, state):
    names = {}
    for key in state:
        new = key
        found = WRN_BLOCK.match(key)
        if found:
            block, index, rest = found.groups()
            new = f"{block}.{index}.{rest.replace('convShortcut.', 'shortcut.')}"
        elif key.startswith("bn1."):
            new = "bn." + key[len("bn1."):]
        elif key.startswith("fc."):
            new = "classifier." + key[len("fc."):]
        names[new] = key
    return names


VGG_LAYER = re.compile(r"^block(\d+)\.(\d+)\.(.+)$")


def _vgg_names(model, state):
    # the zoo's conv/BN layers in order, by their index in `features`
    zoo_layers = [index for index, module in enumerate(model.features)
                  if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))]
    their_layers = sorted({(int(m.group(1)), int(m.group(2)))
                           for m in map(VGG_LAYER.match, state) if m})
    position = {layer: zoo_layers[k] for k, layer in enumerate(their_layers)
                if k < len(zoo_layers)}
    names = {}
    for key in state:
        found = VGG_LAYER.match(key)
        new = key
        if found and (int(found.group(1)), int(found.group(2))) in position:
            new = f"features.{position[int(found.group(1)), int(found.group(2))]}." \
                  f"{found.group(3)}"
        names[new] = key
    return names


# zoo class -> function(model, state) returning {zoo key: the file's key}
RENAMERS = {CifarResNet: _resnet_names, WideResNet: _wrn_names, VGG: _vgg_names,
            MobileNetV2: _mobilenetv2_names, ShuffleNetV2: _shufflenetv2_names}


def cifar_codebase_names(model, state):
    """``{zoo key: file key}`` reading ``state`` (str -> tensor, in RepDistiller's and
    mdistiller's key names) for ``model``, or None when the zoo model has no such layout or
    no key of ``state`` needs a new name (the file already uses the zoo's names)."""
    renamer = RENAMERS.get(type(model))
    if renamer is None:
        return None
    names = renamer(model, state)
    if all(new == old for new, old in names.items()) or len(names) != len(state):
        return None
    return names


__all__ = ["CIFAR_CODEBASES", "RENAMERS", "cifar_codebase_names"]
