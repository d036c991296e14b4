"""Figure 4: teacher margin against feature distance at the last checkpoint of one run."""

from _reference import arguments, output, tables

from ijckd_bounds.plotting import plot_margins, save_figure

args = arguments(__doc__)
_, _, margins = tables(args.dataset)
for method in ("kd", "ijckd"):
    fig = plot_margins(margins, method=method)
    for path in save_figure(fig, output(args, f"margins_{method}")):
        print(path)
