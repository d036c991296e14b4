"""Model zoo: every model returns ``(logits, features)``; see ``models.base``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ijckd_bounds.models.base import ZooModel, pool_to
from ijckd_bounds.registry import Registry

MODELS = Registry("model")


def build_model(name: str, num_classes: int, input_shape: Sequence[int],
                **kwargs: Any) -> ZooModel:
    """Build zoo model ``name`` for ``num_classes`` classes and inputs of ``input_shape``
    (one sample's shape, e.g. (1, 8, 8) or (3, 32, 32) or (1, 40))."""
    import inspect

    from ijckd_bounds.errors import IJCKDError

    _import_zoo()
    factory = MODELS.get(name)
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        for key in kwargs:
            if key not in accepted:
                valid = sorted(k for k in accepted if k not in ("num_classes", "input_shape"))
                raise IJCKDError(f"model {name!r} has no option {key!r}; valid options: "
                                 f"{', '.join(valid) or 'none'}")
    return factory(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


def model_names() -> list[str]:
    """The registered zoo model names, sorted."""
    _import_zoo()
    return MODELS.names()


def model_options(name: str) -> dict[str, Any]:
    """The options zoo model ``name`` takes (``model.teacher_options`` /
    ``model.student_options``) and their defaults, as ``{option: default}``."""
    import inspect

    _import_zoo()
    parameters = inspect.signature(MODELS.get(name)).parameters.values()
    return {p.name: p.default for p in parameters
            if p.name not in ("num_classes", "input_shape")
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _import_zoo():
    # Importing the modules registers their factories.
    import importlib
    import pkgutil

    import ijckd_bounds.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base",):
            importlib.import_module(f"ijckd_bounds.models.{info.name}")


def __getattr__(name):
    if name == "FeatureModel":
        from ijckd_bounds.models.feature_model import FeatureModel

        return FeatureModel
    raise AttributeError(f"module 'ijckd_bounds.models' has no attribute {name!r}")


__all__ = ["MODELS", "FeatureModel", "ZooModel", "build_model", "model_names",
           "model_options", "pool_to"]
