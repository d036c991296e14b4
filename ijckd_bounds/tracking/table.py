"""The tidy results tables of a run, written atomically under a lock.

``bounds.csv``: one row per run x checkpoint x split, columns ``schema.TABLE_COLUMNS``.
``per_class.csv``: one row per run x checkpoint x class.
``margins.csv``: one row per evaluation sample x checkpoint (margin figure).
``calibration.csv``: one row per checkpoint x model (teacher, student) x confidence bin
(reliability diagram).

Appending writes the new file through a temporary file and a rename, inside an
exclusive ``fcntl`` lock on ``<table>.lock``, so a killed process leaves the old or the
new table and two trackers on one run directory never interleave rows. A row whose key
(run, checkpoint, split) is already present is replaced, not duplicated; the per-class
and margin rows of a checkpoint are replaced as one block.
"""

import contextlib
import fcntl
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ijckd_bounds import io, schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import atomic_path

ROW_KEY = ("run", "checkpoint", "split")


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path + '.lock'`` for the duration of the block."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def check_bounds_table(df: pd.DataFrame) -> pd.DataFrame:
    """Check the bounds table's schema; raise IJCKDError naming the first problem."""
    missing = [c for c in schema.TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise IJCKDError(f"bounds table is missing column {missing[0]!r} "
                         f"({len(missing)} missing in all)")
    extra = [c for c in df.columns if c not in schema.TABLE_COLUMNS]
    if extra:
        raise IJCKDError(f"bounds table has unknown column {extra[0]!r}")
    for term in schema.INTERVAL_TERMS + schema.BOUNDS:
        value, lo, hi = df[term], df[f"{term}_lo"], df[f"{term}_hi"]
        bad = (value.notna() & ((lo > value + 1e-9) | (hi < value - 1e-9)))
        if bad.any():
            i = bad.idxmax()
            raise IJCKDError(f"bounds table row {i}: {term} = {value[i]} lies outside its "
                             f"interval [{lo[i]}, {hi[i]}]")
    for column, allowed in schema.TEXT_SCALARS.items():
        bad = df[column].notna() & ~df[column].isin(allowed)
        if bad.any():
            i = bad.idxmax()
            raise IJCKDError(f"bounds table row {i}: {column} must be one of "
                             f"{', '.join(allowed)} (or empty), got {df[column][i]!r}")
    for column in schema.KEYS:
        if column in ("seed", "epoch", "step"):
            continue
        if df[column].isna().any():
            raise IJCKDError(f"bounds table has an empty {column!r}")
    return df


def _check_columns(df, columns, name):
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise IJCKDError(f"{name} table is missing column {missing[0]!r}")
    return df[list(columns)]


def read_table(path: str | Path, *, kind: str = "bounds") -> pd.DataFrame:
    """The ``kind`` table at ``path`` as a DataFrame (a bounds table has its schema
    checked); a missing or unreadable file raises with the path."""
    path = Path(path)
    if not path.is_file():
        raise IJCKDError(f"no {kind} table at {str(path)!r}")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise IJCKDError(f"{kind} table {str(path)!r} is unreadable: {exc}") from None
    if kind == "bounds":
        check_bounds_table(df)
    return df


def _write_csv(df, path):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _keys_of(rows, key):
    """The ``key`` column values of each row, as tuples of strings."""
    return map(tuple, rows[list(key)].astype(str).to_numpy())


def _replace_rows(path, new_rows, key):
    """The table at ``path`` with its rows whose ``key`` equals a new row's dropped and
    ``new_rows`` appended (call under the table's lock)."""
    # keys as written: read as numbers, a run named "007" would become 7 and its rows
    # would be added again instead of replaced
    old = pd.read_csv(path, dtype={k: str for k in key})
    keys = set(_keys_of(new_rows, key))
    keep = [k not in keys for k in _keys_of(old, key)]
    return pd.concat([old[keep], new_rows], ignore_index=True)


def upsert(path: str | Path, new_rows: pd.DataFrame | Iterable[Mapping[str, Any]], *,
           columns: Sequence[str],
           key: Sequence[str], check: Callable[[pd.DataFrame], Any] | None = None
           ) -> pd.DataFrame:
    """Add ``new_rows`` (DataFrame) to the CSV at ``path``, replacing rows with equal ``key``.

    Returns the full table. Runs under the table's lock; writes atomically.
    """
    path = Path(path)
    new_rows = _check_columns(pd.DataFrame(new_rows), columns, path.stem)
    with locked(path):
        if path.is_file() and path.stat().st_size > 0:
            table = _replace_rows(path, new_rows, key)
        else:
            table = new_rows.reset_index(drop=True)
        if check is not None:
            check(table)
        _write_csv(table, path)
    return table


def append_bounds(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Upsert rows (dicts with every ``schema.TABLE_COLUMNS`` key) into ``bounds.csv``."""
    df = pd.DataFrame(list(rows))
    for column in schema.TABLE_COLUMNS:
        if column not in df.columns:
            raise IJCKDError(f"bounds row is missing column {column!r}")
    return upsert(path, df, columns=schema.TABLE_COLUMNS, key=ROW_KEY, check=check_bounds_table)


def upsert_block(path: str | Path, new_rows: pd.DataFrame | Iterable[Mapping[str, Any]], *,
                 columns: Sequence[str],
                 block: Sequence[str] = ("run", "checkpoint")) -> None:
    """Add ``new_rows`` to the CSV at ``path``, replacing every row whose ``block``
    columns equal those of a new row (a checkpoint's rows are replaced as a whole).

    For tables that grow by a block per checkpoint (``margins.csv``: one row per
    evaluation sample): when no block is replaced, which is every checkpoint of a normal
    run, only the key columns are parsed and the file's bytes are copied with the new
    rows appended, instead of parsing and rewriting every row. Under the table's lock;
    atomic. Returns nothing.
    """
    path = Path(path)
    new_rows = _check_columns(pd.DataFrame(new_rows), columns, path.stem)
    block = list(block)
    with locked(path):
        if not (path.is_file() and path.stat().st_size > 0):
            _write_csv(new_rows.reset_index(drop=True), path)
            return
        with open(path, newline="") as fh:
            header = fh.readline().rstrip("\r\n").split(",")
        new_keys = set(_keys_of(new_rows, block))
        present = pd.read_csv(path, usecols=block, dtype=str).drop_duplicates()
        if header == list(columns) and not any(k in new_keys for k in _keys_of(present, block)):
            with atomic_path(path) as tmp:
                shutil.copyfile(path, tmp)
                new_rows.to_csv(tmp, mode="a", header=False, index=False)
            return
        _write_csv(_replace_rows(path, new_rows, block)[list(columns)], path)


def append_per_class(path: str | Path, df: pd.DataFrame) -> None:
    """Upsert ``df``'s per-class rows into the per-class table at ``path``."""
    upsert_block(path, df, columns=schema.PER_CLASS_COLUMNS)


def append_calibration(path: str | Path, df: pd.DataFrame) -> None:
    """Upsert ``df``'s reliability bins into the calibration table at ``path``."""
    upsert_block(path, df, columns=schema.CALIBRATION_COLUMNS)


def append_margins(path: str | Path, df: pd.DataFrame) -> None:
    """Upsert ``df``'s per-sample margins into the margins table at ``path`` (a ``sample``
    index is added when ``df`` has none)."""
    df = df.copy()
    df["sample"] = range(len(df)) if "sample" not in df else df["sample"]
    upsert_block(path, df, columns=schema.MARGIN_COLUMNS + ("sample",))


def drop_incomplete_checkpoints(bounds_path: str | Path, companion_paths: Iterable[str | Path]
                                ) -> list[tuple[str, str]]:
    """Remove from ``bounds_path`` the rows of checkpoints that a companion table lacks.

    A checkpoint is tracked once its rows are in ``bounds.csv`` and every companion
    (``per_class.csv``, ``margins.csv``, ``calibration.csv``); the files are written one
    after the other, so a tracker killed in between leaves a checkpoint that
    ``bounds.csv`` lists (and a re-run would skip) without its companion rows. Dropping its
    bounds row makes the re-run estimate it again; the companions are upserted, so nothing
    is duplicated. Returns the ``(run, checkpoint)`` pairs dropped.
    """
    bounds_path = Path(bounds_path)
    if not bounds_path.is_file():
        return []
    pair = ["run", "checkpoint"]
    with locked(bounds_path):
        bounds = pd.read_csv(bounds_path, dtype={k: str for k in ROW_KEY})
        tracked = set(map(tuple, bounds[pair].to_numpy()))
        complete = set(tracked)
        for companion in map(Path, companion_paths):
            # a companion is replaced atomically: reading it without its lock sees a whole file
            present = set()
            if companion.is_file() and companion.stat().st_size > 0:
                rows = pd.read_csv(companion, usecols=pair, dtype=str)
                present = set(map(tuple, rows.to_numpy()))
            complete &= present
        incomplete = sorted(tracked - complete)
        if incomplete:
            keep = [tuple(k) in complete for k in bounds[pair].to_numpy()]
            _write_csv(bounds[keep], bounds_path)
    return incomplete


def collect(paths: Sequence[str | Path], *, kind: str = "bounds") -> pd.DataFrame:
    """Concatenate the tables of several runs (files or run directories)."""
    frames = []
    name = {"bounds": "bounds.csv", "per_class": "per_class.csv", "margins": "margins.csv",
            "calibration": "calibration.csv"}[kind]
    for item in paths:
        item = Path(item)
        files = [item] if item.is_file() else sorted(item.rglob(name))
        frames.extend(read_table(f, kind=kind) for f in files)
    if not frames:
        raise IJCKDError(f"no {name} found under {', '.join(map(str, paths))}")
    table = pd.concat(frames, ignore_index=True)
    if kind == "bounds":
        table = table.drop_duplicates(subset=list(ROW_KEY), keep="last")
        check_bounds_table(table)
    return table


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files killed writers left (``.<name>.*.tmp``), never those of
    a live writer: a second tracker on the same run directory must not pull the file
    from under the first one's rename (see ``io.remove_stale_temp_files``)."""
    return io.remove_stale_temp_files(directory)


# ---- layers.csv (docs/theory.md "Layers"): a checkpoint's stage rows form one block


def check_layers_table(df: pd.DataFrame) -> pd.DataFrame:
    """Check the layer table's schema and intervals; raise IJCKDError naming the problem."""
    _check_columns(df, schema.LAYER_COLUMNS, "layers")
    for term in schema.LAYER_TERMS:
        value, lo, hi = df[term], df[f"{term}_lo"], df[f"{term}_hi"]
        bad = value.notna() & ((lo > value + 1e-9) | (hi < value - 1e-9))
        if bad.any():
            i = bad.idxmax()
            raise IJCKDError(f"layers table row {i}: {term} = {value[i]} lies outside its "
                             f"interval [{lo[i]}, {hi[i]}]")
    return df


def append_layers(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Upsert one checkpoint's rows (dicts with every ``schema.LAYER_COLUMNS`` key) into
    ``layers.csv``, replacing that checkpoint's earlier rows as a block."""
    df = check_layers_table(pd.DataFrame(list(rows)))
    upsert_block(path, df, columns=schema.LAYER_COLUMNS)


def collect_layers(paths: Sequence[str | Path], *, missing_ok: bool = False) -> pd.DataFrame:
    """Concatenate the ``layers.csv`` tables of several runs (files or run directories).
    With ``missing_ok``, runs without one are skipped (none at all: an empty table)."""
    files = []
    for item in map(Path, paths):
        if item.is_file():
            files.extend([item] if item.name == "layers.csv" or not missing_ok else [])
        else:
            files.extend(sorted(item.rglob("layers.csv")))
    if not files:
        if missing_ok:
            return pd.DataFrame(columns=list(schema.LAYER_COLUMNS))
        raise IJCKDError(f"no layers.csv found under {', '.join(map(str, paths))}")
    return check_layers_table(pd.concat([read_table(f, kind="layers") for f in files],
                                        ignore_index=True))


__all__ = ["ROW_KEY", "append_bounds", "append_calibration", "append_layers", "append_margins",
           "append_per_class", "check_bounds_table", "check_layers_table", "collect",
           "collect_layers", "drop_incomplete_checkpoints", "locked", "read_table",
           "remove_stale_temp_files", "upsert", "upsert_block"]
