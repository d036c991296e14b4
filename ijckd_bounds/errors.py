"""The toolkit's own error type.

Every problem with user input (files, shapes, names, configs) is raised as an
``IJCKDError`` carrying one readable line; the CLI prints that line and exits non-zero.
It subclasses ``ValueError`` so library callers can catch it like any bad-value error.
"""


class IJCKDError(ValueError):
    """A problem with user input, described in one line."""


def closest(name, valid):
    """The closest valid name to ``name`` (for 'did you mean' hints), or None."""
    import difflib

    hits = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return hits[0] if hits else None


def unknown_name(kind, name, valid):
    """An IJCKDError for an unknown registry/config name, listing the valid ones."""
    valid = sorted(valid)
    hint = closest(name, valid)
    msg = f"unknown {kind} {name!r}"
    if hint is not None:
        msg += f" (did you mean {hint!r}?)"
    msg += f"; valid: {', '.join(valid)}"
    return IJCKDError(msg)
