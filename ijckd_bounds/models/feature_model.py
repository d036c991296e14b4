"""Wrap a model the user brings so it behaves like a zoo model.

``FeatureModel(resnet, feature_layer="avgpool", classifier_layer="fc", map_layer="layer4")``
runs the wrapped module unchanged and reads, through forward hooks, the output of its
feature layer (flattened to the penultimate features), of its classifier (the logits)
and optionally of its last map layer.

State dict keys: ``FeatureModel.state_dict()`` has exactly the wrapped module's keys
(``layer1.0.conv1.weight``, not ``module.layer1.0.conv1.weight``), and ``load_state_dict``
takes them, so a checkpoint of the bare module loads into the wrapper and a checkpoint of
the wrapper loads into the bare module. This also holds when the wrapper sits inside a
larger module (its keys there are ``<name>.layer1...``). Only the state dict is
rewritten: ``named_parameters()`` and ``named_modules()`` still show the real attribute
path ``module.<...>``.
"""

import difflib
from collections.abc import Sequence

import torch
import torch.nn as nn

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.models.base import ZooModel

WRAPPED = "module."


class FeatureModel(ZooModel):
    """A ``ZooModel`` view of any ``nn.Module``.

    Args:
        module: the model; ``module(x)`` must run its classifier on its pooled features.
        feature_layer: dotted name of the layer whose output, flattened to (n, d), is the
            penultimate pooled feature vector (e.g. ``"avgpool"``).
        classifier_layer: dotted name of the final ``nn.Linear`` (e.g. ``"fc"``); it must
            read d features.
        map_layer: optional dotted name of the layer whose output is the last feature map
            (e.g. ``"layer4"``, giving (n, C, H, W)); without it the map is the features.
        stage_layers: optional list of dotted layer names, shallowest first (e.g.
            ``["layer1", "layer2", "layer3"]``): the stages ``forward_stages`` returns
            (each output global-average-pooled; a layer called several times gives its
            last call's output) before the pooled features, stage ``"pool"``.

    ``model(x) -> (logits, features)``: logits (n, K) are the classifier's own output in
    the module's forward, features (n, d) the flattened feature layer output. When the
    module feeds the feature layer straight into the classifier (torchvision ResNets,
    any model in eval mode without extra layers in between),
    ``logits == model.classifier(features)`` exactly; a dropout in between makes the two
    differ in train mode, as it does in the module itself. A layer that returns a tuple
    (CRD's last blocks return ``(out, preact)``) contributes its first element.
    """

    def __init__(self, module: nn.Module, feature_layer: str, classifier_layer: str,
                 map_layer: str | None = None, stage_layers: Sequence[str] | None = None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise IJCKDError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        layers = dict(module.named_modules())
        self.feature_layer = _resolve(module, layers, feature_layer, "feature_layer")
        self.classifier_layer = _resolve(module, layers, classifier_layer, "classifier_layer")
        self.map_layer = None if map_layer is None else _resolve(module, layers, map_layer,
                                                                 "map_layer")
        if isinstance(stage_layers, str):
            raise IJCKDError(f"`stage_layers` must be a list of layer names, "
                             f"got the string {stage_layers!r}")
        names = [_resolve(module, layers, name, "stage_layers")
                 for name in (stage_layers or ())]
        if len(set(names)) != len(names) or "pool" in names:
            raise IJCKDError(f"`stage_layers` must name distinct layers other than 'pool', "
                             f"got {names!r}")
        self.stage_layers = {name: name for name in names}
        head = layers[self.classifier_layer]
        if not isinstance(head, nn.Linear):
            raise IJCKDError(f"`classifier_layer` {classifier_layer!r} must be an nn.Linear, "
                             f"got {type(head).__name__}")
        # The private registration functions: their public twins only exist in recent
        # torch (the package supports torch>=2.1); the hook signatures are the same.
        self._register_state_dict_hook(_strip_wrapper_prefix)
        self._register_load_state_dict_pre_hook(_add_wrapper_prefix, with_module=True)
        self.register_load_state_dict_post_hook(_report_unwrapped_keys)

    @property
    def classifier(self) -> nn.Linear:
        """The wrapped ``nn.Linear`` classifier (d -> K)."""
        return self.module.get_submodule(self.classifier_layer)

    def _stage_module(self, path):
        return self.module.get_submodule(path)

    def forward_with_map(self, x: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits (n, K), features (n, d), fmap)``; fmap is the map layer's
        output, or the features when no map layer was given."""
        wanted = {"features": self.feature_layer, "logits": self.classifier_layer}
        if self.map_layer is not None:
            wanted["fmap"] = self.map_layer
        captured = {}
        handles = []
        try:
            for role, name in wanted.items():
                layer = self.module.get_submodule(name)
                handles.append(layer.register_forward_hook(_capture(captured, role)))
            self.module(x)
        finally:
            # Hooks live only for this call, so copies (deepcopy, EMA teachers) and
            # direct calls of the wrapped module carry none.
            for handle in handles:
                handle.remove()
        for role, name in wanted.items():
            if role not in captured:
                raise IJCKDError(f"layer {name!r} ({role.replace('fmap', 'map')} layer) was not "
                                 f"called in the forward pass of {type(self.module).__name__}")
        features = captured["features"].flatten(1)
        if features.shape[1] != self.classifier.in_features:
            raise IJCKDError(
                f"`feature_layer` {self.feature_layer!r} must give (n, "
                f"{self.classifier.in_features}) features like the input of "
                f"`classifier_layer` {self.classifier_layer!r}, got {tuple(features.shape)}")
        fmap = captured.get("fmap", features)
        return captured["logits"], features, fmap

    def extra_repr(self) -> str:
        """The wrapped layer names, shown in ``repr``."""
        return (f"feature_layer={self.feature_layer!r}, classifier_layer="
                f"{self.classifier_layer!r}, map_layer={self.map_layer!r}, "
                f"stage_layers={list(self.stage_layers)!r}")


def _resolve(module, layers, name, argument):
    """Check that ``name`` names a submodule of ``module``; return it as a string."""
    if not isinstance(name, str) or name not in layers or name == "":
        valid = [n for n in layers if n]
        close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4)
        top = [n for n, _ in module.named_children()]
        hint = f"close names: {', '.join(close)}; " if close else ""
        raise IJCKDError(f"`{argument}` {name!r} is not a layer of {type(module).__name__} "
                         f"({hint}top-level layers: {', '.join(top)})")
    return name


def _capture(captured, role):
    def hook(layer, inputs, output):
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise IJCKDError(f"layer {type(layer).__name__} must return a tensor, "
                             f"got {type(output).__name__}")
        captured[role] = output

    return hook


def _strip_wrapper_prefix(wrapper, state_dict, prefix, local_metadata):
    """``<prefix>module.<key>`` -> ``<prefix><key>`` for every entry the wrapper wrote.

    The wrapper's entries are the last ones written, so popping and re-inserting them
    keeps the order of the whole state dict."""
    inner = prefix + WRAPPED
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_wrapper_prefix(wrapper, state_dict, prefix, local_metadata, strict, missing_keys,
                        unexpected_keys, error_msgs):
    """``<prefix><key>`` -> ``<prefix>module.<key>`` before loading (the inverse)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + WRAPPED + key[len(prefix):]] = state_dict.pop(key)
    # Remembered so the post hook can report missing/unexpected keys without "module.".
    wrapper._load_prefix = prefix


def _report_unwrapped_keys(wrapper, incompatible_keys):
    prefix = getattr(wrapper, "_load_prefix", "")
    inner = prefix + WRAPPED
    for keys in (incompatible_keys.missing_keys, incompatible_keys.unexpected_keys):
        keys[:] = [prefix + k[len(inner):] if k.startswith(inner) else k for k in keys]
