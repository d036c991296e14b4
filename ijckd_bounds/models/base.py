"""The one interface every model of the zoo follows.

``model(x) -> (logits, features)``: ``features`` (n, feature_dim) is the penultimate,
pooled vector that the final linear classifier ``model.classifier`` reads, so
``logits == model.classifier(features)``. ``model.forward_with_map(x)`` also returns the
last feature map (n, C, H, W), (n, C, L) or, for MLPs, the last hidden vector (n, D): what
FitNet/SimKD/IJCKD connectors read.

``model.forward_stages(x) -> (logits, [stage vectors])`` runs one forward pass and returns
the output of every stage (``model.stage_names``: each residual or conv stage, then
``"pool"``, the pooled features), each global-average-pooled to (n, C_i).
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ijckd_bounds.errors import IJCKDError

POOLED_STAGE = "pool"


class ZooModel(nn.Module):
    """Base class: subclasses define ``forward_map`` and ``self.classifier`` (nn.Linear).

    ``stage_layers``: ``{stage name: dotted submodule name}`` of the stages before the
    pooled features, shallowest first (a stage whose pooled output is the features, such
    as a ResNet's last stage, is left out: ``"pool"`` is that stage).
    """

    stage_layers = {}

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The last feature map (n, C, ...) of ``x`` (n, *input_shape), before pooling;
        ``features`` is its global average."""
        raise NotImplementedError

    @staticmethod
    def pool(fmap: torch.Tensor) -> torch.Tensor:
        """Global average pooling of a (n, C, ...) map to (n, C); vectors pass through."""
        if fmap.dim() == 2:
            return fmap
        return fmap.flatten(2).mean(dim=2)

    def forward_with_map(self, x: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits, features, fmap)``."""
        fmap = self.forward_map(x)
        features = self.pool(fmap)
        return self.classifier(features), features, fmap

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (n, K), features (n, d))`` of ``x`` (n, *input_shape)."""
        logits, features, _ = self.forward_with_map(x)
        return logits, features

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Names of the stages ``forward_stages`` returns, shallowest first."""
        return (*self.stage_layers, POOLED_STAGE)

    def _stage_module(self, path):
        return self.get_submodule(path)

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(logits (n, K), [stage (n, C_i) for each of stage_names])``.

        One forward pass; forward hooks on the stage layers pool each output as it is
        made (so an in-place op later in the network cannot change it), and the last
        entry is the pooled feature vector the classifier reads.
        """
        captured = {}
        handles = [self._stage_module(path).register_forward_hook(_pooled_capture(captured, name))
                   for name, path in self.stage_layers.items()]
        try:
            logits, features, _ = self.forward_with_map(x)
        finally:
            # hooks live only for this call, so copies and plain forwards carry none
            for handle in handles:
                handle.remove()
        missing = [name for name in self.stage_layers if name not in captured]
        if missing:
            raise IJCKDError(f"stage {missing[0]!r} (layer {self.stage_layers[missing[0]]!r}) "
                             f"was not called in the forward pass of {type(self).__name__}")
        return logits, [captured[name] for name in self.stage_layers] + [features]

    @property
    def feature_dim(self) -> int:
        """d, the width of the pooled features the classifier reads."""
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        """K, the number of classes the classifier predicts."""
        return self.classifier.out_features


def _pooled_capture(captured, name):
    def hook(layer, inputs, output):
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            raise IJCKDError(f"stage {name!r} ({type(layer).__name__}) must return a tensor "
                             f"(n, C, ...), got {getattr(output, 'shape', type(output).__name__)}")
        # a vector is copied: the network may still change its output in place
        captured[name] = output.clone() if output.dim() == 2 else ZooModel.pool(output)

    return hook


def pool_to(fmap: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Average-pool a (n, C, *spatial) map down to ``size`` (tuple of spatial sizes)."""
    if fmap.dim() == 3:
        return F.adaptive_avg_pool1d(fmap, size[0])
    if fmap.dim() == 4:
        return F.adaptive_avg_pool2d(fmap, tuple(size))
    return fmap
