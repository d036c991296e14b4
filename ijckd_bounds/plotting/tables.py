"""The final-checkpoint comparison as a table, written as Markdown or LaTeX.

``final_table`` picks the last checkpoint of every run and formats each term as
"value [lo, hi]", rates in percent with one decimal ("12.3 [11.0, 13.5]"). The writers
format the table themselves (no ``tabulate`` dependency).
"""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ijckd_bounds import schema
from ijckd_bounds.errors import IJCKDError
from ijckd_bounds.plotting import select
from ijckd_bounds.plotting.style import method_label, method_order, scale

FINAL_TERMS = ("student_err", "student_own_err", "teacher_err", "disagreement",
               "feat_cka", "ideal_joint", "ijc_gap", "bound_coupled")
# fidelity and calibration
FINAL_TERMS = FINAL_TERMS + ("top1_agreement", "teacher_ece", "student_ece")
MISSING = "–"  # en dash: a term the run does not have (e.g. own head of SimKD)
ID_COLUMNS = ("method", "dataset", "run", "seed", "epoch")


def _decimals(value):
    """Decimals that show three significant digits of ``value`` (0 to 4)."""
    if value == 0 or not math.isfinite(value):
        return 3
    return int(min(4, max(0, 2 - math.floor(math.log10(abs(value))))))


def format_interval(value, lo, hi, *, percent):
    """``"12.3 [11.0, 13.5]"``; the interval is left out where it is missing."""
    if value is None or not np.isfinite(value):
        return MISSING
    factor = 100.0 if percent else 1.0
    value, lo, hi = value * factor, lo * factor, hi * factor
    if percent:
        digits = 1
    elif abs(value) >= 1e4 or 0 < abs(value) < 1e-3:
        text = f"{value:.2e}"
        if np.isfinite(lo) and np.isfinite(hi):
            text += f" [{lo:.2e}, {hi:.2e}]"
        return text
    else:
        digits = _decimals(value)
    text = f"{value:.{digits}f}"
    if np.isfinite(lo) and np.isfinite(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def final_table(df: pd.DataFrame, terms: Sequence[str] = FINAL_TERMS, *,
                split: str = "eval") -> pd.DataFrame:
    """One row per run at its last checkpoint; each term as a "value [lo, hi]" string.

    ``df``: bounds table. Columns of the result: method (display name), dataset (only
    when several are present), run, seed, epoch, then ``terms`` (rates in percent).
    Rows are ordered by method (built-ins first), then seed and run.
    """
    terms = tuple(terms) if not isinstance(terms, str) else (terms,)
    select.require_terms(df, terms, "df", schema.INTERVAL_TERMS + schema.BOUNDS)
    select.require_columns(df, ("run", "method"), "df")
    rows = df
    if "split" in df.columns and split is not None:
        rows = select.select_one(df, "split", split, "df")
    # copied: a frame read from CSV holds a block per column, and adding the sort column
    # to one of over 100 columns makes pandas warn that it is fragmented
    final = select.final_rows(rows).copy()
    order = {m: i for i, m in enumerate(method_order(final["method"].astype(str).unique()))}
    final = final.assign(_order=final["method"].astype(str).map(order))
    sort_by = ["_order"] + [c for c in ("dataset", "seed", "run") if c in final.columns]
    final = final.sort_values(sort_by, kind="stable")

    several_datasets = "dataset" in final.columns and final["dataset"].nunique() > 1
    records = []
    for _, row in final.iterrows():
        record = {"method": method_label(row["method"])}
        if several_datasets:
            record["dataset"] = str(row["dataset"])
        record["run"] = str(row["run"])
        for column in ("seed", "epoch"):
            if column in final.columns:
                record[column] = select.format_number(row[column])
        for term in terms:
            record[term] = format_interval(float(row[term]), float(row[f"{term}_lo"]),
                                           float(row[f"{term}_hi"]),
                                           percent=scale(term) == 100.0)
        records.append(record)
    return pd.DataFrame.from_records(records)


def _header(column):
    return f"{column} (%)" if column in schema.PERCENT_TERMS else str(column)


def _is_text_column(column):
    return column in ID_COLUMNS[:3]


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown pipe table of ``table`` (e.g. ``final_table(df)``);
    rate columns get "(%)" in the header, value columns are right-aligned."""
    if not isinstance(table, pd.DataFrame):
        raise IJCKDError(f"`table` must be a pandas DataFrame, got {type(table).__name__}")

    def cell(text):
        return str(text).replace("|", "\\|").replace("\n", " ")

    columns = list(table.columns)
    lines = ["| " + " | ".join(cell(_header(c)) for c in columns) + " |",
             "|" + "|".join(":---" if _is_text_column(c) else "---:" for c in columns) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                  "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "\\": r"\textbackslash{}", "–": "--"}


def latex_escape(text):
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_label(text):
    """Escape the plain-text parts of a label, keep its ``$...$`` math as it is."""
    parts = str(text).split("$")
    return "$".join(part if i % 2 else latex_escape(part) for i, part in enumerate(parts))


def to_latex(table: pd.DataFrame, *, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs ``tabular`` of ``table`` (e.g. ``final_table(df)``), wrapped in a
    ``table`` float when ``caption`` or ``label`` is given. Headers of known terms use the
    figure labels; every cell is escaped."""
    if not isinstance(table, pd.DataFrame):
        raise IJCKDError(f"`table` must be a pandas DataFrame, got {type(table).__name__}")
    columns = list(table.columns)
    headers = []
    for column in columns:
        name = schema.LABELS.get(column)
        header = _latex_label(name) if name else latex_escape(column)
        headers.append(header + (r" (\%)" if column in schema.PERCENT_TERMS else ""))
    spec = "".join("l" if _is_text_column(c) else "r" for c in columns)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(headers) + r" \\",
             r"\midrule"]
    for row in table.itertuples(index=False):
        lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption is None and label is None:
        return "\n".join(lines) + "\n"
    wrapped = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption is not None:
        wrapped.append(rf"\caption{{{_latex_label(caption)}}}")
    if label is not None:
        wrapped.append(rf"\label{{{label}}}")
    return "\n".join(wrapped + lines + [r"\end{table}"]) + "\n"
