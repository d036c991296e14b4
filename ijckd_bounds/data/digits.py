"""``digits``: scikit-learn's 8x8 handwritten digits, the project's default (small, offline).

1,797 images with pixel values 0..16, as (1, 8, 8) float32 tensors: scaled to [0, 1], then
standardised with the train split's scalar mean and std (computed on train only). The three
splits are cut from the whole set, seeded and stratified by class.
"""

import torch

from ijckd_bounds.data import DATASETS
from ijckd_bounds.data.splits import (
    check_fractions,
    check_seed,
    reject_unknown_options,
    splits_from_pool,
    standardize,
    stratified_split,
)

DIGITS_FRACTIONS = (0.6, 0.2, 0.2)


@DATASETS.register("digits")
def digits(seed=0, data_dir=None, *, fractions=DIGITS_FRACTIONS, **unknown):
    """The digits splits: ``fractions`` (train, fit, eval) of the 1,797 images (each in
    (0, 1], summing to at most 1; a smaller sum leaves the rest out). ``data_dir`` is
    unused: the data ships with scikit-learn."""
    from sklearn.datasets import load_digits

    reject_unknown_options("digits", unknown, ["fractions"])
    seed = check_seed(seed)
    fractions = check_fractions("digits", fractions)
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    indices = stratified_split(bunch.target, fractions, seed=seed)
    train_idx = torch.as_tensor(indices[0])
    # Statistics from the train split only, so nothing about fit/eval leaks into the inputs.
    *_, mean, std = standardize(images[train_idx])
    images = ((images.double() - mean) / std).float()
    return splits_from_pool("digits", images, labels, indices, num_classes=10,
                            class_names=[str(d) for d in range(10)], source="digits")
