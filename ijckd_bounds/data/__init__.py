"""Dataset registry: every dataset yields disjoint, seeded ``train``/``fit``/``eval`` splits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ijckd_bounds.registry import Registry

if TYPE_CHECKING:  # annotation only: importing ijckd_bounds.data does not load torch
    from ijckd_bounds.data.splits import DatasetSplits

DATASETS = Registry("dataset")


def build_dataset(name: str, *, seed: int = 0, data_dir: str | Path | None = None,
                  **options: Any) -> DatasetSplits:
    """Return a ``DatasetSplits`` for dataset ``name`` (see ``data.splits``)."""
    _import_all()
    return DATASETS.get(name)(seed=seed, data_dir=data_dir, **options)


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    _import_all()
    return DATASETS.names()


def _import_all():
    import importlib
    import pkgutil

    import ijckd_bounds.data as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("splits", "transforms"):
            importlib.import_module(f"ijckd_bounds.data.{info.name}")


__all__ = ["DATASETS", "build_dataset", "dataset_names"]
