"""``mnist1d``: the MNIST-1D benchmark (Greydanus 2020), generated locally, never downloaded.

Samples come from the ``mnist1d`` package's own generator (``mnist1d.data.make_dataset``
with its default arguments, ``num_samples`` and ``seed`` replaced by ours): (1, 40) float32
signals, 10 classes, already centred and scaled to unit std by the generator. Generating the
default 5,000 samples takes about a second.

Splits: ``train`` is the generator's own train part (the first 80%, as in the benchmark);
its test part (20%) is cut, seeded and stratified, into ``fit`` and ``eval``
(``fit_fraction`` of it to ``fit``). The train part is a random 80% and so only roughly
balanced. The package's default seed is 42; ``seed`` here also picks the generated data,
so seed 0 is a different (equally valid) draw than the published file.

With ``data_dir`` the generated arrays are cached at ``data_dir/mnist1d_<seed>_<n>.npz``;
without it nothing touches the disk.
"""

import random
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
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import atomic_path, load_arrays

MNIST1D_LENGTH = 40
MNIST1D_CLASSES = 10


def generate_mnist1d(num_samples, seed):
    """Run the package's generator; returns ``(x, y, x_test, y_test)`` numpy arrays with
    x (0.8 n, 40) float64, y (0.8 n,) int64 and the test part likewise (0.2 n).

    The generator reseeds Python's and numpy's global RNGs; their states are restored
    afterwards so building this dataset does not change the caller's randomness.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()  # its defaults; we change only the size and the seed
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return (np.asarray(data["x"]), np.asarray(data["y"], dtype=np.int64),
            np.asarray(data["x_test"]), np.asarray(data["y_test"], dtype=np.int64))


def _load_or_generate(num_samples, seed, data_dir):
    keys = ("x", "y", "x_test", "y_test")
    if data_dir is None:
        return generate_mnist1d(num_samples, seed)
    cache = Path(data_dir) / f"mnist1d_{seed}_{num_samples}.npz"
    if cache.is_file():
        try:
            arrays = load_arrays(cache, what="mnist1d cache")
            cached = tuple(arrays[k] for k in keys)
            if (cached[0].shape == (len(cached[1]), MNIST1D_LENGTH)
                    and cached[2].shape == (len(cached[3]), MNIST1D_LENGTH)
                    and len(cached[1]) + len(cached[3]) == num_samples):
                return cached
        except (IJCKDError, KeyError):
            pass  # a damaged or foreign cache is simply regenerated and replaced
    arrays = generate_mnist1d(num_samples, seed)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append ".npz"
            np.savez(fh, **dict(zip(keys, arrays, strict=True)))
    return arrays


@DATASETS.register("mnist1d")
def mnist1d(seed=0, data_dir=None, *, num_samples=5000, fit_fraction=0.5, **unknown):
    """The MNIST-1D splits: ``num_samples`` signals in all (a multiple of 10, >= 100), the
    generator's 20% test part split into fit/eval by ``fit_fraction``."""
    reject_unknown_options("mnist1d", unknown, ["num_samples", "fit_fraction"])
    seed = check_seed(seed)
    if (isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer))
            or num_samples < 100 or num_samples % MNIST1D_CLASSES):
        raise IJCKDError(f"mnist1d `num_samples` must be a multiple of 10 and >= 100, "
                         f"got {num_samples!r}")
    if not isinstance(fit_fraction, (int, float)) or not 0.0 < fit_fraction < 1.0:
        raise IJCKDError(f"mnist1d `fit_fraction` must lie in (0, 1), got {fit_fraction!r}")
    num_samples = int(num_samples)
    x, y, x_test, y_test = _load_or_generate(num_samples, seed, data_dir)
    fit_idx, eval_idx = stratified_split(y_test, (fit_fraction, 1.0 - fit_fraction), seed=seed)

    def as_split(inputs, labels, indices, source):
        return TensorSplit(torch.as_tensor(inputs, dtype=torch.float32).unsqueeze(1),
                           torch.as_tensor(labels, dtype=torch.int64),
                           indices=indices, source=source)

    train = as_split(x, y, np.arange(len(y)), "mnist1d/train")
    fit = as_split(x_test[fit_idx], y_test[fit_idx], fit_idx, "mnist1d/test")
    evaluation = as_split(x_test[eval_idx], y_test[eval_idx], eval_idx, "mnist1d/test")
    return DatasetSplits("mnist1d", train, fit, evaluation, num_classes=MNIST1D_CLASSES,
                         input_shape=(1, MNIST1D_LENGTH),
                         class_names=[str(d) for d in range(MNIST1D_CLASSES)])
