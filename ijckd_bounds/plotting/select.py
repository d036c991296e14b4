"""Checking and selecting rows of the results tables before they are drawn.

Selection only (filters, the last checkpoint of a run, sorting); no statistics.
Every problem with the caller's table is raised as one readable ``IJCKDError`` line.
"""

import numpy as np
import pandas as pd

from ijckd_bounds.errors import IJCKDError, unknown_name
from ijckd_bounds.schema import interval_columns

BOUNDS_KEYS = ("run", "method", "epoch")


def require_frame(df, what):
    """``df`` itself; raises when it is not a DataFrame or is empty (``what`` names it)."""
    if not isinstance(df, pd.DataFrame):
        raise IJCKDError(f"`{what}` must be a pandas DataFrame, got {type(df).__name__}")
    if df.empty:
        raise IJCKDError(f"`{what}` is empty: there is nothing to plot")
    return df


def require_columns(df, columns, what):
    """Raise when ``df`` lacks any of ``columns`` (naming the first missing one)."""
    require_frame(df, what)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise IJCKDError(f"`{what}` lacks column {missing[0]!r} "
                         f"({len(missing)} missing of the {len(columns)} needed)")
    return df


def require_terms(df, terms, what, valid):
    """Check that every term is known and present with its _lo/_hi columns."""
    for term in terms:
        if term not in valid:
            raise unknown_name("term", term, valid)
    require_columns(df, [c for t in terms for c in interval_columns(t)], what)
    for column in (c for t in terms for c in interval_columns(t)):
        if not pd.api.types.is_numeric_dtype(df[column]):
            raise IJCKDError(f"`{what}` column {column!r} must be numeric, "
                             f"got {df[column].dtype}")


def select_one(df, column, value, what):
    """Rows whose ``column`` equals ``value``; fails listing the values present."""
    values = sorted(df[column].dropna().astype(str).unique())
    if str(value) not in values:
        raise IJCKDError(f"`{what}` has no {column} {value!r}; present: {', '.join(values)}")
    return df[df[column].astype(str) == str(value)]


def select_bounds_rows(df, *, what="df", split="eval", dataset=None, need_epoch=True):
    """The rows of one split and one dataset of a bounds table, sorted by run and epoch.

    With several datasets in the table the caller must name one: their curves share no
    scale and drawing them as one method's lines would mislead. ``need_epoch``: drop rows
    without an epoch (figures across epochs) and fail when none is left.
    """
    require_columns(df, BOUNDS_KEYS, what)
    if not pd.api.types.is_numeric_dtype(df["epoch"]):
        raise IJCKDError(f"`{what}` column 'epoch' must be numeric, got {df['epoch'].dtype}")
    if "split" in df.columns and split is not None:
        df = select_one(df, "split", split, what)
    if "dataset" in df.columns:
        datasets = sorted(df["dataset"].dropna().astype(str).unique())
        if dataset is not None:
            df = select_one(df, "dataset", dataset, what)
        elif len(datasets) > 1:
            raise IJCKDError(f"`{what}` holds {len(datasets)} datasets "
                             f"({', '.join(datasets)}): pass dataset= to pick one")
    elif dataset is not None:
        raise IJCKDError(f"`{what}` has no 'dataset' column to select {dataset!r} from")
    if not need_epoch:
        return sort_runs(df)
    df = df[df["epoch"].notna()]
    if df.empty:
        raise IJCKDError(f"`{what}` has no rows with an epoch: nothing to draw across epochs")
    return sort_runs(df)


def sort_runs(df):
    """``df`` sorted by run, then epoch (and step where there is one), stably."""
    order = ["run", "epoch"] + (["step"] if "step" in df.columns else [])
    return df.sort_values(order, kind="stable")


def runs_of(df):
    """``[(method, run, rows)]`` with each run's rows sorted by epoch."""
    return [(str(rows["method"].iloc[0]), str(run), rows)
            for run, rows in sort_runs(df).groupby("run", sort=True)]



def select_checkpoint(df, columns, what, *, run=None, method=None, epoch=None,
                      rows_name="rows"):
    """The rows of one checkpoint of one run of a per-checkpoint table (margins,
    calibration bins): ``run``/``method`` pick the run (needed when several are present),
    ``epoch`` the checkpoint (default: the run's last). ``columns``: the columns needed."""
    require_columns(df, columns, what)
    rows = df
    if method is not None:
        rows = select_one(rows, "method", method, what)
    if run is not None:
        rows = select_one(rows, "run", run, what)
    runs = sorted(rows["run"].astype(str).unique())
    if len(runs) > 1:
        raise IJCKDError(f"`{what}` holds {len(runs)} runs ({', '.join(runs[:6])}"
                         f"{', ...' if len(runs) > 6 else ''}): pass run= to pick one")
    if epoch is None:
        epochs = rows["epoch"].dropna()
        if not epochs.empty:
            rows = rows[rows["epoch"] == epochs.max()]
    else:
        rows = rows[pd.to_numeric(rows["epoch"], errors="coerce") == float(epoch)]
        if rows.empty:
            present = sorted(df[df["run"].astype(str) == runs[0]]["epoch"]
                             .dropna().unique())
            raise IJCKDError(f"run {runs[0]!r} has no {rows_name} at epoch {epoch}; epochs "
                             f"present: {', '.join(map(format_number, present))}")
    return rows


def final_rows(df, *, what="df"):
    """The last checkpoint of every run: the row with the largest (epoch, step).

    A run without epochs (a model the user brought, audited once) keeps its last row.
    """
    require_columns(df, ("run", "method"), what)
    order = [c for c in ("epoch", "step") if c in df.columns]
    ranked = df.sort_values(order, kind="stable", na_position="first") if order else df
    return ranked.groupby("run", sort=False).tail(1)


def format_number(value):
    """``3`` for 3.0, ``0.5`` for 0.5, the text itself for a non-number, "–" for missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def as_bool(series, column, what):
    """A boolean column read back from CSV (True/False, 1/0 or "True"/"False")."""
    if series.dtype == bool:
        return series.to_numpy()
    text = series.astype(str).str.strip().str.lower()
    truth = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}
    unknown = sorted(set(text) - set(truth))
    if unknown:
        raise IJCKDError(f"`{what}` column {column!r} must be boolean, "
                         f"got values like {unknown[0]!r}")
    return text.map(truth).to_numpy(dtype=bool)


def small_sample_rows(df):
    """Boolean mask of rows measured with n_eval < 10 * dim (docs/theory.md: flag those)."""
    if "n_eval" not in df.columns or "dim" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    n_eval = pd.to_numeric(df["n_eval"], errors="coerce").to_numpy(dtype=float)
    dim = pd.to_numeric(df["dim"], errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        return n_eval < 10.0 * dim
