"""Figures of the layer table ``layers.csv`` (docs/theory.md "Layers"); reads DataFrames only.

- ``plot_layer_cka``: the stage CKA matrix of one run at one checkpoint (default its
  last), teacher stages × student stages, each cell annotated with its value and its
  95% interval.
- ``plot_layer_profile``: the stage probe error over relative depth, the teacher beside
  the student at every checkpoint of one run (later epochs darker; the last with its
  intervals).
- ``plot_layer_profiles``: the last checkpoint's profile of every run, one colour per
  method, the teacher beside them.
"""

import math
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.plotting import select
from ijckd_bounds.plotting.style import (
    COLUMN_WIDTH,
    method_label,
    method_order,
    method_palette,
    new_figure,
    paper_style,
)

LAYER_COLUMNS = ("run", "method", "epoch", "checkpoint", "model", "stage", "stage_index",
                 "depth", "teacher_stage", "teacher_index", "student_stage", "student_index",
                 "stage_probe_err", "stage_probe_err_lo", "stage_probe_err_hi",
                 "stage_cka", "stage_cka_lo", "stage_cka_hi", "n_eval", "dim")

__all__ = ["plot_layer_cka", "plot_layer_profile", "plot_layer_profiles",
           "make_layer_figures"]


def _one_run(df, run, what):
    select.require_columns(df, LAYER_COLUMNS, what)
    rows = df if run is None else select.select_one(df, "run", run, what)
    runs = sorted(rows["run"].astype(str).unique())
    if not runs:
        raise IJCKDError(f"`{what}` has no rows")
    if len(runs) > 1:
        raise IJCKDError(f"`{what}` holds {len(runs)} runs ({', '.join(runs[:4])}): pass run= "
                         f"to pick one")
    return rows, runs[0]


def _last_checkpoint(rows):
    """The checkpoint of the largest epoch (the last name when epochs are missing)."""
    order = rows.sort_values(["epoch", "checkpoint"], na_position="first", kind="stable")
    return str(order["checkpoint"].iloc[-1])


def _probe_rows(rows):
    return rows[rows["stage_probe_err"].notna() & rows["model"].notna()]


def _title(run, method, epoch):
    epoch_text = "" if epoch is None or (isinstance(epoch, float) and math.isnan(epoch)) \
        else f", epoch {epoch:g}"
    return f"{method_label(method)}: {run}{epoch_text}"


def plot_layer_cka(layers_df, *, run=None, checkpoint=None, ax=None, cmap="Blues"):
    """Heatmap of ``stage_cka``: teacher stages (rows, shallow at the top) × student
    stages (columns), one run at ``checkpoint`` (default: its last). Cells read
    "value" over "[lo, hi]". Returns the Axes."""
    rows, run = _one_run(layers_df, run, "layers_df")
    cka = rows[rows["stage_cka"].notna() | rows["teacher_stage"].notna()]
    cka = cka[cka["teacher_stage"].notna() & cka["student_stage"].notna()]
    if cka.empty:
        raise IJCKDError(f"`layers_df` has no stage_cka rows for run {run!r}")
    checkpoint = _last_checkpoint(cka) if checkpoint is None else str(checkpoint)
    cka = select.select_one(cka, "checkpoint", checkpoint, "layers_df")
    teacher = cka.drop_duplicates("teacher_index").sort_values("teacher_index")
    student = cka.drop_duplicates("student_index").sort_values("student_index")
    grid = {name: cka.pivot(index="teacher_index", columns="student_index", values=name)
            .reindex(index=teacher["teacher_index"], columns=student["student_index"])
            .to_numpy(dtype=float) for name in ("stage_cka", "stage_cka_lo", "stage_cka_hi")}
    n_t, n_s = grid["stage_cka"].shape
    with paper_style():
        if ax is None:
            width = min(max(COLUMN_WIDTH, 1.6 + 0.72 * n_s), 6.8)
            ax = new_figure(width, min(1.2 + 0.42 * n_t, 6.0)).subplots()
        fig = ax.figure
        image = ax.imshow(np.clip(grid["stage_cka"], 0.0, 1.0), cmap=cmap, vmin=0.0,
                          vmax=1.0, aspect="auto", interpolation="nearest")
        for i in range(n_t):
            for j in range(n_s):
                value = grid["stage_cka"][i, j]
                text = "n/a" if not np.isfinite(value) else (
                    f"{value:.2f}\n[{grid['stage_cka_lo'][i, j]:.2f}, "
                    f"{grid['stage_cka_hi'][i, j]:.2f}]")
                dark = np.isfinite(value) and value > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=6.2, linespacing=1.1,
                        color="white" if dark else "#222222")
        colourbar = fig.colorbar(image, ax=ax, pad=0.02, fraction=0.05)
        colourbar.set_label("debiased linear CKA")
        colourbar.outline.set_linewidth(0.5)
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_xticks(range(n_s), [str(s) for s in student["student_stage"]])
        ax.set_yticks(range(n_t), [str(s) for s in teacher["teacher_stage"]])
        ax.tick_params(length=0)
        ax.set_xlabel("student stage")
        ax.set_ylabel("teacher stage")
        epoch = cka["epoch"].iloc[0]
        n_eval = int(cka["n_eval"].iloc[0])
        ax.set_title(f"{_title(run, cka['method'].iloc[0], epoch)} (n = {n_eval})", loc="left")
    return ax


def _shades(colour, count):
    """``count`` shades of ``colour`` from light (first) to the colour itself (last)."""
    base = np.array(to_rgb(colour))
    if count == 1:
        return [tuple(base)]
    return [tuple(1.0 - (1.0 - base) * (0.3 + 0.7 * k / (count - 1))) for k in range(count)]


def _profile(ax, rows, *, colour, linestyle="-", marker="o", band=True, label=None,
             linewidth=1.3, shift=0.0):
    """One profile; ``shift`` moves it sideways (depth units) so that profiles drawn on
    top of each other stay visible."""
    rows = rows.sort_values("depth")
    depth = rows["depth"].to_numpy(dtype=float) + shift
    value = 100.0 * rows["stage_probe_err"].to_numpy(dtype=float)
    ax.plot(depth, value, color=colour, linestyle=linestyle, marker=marker, markersize=2.8,
            linewidth=linewidth, label=label)
    if band:
        lo = 100.0 * rows["stage_probe_err_lo"].to_numpy(dtype=float)
        hi = 100.0 * rows["stage_probe_err_hi"].to_numpy(dtype=float)
        ax.errorbar(depth, value, yerr=[value - lo, hi - value], fmt="none", ecolor=colour,
                    elinewidth=0.8, capsize=1.8)


def _name_points(ax, rows, *, colour):
    """Each stage's name above and right of its point (profiles fall with depth, so the
    line runs below the label)."""
    for _, row in rows.iterrows():
        ax.annotate(str(row["stage"]), (float(row["depth"]), 100.0 * row["stage_probe_err"]),
                    xytext=(3, 5), textcoords="offset points", ha="left", va="center",
                    fontsize=5.5, color=colour)


def _legend_below(ax, handles):
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncols=min(len(handles), 4))


def _depth_axis(ax):
    ax.set_xlabel("relative depth (stage / number of stages)")
    ax.set_ylabel("stage probe error (%)")
    ax.set_xlim(0.0, 1.1)
    ax.set_ylim(bottom=0.0)


def plot_layer_profile(layers_df, *, run=None, ax=None, palette=None):
    """``stage_probe_err`` over relative depth for one run: the teacher (black, dotted:
    it is frozen) and the student at every checkpoint, later epochs darker, the last with
    its 95% intervals. Returns the Axes."""
    rows, run = _one_run(layers_df, run, "layers_df")
    probes = _probe_rows(rows)
    if probes.empty:
        raise IJCKDError(f"`layers_df` has no stage_probe_err rows for run {run!r}")
    method = str(probes["method"].iloc[0])
    colour = (palette or method_palette([method]))[method]
    checkpoints = (probes.drop_duplicates("checkpoint")
                   .sort_values(["epoch", "checkpoint"], na_position="first")["checkpoint"]
                   .astype(str).tolist())
    last = checkpoints[-1]
    with paper_style():
        if ax is None:
            ax = new_figure(COLUMN_WIDTH, 2.6).subplots()
        student = probes[probes["model"] == "student"]
        for shade, checkpoint in zip(_shades(colour, len(checkpoints)), checkpoints, strict=True):
            mine = student[student["checkpoint"].astype(str) == checkpoint]
            _profile(ax, mine, colour=shade, band=checkpoint == last,
                     linewidth=1.5 if checkpoint == last else 0.8)
        teacher = probes[(probes["model"] == "teacher")
                         & (probes["checkpoint"].astype(str) == last)]
        _profile(ax, teacher, colour="#000000", linestyle=":", marker="s")
        _name_points(ax, teacher, colour="#333333")
        _name_points(ax, student[student["checkpoint"].astype(str) == last], colour=colour)
        _depth_axis(ax)
        epochs = probes.drop_duplicates("checkpoint")["epoch"].dropna()
        span = f" (epochs {epochs.min():g}-{epochs.max():g}, light to dark)" \
            if len(epochs) > 1 else ""
        handles = [Line2D([], [], color="#000000", linestyle=":", marker="s", markersize=2.8,
                          label="teacher"),
                   Line2D([], [], color=colour, marker="o", markersize=2.8,
                          label=f"student{span}")]
        _legend_below(ax, handles)
        ax.set_title(_title(run, method, None), loc="left")
    return ax


def plot_layer_profiles(layers_df, *, ax=None, palette=None):
    """The last checkpoint's ``stage_probe_err`` profile of every run in ``layers_df``,
    one colour per method (thin lines for several seeds; methods shifted slightly
    sideways so that equal profiles stay visible), the teacher of the first run dotted
    black. Returns the Axes."""
    select.require_columns(layers_df, LAYER_COLUMNS, "layers_df")
    probes = _probe_rows(layers_df)
    if probes.empty:
        raise IJCKDError("`layers_df` has no stage_probe_err rows")
    palette = palette or method_palette(probes["method"].astype(str).unique())
    methods = method_order(probes["method"].astype(str).unique())
    with paper_style():
        if ax is None:
            ax = new_figure(COLUMN_WIDTH, 2.6).subplots()
        handles, teacher_drawn = [], None
        step = 0.012  # sideways shift between methods, in units of relative depth
        for position, method in enumerate(methods):
            shift = (position - (len(methods) - 1) / 2) * step
            runs = sorted(probes.loc[probes["method"].astype(str) == method, "run"]
                          .astype(str).unique())
            for run in runs:
                mine = probes[probes["run"].astype(str) == run]
                last = _last_checkpoint(mine)
                mine = mine[mine["checkpoint"].astype(str) == last]
                _profile(ax, mine[mine["model"] == "student"], colour=palette[method],
                         band=len(runs) == 1, linewidth=0.9 if len(runs) > 1 else 1.3,
                         shift=shift)
                if teacher_drawn is None:
                    teacher_drawn = mine
            handles.append(Line2D([], [], color=palette[method], marker="o", markersize=2.8,
                                  label=method_label(method)
                                  + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")))
        teacher = teacher_drawn[teacher_drawn["model"] == "teacher"]
        _profile(ax, teacher, colour="#000000", linestyle=":", marker="s")
        _name_points(ax, teacher, colour="#333333")
        handles.insert(0, Line2D([], [], color="#000000", linestyle=":", marker="s",
                                 markersize=2.8, label="teacher"))
        _depth_axis(ax)
        _legend_below(ax, handles)
        ax.set_title("stage probe error at the last checkpoint", loc="left")
    return ax


def make_layer_figures(layers_df, out_dir, *, palette=None):
    """Per run: ``layers_cka_<run>`` and ``layers_profile_<run>``; with several runs also
    ``layers_profiles``. PNG and PDF under ``out_dir``; returns the written paths (none
    for an empty table)."""
    from ijckd_bounds.plotting.output import _safe_name, save_figure

    if getattr(layers_df, "empty", False):
        return []
    select.require_columns(layers_df, LAYER_COLUMNS, "layers_df")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = palette or method_palette(layers_df["method"].dropna().astype(str).unique())
    written = []
    runs = sorted(layers_df["run"].astype(str).unique())
    for run in runs:
        name = _safe_name(run)
        written += save_figure(plot_layer_cka(layers_df, run=run).figure,
                               out_dir / f"layers_cka_{name}")
        written += save_figure(plot_layer_profile(layers_df, run=run, palette=palette).figure,
                               out_dir / f"layers_profile_{name}")
    if len(runs) > 1:
        written += save_figure(plot_layer_profiles(layers_df, palette=palette).figure,
                               out_dir / "layers_profiles")
    return written
