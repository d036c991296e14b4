"""Paper figures drawn from the results tables (see THEORY.md for every term).

Each function is a pure function of a DataFrame: it selects rows, draws them and returns
the ``Figure`` (multi-panel figures) or ``Axes`` (single-panel figures, which accept
``ax=``). Nothing here estimates anything: a value is drawn as the table gives it, its
band is the row's own ``_lo``/``_hi``, and several seeds of a method appear as several
thin lines of the method's colour rather than as a mean.
"""

import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.plotting import select
from ijckd_bounds.plotting.style import (
    BOUND_STYLES,
    COLUMN_WIDTH,
    DECOMPOSITION_STYLES,
    DISCREPANCY_TERMS,
    FULL_WIDTH,
    STUDENT_STYLE,
    TEACHER_STYLE,
    UNITS,
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
DECOMPOSITION_TERMS = ("teacher_err", "transfer_gap", "disagreement", "ijc_gap")
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


def _method_line_style(colour, n_runs):
    # several seeds: thin lines so that they stay separable where they cross
    return {"color": colour, "linewidth": 0.9 if n_runs > 1 else 1.4, "linestyle": "-"}


def _method_handles(methods, colours, runs_per_method):
    handles = []
    for method in methods:
        n_runs = runs_per_method.get(method, 1)
        label = method_label(method) + (f" ({n_runs} seeds)" if n_runs > 1 else "")
        handles.append(Line2D([], [], color=colours[method], linewidth=1.4, label=label))
    return handles


def _legend_below(fig, handles, ncols):
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols)


def _finite_max(column):
    values = column.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else 0.0


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


def plot_terms(df, terms=DEFAULT_TERMS, *, split="eval", dataset=None, ncols=3,
               palette=None):
    """Bound terms across epochs: one panel per term, one line per run in its method's
    colour, the row's 95% interval as a band.

    ``df``: bounds table (columns ``schema.TABLE_COLUMNS``; at least run, method, epoch
    and each term with ``_lo``/``_hi``). Rates are drawn in percent. Discrepancy panels
    (proxy A-distance, CKA, MMD²) carry a "n < 10·d" note when any drawn row was measured
    with fewer than 10 evaluation samples per feature dimension. Returns the Figure.
    """
    terms = tuple(terms) if not isinstance(terms, str) else (terms,)
    if not terms:
        raise IJCKDError("`terms` must name at least one term")
    select.require_terms(df, terms, "df", PLOTTABLE_TERMS)
    rows_all = select.select_bounds_rows(df, split=split, dataset=dataset)
    methods = method_order(rows_all["method"].astype(str).unique())
    colours = _palette(methods, palette)
    runs_per_method = _runs_per_method(rows_all)
    legend_cols = min(len(methods), 7 if len(terms) > 1 else 3)
    with paper_style():
        fig, axes = _grid(len(terms), ncols,
                          legend_rows=math.ceil(len(methods) / legend_cols))
        for ax, term in zip(axes, terms):
            for method, _run, rows in select.runs_of(rows_all):
                n_runs = runs_per_method[method]
                _draw_interval_line(
                    ax, rows["epoch"].to_numpy(dtype=float), rows, term,
                    style=_method_line_style(colours[method], n_runs),
                    band_alpha=0.2 if n_runs == 1 else 0.1,
                    markers=len(rows) <= MARKERS_UP_TO)
            ax.set_title(term_label(term), loc="left")
            ax.set_ylabel(UNITS.get(term, ""))
            if term in DISCREPANCY_TERMS and select.small_sample_rows(rows_all).any():
                _flag_small_sample(ax)
        _legend_below(fig, _method_handles(methods, colours, runs_per_method), legend_cols)
    return fig


def plot_bounds(df, method=None, *, bounds=schema.BOUNDS, split="eval", dataset=None,
                ncols=3, ymax=100.0):
    """The student's error beside each bound on it, across epochs: one panel per method.

    ``student_err`` (thick black, with its interval) must lie under every exact bound
    (solid lines); the Ben-David bound is an estimate (dashed, labelled "(estimate)") and
    may not. ``teacher_err`` is drawn dotted for reference. Values above ``ymax`` percent
    (vacuous bounds) run off the top of the panel, which then says so. Returns the Figure.
    """
    bounds = tuple(bounds)
    valid = schema.BOUNDS + ("student_err", "teacher_err")
    select.require_terms(df, ("student_err", "teacher_err") + bounds, "df", valid)
    rows_all = select.select_bounds_rows(df, split=split, dataset=dataset)
    methods = _panel_methods(rows_all, method)
    drawn = set()
    legend_cols = 4 if len(methods) > 1 else 2
    legend_rows = math.ceil((2 + len(bounds)) / legend_cols)
    with paper_style():
        fig, axes = _grid(len(methods), ncols, legend_rows=legend_rows)
        for ax, name in zip(axes, methods):
            mine = rows_all[rows_all["method"].astype(str) == name]
            several = mine["run"].nunique() > 1
            top = 0.0
            for _method, _run, rows in select.runs_of(mine):
                x = rows["epoch"].to_numpy(dtype=float)
                markers = len(rows) <= MARKERS_UP_TO
                for bound in bounds:
                    style = {**BOUND_STYLES[bound], "linewidth": 0.8 if several else 1.1}
                    if _draw_interval_line(ax, x, rows, bound, style=style,
                                           band_alpha=0.0 if several else 0.08,
                                           markers=False):
                        drawn.add(bound)
                        top = max(top, _finite_max(rows[bound]) * 100)
                _draw_interval_line(ax, x, rows, "teacher_err", style=TEACHER_STYLE,
                                    band_alpha=0.0, markers=False)
                student = {**STUDENT_STYLE, "linewidth": 1.0 if several else 1.6}
                _draw_interval_line(ax, x, rows, "student_err", style=student,
                                    band_alpha=0.12 if several else 0.2, markers=markers)
                top = max(top, _finite_max(rows["student_err"]) * 100)
            ax.set_ylim(0, min(top * 1.05, ymax) if top > 0 else 1.0)
            if top > ymax:
                ax.text(1.0, 1.0, f"cut at {ymax:g}%", transform=ax.transAxes,
                        ha="right", va="bottom", fontsize=6.5, fontstyle="italic",
                        color="#555555")
            n_runs = mine["run"].nunique()
            ax.set_title(method_label(name) + (f" ({n_runs} seeds)" if n_runs > 1 else ""),
                         loc="left")
            ax.set_ylabel("error rate (%)")
        handles = [Line2D([], [], label=term_label("student_err"), **STUDENT_STYLE),
                   Line2D([], [], label=term_label("teacher_err"), **TEACHER_STYLE)]
        handles += [Line2D([], [], label=term_label(b), linewidth=1.1, **BOUND_STYLES[b])
                    for b in bounds if b in drawn]
        _legend_below(fig, handles, legend_cols)
    return fig


def plot_decomposition(df, *, split="eval", dataset=None, ncols=3, method=None):
    """Where the student's error comes from, across epochs: one panel per method.

    Lines: ``teacher_err``; the transfer gap ``student_err − teacher_err`` (no band: the
    table holds no interval for the difference); ``disagreement`` δ, which bounds the
    gap's size (|gap| ≤ δ, coupled bound); and ``ijc_gap``, how far the teacher's
    classifier is from the ideal joint classifier. All in percent. Returns the Figure.
    """
    needed = ("teacher_err", "student_err", "disagreement", "ijc_gap")
    select.require_terms(df, needed, "df", PLOTTABLE_TERMS)
    rows_all = select.select_bounds_rows(df, split=split, dataset=dataset)
    methods = _panel_methods(rows_all, method)
    legend_cols = 4 if len(methods) > 1 else 2
    with paper_style():
        fig, axes = _grid(len(methods), ncols, legend_rows=4 // legend_cols)
        for ax, name in zip(axes, methods):
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
                        **{**DECOMPOSITION_STYLES["transfer_gap"], "linewidth": width})
            n_runs = mine["run"].nunique()
            ax.set_title(method_label(name) + (f" ({n_runs} seeds)" if n_runs > 1 else ""),
                         loc="left")
            ax.set_ylabel("percent (%)")
        handles = [Line2D([], [], label=term_label(t), linewidth=1.3,
                          **DECOMPOSITION_STYLES[t]) for t in DECOMPOSITION_TERMS]
        _legend_below(fig, handles, legend_cols)
    return fig


def _select_margin_checkpoint(margins_df, run, method, epoch):
    return select.select_checkpoint(margins_df, select.MARGIN_COLUMNS, "margins_df", run=run,
                                    method=method, epoch=epoch, rows_name="margins")


def plot_margins(margins_df, *, run=None, method=None, epoch=None, palette=None):
    """The teacher's margins against the student's feature distances, one checkpoint.

    ``margins_df``: one row per evaluation sample with ``teacher_margin`` γ(z_T) ≥ 0,
    ``feat_dist`` ‖z_S − z_T‖ and ``disagree`` (bool), plus run, method, epoch. Pick the
    checkpoint with ``run``/``method`` (needed when several runs are present) and
    ``epoch`` (default: the run's last). Left: the two distributions as empirical CDFs on
    one distance axis. Right: each sample's distance against its margin; a sample can
    only disagree with the teacher above the line ‖z_S − z_T‖ = γ(z_T), and the samples
    that do disagree are marked. Returns the Figure.
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
        ax_pts.scatter(margin[agree], dist[agree], s=3, color=colour, alpha=0.35,
                       linewidths=0, rasterized=True, zorder=2,
                       label=f"agrees with teacher ({agree.sum()})")
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


def plot_per_class(per_class_df, method, *, run=None, value="disagreement", ax=None,
                   cmap="YlGnBu", vmax=None):
    """Heatmap of one per-class rate (default ``disagreement``), classes × epochs, for one
    run of ``method`` (``run=`` is needed when the method has several).

    ``per_class_df``: columns run, method, epoch, class and ``value`` (a rate in [0, 1]),
    one row per class per checkpoint. Drawn in percent; colour scale from 0 to ``vmax``
    percent (default: the largest value drawn). Returns the Axes.
    """
    if value not in ("student_err", "teacher_err", "disagreement"):
        raise IJCKDError(f"`value` must be student_err, teacher_err or disagreement, "
                         f"got {value!r}")
    select.require_columns(per_class_df, select.PER_CLASS_COLUMNS + (value,), "per_class_df")
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
    with paper_style():
        if ax is None:
            height = min(1.0 + 0.14 * len(classes), 4.5)
            ax = new_figure(COLUMN_WIDTH, height).subplots()
        fig = ax.figure
        top = vmax if vmax is not None else np.nanmax(grid.to_numpy(dtype=float))
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap=cmap,
                          vmin=0.0, vmax=top if top and top > 0 else 1.0,
                          interpolation="nearest")
        colourbar = fig.colorbar(image, ax=ax, pad=0.02, fraction=0.06)
        colourbar.set_label(f"{value.replace('_', ' ')} (%)")
        colourbar.outline.set_linewidth(0.5)
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)
        x_ticks = _thinned(len(epochs), 9)
        ax.set_xticks(x_ticks, [f"{epochs[i]:g}" for i in x_ticks])
        y_ticks = _thinned(len(classes), 12)
        ax.set_yticks(y_ticks, [str(classes[i]) for i in y_ticks])
        ax.tick_params(length=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("class")
        ax.set_title(f"{method_label(method)}: {runs[0]}", loc="left")
    return ax


def _thinned(n, most):
    """Every k-th index of ``range(n)``, k a round step (1, 2, 5, 10, 20, 25, 50, ...)
    chosen so that at most ``most`` ticks remain."""
    for magnitude in (1, 10, 100, 1000, 10000):
        for base in (1, 2, 2.5, 5):
            step = base * magnitude
            if step == int(step) and math.ceil(n / step) <= most:
                return list(range(0, n, int(step)))
    return [0, n - 1]


def plot_final_comparison(df, *, split="eval", dataset=None, ax=None, palette=None):
    """The last checkpoint of every run, compared across methods.

    Grouped bars (one group per method, one bar per run): ``student_err`` (error under
    the teacher's classifier, solid) and, where the student has its own head,
    ``student_own_err`` (hatched), each with its 95% interval as an error bar. A black
    line marks each run's ``teacher_err``. Percent. Returns the Axes.
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
            centres.setdefault(method, []).extend([start, position - 1.0])
        runs_per_method = _runs_per_method(final)
        ax.set_xticks([(min(c) + max(c)) / 2 for c in centres.values()],
                      [method_label(m) + (f"\n({runs_per_method[m]} seeds)"
                                          if runs_per_method[m] > 1 else "")
                       for m in centres],
                      rotation=30, ha="right", rotation_mode="anchor")
        ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)
        ax.set_ylabel("error rate (%)")
        ax.set_xlim(-0.5 - run_gap, position - 0.5 + run_gap)
        ax.tick_params(axis="x", length=0)
        handles = [Patch(facecolor="#888888", edgecolor="#888888",
                         label="student, teacher's classifier")]
        if own_present:
            handles.append(Patch(facecolor="white", edgecolor="#888888", hatch="/////",
                                 label="student, own head"))
        handles.append(Line2D([], [], color="#000000", linewidth=1.0, label="teacher"))
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                  ncols=len(handles), borderaxespad=0.2, handlelength=1.4)
    return ax
