"""The package ships ``py.typed``: every exported function, and every public method of an
exported class, annotates its parameters and its return."""

import importlib
import inspect

# the modules whose ``__all__`` is the public API: the package and its subpackages'
# __init__s; tracking/ exports nothing itself, so its modules' own __all__
EXPORTING_MODULES = (
    "ijckd_bounds",
    "ijckd_bounds.data",
    "ijckd_bounds.estimators",
    "ijckd_bounds.models",
    "ijckd_bounds.plotting",
    "ijckd_bounds.train",
    "ijckd_bounds.train.objectives",
    "ijckd_bounds.tracking.extract",
    "ijckd_bounds.tracking.layers",
    "ijckd_bounds.tracking.table",
    "ijckd_bounds.tracking.track",
)

# methods that annotate nothing useful by convention: the constructor's return is None
NO_RETURN_NEEDED = ("__init__", "__post_init__")
# dunder methods that are part of a class's public behaviour
PUBLIC_DUNDERS = ("__init__", "__call__")


def _ours(obj):
    return (getattr(obj, "__module__", None) or "").startswith("ijckd_bounds")


def _missing(function, where):
    """The unannotated parameters and the missing return of ``function``, one line each."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    problems = []
    for position, parameter in enumerate(signature.parameters.values()):
        if position == 0 and parameter.name in ("self", "cls"):
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue  # passed through to what they are handed to
        if parameter.annotation is inspect.Parameter.empty:
            problems.append(f"{where}: parameter {parameter.name!r} has no annotation")
    name = getattr(function, "__name__", "")
    if name not in NO_RETURN_NEEDED and signature.return_annotation is inspect.Signature.empty:
        problems.append(f"{where}: no return annotation")
    return problems


def _class_methods(cls):
    """(qualified name, function) of the public methods ``cls`` and its project bases define."""
    seen = set()
    for klass in cls.__mro__:
        if not _ours(klass):
            continue
        for name, member in vars(klass).items():
            if name in seen or (name.startswith("_") and name not in PUBLIC_DUNDERS):
                continue
            seen.add(name)
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            if inspect.isfunction(member) and _ours(member):
                yield f"{cls.__name__}.{name}", member


def exported_callables():
    """(qualified name, function) of every exported function and public method."""
    found = {}
    for module_name in EXPORTING_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isclass(obj) and not inspect.isfunction(obj) and _ours(type(obj)):
                obj = type(obj)  # an exported instance (a registry): its class's methods
            if inspect.isclass(obj) and _ours(obj):
                for where, function in _class_methods(obj):
                    found.setdefault(f"{obj.__module__}.{where}", function)
            elif inspect.isfunction(obj) and _ours(obj):
                found.setdefault(f"{obj.__module__}.{obj.__name__}", obj)
    return sorted(found.items())


def test_the_walk_finds_the_exported_api():
    names = {name for name, _ in exported_callables()}
    # a walk that found nothing (or lost the classes' methods) would pass vacuously
    assert len(names) > 150
    for expected in ("ijckd_bounds.estimators.bounds.estimate_bounds",
                     "ijckd_bounds.estimators.probes.LogisticProbe.fit",
                     "ijckd_bounds.estimators.intervals.Estimate.__init__",
                     "ijckd_bounds.plotting.figures.plot_bounds",
                     "ijckd_bounds.train.objectives.Objective.build",
                     "ijckd_bounds.registry.Registry.get",
                     "ijckd_bounds.tracking.track.BoundTracker.on_checkpoint"):
        assert expected in names


def test_missing_annotations_are_found():
    def bare(x, *args, y=1, **kwargs):
        return x

    def full(x: int, *args: int, y: int = 1, **kwargs: int) -> int:
        return x

    assert _missing(bare, "bare") == ["bare: parameter 'x' has no annotation",
                                      "bare: parameter 'y' has no annotation",
                                      "bare: no return annotation"]
    assert _missing(full, "full") == []


def test_exported_api_is_annotated():
    problems = [line for name, function in exported_callables()
                for line in _missing(function, name)]
    assert not problems, f"{len(problems)} missing annotations:\n" + "\n".join(problems)
