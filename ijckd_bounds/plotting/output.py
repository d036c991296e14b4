"""Writing figures to disk: atomically, as PNG (200 dpi) and PDF, all at once."""

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.io import atomic_path, atomic_write_text
from ijckd_bounds.plotting import select
from ijckd_bounds.plotting.fidelity import FIDELITY_CURVES, plot_fidelity, plot_reliability
from ijckd_bounds.plotting.figures import (
    plot_bounds,
    plot_decomposition,
    plot_final_comparison,
    plot_margins,
    plot_per_class,
    plot_terms,
)
from ijckd_bounds.plotting.style import method_order, method_palette, paper_style
from ijckd_bounds.plotting.tables import final_table, to_latex, to_markdown

logger = logging.getLogger(__name__)

FORMATS = ("png", "pdf")
PNG_DPI = 200
# no creation date in the PDF: a figure redrawn from the same table is the same file, so
# regenerated figures do not show up as changed in version control
_METADATA = {"png": {"Software": "ijckd_bounds"},
             "pdf": {"Creator": "ijckd_bounds", "CreationDate": None}}


def save_figure(fig: Figure, path: str | Path, *, formats: Sequence[str] = FORMATS,
                dpi: int = PNG_DPI) -> list[Path]:
    """Write ``fig`` to ``<path>.png`` and ``<path>.pdf``; return the written paths.

    ``path`` is given without a suffix (a trailing .png/.pdf is dropped). Each file is
    written to a temporary name in the target directory and renamed into place, so an
    interrupted run never leaves a half-written figure under the final name.
    """
    if not hasattr(fig, "savefig"):
        raise IJCKDError(f"`fig` must be a matplotlib Figure, got {type(fig).__name__}")
    path = Path(path)
    if path.suffix.lower() in (".png", ".pdf"):
        path = path.with_suffix("")
    written = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise IJCKDError(f"figure format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        target = path.with_name(f"{path.name}.{fmt}")
        with paper_style(), atomic_path(target) as tmp:
            # the temporary name ends in .tmp, so the format must be explicit
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_METADATA[fmt])
        written.append(target)
    return written


def _safe_name(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"


def _usable(df, name):
    if df is None:
        logger.info("skipping the %s figures: no %s table was given", name, name)
        return False
    if not isinstance(df, pd.DataFrame):
        raise IJCKDError(f"`{name}_df` must be a pandas DataFrame or None, "
                         f"got {type(df).__name__}")
    if df.empty:
        logger.info("skipping the %s figures: the %s table is empty", name, name)
        return False
    return True


def _bounds_figures(rows, split, dataset, palette):
    """``(stem, make)`` for each figure of one dataset's bounds rows; ``make()`` draws it
    and returns the Figure, so each figure is drawn only when it is saved."""
    options = {"split": split, "dataset": dataset}
    makers = [("final_comparison", lambda: plot_final_comparison(
        rows, palette=palette, **options).figure)]
    if not rows["epoch"].notna().any():
        logger.info("skipping the figures across epochs%s: no row has an epoch",
                    f" of {dataset}" if dataset else "")
        return makers
    makers += [("terms", lambda: plot_terms(rows, palette=palette, **options)),
               ("bounds", lambda: plot_bounds(rows, **options)),
               ("decomposition", lambda: plot_decomposition(rows, **options))]
    if all(term in rows.columns for term in FIDELITY_CURVES):
        makers.append(("fidelity", lambda: plot_fidelity(rows, palette=palette, **options)))
    return makers


def make_all_figures(bounds_df: pd.DataFrame | None, per_class_df: pd.DataFrame | None,
                     margins_df: pd.DataFrame | None, out_dir: str | Path, *,
                     split: str = "eval", calibration_df: pd.DataFrame | None = None
                     ) -> list[Path]:
    """Every figure of the paper set (and the final table) under ``out_dir``.

    From ``bounds_df``: terms, bounds, decomposition, final comparison, and
    ``final_table.md``/``.tex`` (per dataset, with the dataset in the file name when
    there are several). From ``per_class_df``: one disagreement heatmap per run. From
    ``margins_df``: one margin figure per run at its last epoch. From ``calibration_df``:
    one reliability diagram per run at its last epoch; the bounds table also gives the
    fidelity figure (agreement, predictive KL, ECE across epochs). A table that is None
    or empty is skipped with a logged reason. Returns the written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    usable = {"bounds": _usable(bounds_df, "bounds"),
              "per_class": _usable(per_class_df, "per_class"),
              "margins": _usable(margins_df, "margins"),
              "calibration": _usable(calibration_df, "calibration")}
    tables = {"bounds": bounds_df, "per_class": per_class_df, "margins": margins_df,
              "calibration": calibration_df}
    methods = set()
    for name, df in tables.items():
        if usable[name] and "method" in df.columns:
            methods.update(df["method"].dropna().astype(str))
    # one palette for the whole set: an unknown method keeps its colour in every figure
    palette = method_palette(methods)
    written = []

    if usable["bounds"]:
        select.require_columns(bounds_df, select.BOUNDS_KEYS, "bounds_df")
        rows = bounds_df
        if "split" in rows.columns and split is not None:
            rows = select.select_one(rows, "split", split, "bounds_df")
        datasets = (sorted(rows["dataset"].dropna().astype(str).unique())
                    if "dataset" in rows.columns else [None])
        for dataset in datasets:
            prefix = f"{_safe_name(dataset)}_" if len(datasets) > 1 else ""
            chosen = rows if dataset is None else rows[rows["dataset"].astype(str) == dataset]
            for stem, make in _bounds_figures(chosen, split, dataset, palette):
                written += save_figure(make(), out_dir / f"{prefix}{stem}")
            table = final_table(chosen, split=split)
            for suffix, text in (("md", to_markdown(table)), ("tex", to_latex(table))):
                target = out_dir / f"{prefix}final_table.{suffix}"
                atomic_write_text(target, text)
                written.append(target)

    if usable["per_class"]:
        select.require_columns(per_class_df, schema.PER_CLASS_PLOT_COLUMNS, "per_class_df")
        for method in method_order(per_class_df["method"].dropna().astype(str).unique()):
            mine = per_class_df[per_class_df["method"].astype(str) == method]
            for run in sorted(mine["run"].astype(str).unique()):
                if mine.loc[mine["run"].astype(str) == run, "epoch"].notna().sum() == 0:
                    logger.info("skipping the per-class figure of run %s: no epochs", run)
                    continue
                ax = plot_per_class(per_class_df, method, run=run)
                written += save_figure(ax.figure, out_dir / f"per_class_{_safe_name(run)}")

    if usable["margins"]:
        select.require_columns(margins_df, schema.MARGIN_PLOT_COLUMNS, "margins_df")
        for run in sorted(margins_df["run"].astype(str).unique()):
            fig = plot_margins(margins_df, run=run, palette=palette)
            written += save_figure(fig, out_dir / f"margins_{_safe_name(run)}")

    if usable["calibration"]:
        select.require_columns(calibration_df, schema.CALIBRATION_PLOT_COLUMNS, "calibration_df")
        for run in sorted(calibration_df["run"].astype(str).unique()):
            fig = plot_reliability(calibration_df, run=run, split=split, palette=palette)
            written += save_figure(fig, out_dir / f"reliability_{_safe_name(run)}")
    return written
