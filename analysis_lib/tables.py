"""How the book shows a table: column headers in words, rounded numbers, no stray index.

:func:`setup` (called by :func:`analysis_lib.plots.setup` at the top of every chapter) makes
every DataFrame that a chapter cell displays go through :func:`styled`: snake_case headers
become words (:data:`WORDS` for the study's abbreviations, spaces for the rest), floats are
rounded to :data:`DIGITS` decimals, and a plain 0, 1, 2, ... row index is hidden. The values
in ``results/`` are untouched: only what the page shows changes. Wide tables scroll inside
their own box (``_static/tables.css``).
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
from IPython import get_ipython
from pandas.io.formats.style import Styler

#: decimals a displayed float keeps (a chapter formats a table itself where it needs others)
DIGITS = 3

#: headers that are not just their words with spaces: the study's abbreviations and units
WORDS = {
    "n": "n",
    "k": "K",
    "b": "b",
    "mean_b": "mean b",
    "mean_abs_b": "mean |b|",
    "d_mean_abs_b": "change of mean |b|",
    "d_mean_abs_b_low": "change: 95% CI low",
    "d_mean_abs_b_high": "change: 95% CI high",
    "d_ppl_pct": "perplexity change (%)",
    "ppl": "perplexity",
    "pct_layer": "% of the layer",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "low": "95% CI low",
    "high": "95% CI high",
    "lp_male": "log p(male)",
    "lp_female": "log p(female)",
    "q_male": "q(male)",
    "s_dis": "bias score s_DIS",
    "s_amb": "bias score s_AMB",
    "lms": "LMS",
    "ss": "SS",
    "icat": "ICAT",
    "kl": "KL",
    "std_accuracy": "accuracy: std across instructions",
    "imp_orig": "importance, as is",
    "imp_masked": "importance, masked",
    "coef_orig": "coefficient, as is",
    "coef_masked": "coefficient, masked",
    "cna": "CNA",
    "q_start": "query score at the start token",
    "share_start": "share at the start token",
    "important_position": "important position",
}


def words(label: Any) -> Any:
    """A header in words: :data:`WORDS` where listed, else underscores become spaces."""
    if not isinstance(label, str):
        return label
    if label in WORDS:
        return WORDS[label]
    if "_" in label and not re.search(r"\s", label):
        return label.replace("_", " ")
    return label


def _labels(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.RangeIndex):
        return index
    if isinstance(index, pd.MultiIndex):
        levels = [lvl.map(words) for lvl in index.levels]
        if any(not lvl.is_unique for lvl in levels):  # two labels would read the same: keep them
            levels = index.levels
        return index.set_levels(levels).set_names([words(n) for n in index.names])
    new = index.map(words)
    return (new if new.is_unique or not index.is_unique else index).rename(words(index.name))


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its column and index labels (and their names) in words."""
    out = frame.copy(deep=False)
    out.columns = _labels(out.columns)
    out.index = _labels(out.index)
    return out


def styled(frame: pd.DataFrame):
    """The Styler the book shows for ``frame``: headers in words, floats to :data:`DIGITS`
    decimals (integers and text as they are), a plain 0..n-1 index hidden."""
    show = readable(frame)
    styler = show.style.format(precision=DIGITS, na_rep="–").set_table_attributes('class="dataframe"')
    return _hide_plain_index(styler)


def _hide_plain_index(styler: Styler) -> Styler:
    """Hide a row index that is only 0, 1, 2, ... (it says nothing the row order does not)."""
    index = styler.data.index
    if isinstance(index, pd.RangeIndex) and index.name is None:
        return styler.hide(axis="index")
    return styler


def _frame_html(frame: pd.DataFrame) -> str:
    max_rows = pd.get_option("display.max_rows")
    if max_rows is not None and len(frame) > max_rows:  # pandas' own cut (first and last rows), in words
        return readable(frame)._repr_html_()
    return styled(frame).to_html()


def _styler_html(styler: Styler) -> str:
    """A chapter's own Styler keeps its formats; only its column headers are put in words."""
    return _hide_plain_index(styler.format_index(words, axis=1)).to_html()


def setup() -> None:
    """Show every DataFrame a chapter displays through :func:`styled`, and the column headers
    of a chapter's own Stylers in words (in an IPython kernel; elsewhere only the pandas
    precision options are set)."""
    pd.set_option("styler.format.precision", DIGITS)
    pd.set_option("display.precision", DIGITS)
    ip = get_ipython()
    if ip is None:
        return
    formatter = ip.display_formatter.formatters["text/html"]
    formatter.for_type(pd.DataFrame, _frame_html)
    formatter.for_type(Styler, _styler_html)
