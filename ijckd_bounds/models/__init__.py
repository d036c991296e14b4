"""Model zoo: every model returns ``(logits, features)``; see ``models.base``."""

from ijckd_bounds.models.base import ZooModel, pool_to
from ijckd_bounds.registry import Registry

MODELS = Registry("model")


def build_model(name, num_classes, input_shape, **kwargs):
    """Build zoo model ``name`` for ``num_classes`` classes and inputs of ``input_shape``
    (one sample's shape, e.g. (1, 8, 8) or (3, 32, 32) or (1, 40))."""
    _import_zoo()
    return MODELS.get(name)(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


def model_names():
    _import_zoo()
    return MODELS.names()


def _import_zoo():
    # Importing the modules registers their factories.
    import importlib
    import pkgutil

    import ijckd_bounds.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base",):
            importlib.import_module(f"ijckd_bounds.models.{info.name}")


__all__ = ["MODELS", "ZooModel", "build_model", "model_names", "pool_to"]
