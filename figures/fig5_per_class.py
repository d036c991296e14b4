"""Figure 5: per-class disagreement across epochs (classes x epochs heatmap)."""

from _reference import arguments, output, tables

from ijckd_bounds.plotting import plot_per_class, save_figure

args = arguments(__doc__)
_, per_class, _ = tables(args.dataset)
for method in ("kd", "ijckd"):
    ax = plot_per_class(per_class, method)
    for path in save_figure(ax.figure, output(args, f"per_class_{method}")):
        print(path)
