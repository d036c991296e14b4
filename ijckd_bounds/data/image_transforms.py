"""ImageNet-style image transforms on PIL images, without torchvision.

The two standard pipelines (``imagenet_train_transform``, ``imagenet_eval_transform``)
and their pieces follow torchvision's semantics exactly, so a model trained with
torchvision's recipe sees the same pixels here:

- ``Resize(size)``: the shorter side becomes ``size``, the longer one
  ``int(size * long / short)`` (truncated, aspect kept), PIL bilinear; an image whose
  shorter side already is ``size`` is returned as it is.
- ``CenterCrop(size)``: top-left corner at ``int(round((H - size) / 2.0))`` (Python's
  round: halves go to even), zero padding (torchvision's split: the smaller half first)
  where the image is smaller than the crop.
- ``RandomResizedCrop(size, scale, ratio)``: up to 10 attempts to draw an area fraction
  in ``scale`` and a log-uniform aspect ratio in ``ratio`` whose rounded box fits, then
  the central crop with the aspect ratio clamped into ``ratio``; the box is cropped and
  resized to ``size`` x ``size`` with PIL bilinear. The random draws are torchvision's
  own, in its order (float32 uniforms, then ``randint`` for the corner), so the same
  torch seed gives the same boxes.
- ``RandomHorizontalFlip(p)``: one ``torch.rand`` draw per image, flip when below ``p``.
- ``ToTensor``: (H, W, C) uint8 -> (C, H, W) float32 in [0, 1]; then
  ``data.transforms.Normalize`` with the ImageNet mean and std.

Randomness comes from torch's global RNG (which DataLoader seeds per worker), or from
an explicit ``generator`` for tests. Transforms are plain classes, so DataLoader workers
can pickle them. This module registers no dataset, and Pillow is imported only when an
image is touched, so importing it (the dataset registry imports every data module) works
without Pillow.
"""

import math

import numpy as np
import torch

from ijckd_bounds.data.transforms import Compose, Normalize
from ijckd_bounds.errors import IJCKDError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pil_image_module():
    """``PIL.Image``, or a one-line IJCKDError saying how to install Pillow."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise IJCKDError("image datasets need Pillow: pip install pillow") from None
    return Image


def _check_pil(img, who):
    Image = pil_image_module()
    if not isinstance(img, Image.Image):
        raise IJCKDError(f"{who} takes a PIL image, got {type(img).__name__}")
    return Image


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise IJCKDError(f"`{what}` must be a positive integer, got {value!r}")
    return int(value)


def _ordered_pair(values, what):
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise IJCKDError(f"`{what}` must be two numbers (low, high), got {values!r}") from None
    if not 0.0 < low <= high or not math.isfinite(high):
        raise IJCKDError(f"`{what}` must satisfy 0 < low <= high, got ({low}, {high})")
    return low, high


def crop(img, top, left, height, width):
    """The ``height`` x ``width`` window of ``img`` at (``top``, ``left``); parts outside
    the image are black (PIL fills them with zeros)."""
    return img.crop((left, top, left + width, top + height))


def shorter_side_size(height, width, size):
    """``(new_height, new_width)`` with the shorter side ``size`` and the longer side
    ``int(size * long / short)``, as torchvision's ``Resize(int)`` computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


class Resize:
    """Resize a PIL image so its shorter side is ``size`` (aspect kept, PIL bilinear)."""

    def __init__(self, size):
        self.size = _positive_int(size, "size")

    def __call__(self, img):
        """``img`` resized (bilinear) so that its shorter side is ``size``; unchanged when it
        already is."""
        Image = _check_pil(img, "Resize")
        width, height = img.size
        new_height, new_width = shorter_side_size(height, width, self.size)
        if (new_height, new_width) == (height, width):
            return img
        return img.resize((new_width, new_height), Image.Resampling.BILINEAR)

    def __repr__(self):
        return f"Resize(size={self.size})"


class CenterCrop:
    """Crop the central ``size`` x ``size`` window of a PIL image (zero-padded where the
    image is smaller)."""

    def __init__(self, size):
        self.size = _positive_int(size, "size")

    @staticmethod
    def offset(length, crop_length):
        """Start of the crop along one axis of ``length`` pixels. When the crop is larger,
        torchvision first pads ``(crop - length) // 2`` pixels before the image, which puts
        the crop's start that many pixels before the image's."""
        if crop_length > length:
            return -((crop_length - length) // 2)
        return int(round((length - crop_length) / 2.0))

    def box(self, height, width):
        """``(top, left, height, width)`` of the crop for an image of that size."""
        return self.offset(height, self.size), self.offset(width, self.size), self.size, self.size

    def __call__(self, img):
        """The central ``size`` x ``size`` window of ``img`` (zero-padded where it is smaller)."""
        _check_pil(img, "CenterCrop")
        width, height = img.size
        return crop(img, *self.box(height, width))

    def __repr__(self):
        return f"CenterCrop(size={self.size})"


class RandomResizedCrop:
    """Crop a random box of random area and aspect ratio, resized to ``size`` x ``size``.

    Args:
        size: output side in pixels.
        scale: (low, high) range of the box area as a fraction of the image area.
        ratio: (low, high) range of the box aspect ratio (width / height), drawn
            log-uniformly.
    """

    ATTEMPTS = 10

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        self.size = _positive_int(size, "size")
        self.scale = _ordered_pair(scale, "scale")
        self.ratio = _ordered_pair(ratio, "ratio")

    def get_params(self, height, width, generator=None):
        """``(top, left, box_height, box_width)`` of a random box inside a
        ``height`` x ``width`` image, drawn from ``generator`` (default: torch's global RNG).
        """
        area = height * width
        # torchvision keeps the log-ratio bounds and the uniform draws in float32; doing
        # the same keeps the boxes identical for the same seed.
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(self.ATTEMPTS):
            target_area = area * torch.empty(1).uniform_(
                self.scale[0], self.scale[1], generator=generator).item()
            aspect_ratio = torch.exp(torch.empty(1).uniform_(
                float(log_ratio[0]), float(log_ratio[1]), generator=generator)).item()
            box_width = int(round(math.sqrt(target_area * aspect_ratio)))
            box_height = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < box_width <= width and 0 < box_height <= height:
                top = torch.randint(0, height - box_height + 1, size=(1,),
                                    generator=generator).item()
                left = torch.randint(0, width - box_width + 1, size=(1,),
                                     generator=generator).item()
                return top, left, box_height, box_width
        # No attempt fitted: the largest central box whose aspect ratio lies in `ratio`.
        image_ratio = width / height
        if image_ratio < min(self.ratio):
            box_width = width
            box_height = int(round(box_width / min(self.ratio)))
        elif image_ratio > max(self.ratio):
            box_height = height
            box_width = int(round(box_height * max(self.ratio)))
        else:
            box_width, box_height = width, height
        return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width

    def __call__(self, img, generator=None):
        """A random box of ``img`` (``get_params`` with ``generator``), resized bilinearly to
        ``size`` x ``size``."""
        Image = _check_pil(img, "RandomResizedCrop")
        width, height = img.size
        top, left, box_height, box_width = self.get_params(height, width, generator)
        box = crop(img, top, left, box_height, box_width)
        return box.resize((self.size, self.size), Image.Resampling.BILINEAR)

    def __repr__(self):
        return (f"RandomResizedCrop(size={self.size}, scale={self.scale}, "
                f"ratio={tuple(round(r, 4) for r in self.ratio)})")


class RandomHorizontalFlip:
    """Mirror a PIL image left-right with probability ``p`` (one ``torch.rand`` draw)."""

    def __init__(self, p=0.5):
        self.p = float(p)
        if not 0.0 <= self.p <= 1.0:
            raise IJCKDError(f"flip probability must lie in [0, 1], got {p}")

    def __call__(self, img, generator=None):
        """``img`` mirrored left-right with probability ``p`` (one draw from ``generator``)."""
        Image = _check_pil(img, "RandomHorizontalFlip")
        if torch.rand(1, generator=generator).item() < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class ToTensor:
    """PIL image (mode RGB or L) -> float32 tensor (C, H, W) with values in [0, 1]."""

    def __call__(self, img):
        """``img`` (RGB or L) as a float32 tensor (C, H, W) with values in [0, 1]."""
        _check_pil(img, "ToTensor")
        if img.mode not in ("RGB", "L"):
            raise IJCKDError(f"ToTensor takes RGB or L images, got mode {img.mode!r}; "
                             f"convert it first")
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8))
        if pixels.dim() == 2:
            pixels = pixels.unsqueeze(-1)
        return pixels.permute(2, 0, 1).contiguous().float().div_(255.0)

    def __repr__(self):
        return "ToTensor()"


def imagenet_train_transform(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """PIL image -> (3, image_size, image_size) float32: RandomResizedCrop(image_size,
    scale=(0.08, 1), ratio=(3/4, 4/3)), random horizontal flip, ToTensor, Normalize."""
    return Compose([RandomResizedCrop(image_size), RandomHorizontalFlip(0.5), ToTensor(),
                    Normalize(mean, std)])


def imagenet_eval_transform(image_size=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """PIL image -> (3, image_size, image_size) float32: Resize(resize) (shorter side),
    CenterCrop(image_size), ToTensor, Normalize."""
    return Compose([Resize(resize), CenterCrop(image_size), ToTensor(), Normalize(mean, std)])


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CenterCrop", "RandomHorizontalFlip",
           "RandomResizedCrop", "Resize", "ToTensor", "crop", "imagenet_eval_transform",
           "imagenet_train_transform", "pil_image_module", "shorter_side_size"]
