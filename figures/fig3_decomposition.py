"""Figure 3: teacher error, transfer gap, disagreement and IJC gap across epochs."""

from _reference import arguments, output, tables

from ijckd_bounds.plotting import plot_decomposition, save_figure

args = arguments(__doc__)
bounds, _, _ = tables(args.dataset)
for path in save_figure(plot_decomposition(bounds), output(args, "decomposition")):
    print(path)
