"""``cifar10`` and ``cifar100``: the standard "python version" archives, read without running code.

``data_dir`` holds either the archive (``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz``) or its extracted folder (``cifar-10-batches-py`` /
``cifar-100-python``); ``data_dir`` may also be that folder itself. A missing archive is
downloaded from the official URL into ``data_dir`` (md5 checked, written atomically).

The batches are Python pickles. They are read by ``SafeUnpickler``, which only rebuilds
dicts, lists, strings, numbers and numpy arrays: a pickle that names any other callable
(``os.system``, ``builtins.eval``, ...) is refused before anything runs.

Splits: ``train`` = the 50,000 training images with RandomCrop(32, padding 4) + horizontal
flip; ``fit`` and ``eval`` = a seeded, class-stratified split of the 10,000 test images
(``fit_fraction`` to ``fit``). Images are (3, 32, 32) float32, normalised per channel with
the usual CIFAR statistics. All splits are held in memory as float32 (about 740 MB).
"""

import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ijckd_bounds.data import DATASETS
from ijckd_bounds.data.splits import (
    DatasetSplits,
    TensorSplit,
    check_seed,
    reject_unknown_options,
    stratified_split,
)
from ijckd_bounds.data.transforms import Normalize, crop_flip
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import atomic_path

CIFAR_SIDE = 32
CIFAR_PIXELS = 3 * CIFAR_SIDE * CIFAR_SIDE


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant keeps what, and how it is normalised."""

    name: str
    archive: str
    folder: str
    url: str
    md5: str
    train_files: tuple
    test_files: tuple
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple
    std: tuple


CIFAR_SPECS = {
    "cifar10": CifarSpec(
        name="cifar10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_key="labels", names_key="label_names", num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSpec(
        name="cifar100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",), test_files=("test",), meta_file="meta",
        label_key="fine_labels", names_key="fine_label_names", num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


def _allowed_globals():
    """The only callables a CIFAR pickle may name: numpy array reconstruction and plain
    container/scalar types. Old pickles say ``numpy.core``, numpy >= 2 ``numpy._core``."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 spellings
        for name, kind in (("dict", dict), ("list", list), ("str", str), ("bytes", bytes),
                           ("int", int)):
            allowed[(module, name)] = kind
    return allowed


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a callable outside the allow-list."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild data: every global outside a short allow-list
    (numpy array reconstruction, dict/list/str/bytes/int) raises ``UnpicklingError``."""

    ALLOWED = _allowed_globals()

    def find_class(self, module, name):
        """The allowed global ``module.name``; anything else raises ``RefusedGlobal``."""
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"refusing to load global '{module}.{name}'") from None


def load_pickle_safely(stream, *, what):
    """Unpickle ``stream`` (a binary file object) with ``SafeUnpickler``.

    Python 2 pickles (the CIFAR files) are decoded as latin-1, which numpy expects for the
    raw bytes of its arrays. Any failure is one IJCKDError line naming ``what``.
    """
    try:
        return SafeUnpickler(stream, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise IJCKDError(f"{what} is not a plain-data pickle ({exc}); it was not loaded") from None
    except Exception as exc:  # truncated or corrupt streams raise many types
        raise IJCKDError(f"{what} is corrupt or not a pickle ({type(exc).__name__}: "
                         f"{str(exc)[:120]})") from None


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _as_str_keys(obj, what):
    if not isinstance(obj, dict):
        raise IJCKDError(f"{what} must hold a dict, got {type(obj).__name__}")
    return {_text(key): value for key, value in obj.items()}


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_archive(spec, destination):
    """Download ``spec.url`` to ``destination`` atomically and check its md5.

    A network failure or a wrong checksum is an IJCKDError saying where to put the file;
    no partial file is left behind either way.
    """
    import urllib.error
    import urllib.request

    where = (f"download {spec.url} yourself and put it at {str(destination)!r} "
             f"(or its extracted folder {spec.folder!r} beside it)")
    try:
        with atomic_path(destination) as tmp:
            digest = hashlib.md5()
            with urllib.request.urlopen(spec.url, timeout=60) as response, open(tmp, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != spec.md5:
                raise IJCKDError(f"downloaded {spec.archive} has md5 {digest.hexdigest()}, "
                                 f"expected {spec.md5}; {where}")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise IJCKDError(f"could not download {spec.name} ({reason}); {where}") from None
    return destination


def _locate(spec, data_dir, download):
    """``('dir', folder)`` or ``('tar', archive)`` for the files of ``spec``."""
    if data_dir is None:
        raise IJCKDError(f"dataset {spec.name!r} needs data_dir: a folder holding "
                         f"{spec.archive} or its extracted {spec.folder!r} (downloaded there "
                         f"if missing)")
    data_dir = Path(data_dir).expanduser()
    for folder in (data_dir / spec.folder, data_dir):
        if (folder / spec.train_files[0]).is_file():
            return "dir", folder
    archive = data_dir / spec.archive
    if archive.is_file():
        return "tar", archive
    if not download:
        raise IJCKDError(f"{spec.archive} not found in {str(data_dir)!r}; download {spec.url} "
                         f"and put it there (or pass download=True)")
    return "tar", download_archive(spec, archive)


def read_cifar_files(spec, data_dir, *, download=True):
    """{file name: unpickled dict with str keys} for the train, test and meta files."""
    kind, location = _locate(spec, data_dir, download)
    names = (*spec.train_files, *spec.test_files, spec.meta_file)
    out = {}
    if kind == "dir":
        for name in names:
            path = location / name
            if not path.is_file():
                raise IJCKDError(f"{spec.name} folder {str(location)!r} lacks {name!r}")
            with open(path, "rb") as fh:
                out[name] = _as_str_keys(load_pickle_safely(fh, what=f"{str(path)!r}"),
                                         f"{str(path)!r}")
        return out
    what = f"{spec.name} archive {str(location)!r}"
    try:
        with tarfile.open(location, "r:gz") as archive:
            for name in names:
                # Read members by their exact name, never extract: no path can escape data_dir.
                try:
                    member = archive.getmember(f"{spec.folder}/{name}")
                except KeyError:
                    raise IJCKDError(f"{what} lacks {spec.folder}/{name}") from None
                if not member.isfile():
                    raise IJCKDError(f"{what}: {member.name} is not a regular file")
                stream = io.BytesIO(archive.extractfile(member).read())
                out[name] = _as_str_keys(load_pickle_safely(stream, what=f"{what}:{member.name}"),
                                         f"{what}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IJCKDError(f"{what} is not a readable .tar.gz ({exc})") from None
    return out


def _images_and_labels(batches, spec, files):
    """Stack batches into (n, 3, 32, 32) uint8 images and (n,) int64 labels, checking them."""
    images, labels = [], []
    for name in files:
        batch = batches[name]
        what = f"{spec.name} file {name!r}"
        if "data" not in batch or spec.label_key not in batch:
            raise IJCKDError(f"{what} must hold 'data' and {spec.label_key!r}, "
                             f"got keys {sorted(batch)}")
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != CIFAR_PIXELS:
            raise IJCKDError(f"{what}: 'data' must be a uint8 array of shape (n, {CIFAR_PIXELS}), "
                             f"got {getattr(data, 'dtype', type(data).__name__)} "
                             f"{getattr(data, 'shape', '')}")
        label = np.asarray(batch[spec.label_key])
        if label.shape != (len(data),) or not np.issubdtype(label.dtype, np.integer):
            raise IJCKDError(f"{what}: {spec.label_key!r} must be {len(data)} integers, "
                             f"got shape {label.shape} of {label.dtype}")
        if label.min(initial=0) < 0 or label.max(initial=0) >= spec.num_classes:
            raise IJCKDError(f"{what}: labels must lie in [0, {spec.num_classes}), got "
                             f"[{label.min()}, {label.max()}]")
        # Rows store the 1024 red, then green, then blue pixels of a 32x32 image, row-major.
        images.append(data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE))
        labels.append(label.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _normalised(images_uint8, normalize):
    """(n, 3, 32, 32) uint8 -> float32 in [0, 1] -> normalised, in chunks (no float64 copy)."""
    out = torch.empty(images_uint8.shape, dtype=torch.float32)
    for start in range(0, len(images_uint8), 5000):
        chunk = torch.from_numpy(images_uint8[start:start + 5000]).float().div_(255.0)
        out[start:start + 5000] = normalize(chunk)
    return out


def load_cifar(spec, seed=0, data_dir=None, *, fit_fraction=0.5, augment=True, download=True):
    """Build the splits of ``spec`` (see the module docstring)."""
    seed = check_seed(seed)
    if not isinstance(fit_fraction, (int, float)) or not 0.0 < fit_fraction < 1.0:
        raise IJCKDError(f"{spec.name} `fit_fraction` must lie in (0, 1), got {fit_fraction!r}")
    files = read_cifar_files(spec, data_dir, download=download)
    train_images, train_labels = _images_and_labels(files, spec, spec.train_files)
    test_images, test_labels = _images_and_labels(files, spec, spec.test_files)
    class_names = files[spec.meta_file].get(spec.names_key)
    if class_names is not None:
        class_names = [_text(c) for c in class_names]
        if len(class_names) != spec.num_classes:
            class_names = None  # a trimmed or foreign meta file: fall back to numbers
    fit_idx, eval_idx = stratified_split(test_labels, (fit_fraction, 1.0 - fit_fraction),
                                         seed=seed)
    normalize = Normalize(spec.mean, spec.std)
    train_transform = crop_flip(CIFAR_SIDE, 4, spec.mean, spec.std) if augment else None
    test_inputs = _normalised(test_images, normalize)
    test_labels_t = torch.from_numpy(test_labels)
    train = TensorSplit(_normalised(train_images, normalize), torch.from_numpy(train_labels),
                        transform=train_transform, indices=np.arange(len(train_labels)),
                        source=f"{spec.name}/train")
    fit, evaluation = (
        TensorSplit(test_inputs[torch.from_numpy(idx)], test_labels_t[torch.from_numpy(idx)],
                    indices=idx, source=f"{spec.name}/test")
        for idx in (fit_idx, eval_idx))
    return DatasetSplits(spec.name, train, fit, evaluation, num_classes=spec.num_classes,
                         input_shape=(3, CIFAR_SIDE, CIFAR_SIDE), class_names=class_names)


_CIFAR_OPTIONS = ["fit_fraction", "augment", "download"]


@DATASETS.register("cifar10")
def cifar10(seed=0, data_dir=None, *, fit_fraction=0.5, augment=True, download=True, **unknown):
    """CIFAR-10 splits: train 50k (augmented unless ``augment=False``), fit/eval from the
    10k test images by ``fit_fraction``; the archive is fetched unless ``download=False``."""
    reject_unknown_options("cifar10", unknown, _CIFAR_OPTIONS)
    return load_cifar(CIFAR_SPECS["cifar10"], seed, data_dir, fit_fraction=fit_fraction,
                      augment=augment, download=download)


@DATASETS.register("cifar100")
def cifar100(seed=0, data_dir=None, *, fit_fraction=0.5, augment=True, download=True, **unknown):
    """CIFAR-100 (fine labels) splits, as ``cifar10``."""
    reject_unknown_options("cifar100", unknown, _CIFAR_OPTIONS)
    return load_cifar(CIFAR_SPECS["cifar100"], seed, data_dir, fit_fraction=fit_fraction,
                      augment=augment, download=download)
