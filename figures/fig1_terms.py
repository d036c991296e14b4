"""Figure 1: bound terms across epochs, one panel per term, one line per method."""

from _reference import arguments, output, tables

from ijckd_bounds.plotting import plot_terms, save_figure

args = arguments(__doc__)
bounds, _, _ = tables(args.dataset)
for path in save_figure(plot_terms(bounds), output(args, "terms")):
    print(path)
