"""Fidelity and calibration figures (docs/theory.md, "Fidelity and calibration").

Pure functions of the results tables, like every figure of the package:

- ``plot_fidelity(bounds_df)``: top-1 agreement with the teacher, predictive KL and the
  student's ECE across epochs, one line per run in its method's colour (``plot_terms``
  with these terms);
- ``plot_reliability(calibration_df)``: the reliability diagram of one checkpoint, the
  teacher beside the student, with the samples per confidence bin under each.
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.plotting import select
from ijckd_bounds.plotting.figures import _palette, plot_terms
from ijckd_bounds.plotting.style import FULL_WIDTH, method_label, new_figure, paper_style

__all__ = ["FIDELITY_CURVES", "plot_fidelity", "plot_reliability"]

FIDELITY_CURVES = ("top1_agreement", "pred_kl", "student_ece")
TEACHER_COLOUR = "#555555"  # the teacher's black, lightened so the gap shows on its bars
GAP_COLOUR = "#cc6677"  # Paul Tol "muted" rose: disjoint from the method colours


def plot_fidelity(df: pd.DataFrame, terms: Sequence[str] = FIDELITY_CURVES, *,
                  split: str = "eval", dataset: str | None = None,
                  palette: dict[str, str] | None = None) -> Figure:
    """Agreement with the teacher, predictive KL and the student's ECE across epochs: one
    panel per term, one line per run, the row's 95% interval as a band.

    ``df``: bounds table (run, method, epoch and each term with ``_lo``/``_hi``).
    Agreement and ECE in percent, KL in nats. Returns the Figure.
    """
    return plot_terms(df, terms, split=split, dataset=dataset, ncols=len(terms),
                      palette=palette)


def _model_rows(rows, model):
    mine = rows[rows["model"].astype(str) == model]
    if mine.empty:
        raise IJCKDError(f"`calibration_df` has no {model} bins at the selected checkpoint")
    if mine["bin"].duplicated().any():
        raise IJCKDError(f"`calibration_df` repeats a {model} bin at the selected checkpoint "
                         "(several splits or checkpoints mixed?)")
    return mine.sort_values("bin")


def _numbers(rows, column):
    return pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)


def plot_reliability(calibration_df: pd.DataFrame, *, run: str | None = None,
                     method: str | None = None, epoch: int | None = None, split: str = "eval",
                     palette: dict[str, str] | None = None) -> Figure:
    """Reliability diagram of one checkpoint: teacher (left) beside student (right).

    ``calibration_df``: one row per model (teacher, student) x confidence bin with
    ``bin_lo``, ``bin_hi``, ``n``, ``confidence`` (mean confidence in the bin) and
    ``accuracy`` (share correct in the bin), plus run, method, epoch (and split). Pick
    the checkpoint with ``run``/``method`` (needed when several runs are present) and
    ``epoch`` (default: the run's last). Top: each bin's accuracy as a bar, its mean
    confidence as a tick, the gap between them shaded and the diagonal of perfect
    calibration; a bar below the diagonal is over-confident. Bottom: the samples in each
    bin (log scale), the weights of the bins in the ECE. Returns the Figure.
    """
    rows = calibration_df
    if isinstance(rows, pd.DataFrame) and "split" in rows.columns and split is not None:
        rows = select.select_one(rows, "split", split, "calibration_df")
    rows = select.select_checkpoint(rows, schema.CALIBRATION_PLOT_COLUMNS, "calibration_df",
                                    run=run, method=method, epoch=epoch,
                                    rows_name="calibration bins")
    name = str(rows["method"].iloc[0])
    colour = _palette([name], palette)[name]
    models = (("teacher", "teacher", TEACHER_COLOUR),
              ("student", f"student ({method_label(name)})", colour))
    with paper_style():
        fig = new_figure(FULL_WIDTH, 3.1)
        grid = fig.add_gridspec(2, 2, height_ratios=(3.0, 1.0))
        top_axes, count_axes = [], []
        for column, (model, title, shade) in enumerate(models):
            mine = _model_rows(rows, model)
            lo, hi = _numbers(mine, "bin_lo"), _numbers(mine, "bin_hi")
            centre, width = (lo + hi) / 2, hi - lo
            accuracy, confidence = _numbers(mine, "accuracy"), _numbers(mine, "confidence")
            counts = _numbers(mine, "n")
            filled = (counts > 0) & np.isfinite(accuracy) & np.isfinite(confidence)
            ax = fig.add_subplot(grid[0, column])
            ax_n = fig.add_subplot(grid[1, column], sharex=ax)
            ax.plot([0, 1], [0, 1], color="#444444", linewidth=0.8, linestyle="--", zorder=3)
            ax.bar(centre[filled], accuracy[filled], width=width[filled] * 0.92,
                   color=shade, alpha=0.6, linewidth=0, zorder=1)
            low = np.minimum(accuracy, confidence)[filled]
            gap = np.abs(confidence - accuracy)[filled]
            # hatched, unfilled: readable over the accuracy bar of an under-confident bin
            ax.bar(centre[filled], gap, bottom=low, width=width[filled] * 0.92,
                   facecolor="none", hatch="/////", edgecolor=GAP_COLOUR, linewidth=0.6,
                   zorder=2)
            ax.scatter(centre[filled], confidence[filled], marker="_", s=40,
                       color=GAP_COLOUR, linewidths=1.2, zorder=4)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("accuracy in bin")
            ax.tick_params(labelbottom=False)
            ax.set_title(f"{title}, {int(counts.sum())} samples", loc="left")

            ax_n.bar(centre[counts > 0], counts[counts > 0], width=width[counts > 0] * 0.92,
                     color=shade, alpha=0.6, linewidth=0)
            ax_n.set_yscale("log")
            ax_n.set_ylim(0.7, max(float(counts.max()), 1.0) * 2.5)
            ax_n.set_xlabel("confidence (probability of the predicted class)")
            ax_n.set_ylabel("samples")
            top_axes.append(ax)
            count_axes.append(ax_n)
        handles = [Line2D([], [], color="#444444", linewidth=0.8, linestyle="--",
                          label="perfect calibration"),
                   Patch(facecolor="#888888", alpha=0.6, label="accuracy in bin"),
                   Line2D([], [], color=GAP_COLOUR, marker="_", markersize=7, linewidth=0,
                          markeredgewidth=1.2, label="mean confidence in bin"),
                   Patch(facecolor="none", hatch="/////", edgecolor=GAP_COLOUR,
                         linewidth=0.6, label="gap (weighted by the bin's samples: ECE)")]
        fig.legend(handles=handles, loc="outside lower center", ncols=4)
        epoch_value = rows["epoch"].iloc[0]
        when = f", epoch {select.format_number(epoch_value)}" if pd.notna(epoch_value) else ""
        fig.suptitle(f"Reliability diagram: {method_label(name)}, "
                     f"{rows['run'].iloc[0]}{when}")
    return fig
