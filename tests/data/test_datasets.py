"""Datasets: disjoint seeded stratified splits, readers checked against hand-built files."""

import dataclasses
import io
import os
import pickle
import socket
import struct
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from ijckd_bounds.data import build_dataset, dataset_names
from ijckd_bounds.data.splits import (
    DatasetSplits,
    TensorSplit,
    part_sizes,
    stratified_split,
)
from ijckd_bounds.data.transforms import Normalize, RandomCrop, RandomHorizontalFlip, crop_flip
from ijckd_bounds.errors import IJCKDError

# --------------------------------------------------------------------------- helpers


def assert_pairwise_disjoint(*index_sets):
    seen = np.concatenate([np.asarray(s) for s in index_sets])
    assert len(np.unique(seen)) == len(seen)


def assert_stratified(labels, part, size):
    """Each class holds within one sample of its proportional share of the part."""
    classes, class_sizes = np.unique(labels, return_counts=True)
    counts = np.array([(labels[part] == c).sum() for c in classes])
    share = class_sizes * size / len(labels)
    assert np.all(np.abs(counts - share) < 1), (counts, share)


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", range(25))
def test_stratified_split_random_cases(seed):
    rng = np.random.default_rng(1000 + seed)
    num_classes = int(rng.integers(2, 15))
    labels = rng.integers(0, num_classes, size=int(rng.integers(150, 600)))
    fractions = tuple(float(f) for f in rng.dirichlet([2, 2, 2]) * rng.uniform(0.6, 1.0))
    parts = stratified_split(labels, fractions, seed=seed)
    sizes = part_sizes(fractions, len(labels))
    assert_pairwise_disjoint(*parts)
    assert sum(sizes) == len(labels)
    # sizes ends with the rows left out of every part
    for part, size, fraction in zip(parts, sizes[:len(parts)], fractions, strict=True):
        assert len(part) == size and abs(size - fraction * len(labels)) < 1 + 1e-9
        assert np.all(np.diff(part) > 0) and part.dtype == np.int64
        assert_stratified(labels, part, size)


def test_stratified_split_counts_and_determinism():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    a = stratified_split(labels, (40, 30, 20), seed=7)
    b = stratified_split(labels, (40, 30, 20), seed=7)
    c = stratified_split(labels, (40, 30, 20), seed=8)
    assert [len(p) for p in a] == [40, 30, 20]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    for part, size in zip(a, (40, 30, 20), strict=True):
        assert_stratified(labels, part, size)


def test_stratified_split_full_cover_and_errors():
    labels = np.arange(30) % 3
    parts = stratified_split(labels, (0.5, 0.5), seed=0)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(30))
    with pytest.raises(IJCKDError, match="sum to at most 1"):
        stratified_split(labels, (0.7, 0.7), seed=0)
    with pytest.raises(IJCKDError, match="would be empty"):
        stratified_split(labels, (0.99, 0.01), seed=0)
    with pytest.raises(IJCKDError, match="integers"):
        stratified_split(labels.astype(float), (0.5, 0.5), seed=0)
    with pytest.raises(IJCKDError, match="seed"):
        stratified_split(labels, (0.5, 0.5), seed=-1)
    with pytest.raises(IJCKDError, match="sum to at most 30"):
        stratified_split(labels, (20, 20), seed=0)


def test_tensor_split_items_and_validation():
    inputs = torch.randn(6, 2, 3)
    split = TensorSplit(inputs, torch.arange(6) % 2)
    x, y = split[4]
    assert x.shape == (2, 3) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.dim() == 0 and int(y) == 0
    x.zero_()  # the item is a copy: the pool must not change
    assert torch.equal(split.inputs, inputs) and inputs[4].abs().sum() > 0
    assert split.class_counts(3).tolist() == [3, 3, 0]
    with pytest.raises(IJCKDError, match="float32"):
        TensorSplit(inputs.double(), torch.arange(6))
    with pytest.raises(IJCKDError, match=r"shape \(n, \.\.\.\)"):
        TensorSplit(inputs, torch.arange(5))
    with pytest.raises(IJCKDError, match="class names"):
        DatasetSplits("toy", split, split, split, num_classes=2, input_shape=(2, 3),
                      class_names=("a",))


# --------------------------------------------------------------------------- registry


def test_unknown_dataset_lists_valid_names():
    names = dataset_names()
    assert {"digits", "mnist1d", "cifar10", "cifar100", "tensors"} <= set(names)
    with pytest.raises(IJCKDError) as info:
        build_dataset("digit")
    message = str(info.value)
    assert "did you mean 'digits'" in message
    assert all(name in message for name in names)


def test_unknown_option_is_named():
    with pytest.raises(IJCKDError, match="'fractoins'.*valid: fractions"):
        build_dataset("digits", fractoins=(0.5, 0.25, 0.25))


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_seed0():
    return build_dataset("digits", seed=0)


def test_digits_splits_disjoint_cover_and_stratified(digits_seed0):
    from sklearn.datasets import load_digits

    target = load_digits().target
    data = digits_seed0
    assert data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert data.class_names == tuple(str(d) for d in range(10))
    parts = [data.train.indices, data.fit.indices, data.eval.indices]
    assert_pairwise_disjoint(*parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(target)))
    assert [len(p) for p in parts] == part_sizes((0.6, 0.2, 0.2), len(target))[:3]
    for split in (data.train, data.fit, data.eval):
        assert_stratified(target, split.indices, len(split))
        assert np.array_equal(split.labels.numpy(), target[split.indices])


def test_digits_values_standardised_with_train_statistics(digits_seed0):
    from sklearn.datasets import load_digits

    raw = load_digits().images.astype(np.float64) / 16.0
    data = digits_seed0
    train_raw = raw[data.train.indices]
    mean, std = train_raw.mean(), train_raw.std(ddof=1)
    for split in (data.train, data.fit, data.eval):
        expected = (raw[split.indices] - mean) / std
        assert split.inputs.dtype == torch.float32 and split.inputs.shape[1:] == (1, 8, 8)
        np.testing.assert_allclose(split.inputs[:, 0].numpy(), expected, atol=1e-5)
    assert abs(float(data.train.inputs.mean())) < 1e-5
    assert abs(float(data.fit.inputs.mean())) > 1e-4  # fit was not standardised on itself
    loader = torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_digits_deterministic_per_seed(digits_seed0):
    again = build_dataset("digits", seed=0)
    other = build_dataset("digits", seed=1)
    for which in ("train", "fit", "eval"):
        assert np.array_equal(getattr(again, which).indices, getattr(digits_seed0, which).indices)
        assert torch.equal(getattr(again, which).inputs, getattr(digits_seed0, which).inputs)
        assert not np.array_equal(getattr(other, which).indices,
                                  getattr(digits_seed0, which).indices)


def test_digits_fractions_option():
    data = build_dataset("digits", seed=3, fractions=[0.2, 0.1, 0.1])
    assert list(data.sizes.values()) == part_sizes((0.2, 0.1, 0.1), 1797)[:3]
    with pytest.raises(IJCKDError, match="three numbers"):
        build_dataset("digits", fractions=(0.5, 0.5))


# --------------------------------------------------------------------------- mnist1d


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    requests = pytest.importorskip("requests")
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests, "request", refuse)


def test_mnist1d_generated_locally_deterministic(no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the package's own cache path is relative: nothing may land
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = build_dataset("mnist1d", seed=0, num_samples=500)
    assert np.array_equal(np.random.get_state()[1], before)  # caller's RNG untouched
    again = build_dataset("mnist1d", seed=0, num_samples=500)
    other = build_dataset("mnist1d", seed=1, num_samples=500)
    assert list(tmp_path.iterdir()) == []
    assert first.input_shape == (1, 40) and first.num_classes == 10
    assert first.sizes == {"train": 400, "fit": 50, "eval": 50}
    all_labels = torch.cat([first.train.labels, first.fit.labels, first.eval.labels])
    assert torch.equal(torch.bincount(all_labels), torch.full((10,), 50))
    x, y = first.eval[0]
    assert x.shape == (1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert_pairwise_disjoint(first.fit.indices, first.eval.indices)
    test_labels = np.empty(100, dtype=np.int64)
    test_labels[first.fit.indices] = first.fit.labels.numpy()
    test_labels[first.eval.indices] = first.eval.labels.numpy()
    assert_stratified(test_labels, first.fit.indices, 50)
    for which in ("train", "fit", "eval"):
        assert torch.equal(getattr(first, which).inputs, getattr(again, which).inputs)
    assert not torch.equal(first.train.inputs, other.train.inputs)


def test_mnist1d_cache_in_data_dir(no_network, tmp_path, monkeypatch):
    from ijckd_bounds.data import mnist1d_dataset

    first = build_dataset("mnist1d", seed=2, num_samples=200, data_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mnist1d_2_200.npz"]

    def fail(*args):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(mnist1d_dataset, "generate_mnist1d", fail)
    cached = build_dataset("mnist1d", seed=2, num_samples=200, data_dir=tmp_path)
    assert torch.equal(first.train.inputs, cached.train.inputs)
    assert torch.equal(first.eval.labels, cached.eval.labels)
    with pytest.raises(IJCKDError, match="multiple of 10"):
        build_dataset("mnist1d", num_samples=205)


# --------------------------------------------------------------------------- transforms


def test_normalize_matches_manual():
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(Normalize(mean, std)(x), manual)
    assert torch.allclose(Normalize(mean, std)(x[0]), manual[0])
    with pytest.raises(IJCKDError, match="3 channels"):
        Normalize(mean, std)(torch.rand(2, 4, 4, 4))


def manual_crops(image, padding, fill, size):
    """Every crop of the padded image, built independently with explicit loops."""
    channels, height, width = image.shape
    padded = torch.empty(channels, height + 2 * padding, width + 2 * padding)
    for c in range(channels):
        padded[c].fill_(fill[c])
        padded[c, padding:padding + height, padding:padding + width] = image[c]
    return {(top, left): padded[:, top:top + size, left:left + size]
            for top in range(2 * padding + 1) for left in range(2 * padding + 1)}


def matching_offsets(out, crops, flipped=False):
    return [key for key, crop in crops.items()
            if torch.equal(out, crop.flip(-1) if flipped else crop)]


def test_random_crop_only_shifts_content():
    torch.manual_seed(0)
    image = torch.randn(3, 8, 8)
    fill = [-1.5, 2.0, 7.0]
    crops = manual_crops(image, 2, fill, 8)
    crop = RandomCrop(8, padding=2, fill=fill)
    seen = set()
    for _ in range(200):
        out = crop(image)
        assert out.shape == image.shape
        offsets = matching_offsets(out, crops)
        assert len(offsets) == 1
        seen.update(offsets)
    assert len(seen) >= 20  # offsets really vary (25 possible)
    batch = torch.randn(16, 3, 8, 8)
    out = crop(batch)
    assert out.shape == batch.shape
    for i in range(16):
        assert len(matching_offsets(out[i], manual_crops(batch[i], 2, fill, 8))) == 1


def test_random_flip_and_crop_flip():
    torch.manual_seed(1)
    image = torch.randn(3, 5, 5)
    flip = RandomHorizontalFlip(0.5)
    outcomes = [torch.equal(flip(image), image.flip(-1)) for _ in range(200)]
    assert 60 < sum(outcomes) < 140
    batch = torch.randn(64, 3, 5, 5)
    out = flip(batch)
    flipped = [torch.equal(out[i], batch[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], batch[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 0 < sum(flipped) < 64

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    black = [-m / s for m, s in zip(mean, std, strict=True)]
    augment = crop_flip(32, 4, mean, std)
    cifar_like = torch.randn(3, 32, 32)
    crops = manual_crops(cifar_like, 4, black, 32)
    for _ in range(30):
        out = augment(cifar_like)
        assert out.shape == (3, 32, 32)
        assert len(matching_offsets(out, crops) + matching_offsets(out, crops, True)) >= 1


# --------------------------------------------------------------------------- CIFAR


class Py2StylePickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as in the original CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def py2_pickle(obj):
    stream = io.BytesIO()
    Py2StylePickler(stream, protocol=2).dump(obj)
    # numpy 2 names its module numpy._core; the original files say numpy.core.
    return stream.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def fake_cifar(variant, rng):
    """{file name: pickle bytes} in the layout of the real archive, with few images."""
    if variant == "cifar10":
        def batch(n, tag):
            labels = [int(v) for v in np.arange(n) % 10]
            rng.shuffle(labels)
            return {b"batch_label": tag.encode(), b"labels": labels,
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"filenames": [f"img_{i}.png".encode() for i in range(n)]}

        files = {f"data_batch_{i}": batch(20, f"training batch {i} of 5") for i in range(1, 6)}
        files["test_batch"] = batch(40, "testing batch 1 of 1")
        files["batches.meta"] = {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                 b"num_cases_per_batch": 20, b"num_vis": 3072}
        return {name: py2_pickle(content) for name, content in files.items()}

    def batch(n):
        fine = [int(v) for v in np.arange(n) % 100]
        rng.shuffle(fine)
        return {"filenames": [f"f{i}.png" for i in range(n)], "batch_label": "b",
                "fine_labels": fine, "coarse_labels": [f // 5 for f in fine],
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}

    files = {"train": batch(200), "test": batch(200),
             "meta": {"fine_label_names": [f"class{i}" for i in range(100)],
                      "coarse_label_names": [f"super{i}" for i in range(20)]}}
    # CIFAR-100 as a modern pickle too, so both encodings are exercised.
    return {name: pickle.dumps(content, protocol=4) for name, content in files.items()}


FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def write_archive(files, variant, path):
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"{FOLDERS[variant]}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def write_folder(files, variant, root):
    folder = root / FOLDERS[variant]
    folder.mkdir(parents=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)


def expected_images(payload, spec):
    """Decode one pickled batch independently: rows -> (n, 3, 32, 32), /255, normalise."""
    content = pickle.loads(payload, encoding="latin1")
    content = {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}
    images = content["data"].reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    mean = np.array(spec.mean).reshape(1, 3, 1, 1)
    std = np.array(spec.std).reshape(1, 3, 1, 1)
    return (images - mean) / std, np.array(content[spec.label_key])


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_cifar_reader(variant, layout, tmp_path):
    from ijckd_bounds.data.cifar import CIFAR_SPECS

    spec = CIFAR_SPECS[variant]
    files = fake_cifar(variant, np.random.default_rng(0))
    if layout == "archive":
        write_archive(files, variant, tmp_path / ARCHIVES[variant])
    else:
        write_folder(files, variant, tmp_path)
    data = build_dataset(variant, seed=0, data_dir=tmp_path, download=False)
    again = build_dataset(variant, seed=0, data_dir=tmp_path, download=False)
    other = build_dataset(variant, seed=5, data_dir=tmp_path, download=False)

    train_x, train_y = zip(*(expected_images(files[f], spec) for f in spec.train_files),
                           strict=True)
    test_x, test_y = expected_images(files[spec.test_files[0]], spec)
    assert data.input_shape == (3, 32, 32) and data.num_classes == spec.num_classes
    expected_names = CIFAR10_NAMES if variant == "cifar10" else [f"class{i}" for i in range(100)]
    assert list(data.class_names) == expected_names
    np.testing.assert_allclose(data.train.inputs.numpy(), np.concatenate(train_x), atol=1e-5)
    assert np.array_equal(data.train.labels.numpy(), np.concatenate(train_y))
    assert data.train.transform is not None and data.fit.transform is None
    assert data.eval.transform is None
    assert len(data.fit) + len(data.eval) == len(test_y) and len(data.fit) == len(test_y) // 2
    assert_pairwise_disjoint(data.fit.indices, data.eval.indices)
    for split in (data.fit, data.eval):
        np.testing.assert_allclose(split.inputs.numpy(), test_x[split.indices], atol=1e-5)
        assert np.array_equal(split.labels.numpy(), test_y[split.indices])
        assert_stratified(test_y, split.indices, len(split))
        assert split.inputs.dtype == torch.float32 and split.labels.dtype == torch.int64
    assert np.array_equal(data.eval.indices, again.eval.indices)
    assert not np.array_equal(data.eval.indices, other.eval.indices)
    x, y = data.train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_safe_unpickler_refuses_code(tmp_path):
    from ijckd_bounds.data.cifar import load_pickle_safely

    marker = tmp_path / "pwned"
    hostile = pickle.dumps({"data": RunsShellCommand(marker)}, protocol=2)
    with pytest.raises(IJCKDError, match=r"refusing to load global '(posix|os)\.system'"):
        load_pickle_safely(io.BytesIO(hostile), what="test pickle")
    assert not marker.exists()
    with pytest.raises(IJCKDError, match="builtins.eval"):
        load_pickle_safely(io.BytesIO(pickle.dumps(eval)), what="test pickle")
    with pytest.raises(IJCKDError, match="corrupt"):
        load_pickle_safely(io.BytesIO(hostile[:20]), what="test pickle")

    # The same hostile pickle posing as a CIFAR batch, through the dataset entry point.
    files = fake_cifar("cifar10", np.random.default_rng(1))
    files["data_batch_3"] = hostile
    write_folder(files, "cifar10", tmp_path)
    with pytest.raises(IJCKDError, match="data_batch_3.*refusing"):
        build_dataset("cifar10", data_dir=tmp_path, download=False)
    assert not marker.exists()


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_cifar_download_paths(tmp_path, monkeypatch):
    import hashlib

    from ijckd_bounds.data import cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(IJCKDError, match="could not download.*cifar-10-python.tar.gz"):
        build_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(IJCKDError, match="not found.*download=True"):
        build_dataset("cifar100", data_dir=tmp_path, download=False)
    with pytest.raises(IJCKDError, match="needs data_dir"):
        build_dataset("cifar10")

    archive_bytes = io.BytesIO()
    with tarfile.open(fileobj=archive_bytes, mode="w:gz") as archive:
        for name, payload in fake_cifar("cifar10", np.random.default_rng(2)).items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    payload = archive_bytes.getvalue()
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: FakeResponse(payload))
    with pytest.raises(IJCKDError, match="md5"):  # the real checksum cannot match fake bytes
        build_dataset("cifar10", data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left behind

    spec = dataclasses.replace(cifar.CIFAR_SPECS["cifar10"],
                               md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar10", spec)
    data = build_dataset("cifar10", data_dir=tmp_path)
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == payload
    assert len(data.train) == 100 and data.sizes["eval"] == 20


# --------------------------------------------------------------------------- tensors


def pool_arrays(rng, n=120, shape=(2, 5), classes=4):
    y = np.arange(n) % classes
    return {"x": rng.normal(size=(n, *shape)).astype(np.float32), "y": y.astype(np.int64)}


def test_tensors_npz_pool_layout(tmp_path):
    rng = np.random.default_rng(0)
    arrays = pool_arrays(rng)
    arrays["class_names"] = np.array(["a", "b", "c", "d"])
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    data = build_dataset("tensors", seed=4, path=path)
    again = build_dataset("tensors", seed=4, data_dir=path)
    assert data.num_classes == 4 and data.input_shape == (2, 5)
    assert data.class_names == ("a", "b", "c", "d")
    assert list(data.sizes.values()) == part_sizes((0.6, 0.2, 0.2), 120)[:3]
    parts = [data.train.indices, data.fit.indices, data.eval.indices]
    assert_pairwise_disjoint(*parts)
    for split in (data.train, data.fit, data.eval):
        assert torch.equal(split.inputs, torch.from_numpy(arrays["x"][split.indices]))
        assert torch.equal(split.labels, torch.from_numpy(arrays["y"][split.indices]))
        assert_stratified(arrays["y"], split.indices, len(split))
    assert np.array_equal(again.eval.indices, data.eval.indices)


def test_tensors_pt_explicit_and_train_test_layouts(tmp_path):
    gen = torch.Generator().manual_seed(0)
    explicit = {f"x_{w}": torch.randn(n, 7, generator=gen) for w, n in
                (("train", 30), ("fit", 12), ("eval", 9))}
    explicit.update({f"y_{w}": torch.arange(n) % 3 for w, n in
                     (("train", 30), ("fit", 12), ("eval", 9))})
    path = tmp_path / "explicit.pt"
    torch.save(explicit, path)
    data = build_dataset("tensors", path=path, num_classes=5)
    assert data.num_classes == 5 and data.input_shape == (7,)
    for which in ("train", "fit", "eval"):
        assert torch.equal(data.split(which).inputs, explicit[f"x_{which}"])
        assert torch.equal(data.split(which).labels, explicit[f"y_{which}"])

    train_test = {"x_train": torch.randn(20, 3, generator=gen), "y_train": torch.arange(20) % 2,
                  "x_test": torch.randn(16, 3, generator=gen), "y_test": torch.arange(16) % 2}
    path = tmp_path / "train_test.pt"
    torch.save(train_test, path)
    data = build_dataset("tensors", path=path, fit_fraction=0.25)
    assert data.sizes == {"train": 20, "fit": 4, "eval": 12}
    assert_pairwise_disjoint(data.fit.indices, data.eval.indices)
    assert torch.equal(data.fit.inputs, train_test["x_test"][data.fit.indices])


def explicit_arrays():
    rng = np.random.default_rng(1)
    return {"x_train": rng.normal(size=(10, 3)), "y_train": np.arange(10) % 2,
            "x_fit": rng.normal(size=(6, 3)), "y_fit": np.arange(6) % 2,
            "x_eval": rng.normal(size=(6, 3)), "y_eval": np.arange(6) % 2}


def with_change(**changes):
    arrays = explicit_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return arrays


@pytest.mark.parametrize(("changes", "message"), [
    ({"x_fit": np.full((6, 3), np.nan)}, "`x_fit` has NaN or inf values in 6 sample"),
    ({"y_train": np.arange(10) % 2 * 0.5},
     "`y_train` must hold integer class indices, got non-integer values"),
    ({"y_train": np.arange(10) % 2 == 1}, "`y_train` must hold integer class indices, got "
                                          "dtype bool"),
    ({"y_eval": np.array([0, 1, -1, 0, 1, 0])}, "`y_eval` has negative labels"),
    ({"y_fit": np.zeros(6, dtype=np.int64)}, "fit split must hold >= 2 classes"),
    ({"x_eval": np.zeros((6, 4))}, r"eval inputs must have shape \(n, 3\) like train"),
    ({"y_train": np.arange(9) % 2}, r"`y_train` must have shape \(10,\) like its inputs"),
    ({"x_val": np.zeros((2, 3))}, r"unexpected arrays \['x_val'\]"),
    ({"y_fit": None}, r"lacks \['y_fit'\]"),
    ({"x": np.zeros((2, 3))}, "mixes layouts"),
    ({"x_train": np.array(["a"] * 10)}, "must be a non-empty numeric array"),
    ({"class_names": np.array(["a"])}, "`class_names` has 1 names but the labels go up to 1"),
])
def test_tensors_errors(tmp_path, changes, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **with_change(**changes))
    with pytest.raises(IJCKDError, match=message):
        build_dataset("tensors", path=path)


def test_tensors_file_errors(tmp_path):
    np.savez(tmp_path / "ok.npz", **explicit_arrays())
    with pytest.raises(IJCKDError, match="`num_classes` must be an integer >= 2, got 1"):
        build_dataset("tensors", path=tmp_path / "ok.npz", num_classes=1)
    np.savez(tmp_path / "big.npz", **with_change(y_fit=np.array([0, 1, 2, 0, 1, 2])))
    with pytest.raises(IJCKDError, match=r"labels must lie in \[0, 2\), got label 2"):
        build_dataset("tensors", path=tmp_path / "big.npz", num_classes=2)
    np.savez(tmp_path / "named.npz", **explicit_arrays(), class_names=np.array(["a", "b", "c"]))
    assert build_dataset("tensors", path=tmp_path / "named.npz").num_classes == 3
    with pytest.raises(IJCKDError, match="3 names for 4 classes"):
        build_dataset("tensors", path=tmp_path / "named.npz", num_classes=4)
    with pytest.raises(IJCKDError, match="does not exist"):
        build_dataset("tensors", path=tmp_path / "missing.npz")
    with pytest.raises(IJCKDError, match="needs path="):
        build_dataset("tensors", data_dir=tmp_path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(IJCKDError, match="must hold a dict"):
        build_dataset("tensors", path=tmp_path / "list.pt")
    np.savez(tmp_path / "tiny.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(IJCKDError, match="fit split must hold >= 2 classes"):
        build_dataset("tensors", path=tmp_path / "tiny.npz")
    np.savez(tmp_path / "tinier.npz", x=np.zeros((3, 2)), y=np.array([0, 1, 0]))
    with pytest.raises(IJCKDError, match="would be empty"):
        build_dataset("tensors", path=tmp_path / "tinier.npz")
