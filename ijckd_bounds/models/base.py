"""The one interface every model of the zoo follows.

``model(x) -> (logits, features)``: ``features`` (n, feature_dim) is the penultimate,
pooled vector that the final linear classifier ``model.classifier`` reads, so
``logits == model.classifier(features)``. ``model.forward_with_map(x)`` also returns the
last feature map (n, C, H, W), (n, C, L) or, for MLPs, the last hidden vector (n, D): what
FitNet/SimKD/IJCKD connectors read.
"""

import torch.nn as nn
import torch.nn.functional as F


class ZooModel(nn.Module):
    """Base class: subclasses define ``forward_map`` and ``self.classifier`` (nn.Linear)."""

    def forward_map(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def pool(fmap):
        """Global average pooling of a (n, C, ...) map to (n, C); vectors pass through."""
        if fmap.dim() == 2:
            return fmap
        return fmap.flatten(2).mean(dim=2)

    def forward_with_map(self, x):
        """Return ``(logits, features, fmap)``."""
        fmap = self.forward_map(x)
        features = self.pool(fmap)
        return self.classifier(features), features, fmap

    def forward(self, x):
        logits, features, _ = self.forward_with_map(x)
        return logits, features

    @property
    def feature_dim(self):
        return self.classifier.in_features

    @property
    def num_classes(self):
        return self.classifier.out_features


def pool_to(fmap, size):
    """Average-pool a (n, C, *spatial) map down to ``size`` (tuple of spatial sizes)."""
    if fmap.dim() == 3:
        return F.adaptive_avg_pool1d(fmap, size[0])
    if fmap.dim() == 4:
        return F.adaptive_avg_pool2d(fmap, tuple(size))
    return fmap
