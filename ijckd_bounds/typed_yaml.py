"""Typed, frozen config dataclasses loaded from YAML, with command-line overrides.

Each component declares its own frozen dataclass; this module only converts between
plain dicts (YAML) and those dataclasses, checking every key and type on the way in.
An unknown key names itself and the closest valid key.
"""

import dataclasses
import math
import re
import types
import typing
import warnings

from ijckd_bounds.errors import IJCKDError, closest


def load_yaml(path):
    """Read a YAML mapping from ``path``; a malformed file gives one readable line."""
    import yaml

    from ijckd_bounds.io import require_file

    path = require_file(path, "config file", "a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IJCKDError(f"config file {str(path)!r} is not UTF-8 text (byte "
                         f"{exc.object[exc.start]:#04x} at offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise IJCKDError(f"config file {str(path)!r} is malformed YAML{where}: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise IJCKDError(f"config file {str(path)!r} nests lists or mappings too deeply to "
                         f"be a config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IJCKDError(f"config file {str(path)!r} must hold a mapping of keys, "
                         f"got {type(data).__name__}")
    return data


def parse_override(text):
    """``"optim.lr=0.1"`` -> ``(["optim", "lr"], 0.1)``; the value is parsed as YAML."""
    import yaml

    if "=" not in text:
        raise IJCKDError(f"override {text!r} must look like key=value (for example epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise IJCKDError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key.split("."), value


def apply_overrides(data, overrides):
    """Return a copy of the nested dict ``data`` with ``key.sub=value`` overrides applied."""
    import copy

    data = copy.deepcopy(dict(data))
    for text in overrides or ():
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return data


def _type_name(tp):
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, where):
    """Check/convert one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except IJCKDError as exc:
                errors.append(str(exc))
        raise IJCKDError(errors[0] if errors else f"{where} has an invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise IJCKDError(f"{where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is Ellipsis:
                value = [value]
            else:
                raise IJCKDError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else typing.Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise IJCKDError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            hint = closest(value, args)
            extra = f" (did you mean {hint!r}?)" if hint else ""
            raise IJCKDError(f"{where} must be one of {', '.join(map(repr, args))}, "
                             f"got {value!r}{extra}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise IJCKDError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise IJCKDError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        number = _float_text(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise IJCKDError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise IJCKDError(f"{where} must be a finite number, got {value!r}")
        return float(number)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise IJCKDError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _float_text(text):
    """``"1e-3"`` -> 0.001: YAML 1.1 (PyYAML) reads exponents without a dot as strings;
    anything else that is not a plain decimal number stays text."""
    return float(text) if _FLOAT_TEXT.fullmatch(text.strip()) else text


def from_dict(cls, data, *, where="config"):
    """Build the frozen dataclass ``cls`` from a (nested) dict, checking every key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise IJCKDError(f"{where} must be a mapping, got {type(data).__name__}")
    data = renamed_keys(cls, data, where=where, warn=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            hint = closest(key, fields)
            extra = f" (did you mean {hint!r}?)" if hint else ""
            raise IJCKDError(f"unknown config key {_join(where, key)!r}{extra}; "
                             f"valid keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], _join(where, name))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, IJCKDError):
            raise
        raise IJCKDError(f"{where}: {exc}") from None


def renamed_keys(cls, data, *, where="config", warn=False):
    """``data`` with the old key names of ``cls`` (its ``RENAMED_KEYS``: old -> new) under
    their new names; with ``warn``, one warning line per old key read."""
    renamed = getattr(cls, "RENAMED_KEYS", {})
    if not renamed or not any(old in data for old in renamed):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old not in data:
            continue
        if new in data:
            raise IJCKDError(f"{_join(where, old)} and {_join(where, new)} are both given: "
                             f"{old} is the old name of {new}; keep only {new}")
        if warn:
            warnings.warn(f"config key {_join(where, old)} is now {_join(where, new)}; "
                          f"read as {_join(where, new)}", FutureWarning, stacklevel=3)
        data[new] = data.pop(old)
    return data


def _join(where, key):
    return key if where == "config" else f"{where.removeprefix('config.')}.{key}"


def to_dict(obj):
    """Plain nested dict of a (frozen) dataclass, tuples as lists: YAML/JSON friendly."""

    def convert(value):
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(obj)


def load_config(cls, path=None, overrides=()):
    """``cls`` from an optional YAML file plus ``key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))
