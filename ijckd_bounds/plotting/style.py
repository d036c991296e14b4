"""One style bundle for every figure: sizes, fonts, the method colours, units.

Figures are sized for a two-column paper: ``COLUMN_WIDTH`` (3.3 in) for a single panel,
``FULL_WIDTH`` (6.8 in) for grids. Fonts are 7-8 pt so that text printed at that width
reads like the paper's own captions. The method colours (``schema.METHOD_COLOURS``) come
from the Okabe-Ito palette, which stays distinguishable under the common colour-vision
deficiencies; each built-in method owns one colour for good, so a method looks the same in
every figure. Term labels, units and which terms are shown in percent are schema's too.
"""

import contextlib
import zlib
from collections.abc import Iterable

import matplotlib
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from ijckd_bounds import schema

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
FULL_WIDTH = 6.8  # inches: both columns

PAPER_RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "mathtext.fontset": "dejavusans",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "axes.titlepad": 3.0,
    "axes.labelpad": 2.0,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.major.pad": 2.0,
    "ytick.major.pad": 2.0,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.0,
    "legend.frameon": False,
    "legend.handlelength": 1.8,
    "legend.columnspacing": 1.2,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "figure.constrained_layout.use": True,
    "figure.constrained_layout.h_pad": 0.02,
    "figure.constrained_layout.w_pad": 0.02,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by paper systems
    "ps.fonttype": 42,
}


def paper_style() -> contextlib.AbstractContextManager[None]:
    """Context manager applying ``PAPER_RC`` to the figures drawn and saved inside it."""
    return matplotlib.rc_context(PAPER_RC)


def new_figure(width, height):
    """A figure outside pyplot's global state (no GUI, no leak); call inside paper_style()."""
    return Figure(figsize=(width, height), layout="constrained")


# Colours left for methods a user brings: the rest of Okabe-Ito, then Paul Tol's "muted"
# set (also colour-blind safe), yellow last because it is faint on white.
EXTRA_COLOURS = ("#cc79a7", "#882255", "#44aa99", "#999933", "#332288", "#aa4499",
                 "#117733", "#661100", "#6699cc", "#f0e442")


def method_palette(methods: Iterable[object]) -> dict[str, str]:
    """Fixed colour for each method name: ``{method: "#rrggbb"}``.

    Built-in methods always get their own colour. An unknown name starts from a slot
    chosen by a checksum of the name (so it keeps its colour whatever else is plotted)
    and moves to the next free slot only when two unknown names collide.
    """
    palette = {}
    unknown = sorted({str(m) for m in methods} - set(schema.METHOD_COLOURS))
    for method in {str(m) for m in methods} & set(schema.METHOD_COLOURS):
        palette[method] = schema.METHOD_COLOURS[method]
    taken = set()
    for method in unknown:
        start = zlib.crc32(method.encode()) % len(EXTRA_COLOURS)
        for offset in range(len(EXTRA_COLOURS)):
            slot = (start + offset) % len(EXTRA_COLOURS)
            if slot not in taken or len(taken) >= len(EXTRA_COLOURS):
                break
        taken.add(slot)
        palette[method] = EXTRA_COLOURS[slot]
    return palette


def darker(colour, factor=0.55):
    """``colour`` (any matplotlib colour) with its RGB channels scaled by ``factor``: the
    same hue, dark enough to outline small markers of a light colour on white."""
    red, green, blue = to_rgb(colour)
    return to_hex((red * factor, green * factor, blue * factor))


def contrast_on_white(colour):
    """WCAG 2 contrast ratio of ``colour`` against white (1 to 21; text wants >= 4.5,
    graphics >= 3)."""
    def linear(channel):
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(c) for c in to_rgb(colour))
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return 1.05 / (luminance + 0.05)


def method_order(methods):
    """Built-in methods in their canonical order, then the others alphabetically."""
    names = {str(m) for m in methods}
    known = [m for m in schema.METHOD_ORDER if m in names]
    return known + sorted(names - set(known))


def method_label(method):
    """The display label of ``method`` (the name itself when it has none)."""
    return schema.METHOD_LABELS.get(str(method), str(method))


def term_label(term):
    """The display label of ``term`` (the name itself when it has none)."""
    return schema.LABELS.get(term, term)


def scale(term):
    """Display factor of a term: 100 for rates shown in percent, else 1."""
    return 100.0 if term in schema.PERCENT_TERMS else 1.0


# Fixed styles for quantities drawn beside each other inside one method's panel.
STUDENT_STYLE = {"color": "#000000", "linewidth": 1.6, "linestyle": "-"}
TEACHER_STYLE = {"color": "#000000", "linewidth": 0.9, "linestyle": ":"}
# the student's error under the bounds: wide and light, so that a bound equal to it (the
# coupled bound often is) is drawn on top of it and stays visible
STUDENT_UNDER_BOUNDS_STYLE = {"color": "#a6a6a6", "linewidth": 3.0, "linestyle": "-",
                              "solid_capstyle": "butt", "zorder": 2}
BOUND_STYLES = {  # Paul Tol "muted": disjoint from the method colours above
    "bound_coupled": {"color": "#332288", "linestyle": "-"},
    "bound_margin": {"color": "#117733", "linestyle": "-"},
    "bound_feat_markov": {"color": "#44aa99", "linestyle": "-"},
    "bound_logit_markov": {"color": "#999933", "linestyle": "-"},
    "bound_ideal_joint": {"color": "#aa4499", "linestyle": "-"},
    "bound_ben_david": {"color": "#882255", "linestyle": "--"},
}
DECOMPOSITION_STYLES = {
    "teacher_err": {"color": "#000000", "linestyle": "-"},
    schema.TRANSFER_GAP: {"color": "#cc6677", "linestyle": "-"},
    "disagreement": {"color": "#332288", "linestyle": "--"},
    "ijc_gap": {"color": "#117733", "linestyle": "-."},
}
