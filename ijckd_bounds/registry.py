"""Small name -> factory registries (datasets, models, methods)."""

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ijckd_bounds.errors import unknown_name

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Maps names to factories; an unknown name fails with the list of valid names.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("mlp")
    ... def mlp(num_classes): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register the factory under ``name``; a second one of the name raises."""
        def decorator(factory):
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self._items[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; an unknown name raises with the valid ones."""
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
