"""Paper figures and tables from the results tables; reads DataFrames only.

Never imports torch or the estimators (tests/test_architecture.py checks): a figure can
be remade on any machine from the CSV files alone. Figures are built as
``matplotlib.figure.Figure`` objects outside pyplot, so nothing here opens a window.
"""

import sys

import matplotlib

if "matplotlib.pyplot" not in sys.modules:
    # Headless by default; a session that already chose a backend (a notebook) keeps it.
    matplotlib.use("Agg")

from ijckd_bounds.plotting.fidelity import (  # noqa: E402
    FIDELITY_CURVES,
    plot_fidelity,
    plot_reliability,
)
from ijckd_bounds.plotting.figures import (  # noqa: E402
    DEFAULT_TERMS,
    plot_bounds,
    plot_decomposition,
    plot_final_comparison,
    plot_margins,
    plot_per_class,
    plot_terms,
)
from ijckd_bounds.plotting.output import make_all_figures, save_figure  # noqa: E402
from ijckd_bounds.plotting.style import (  # noqa: E402
    COLUMN_WIDTH,
    FULL_WIDTH,
    PAPER_RC,
    method_palette,
    paper_style,
)
from ijckd_bounds.plotting.tables import (  # noqa: E402
    FINAL_TERMS,
    final_table,
    to_latex,
    to_markdown,
)
from ijckd_bounds.schema import METHOD_COLOURS  # noqa: E402

__all__ = [
    "COLUMN_WIDTH", "DEFAULT_TERMS", "FINAL_TERMS", "FULL_WIDTH", "METHOD_COLOURS",
    "PAPER_RC", "final_table", "make_all_figures", "method_palette", "paper_style",
    "plot_bounds", "plot_decomposition", "plot_final_comparison", "plot_margins",
    "plot_per_class", "plot_terms", "save_figure", "to_latex", "to_markdown",
    # fidelity and calibration
    "FIDELITY_CURVES", "plot_fidelity", "plot_reliability",
]
