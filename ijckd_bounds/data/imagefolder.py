"""``imagenet`` and ``imagefolder``: images in class folders, decoded on demand with Pillow.

``data_dir`` holds torchvision's ImageFolder layout twice::

    data_dir/train/<class>/.../<image>      data_dir/val/<class>/.../<image>

Classes are the sorted folder names of ``train/`` (for ImageNet the WordNet ids, which
gives the class indices of torchvision's pretrained weights); ``val/`` must hold the same
class folders. Images are the files with an image extension (``IMAGE_EXTENSIONS``, any
case) anywhere below a class folder, in sorted path order (torchvision's order). Hidden
files and folders (names starting with ``.``, e.g. macOS ``._x.JPEG`` forks) are skipped.

Splits (each a ``ImageFolderSplit`` yielding ``(x, y)``, ``x`` float32
(3, image_size, image_size), ``y`` an int64 scalar):

- ``train``: every image of ``train/``, with RandomResizedCrop + flip (``augment=True``)
  or the evaluation transform (``augment=False``).
- ``fit`` and ``eval``: a seeded, class-stratified split of ``val/`` (``fit_fraction`` of
  it, default 0.5, to ``fit``), so what the estimators fit never sees an evaluation image;
  or, with ``fit_dir=...`` (a folder of class folders, relative paths taken from
  ``data_dir``), ``fit`` is that folder and ``eval`` all of ``val/``. Both use the
  evaluation transform: Resize(``resize``, shorter side) + CenterCrop(``image_size``).

Every image is normalised with ``mean``/``std`` (ImageNet's by default). Images are never
held in memory: a split keeps the root folder, the relative paths (one numpy bytes array,
which DataLoader workers share without copying) and the labels, and decodes an image to
RGB when it is indexed. Splits pickle without open files, so DataLoader workers can use
them.

``imagenet`` is ``imagefolder`` with ImageNet's normalisation and a check for exactly
1,000 classes; use ``imagefolder`` for subsets such as ImageNet-100.
"""

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ijckd_bounds.data import DATASETS
from ijckd_bounds.data.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_eval_transform,
    imagenet_train_transform,
    pil_image_module,
)
from ijckd_bounds.data.splits import (
    DatasetSplits,
    check_seed,
    reject_unknown_options,
    stratified_split,
)
from ijckd_bounds.errors import IJCKDError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_NUM_CLASSES = 1000


def is_image_file(name):
    """Whether file ``name`` counts as an image: not hidden, an image extension."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def load_rgb(path):
    """Decode the image at ``path`` into an RGB PIL image, or a one-line IJCKDError."""
    Image = pil_image_module()
    try:
        with open(path, "rb") as fh, Image.open(fh) as img:
            return img.convert("RGB")  # convert() also reads the pixels before the file closes
    except Exception as exc:  # Pillow raises many types for truncated or foreign files
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise IJCKDError(f"image {str(path)!r} cannot be decoded "
                         f"({type(exc).__name__}{': ' + detail if detail else ''})") from None


def class_folders(directory):
    """Sorted names of the (non-hidden) class folders in ``directory``.

    Image files lying directly in ``directory`` are an error: ImageFolder would ignore
    them silently, and an unsorted ImageNet ``val/`` (the official archive is flat) is the
    usual cause.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise IJCKDError(f"{str(directory)!r} is not a folder; expected class folders "
                         f"<class>/<image> in it")
    names, loose = [], 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                names.append(entry.name)
            elif is_image_file(entry.name):
                loose += 1
    if loose:
        hint = (" (sort ImageNet's flat val/ into <wnid>/ folders first, e.g. with the "
                "valprep.sh script)" if not names else "")
        raise IJCKDError(f"{str(directory)!r} holds {loose} image file(s) outside class "
                         f"folders; every image must sit in a <class>/ folder{hint}")
    if not names:
        raise IJCKDError(f"{str(directory)!r} holds no class folders; expected "
                         f"<class>/<image>")
    return tuple(sorted(names))


def check_same_classes(expected, found, where):
    """``found`` (class folder names of ``where``) must equal ``expected`` (train's)."""
    if tuple(found) == tuple(expected):
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    parts = []
    if missing:
        parts.append(f"missing {', '.join(map(repr, missing[:3]))}"
                     f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}")
    if extra:
        parts.append(f"unexpected {', '.join(map(repr, extra[:3]))}"
                     f"{f' and {len(extra) - 3} more' if len(extra) > 3 else ''}")
    raise IJCKDError(f"{str(where)!r} must have the same class folders as train/ "
                     f"({len(expected)}), but has {'; '.join(parts)}")


def scan_images(directory, class_names):
    """Every image below ``directory/<class>`` for each class in ``class_names``.

    Returns:
        ``(relative_paths, labels)``: (n,) numpy bytes array of paths relative to
        ``directory`` (``os.fsencode``d) and (n,) int64 labels, the index of each image's
        class in ``class_names``. Order: classes in order, then sorted paths.
    """
    directory = Path(directory)
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = directory / name
        found = 0
        walked = []
        # followlinks: ImageNet folders are often assembled from symlinks.
        for folder, subfolders, files in os.walk(class_dir, followlinks=True):
            subfolders[:] = [s for s in subfolders if not s.startswith(".")]  # prunes the walk
            walked.append((folder, files))
        # Sorting the folders by path, then the files in each, is torchvision's order.
        for folder, files in sorted(walked):
            for file_name in sorted(files):
                if is_image_file(file_name):
                    paths.append(os.fsencode(os.path.relpath(os.path.join(folder, file_name),
                                                             directory)))
                    found += 1
        if found == 0:
            raise IJCKDError(f"class folder {str(class_dir)!r} holds no images (extensions: "
                             f"{', '.join(IMAGE_EXTENSIONS)})")
        labels.append(np.full(found, label, dtype=np.int64))
    return np.array(paths, dtype=np.bytes_), np.concatenate(labels)


class ImageFolderSplit(Dataset):
    """Images on disk with their labels, decoded and transformed when indexed.

    Args:
        root: folder the paths are relative to.
        relative_paths: (n,) numpy bytes array of image paths below ``root``.
        labels: (n,) int64 class indices.
        transform: PIL RGB image -> float32 tensor of shape ``input_shape`` (a plain,
            picklable callable; random transforms draw from torch's global RNG).
        input_shape: the shape ``transform`` produces, e.g. (3, 224, 224).
        indices: (n,) positions of these images in the folder they were cut from
            (``source``); default ``arange(n)``.

    ``split[i]`` is ``(x, y)``: ``x`` float32 of ``input_shape``, ``y`` an int64 scalar.
    ``split.labels`` is the (n,) int64 label tensor; ``split.path(i)`` the image's path.
    """

    def __init__(self, root, relative_paths, labels, *, transform, input_shape, indices=None,
                 source=None):
        relative_paths = np.asarray(relative_paths)
        labels = np.asarray(labels)
        if relative_paths.ndim != 1 or relative_paths.dtype.kind != "S":
            raise IJCKDError(f"`relative_paths` must be a (n,) numpy bytes array, got "
                             f"{relative_paths.dtype} {relative_paths.shape}")
        if labels.shape != relative_paths.shape or labels.dtype.kind not in "iu":
            raise IJCKDError(f"`labels` must be ({len(relative_paths)},) integers like "
                             f"`relative_paths`, got {labels.dtype} {labels.shape}")
        if not callable(transform):
            raise IJCKDError(f"`transform` must be callable, got {type(transform).__name__}")
        self.root = str(root)
        self.relative_paths = relative_paths
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform
        self.input_shape = tuple(int(s) for s in input_shape)
        self.indices = (np.arange(len(labels), dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        if self.indices.shape != labels.shape:
            raise IJCKDError(f"`indices` must have shape {labels.shape}, "
                             f"got {self.indices.shape}")
        self.source = source

    def __len__(self):
        return len(self.relative_paths)

    def path(self, item):
        """Full path of image ``item``."""
        return os.path.join(self.root, os.fsdecode(self.relative_paths[int(item)]))

    def __getitem__(self, item):
        item = int(item)
        x = self.transform(load_rgb(self.path(item)))
        return x, self.labels[item]

    def class_counts(self, num_classes):
        """(num_classes,) int64 numpy array: how many images of each class."""
        return np.bincount(self.labels.numpy(), minlength=num_classes)

    def subset(self, positions, transform=None):
        """The images at ``positions`` (int array into this split), as a new split
        (with ``transform`` if given); their ``indices`` stay those of the source folder."""
        positions = np.asarray(positions, dtype=np.int64)
        return ImageFolderSplit(self.root, self.relative_paths[positions],
                                self.labels.numpy()[positions],
                                transform=self.transform if transform is None else transform,
                                input_shape=self.input_shape, indices=self.indices[positions],
                                source=self.source)

    def with_transform(self, transform):
        """The same images with another transform (e.g. the train split without
        augmentation, for feature extraction)."""
        return self.subset(np.arange(len(self)), transform)

    def __repr__(self):
        return (f"ImageFolderSplit(n={len(self)}, root={self.root!r}, "
                f"input_shape={self.input_shape}, transform={self.transform!r})")


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise IJCKDError(f"`{what}` must be a positive integer, got {value!r}")
    return int(value)


def _check_options(name, fit_fraction, fit_dir, image_size, resize, augment):
    image_size = _positive_int(image_size, "image_size")
    resize = _positive_int(resize, "resize")
    if resize < image_size:
        raise IJCKDError(f"dataset {name!r}: `resize` ({resize}) must be at least `image_size` "
                         f"({image_size}), or the center crop would be padded with black")
    if not isinstance(augment, bool):
        raise IJCKDError(f"dataset {name!r}: `augment` must be true or false, got {augment!r}")
    if fit_dir is not None and fit_fraction is not None:
        raise IJCKDError(f"dataset {name!r}: give `fit_fraction` (a part of val/) or `fit_dir` "
                         f"(a separate folder), not both")
    if fit_dir is None:
        fit_fraction = 0.5 if fit_fraction is None else fit_fraction
        if isinstance(fit_fraction, bool) or not isinstance(fit_fraction, (int, float)) \
                or not 0.0 < fit_fraction < 1.0:
            raise IJCKDError(f"dataset {name!r}: `fit_fraction` must lie in (0, 1), "
                             f"got {fit_fraction!r}")
    return fit_fraction, image_size, resize


def load_image_folder(name, seed=0, data_dir=None, *, fit_fraction=None, fit_dir=None,
                      image_size=224, resize=256, augment=True, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, required_classes=None):
    """Build the splits of an ImageFolder dataset (see the module docstring).

    ``required_classes``: if given, the exact number of class folders ``train/`` must hold.
    """
    seed = check_seed(seed)
    fit_fraction, image_size, resize = _check_options(name, fit_fraction, fit_dir, image_size,
                                                      resize, augment)
    if data_dir is None:
        raise IJCKDError(f"dataset {name!r} needs data_dir: a folder holding train/<class>/ "
                         f"and val/<class>/ image folders")
    root = Path(data_dir).expanduser()
    train_dir, val_dir = root / "train", root / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise IJCKDError(f"dataset {name!r}: {str(folder)!r} not found; data_dir must "
                             f"hold train/<class>/ and val/<class>/ image folders")
    class_names = class_folders(train_dir)
    if required_classes is not None and len(class_names) != required_classes:
        raise IJCKDError(f"dataset {name!r} needs {required_classes} class folders in "
                         f"{str(train_dir)!r}, found {len(class_names)}; use dataset "
                         f"'imagefolder' for other class sets")
    check_same_classes(class_names, class_folders(val_dir), val_dir)

    eval_transform = imagenet_eval_transform(image_size, resize, mean, std)
    train_transform = imagenet_train_transform(image_size, mean, std) if augment \
        else eval_transform
    input_shape = (3, image_size, image_size)

    def folder_split(folder, transform):
        paths, labels = scan_images(folder, class_names)
        return ImageFolderSplit(folder, paths, labels, transform=transform,
                                input_shape=input_shape, source=f"{name}/{folder.name}")

    train = folder_split(train_dir, train_transform)
    val = folder_split(val_dir, eval_transform)
    if fit_dir is None:
        fit_idx, eval_idx = stratified_split(val.labels.numpy(),
                                             (fit_fraction, 1.0 - fit_fraction), seed=seed)
        fit, evaluation = val.subset(fit_idx), val.subset(eval_idx)
    else:
        fit_root = Path(fit_dir).expanduser()
        fit_root = fit_root if fit_root.is_absolute() else root / fit_root
        if not fit_root.is_dir():
            raise IJCKDError(f"dataset {name!r}: fit_dir {str(fit_root)!r} is not a folder")
        for other in (val_dir, train_dir):
            if fit_root.resolve() == other.resolve():
                raise IJCKDError(f"dataset {name!r}: fit_dir {str(fit_root)!r} is "
                                 f"{other.name}/ itself; the fit split must be disjoint from "
                                 f"eval (val/) and train/")
        check_same_classes(class_names, class_folders(fit_root), fit_root)
        fit, evaluation = folder_split(fit_root, eval_transform), val
    return DatasetSplits(name, train, fit, evaluation, num_classes=len(class_names),
                         input_shape=input_shape, class_names=class_names)


_COMMON_OPTIONS = ["augment", "fit_dir", "fit_fraction", "image_size", "resize"]


@DATASETS.register("imagefolder")
def imagefolder(seed=0, data_dir=None, *, fit_fraction=None, fit_dir=None, image_size=224,
                resize=256, augment=True, mean=IMAGENET_MEAN, std=IMAGENET_STD, **unknown):
    """Any ImageFolder tree (train/ and val/ class folders) with the ImageNet recipe:
    RandomResizedCrop(``image_size``) + flip for train, Resize(``resize``) +
    CenterCrop(``image_size``) for fit/eval, normalised with ``mean``/``std``."""
    reject_unknown_options("imagefolder", unknown, sorted(_COMMON_OPTIONS + ["mean", "std"]))
    return load_image_folder("imagefolder", seed, data_dir, fit_fraction=fit_fraction,
                             fit_dir=fit_dir, image_size=image_size, resize=resize,
                             augment=augment, mean=mean, std=std)


@DATASETS.register("imagenet")
def imagenet(seed=0, data_dir=None, *, fit_fraction=None, fit_dir=None, image_size=224,
             resize=256, augment=True, **unknown):
    """ILSVRC-2012 (1,000 classes) from ``data_dir/train`` and ``data_dir/val`` sorted into
    class folders; fit/eval are halves of val/ unless ``fit_dir`` names another folder."""
    reject_unknown_options("imagenet", unknown, _COMMON_OPTIONS)
    return load_image_folder("imagenet", seed, data_dir, fit_fraction=fit_fraction,
                             fit_dir=fit_dir, image_size=image_size, resize=resize,
                             augment=augment, required_classes=IMAGENET_NUM_CLASSES)


__all__ = ["IMAGE_EXTENSIONS", "IMAGENET_NUM_CLASSES", "ImageFolderSplit", "class_folders",
           "imagefolder", "imagenet", "is_image_file", "load_image_folder", "load_rgb",
           "scan_images"]
