"""Image transforms in plain torch (no torchvision): normalisation and train-time augmentation.

Every transform takes one image (C, H, W) or a batch (N, C, H, W) and returns the same
shape. Random choices come from torch's global RNG (no private generator), so DataLoader's
per-worker seeding makes augmentation differ across workers and repeat across runs.
Transforms are plain classes (not lambdas) so DataLoader workers can pickle them.
"""

import torch
import torch.nn.functional as F

from ijckd_bounds.errors import IJCKDError


def _per_channel(values, what):
    values = torch.as_tensor(values, dtype=torch.float32).flatten()
    if values.numel() == 0 or not torch.isfinite(values).all():
        raise IJCKDError(f"`{what}` must hold finite numbers, got {values.tolist()}")
    return values


def _check_image(x, channels=None):
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise IJCKDError(f"`x` must have shape (C, H, W) or (N, C, H, W), got {shape}")
    if channels not in (None, 1) and x.shape[-3] != channels:
        raise IJCKDError(f"`x` must have {channels} channels, got shape {tuple(x.shape)}")


class Normalize:
    """``(x - mean) / std`` per channel, for (C, H, W) or (N, C, H, W) images in [0, 1]."""

    def __init__(self, mean, std):
        self.mean = _per_channel(mean, "mean")
        self.std = _per_channel(std, "std")
        if self.mean.numel() != self.std.numel() or (self.std <= 0).any():
            raise IJCKDError(f"`std` must be positive and as long as `mean`, got "
                             f"{self.std.tolist()} for mean {self.mean.tolist()}")

    def __call__(self, x):
        """``(x - mean) / std`` per channel of ``x`` (C, H, W) or (n, C, H, W)."""
        _check_image(x, len(self.mean))
        shape = (-1, 1, 1)
        return (x - self.mean.view(shape).to(x)) / self.std.view(shape).to(x)

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Pad by ``padding`` on every side with ``fill``, then crop ``size`` x ``size`` at a
    uniformly random offset (one offset per image in a batch).

    ``fill`` is a scalar or one value per channel. On normalised images the standard CIFAR
    recipe pads with black pixels, i.e. ``fill = -mean / std``, not with 0.
    """

    def __init__(self, size, padding=0, fill=0.0):
        self.size = int(size)
        self.padding = int(padding)
        if self.size < 1 or self.padding < 0:
            raise IJCKDError(f"RandomCrop needs size >= 1 and padding >= 0, "
                             f"got size={size}, padding={padding}")
        self.fill = _per_channel(fill, "fill")

    def pad(self, x):
        """``x`` (..., C, H, W) padded to (..., C, H + 2p, W + 2p) with the fill value."""
        p = self.padding
        if p == 0:
            return x
        # Pad with zeros then add the fill only on the border, so each channel gets its own value.
        padded = F.pad(x, (p, p, p, p))
        border = torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device)
        border = F.pad(~border, (p, p, p, p), value=True)
        fill = self.fill.to(x).view(-1, 1, 1)
        return padded + border * fill

    def __call__(self, x):
        """A random ``size`` x ``size`` crop of ``x`` (C, H, W) or (n, C, H, W) padded by
        ``padding``; one offset per image."""
        _check_image(x)
        height, width = x.shape[-2:]
        if height + 2 * self.padding < self.size or width + 2 * self.padding < self.size:
            raise IJCKDError(f"RandomCrop({self.size}) is larger than the padded image "
                             f"{height + 2 * self.padding}x{width + 2 * self.padding}")
        padded = self.pad(x)
        span_h = padded.shape[-2] - self.size + 1
        span_w = padded.shape[-1] - self.size + 1
        rows = torch.arange(self.size, device=x.device)
        if x.dim() == 3:
            top = int(torch.randint(span_h, ()))
            left = int(torch.randint(span_w, ()))
            return padded[:, top:top + self.size, left:left + self.size]
        n = x.shape[0]
        top = torch.randint(span_h, (n,)).to(x.device)
        left = torch.randint(span_w, (n,)).to(x.device)
        row_idx = (top[:, None] + rows)[:, :, None]  # (n, size, 1)
        col_idx = (left[:, None] + rows)[:, None, :]  # (n, 1, size)
        batch_idx = torch.arange(n, device=x.device)[:, None, None]
        # Advanced indexing puts the indexed dims first: (n, size, size, C) -> (n, C, size, size).
        return padded.permute(0, 2, 3, 1)[batch_idx, row_idx, col_idx].permute(0, 3, 1, 2)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror the width axis with probability ``p`` (independently per image in a batch)."""

    def __init__(self, p=0.5):
        self.p = float(p)
        if not 0.0 <= self.p <= 1.0:
            raise IJCKDError(f"flip probability must lie in [0, 1], got {p}")

    def __call__(self, x):
        """``x`` (C, H, W) or (n, C, H, W) with the width axis mirrored with probability
        ``p`` per image; always a new tensor."""
        _check_image(x)
        if x.dim() == 3:
            return x.flip(-1) if float(torch.rand(())) < self.p else x.clone()
        flip = (torch.rand(x.shape[0]) < self.p).to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        """``x`` passed through every transform in order."""
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self):
        return f"Compose({', '.join(map(repr, self.transforms))})"


def crop_flip(size, padding, mean, std):
    """The standard CIFAR train augmentation for images already normalised with
    ``mean``/``std``: RandomCrop(size, padding) padding with black, then a random flip."""
    mean = _per_channel(mean, "mean")
    std = _per_channel(std, "std")
    return Compose([RandomCrop(size, padding, fill=-mean / std), RandomHorizontalFlip(0.5)])


__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip", "crop_flip"]
