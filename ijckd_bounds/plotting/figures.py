"""Paper figures drawn from the results tables (see docs/theory.md for every term).

Each function is a pure function of a DataFrame: it selects rows, draws them and returns
the ``Figure`` (multi-panel figures) or ``Axes`` (single-panel figures, which accept
``ax=``). Nothing here estimates anything: a value is drawn as the table gives it, its
band is the row's own ``_lo``/``_hi``, and several seeds of a method appear as several
thin lines of the method's colour rather than as a mean.
"""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.plotting import select
from ijckd_bounds.plotting.style import (
    BOUND_STYLES,
    COLUMN_WIDTH,
    DECOMPOSITION_STYLES,
    FULL_WIDTH,
    STUDENT_UNDER_BOUNDS_STYLE,
    TEACHER_STYLE,
    darker,
    method_label,
    method_order,
    method_palette,
    new_figure,
    paper_style,
    scale,
    term_label,
)

DEFAULT_TERMS = ("student_err", "disagreement", "delta_gamma", "feat_rel", "feat_cka",
                 "mmd2", "proxy_a_mlp", "ideal_joint", "ijc_gap")
PLOTTABLE_TERMS = schema.INTERVAL_TERMS + schema.BOUNDS
DECOMPOSITION_TERMS = ("teacher_err", schema.TRANSFER_GAP, "disagreement", "ijc_gap")
SMALL_SAMPLE_NOTE = "n < 10·d"
MARKERS_UP_TO = 15  # epochs per line; beyond that markers only clutter the line
PANEL_HEIGHT = 1.55  # inches per row of a grid


# ----------------------------------------------------------------------------- helpers


def _palette(df_methods, palette):
    colours = method_palette(df_methods)
    if palette:
        colours.update({str(k): v for k, v in palette.items()})
    return colours


def _grid(n_panels, ncols, *, legend_rows=1):
    """A figure with ``n_panels`` axes in rows of ``ncols``; unused cells removed.

    ``legend_rows``: rows of the legend placed under the grid, given room in the height.
    """
    if ncols < 1:
        raise IJCKDError(f"`ncols` must be at least 1, got {ncols}")
    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    width = COLUMN_WIDTH if ncols == 1 else FULL_WIDTH
    # a lone panel at column width is narrow: make it taller than a grid cell
    panel_height = 1.9 if n_panels == 1 else PANEL_HEIGHT
    fig = new_figure(width, panel_height * nrows + 0.12 + 0.15 * legend_rows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.remove()
    axes = axes[:n_panels]
    for i, ax in enumerate(axes):
        # x label under the lowest panel of each column only
        if i + ncols >= n_panels:
            ax.set_xlabel("epoch")
            ax.xaxis.set_tick_params(labelbottom=True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    return fig, list(axes)


def _draw_interval_line(ax, x, rows, term, *, style, band_alpha, markers):
    """One line of ``term`` along ``x`` with the row's own [lo, hi] as a band."""
    factor = scale(term)
    value = rows[term].to_numpy(dtype=float) * factor
    if not np.isfinite(value).any():
        return False
    ax.plot(x, value, marker="o" if markers else None, markersize=2.2, **style)
    lo = rows[f"{term}_lo"].to_numpy(dtype=float) * factor
    hi = rows[f"{term}_hi"].to_numpy(dtype=float) * factor
    if band_alpha > 0 and np.isfinite(lo).any() and np.isfinite(hi).any():
        ax.fill_between(x, lo, hi, color=style.get("color"), alpha=band_alpha, linewidth=0)
    return True


def _runs_per_method(df):
    return df.groupby("method")["run"].nunique().to_dict()


def _seed_note(rows):
    """The legend's note on a method's runs: " (3 seeds)" for three runs of three seeds;
    runs that share a seed are not counted as seeds (" (2 runs, 1 seed)"); "" for one."""
    n_runs = rows["run"].nunique()
    if n_runs <= 1:
        return ""
    if "seed" not in rows.columns or rows["seed"].isna().all():
        return f" ({n_runs} runs)"
    n_seeds = rows["seed"].dropna().nunique()
    if n_seeds == n_runs:
        return f" ({n_seeds} seeds)"
    return f" ({n_runs} runs, {n_seeds} seed{'s' if n_seeds != 1 else ''})"


def _seed_notes(df):
    return {str(method): _seed_note(rows) for method, rows in df.groupby("method")}


def _method_line_style(colour, n_runs):
    # several seeds: thin lines so that they stay separable where they cross
    return {"color": colour, "linewidth": 0.9 if n_runs > 1 else 1.4, "linestyle": "-"}


def _method_handles(methods, colours, seed_notes):
    handles = []
    for method in methods:
        label = method_label(method) + seed_notes.get(method, "")
        handles.append(Line2D([], [], color=colours[method], linewidth=1.4, label=label))
    return handles


def _legend_below(fig, handles, ncols):
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols)


def _finite_max(column):
    values = column.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else 0.0


FOCUS_FROM = 0.25  # share of the epoch range whose values may fall outside a panel's y-range
FOCUS_SLACK = 1.5  # keep the full range unless it is this much wider than the focused one


def _drawn_values(ax):
    """``(x, y)`` of every line and interval band drawn on ``ax`` so far, as flat arrays."""
    xs, ys = [], []
    for line in ax.get_lines():
        xs.append(np.asarray(line.get_xdata(), dtype=float))
        ys.append(np.asarray(line.get_ydata(), dtype=float))
    for band in ax.collections:
        for path in band.get_paths():
            xs.append(path.vertices[:, 0])
            ys.append(path.vertices[:, 1])
    if not xs:
        return np.zeros(0), np.zeros(0)
    x, y = np.concatenate(xs), np.concatenate(ys)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _focus_on_later_epochs(ax):
    """Set the y-range from the later epochs, so that the first epochs' large values (a
    student still far from its teacher) do not squash the epochs where methods differ.

    The range spans everything drawn at epochs past the first ``FOCUS_FROM`` of the epoch
    range, padded; where the full range is not much wider (``FOCUS_SLACK``) it is kept.
    Values left outside are marked at the panel's edge with a triangle in the line's
    colour (``OFF_SCALE_LABEL`` in the legend). Returns the number of points left outside.
    """
    x, y = _drawn_values(ax)
    if not y.size:
        return 0
    start = x.min() + FOCUS_FROM * (x.max() - x.min())
    later = y[x >= start] if (x >= start).any() else y
    lo, hi = float(later.min()), float(later.max())
    full_lo, full_hi = float(y.min()), float(y.max())
    span = hi - lo or abs(hi) or 1.0
    if (full_hi - full_lo) <= FOCUS_SLACK * span:
        return 0
    pad = 0.08 * span
    bottom = lo - pad if full_lo < lo - pad else full_lo - pad
    top = hi + pad if full_hi > hi + pad else full_hi + pad
    ax.set_ylim(bottom, top)
    outside = 0
    for line in list(ax.get_lines()):
        lx = np.asarray(line.get_xdata(), dtype=float)
        ly = np.asarray(line.get_ydata(), dtype=float)
        for mask, edge, marker in ((ly > top, top, "^"), (ly < bottom, bottom, "v")):
            if mask.any():
                ax.plot(lx[mask], np.full(mask.sum(), edge), linestyle="none", marker=marker,
                        markersize=3.0, color=line.get_color(), clip_on=False, zorder=4,
                        label="_off_scale")
                outside += int(mask.sum())
    return outside


OFF_SCALE_LABEL = "beyond the panel (early epochs)"


def _off_scale_handle():
    return Line2D([], [], linestyle="none", marker="^", markersize=3.0, color="#555555",
                  label=OFF_SCALE_LABEL)


def _flag_small_sample(ax):
    ax.text(1.0, 1.0, SMALL_SAMPLE_NOTE, transform=ax.transAxes, ha="right", va="bottom",
            fontsize=6.5, fontstyle="italic", color="#555555")


def _panel_methods(df, method):
    present = method_order(df["method"].astype(str).unique())
    if method is None:
        return present
    wanted = [method] if isinstance(method, str) else [str(m) for m in method]
    for name in wanted:
        if name not in present:
            raise IJCKDError(f"method {name!r} is not in the table; present: "
                             f"{', '.join(present)}")
    return wanted


# ------------------------------------------------------------------------- the figures


def plot_terms(df: pd.DataFrame, terms: Sequence[str] = DEFAULT_TERMS, *, split: str = "eval",
               dataset: str | None = None, ncols: int = 3,
               palette: dict[str, str] | None = None) -> Figure:
    """Bound terms across epochs: one panel per term, one line per run in its method's
    colour, the row's 95% interval as a band.

    ``df``: bounds table (columns ``schema.TABLE_COLUMNS``; at least run, method, epoch
    and each term with ``_lo``/``_hi``). Rates are drawn in percent. Discrepancy panels
    (proxy A-distance, CKA, MMD²) carry a "n < 10·d" note when any drawn row was measured
    with fewer than 10 evaluation samples per feature dimension. Each panel's y-range
    comes from the later epochs (see ``_focus_on_later_epochs``): the first epochs'
    values, far above the rest, would otherwise squash the epochs where methods differ;
    values left outside are marked with triangles at the panel's edge. Returns the Figure.
    """
    terms = tuple(terms) if not isinstance(terms, str) else (terms,)
    if not terms:
        raise IJCKDError("`terms` must name at least one term")
    select.require_terms(df, terms, "df", PLOTTABLE_TERMS)
    rows_all = select.select_bounds_rows(df, split=split, dataset=dataset)
    methods = method_order(rows_all["method"].astype(str).unique())
    colours = _palette(methods, palette)
    runs_per_method = _runs_per_method(rows_all)
    legend_cols = min(len(methods) + 1, 7 if len(terms) > 1 else 3)
    off_scale = 0
    with paper_style():
        fig, axes = _grid(len(terms), ncols,
                          legend_rows=math.ceil((len(methods) + 1) / legend_cols))
        for ax, term in zip(axes, terms, strict=True):
            for method, _run, rows in select.runs_of(rows_all):
                n_runs = runs_per_method[method]
                _draw_interval_line(
                    ax, rows["epoch"].to_numpy(dtype=float), rows, term,
                    style=_method_line_style(colours[method], n_runs),
                    band_alpha=0.2 if n_runs == 1 else 0.1,
                    markers=len(rows) <= MARKERS_UP_TO)
            off_scale += _focus_on_later_epochs(ax)
            ax.set_title(term_label(term), loc="left")
            ax.set_ylabel(schema.UNITS.get(term, ""))
            if term in schema.DISCREPANCY_TERMS and select.small_sample_rows(rows_all).any():
                _flag_small_sample(ax)
        handles = _method_handles(methods, colours, _seed_notes(rows_all))
        _legend_below(fig, handles + ([_off_scale_handle()] if off_scale else []),
                      legend_cols)
    return fig


BOUNDS_LINEAR_BELOW = 1.0  # percent: the bounds axis is linear below, logarithmic above


def _bounds_ticks(top):
    return [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= top]


def _mark_above(ax, x, values, top, colour, slot):
    """A triangle at the panel's top edge, in the bound's colour, at the last epoch where
    the bound is above ``top``; ``slot`` shifts it sideways when several bounds share it."""
    above = np.isfinite(values) & (values > top)
    if not above.any():
        return False
    at = float(x[above][-1])
    transform = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    span = float(np.nanmax(x) - np.nanmin(x)) or 1.0
    ax.plot([at - 0.025 * span * slot], [1.0], transform=transform, linestyle="none",
            marker="^", markersize=4.0, color=colour, clip_on=False, zorder=5,
            label="_off_scale_above")
    return True


def plot_bounds(df: pd.DataFrame, method: str | None = None, *,
                bounds: Sequence[str] = schema.BOUNDS, split: str = "eval",
                dataset: str | None = None, ncols: int = 3, ymax: float = 100.0) -> Figure:
    """The student's error beside each bound on it, across epochs: one panel per method.

    ``student_err`` (a thick grey line with its interval, drawn under the bounds so that
    the coupled bound, which often equals it, stays visible on top) must lie under every
    exact bound (solid lines); the Ben-David bound is an estimate (dashed, labelled
    "(estimate)") and may not. ``teacher_err`` is drawn dotted for reference. The y-axis
    is linear below 1% and logarithmic above, from just under the lowest error drawn up to
    ``ymax`` percent at most, so that errors of a few percent and bounds near 100% both
    get room. A bound above ``ymax``
    (vacuous) is marked by a triangle in its colour at the top edge, at the last epoch
    where it is above; one above ``ymax`` in every panel says so in the legend. Returns
    the Figure.
    """
    bounds = tuple(bounds)
    valid = schema.BOUNDS + ("student_err", "teacher_err")
    select.require_terms(df, ("student_err", "teacher_err") + bounds, "df", valid)
    rows_all = select.select_bounds_rows(df, split=split, dataset=dataset)
    methods = _panel_methods(rows_all, method)
    drawn, visible = set(), set()
    legend_cols = 4 if len(methods) > 1 else 2
    legend_rows = math.ceil((2 + len(bounds)) / legend_cols)
    with paper_style():
        fig, axes = _grid(len(methods), ncols, legend_rows=legend_rows)
        for ax, name in zip(axes, methods, strict=True):
            mine = rows_all[rows_all["method"].astype(str) == name]
            several = mine["run"].nunique() > 1
            top, above, lowest = 0.0, [], np.inf
            for _method, _run, rows in select.runs_of(mine):
                x = rows["epoch"].to_numpy(dtype=float)
                markers = len(rows) <= MARKERS_UP_TO
                for bound in bounds:
                    style = {**BOUND_STYLES[bound], "linewidth": 0.8 if several else 1.1,
                             "zorder": 3}
                    if _draw_interval_line(ax, x, rows, bound, style=style,
                                           band_alpha=0.0 if several else 0.08,
                                           markers=False):
                        drawn.add(bound)
                        values = rows[bound].to_numpy(dtype=float) * 100
                        if (values[np.isfinite(values)] <= ymax).any():
                            visible.add(bound)
                            top = max(top, float(np.nanmax(np.minimum(values, ymax))))
                        if bound not in above and _mark_above(
                                ax, x, values, ymax, BOUND_STYLES[bound]["color"], len(above)):
                            above.append(bound)
                _draw_interval_line(ax, x, rows, "teacher_err",
                                    style={**TEACHER_STYLE, "zorder": 3},
                                    band_alpha=0.0, markers=False)
                student = {**STUDENT_UNDER_BOUNDS_STYLE,
                           "linewidth": STUDENT_UNDER_BOUNDS_STYLE["linewidth"] * (
                               0.7 if several else 1.0)}
                _draw_interval_line(ax, x, rows, "student_err", style=student,
                                    band_alpha=0.12 if several else 0.2, markers=markers)
                top = max(top, _finite_max(rows["student_err"]) * 100)
                for column in ("student_err_lo", "teacher_err"):
                    values = rows[column].to_numpy(dtype=float) * 100
                    if np.isfinite(values).any():
                        lowest = min(lowest, float(np.nanmin(values)))
            ax.set_yscale("symlog", linthresh=BOUNDS_LINEAR_BELOW, linscale=0.6)
            upper = min(top * 1.3, ymax) if top > 0 else 1.0
            # no room below the lowest error drawn: a zero error keeps the axis from 0
            bottom = lowest / 1.5 if np.isfinite(lowest) and lowest > 0 else 0.0
            ax.set_ylim(bottom, ymax if above else upper)
            ticks = [t for t in _bounds_ticks(ax.get_ylim()[1]) if t >= bottom]
            ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
            ax.yaxis.set_minor_locator(NullLocator())
            if above:
                ax.text(1.0, 1.0, f"▲ above {ymax:g}%", transform=ax.transAxes,
                        ha="right", va="bottom", fontsize=6.5, fontstyle="italic",
                        color="#555555")
            ax.set_title(method_label(name) + _seed_note(mine), loc="left")
            ax.set_ylabel("error rate (%)")
        handles = [Line2D([], [], label=term_label("student_err"), **STUDENT_UNDER_BOUNDS_STYLE),
                   Line2D([], [], label=term_label("teacher_err"), **TEACHER_STYLE)]
        for b in bounds:
            if b not in drawn:
                continue
            label = term_label(b) + ("" if b in visible else f": above {ymax:g}% ▲")
            handles.append(Line2D([], [], label=label, linewidth=1.1, **BOUND_STYLES[b]))
        _legend_below(fig, handles, legend_cols)
    return fig


def plot_decomposition(df: pd.DataFrame, *, split: str = "eval", dataset: str | None = None,
                       ncols: int = 3, method: str | None = None) -> Figure:
    """Where the student's error comes from, across epochs: one panel per method.

    Lines: ``teacher_err``; the transfer gap ``student_err − teacher_err`` (no band: the
    table holds no interval for the difference); ``disagreement`` δ, which bounds the
    gap's size (|gap| ≤ δ, coupled bound); and ``ijc_gap``, how far the teacher's
    classifier is from the ideal joint classifier. Shaded: each line's 95% interval (the
    teacher's in grey). All in percent of the evaluation samples, on one y-range shared
    by every panel so that methods compare at a glance. Returns the Figure.
    """
    needed = ("teacher_err", "student_err", "disagreement", "ijc_gap")
    select.require_terms(df, needed, "df", PLOTTABLE_TERMS)
    rows_all = select.select_bounds_rows(df, split=split, dataset=dataset)
    methods = _panel_methods(rows_all, method)
    legend_cols = 5 if len(methods) > 1 else 2
    with paper_style():
        fig, axes = _grid(len(methods), ncols, legend_rows=math.ceil(5 / legend_cols))
        for ax, name in zip(axes, methods, strict=True):
            mine = rows_all[rows_all["method"].astype(str) == name]
            several = mine["run"].nunique() > 1
            ax.axhline(0.0, color="#BBBBBB", linewidth=0.5, zorder=0)
            for _method, _run, rows in select.runs_of(mine):
                x = rows["epoch"].to_numpy(dtype=float)
                markers = len(rows) <= MARKERS_UP_TO
                width = 0.9 if several else 1.3
                for term in ("teacher_err", "disagreement", "ijc_gap"):
                    _draw_interval_line(ax, x, rows, term,
                                        style={**DECOMPOSITION_STYLES[term], "linewidth": width},
                                        band_alpha=0.08 if several else 0.15, markers=markers)
                gap = (rows["student_err"] - rows["teacher_err"]).to_numpy(dtype=float)
                ax.plot(x, gap * 100, marker="o" if markers else None, markersize=2.2,
                        **{**DECOMPOSITION_STYLES[schema.TRANSFER_GAP], "linewidth": width})
            ax.set_title(method_label(name) + _seed_note(mine), loc="left")
            ax.set_ylabel(DECOMPOSITION_UNIT)
        _share_y_range(axes)
        handles = [Line2D([], [], label=term_label(t), linewidth=1.3,
                          **DECOMPOSITION_STYLES[t]) for t in DECOMPOSITION_TERMS]
        handles.append(Patch(facecolor="#000000", alpha=0.15, linewidth=0,
                             label=INTERVAL_BAND_LABEL))
        _legend_below(fig, handles, legend_cols)
    return fig


DECOMPOSITION_UNIT = "% of samples"
INTERVAL_BAND_LABEL = "95% interval (shaded)"


def _share_y_range(axes):
    """One y-range for every panel: the union of the ranges each panel chose."""
    limits = np.array([ax.get_ylim() for ax in axes], dtype=float)
    bottom, top = float(limits[:, 0].min()), float(limits[:, 1].max())
    for ax in axes:
        ax.set_ylim(bottom, top)


def _select_margin_checkpoint(margins_df, run, method, epoch):
    return select.select_checkpoint(margins_df, schema.MARGIN_PLOT_COLUMNS, "margins_df", run=run,
                                    method=method, epoch=epoch, rows_name="margins")


def plot_margins(margins_df: pd.DataFrame, *, run: str | None = None, method: str | None = None,
                 epoch: int | None = None, palette: dict[str, str] | None = None) -> Figure:
    """The teacher's margins against the student's feature distances, one checkpoint.

    ``margins_df``: one row per evaluation sample with ``teacher_margin`` γ(z_T) ≥ 0,
    ``feat_dist`` ‖z_S − z_T‖ and ``disagree`` (bool), plus run, method, epoch. Pick the
    checkpoint with ``run``/``method`` (needed when several runs are present) and
    ``epoch`` (default: the run's last). Left: the two distributions as empirical CDFs on
    one distance axis. Right: each sample's distance against its margin; a sample can
    only disagree with the teacher above the line ‖z_S − z_T‖ = γ(z_T), and the samples
    that do disagree are marked. The title is read from the selected rows: their
    ``method``, ``run`` and ``epoch`` (a missing epoch is left out). Returns the Figure.
    """
    rows = _select_margin_checkpoint(margins_df, run, method, epoch)
    margin = pd.to_numeric(rows["teacher_margin"], errors="coerce").to_numpy(dtype=float)
    dist = pd.to_numeric(rows["feat_dist"], errors="coerce").to_numpy(dtype=float)
    disagree = select.as_bool(rows["disagree"], "disagree", "margins_df")
    finite = np.isfinite(margin) & np.isfinite(dist)
    if not finite.any():
        raise IJCKDError("`margins_df` has no finite teacher_margin/feat_dist at the "
                         "selected checkpoint")
    margin, dist, disagree = margin[finite], dist[finite], disagree[finite]
    name = str(rows["method"].iloc[0])
    run_name = str(rows["run"].iloc[0])
    colour = _palette([name], palette)[name]
    with paper_style():
        fig = new_figure(FULL_WIDTH, 2.75)
        ax_cdf, ax_pts = fig.subplots(1, 2)
        limit = float(max(margin.max(), dist.max())) * 1.04 or 1.0

        for values, style, label in (
                (margin, {"color": "#000000"}, "teacher margin $\\gamma(z_T)$"),
                (dist, {"color": colour}, "feature distance $\\|z_S - z_T\\|$")):
            ordered = np.sort(values)
            ax_cdf.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered),
                        where="post", linewidth=1.3, label=label, **style)
        ax_cdf.set_xlim(0, limit)
        ax_cdf.set_ylim(0, 1.01)
        ax_cdf.set_xlabel("distance in the teacher's feature space")
        ax_cdf.set_ylabel("fraction of samples ≤ x")
        ax_cdf.set_title("distributions (empirical CDF)", loc="left")
        ax_cdf.legend(loc="best")

        possible = "disagreement possible\n($\\|z_S - z_T\\| \\geq \\gamma(z_T)$)"
        ax_pts.fill_between([0, limit], [0, limit], [limit, limit], color="#EEEEEE",
                            linewidth=0, zorder=0, label=possible)
        ax_pts.plot([0, limit], [0, limit], color="#444444", linewidth=0.8,
                    linestyle="--", zorder=1, label="$\\|z_S - z_T\\| = \\gamma(z_T)$")
        agree = ~disagree
        # a light method colour (KD's orange, a user's yellow) fades into white at small
        # sizes: each point gets a darker rim of its own hue
        ax_pts.scatter(margin[agree], dist[agree], s=6, facecolors=colour,
                       edgecolors=darker(colour), alpha=0.75, linewidths=0.35,
                       rasterized=True, zorder=2, label=f"agrees with teacher ({agree.sum()})")
        ax_pts.scatter(margin[disagree], dist[disagree], s=7, color="#000000",
                       marker="x", linewidths=0.5, alpha=0.8, rasterized=True, zorder=3,
                       label=f"disagrees ({disagree.sum()})")
        ax_pts.set_xlim(0, limit)
        ax_pts.set_ylim(0, limit)
        ax_pts.set_box_aspect(1)
        ax_pts.set_xlabel("teacher margin $\\gamma(z_T)$")
        ax_pts.set_ylabel("feature distance $\\|z_S - z_T\\|$")
        ax_pts.set_title("per sample", loc="left")
        ax_pts.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                      markerscale=2.0, handletextpad=0.3)

        epoch_value = rows["epoch"].iloc[0]
        when = f", epoch {select.format_number(epoch_value)}" if pd.notna(epoch_value) else ""
        fig.suptitle(f"{method_label(name)}: {run_name}{when} ({len(margin)} samples)")
    return fig


def plot_per_class(per_class_df: pd.DataFrame, method: str, *, run: str | None = None,
                   value: str = "disagreement", ax: Axes | None = None, cmap: str = "YlGnBu",
                   vmax: float | None = None) -> Axes:
    """Heatmap of one per-class rate (default ``disagreement``), classes × epochs, for one
    run of ``method`` (``run=`` is needed when the method has several), and beside it the
    last epoch's value of each class with its 95% interval.

    ``per_class_df``: columns run, method, epoch, class and ``value`` (a rate in [0, 1])
    with ``_lo``/``_hi`` where the table has them, and ``n`` (evaluation samples of the
    class, shown in the class labels) where it has it; one row per class per checkpoint.
    Drawn in percent. The colour scale runs from 0 to ``vmax`` percent, by default the
    largest ``value`` anywhere in ``per_class_df`` (every method and run), so that the
    heatmaps of one table share one scale and compare across methods. Returns the Axes of
    the heatmap (the interval panel is ``ax.per_class_intervals``).
    """
    if value not in ("student_err", "teacher_err", "disagreement"):
        raise IJCKDError(f"`value` must be student_err, teacher_err or disagreement, "
                         f"got {value!r}")
    select.require_columns(per_class_df, schema.PER_CLASS_PLOT_COLUMNS + (value,), "per_class_df")
    rows = select.select_one(per_class_df, "method", method, "per_class_df")
    if run is not None:
        rows = select.select_one(rows, "run", run, "per_class_df")
    runs = sorted(rows["run"].astype(str).unique())
    if len(runs) > 1:
        raise IJCKDError(f"method {method!r} has {len(runs)} runs in `per_class_df` "
                         f"({', '.join(runs)}): pass run= to pick one")
    rows = rows[rows["epoch"].notna()]
    if rows.empty:
        raise IJCKDError(f"`per_class_df` has no rows with an epoch for method {method!r}")
    order = ["epoch"] + (["checkpoint"] if "checkpoint" in rows.columns else [])
    # two checkpoints at one epoch: the later one is the epoch's state
    rows = rows.sort_values(order, kind="stable").drop_duplicates(["class", "epoch"],
                                                                  keep="last")
    grid = rows.pivot(index="class", columns="epoch", values=value) * 100.0
    classes, epochs = list(grid.index), list(grid.columns)
    last = rows[rows["epoch"] == epochs[-1]].set_index("class").reindex(classes)
    if vmax is None:
        vmax = _finite_max(pd.to_numeric(per_class_df[value], errors="coerce")) * 100.0
    with paper_style():
        if ax is None:
            height = min(1.2 + 0.14 * len(classes), 4.7)
            fig = new_figure(COLUMN_WIDTH, height)
            ax, side = fig.subplots(1, 2, sharey=True, width_ratios=(4.0, 1.2))
        else:
            side = ax.inset_axes([1.04, 0.0, 0.26, 1.0], sharey=ax)
        fig = ax.figure
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap=cmap,
                          vmin=0.0, vmax=vmax if vmax and vmax > 0 else 1.0,
                          interpolation="nearest")
        colourbar = fig.colorbar(image, ax=ax, location="top", pad=0.02, fraction=0.05,
                                 aspect=30)
        colourbar.set_label(f"{value.replace('_', ' ')} (%)", labelpad=1.5)
        colourbar.outline.set_linewidth(0.5)
        for side_name in ("left", "bottom"):
            ax.spines[side_name].set_visible(False)
        x_ticks = _thinned(len(epochs), 9)
        ax.set_xticks(x_ticks, [f"{epochs[i]:g}" for i in x_ticks])
        y_ticks = _thinned(len(classes), 12)
        sizes = last["n"] if "n" in last.columns else None
        ax.set_yticks(y_ticks, [_class_label(classes[i], None if sizes is None
                                             else sizes.iloc[i]) for i in y_ticks])
        ax.tick_params(length=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("class (evaluation samples)" if sizes is not None else "class")
        ax.set_title(f"{method_label(method)}: {runs[0]}", loc="left")
        _draw_class_intervals(side, last, value, epochs[-1])
        ax.per_class_intervals = side
    return ax


def _class_label(name, size):
    if size is None or not pd.notna(size):
        return str(name)
    return f"{name} (n={int(size)})"


def _draw_class_intervals(side, last, value, epoch):
    """The last epoch's per-class ``value`` as dots with their 95% intervals."""
    y = np.arange(len(last))
    centre = pd.to_numeric(last[value], errors="coerce").to_numpy(dtype=float) * 100
    has_interval = f"{value}_lo" in last.columns and f"{value}_hi" in last.columns
    if has_interval:
        lo = pd.to_numeric(last[f"{value}_lo"], errors="coerce").to_numpy(dtype=float) * 100
        hi = pd.to_numeric(last[f"{value}_hi"], errors="coerce").to_numpy(dtype=float) * 100
        side.hlines(y, lo, hi, color="#333333", linewidth=0.9, label="_interval")
    side.plot(centre, y, linestyle="none", marker="o", markersize=2.4, color="#000000")
    side.set_xlim(left=0)
    side.xaxis.set_major_locator(MaxNLocator(nbins=3))
    side.tick_params(axis="y", length=0, labelleft=False)
    side.set_xlabel(f"epoch {epoch:g} (%)")
    side.set_title("95% interval" if has_interval else "value", loc="left", fontsize=7)
    side.grid(axis="x", linewidth=0.4, color="#dddddd")


def _thinned(n, most):
    """Every k-th index of ``range(n)``, k a round step (1, 2, 5, 10, 20, 25, 50, ...)
    chosen so that at most ``most`` ticks remain."""
    for magnitude in (1, 10, 100, 1000, 10000):
        for base in (1, 2, 2.5, 5):
            step = base * magnitude
            if step == int(step) and math.ceil(n / step) <= most:
                return list(range(0, n, int(step)))
    return [0, n - 1]


def plot_final_comparison(df: pd.DataFrame, *, split: str = "eval", dataset: str | None = None,
                          ax: Axes | None = None, palette: dict[str, str] | None = None) -> Axes:
    """The last checkpoint of every run, compared across methods.

    Grouped bars (one group per method, one bar per run): ``student_err`` (error under
    the teacher's classifier, solid) and, where the student has its own head,
    ``student_own_err`` (hatched), each with its 95% interval as an error bar. A black
    line marks each run's ``teacher_err``, its 95% interval a grey band behind it. The
    title names the dataset (when the table has a ``dataset`` column); a method's label
    counts its distinct seeds. Percent. Returns the Axes.
    """
    select.require_terms(df, ("student_err", "teacher_err"), "df", PLOTTABLE_TERMS)
    has_own = "student_own_err" in df.columns
    if has_own:
        select.require_terms(df, ("student_own_err",), "df", PLOTTABLE_TERMS)
    # the final checkpoint needs no epoch: a model audited once still gets its bars
    rows_all = select.select_bounds_rows(df, split=split, dataset=dataset, need_epoch=False)
    final = select.final_rows(rows_all)
    methods = method_order(final["method"].astype(str).unique())
    colours = _palette(methods, palette)
    own_present = has_own and final["student_own_err"].notna().any()
    quantities = ("student_err", "student_own_err") if own_present else ("student_err",)

    # bar slots: per method, per run, the quantities the run has
    slots = []
    for method in methods:
        mine = final[final["method"].astype(str) == method]
        sort_by = [c for c in ("seed", "run") if c in mine.columns]
        for _, row in mine.sort_values(sort_by, kind="stable").iterrows():
            slots.append((method, row, [q for q in quantities if pd.notna(row.get(q))]))
    n_bars = sum(len(q) for _, _, q in slots)
    with paper_style():
        if ax is None:
            width = COLUMN_WIDTH if n_bars <= 14 else FULL_WIDTH
            ax = new_figure(width, 2.3).subplots()
        bar_width = 0.8
        run_gap, method_gap = 0.2, 0.9  # space between runs of a method, between methods
        position, centres, top, previous = 0.0, {}, 0.0, None
        for method, row, present in slots:
            if not present:
                continue
            if previous is not None:
                position += method_gap if method != previous else run_gap
            previous = method
            start = position
            for quantity in present:
                value = row[quantity] * 100
                lo, hi = row[f"{quantity}_lo"] * 100, row[f"{quantity}_hi"] * 100
                err = None
                if pd.notna(lo) and pd.notna(hi):
                    err = [[max(value - lo, 0.0)], [max(hi - value, 0.0)]]
                    top = max(top, hi)
                top = max(top, value)
                own_head = quantity == "student_own_err"
                ax.bar(position, value, width=bar_width, yerr=err,
                       color="white" if own_head else colours[method],
                       edgecolor=colours[method], hatch="/////" if own_head else None,
                       linewidth=0.8, error_kw={"elinewidth": 0.7, "capsize": 1.5,
                                                "capthick": 0.7, "ecolor": "#333333"})
                position += 1.0
            teacher = row["teacher_err"] * 100
            if pd.notna(teacher):
                ax.plot([start - 0.5, position - 0.5], [teacher, teacher],
                        color="#000000", linewidth=1.0, solid_capstyle="butt")
                top = max(top, teacher)
                t_lo, t_hi = row["teacher_err_lo"] * 100, row["teacher_err_hi"] * 100
                if pd.notna(t_lo) and pd.notna(t_hi):
                    ax.fill_between([start - 0.5, position - 0.5], [t_lo, t_lo], [t_hi, t_hi],
                                    color=TEACHER_BAND_COLOUR, alpha=TEACHER_BAND_ALPHA,
                                    linewidth=0, zorder=2.5, label="_teacher_interval")
                    top = max(top, t_hi)
            centres.setdefault(method, []).extend([start, position - 1.0])
        seed_notes = _seed_notes(final)
        ax.set_xticks([(min(c) + max(c)) / 2 for c in centres.values()],
                      [method_label(m) + seed_notes[m].replace(" (", "\n(")
                       for m in centres],
                      rotation=30, ha="right", rotation_mode="anchor")
        ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)
        ax.set_ylabel("error rate (%)")
        ax.set_xlim(-0.5 - run_gap, position - 0.5 + run_gap)
        ax.tick_params(axis="x", length=0)
        handles = [Patch(facecolor="#888888", edgecolor="#888888",
                         label="student, teacher's head")]
        if own_present:
            handles.append(Patch(facecolor="white", edgecolor="#888888", hatch="/////",
                                 label="student, own head"))
        handles.append(Line2D([], [], color="#000000", linewidth=1.0, label="teacher"))
        handles.append(Patch(facecolor=TEACHER_BAND_COLOUR, alpha=TEACHER_BAND_ALPHA,
                             linewidth=0, label="its 95% interval"))
        # two columns: the legend stays within the plot's width
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                  ncols=2, borderaxespad=0.2, handlelength=1.4, columnspacing=0.8)
        if "dataset" in final.columns:
            datasets = sorted(final["dataset"].dropna().astype(str).unique())
            if datasets:
                ax.set_title(", ".join(datasets), loc="left", pad=4.0 * PANEL_TITLE_PAD,
                             fontweight="bold")
    return ax


TEACHER_BAND_COLOUR = "#000000"
TEACHER_BAND_ALPHA = 0.2  # drawn over the bars: they stay readable through it
PANEL_TITLE_PAD = 7.0  # points per legend row: the title sits above the two-row legend
