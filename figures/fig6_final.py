"""Figure 6: final-checkpoint comparison across methods, and the same as a table."""

from _reference import arguments, output, tables

from ijckd_bounds.io import atomic_write_text
from ijckd_bounds.plotting import (
    final_table,
    plot_final_comparison,
    save_figure,
    to_latex,
    to_markdown,
)

args = arguments(__doc__)
bounds, _, _ = tables(args.dataset)
for path in save_figure(plot_final_comparison(bounds).figure, output(args, "final")):
    print(path)
table = final_table(bounds)
atomic_write_text(f"{output(args, 'final')}.md", to_markdown(table) + "\n")
atomic_write_text(f"{output(args, 'final')}.tex", to_latex(table) + "\n")
print(f"{output(args, 'final')}.md")
