"""Figure 2: student error beside each bound across epochs (how tight each bound is)."""

from _reference import arguments, output, tables

from ijckd_bounds.plotting import plot_bounds, save_figure

args = arguments(__doc__)
bounds, _, _ = tables(args.dataset)
for path in save_figure(plot_bounds(bounds), output(args, "bounds")):
    print(path)
