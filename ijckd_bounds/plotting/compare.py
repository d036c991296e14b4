"""The figure of ``ijckd-bounds compare``: every seed, the interval, the published value.

A pure function of the DataFrame ``ijckd_bounds.app.compare.figure_frame`` builds; nothing is
estimated here: the mean and the interval are the table's own columns.
"""

import numpy as np
from matplotlib.lines import Line2D

from ijckd_bounds.plotting import select
from ijckd_bounds.plotting.style import COLUMN_WIDTH, method_palette, new_figure, paper_style

COMPARE_COLUMNS = ("kind", "group", "method", "order", "final_acc", "best_acc", "final_mean",
                   "final_lo", "final_hi", "n_seeds")  # and "published", where there is one
ROW_HEIGHT = 0.28  # inches per group
SEED_SPREAD = 0.32  # vertical spread of a group's seed points (rows are 1 apart)
PUBLISHED_COLOUR = "#cc0000"
# Groups whose mean lies more than this many points below the best group's are drawn as
# an off-scale note at the left edge, so one collapsed method does not squash the rest.
FOCUS_POINTS = 15.0


def plot_compare(df, *, ax=None):
    """One row per group (``group``, top to bottom in ``order``): each seed's final-epoch
    eval accuracy (filled dot, the method's colour) and best-epoch accuracy (hollow dot),
    the mean (vertical tick) and 95% t-interval (bar) of the final-epoch accuracy, and
    each published value (red diamond). A group with one seed gets its points and the
    note "1 seed: no interval". Rows: ``kind == "seed"`` (``final_acc``, ``best_acc``) and
    ``kind == "published"`` (``published``); every row carries its group's columns.
    Percent. Returns the Axes."""
    select.require_columns(df, COMPARE_COLUMNS, "df")
    groups = df.drop_duplicates("order").sort_values("order")
    n_groups = len(groups)
    colours = method_palette(groups["method"].astype(str).unique())
    focus_floor = groups["final_mean"].max() - FOCUS_POINTS
    in_focus = groups[~(groups["final_mean"] < focus_floor)]  # NaN means stay in focus
    shown = df[df["order"].isin(in_focus["order"])]
    xs = np.concatenate([shown[c].to_numpy(float) for c in
                         ("final_acc", "best_acc", "final_lo", "final_hi", "published")
                         if c in shown.columns])
    xs = xs[np.isfinite(xs)]
    x_lo, x_hi = (xs.min(), xs.max()) if len(xs) else (0.0, 100.0)
    pad = max(0.05 * (x_hi - x_lo), 0.2)
    x_lo, x_hi = x_lo - pad, x_hi + pad
    with paper_style():
        if ax is None:
            ax = new_figure(COLUMN_WIDTH * 1.5, 0.9 + ROW_HEIGHT * n_groups).subplots()
        labels = []
        for row_index, (_, group) in enumerate(groups.iterrows()):
            y = n_groups - 1 - row_index
            labels.append((y, f"{group['group']}  (n={int(group['n_seeds'])})"))
            colour = colours[str(group["method"])]
            mine = df[df["order"] == group["order"]]
            if group["final_mean"] < focus_floor:
                ax.annotate(f"\u25c0 off scale: mean {group['final_mean']:.1f}, "
                            f"95% [{group['final_lo']:.1f}, {group['final_hi']:.1f}]",
                            (x_lo, y), xytext=(2, 0), textcoords="offset points",
                            va="center", fontsize=6, color=colour)
                continue
            seeds = mine[mine["kind"] == "seed"]
            offsets = (np.linspace(-SEED_SPREAD / 2, SEED_SPREAD / 2, len(seeds))
                       if len(seeds) > 1 else np.zeros(len(seeds)))
            # the best-epoch ring is larger than the final-epoch dot, so a run whose last
            # epoch was its best shows a dot inside a ring
            ax.scatter(seeds["best_acc"], y + offsets, s=28, facecolors="none",
                       edgecolors=colour, linewidths=0.6, zorder=3)
            ax.scatter(seeds["final_acc"], y + offsets, s=9, color=colour, linewidths=0,
                       zorder=4)
            if np.isfinite(group["final_lo"]):
                ax.plot([group["final_lo"], group["final_hi"]], [y, y], color=colour,
                        linewidth=1.2, solid_capstyle="butt", zorder=2, alpha=0.8)
                for end in (group["final_lo"], group["final_hi"]):
                    ax.plot([end, end], [y - 0.12, y + 0.12], color=colour, linewidth=0.8,
                            zorder=2)
            elif int(group["n_seeds"]) == 1:
                right = np.nanmax(seeds[["final_acc", "best_acc"]].to_numpy(float))
                ax.annotate("1 seed: no interval", (right, y), xytext=(7, 0),
                            textcoords="offset points", va="center", fontsize=6,
                            color="#555555")
            if np.isfinite(group["final_mean"]):
                ax.plot([group["final_mean"]] * 2, [y - 0.3, y + 0.3], color="#000000",
                        linewidth=0.7, zorder=5)
            if "published" in mine.columns:
                pub = mine[mine["kind"] == "published"]["published"].dropna()
                ax.scatter(pub, [y] * len(pub), marker="D", s=16, color=PUBLISHED_COLOUR,
                           zorder=6)
        ys, texts = zip(*labels, strict=True) if labels else ((), ())
        ax.set_yticks(list(ys), list(texts))
        ax.set_ylim(-0.7, n_groups - 0.3)
        ax.set_xlim(x_lo, x_hi)
        ax.set_xlabel("eval accuracy (%)")
        ax.grid(axis="x", linewidth=0.4, color="#dddddd")
        ax.set_axisbelow(True)
        ax.tick_params(axis="y", length=0)
        handles = [
            Line2D([], [], marker="o", linestyle="none", color="#555555", markersize=3.0,
                   label="seed, final epoch"),
            Line2D([], [], marker="o", linestyle="none", markerfacecolor="none",
                   markeredgecolor="#555555", markersize=5.3, markeredgewidth=0.6,
                   label="seed, best epoch"),
            Line2D([], [], color="#555555", linewidth=1.2, label="95% t-interval (final)"),
            Line2D([], [], color="#000000", marker="|", linestyle="none", markersize=6,
                   label="mean (final)"),
        ]
        if "published" in df.columns and df["published"].notna().any():
            handles.append(Line2D([], [], marker="D", linestyle="none",
                                  color=PUBLISHED_COLOUR, markersize=3.5, label="published"))
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                  ncols=3, borderaxespad=0.3, handlelength=1.4)
    return ax
