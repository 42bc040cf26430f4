"""The book's figure and table rules, on real matplotlib figures and pandas tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis_lib import plots, tables  # noqa: E402


def test_the_width_rule_follows_from_the_page_and_the_fonts():
    # MIN_FONT_PT text of a MAX_WIDTH_IN figure, shrunk to the page, is exactly MIN_TEXT_PX
    natural_px = plots.MAX_WIDTH_IN * plots.DPI
    shown_text_px = plots.MIN_FONT_PT * plots.DPI / 72 * plots.PAGE_WIDTH_PX / natural_px
    assert shown_text_px == pytest.approx(plots.MIN_TEXT_PX)
    assert plots.min_display_scale() == pytest.approx(plots.PAGE_WIDTH_PX / natural_px)
    assert plots.PAGE_WIDTH_IN * plots.DPI == pytest.approx(plots.PAGE_WIDTH_PX)


def test_readability_problems_name_small_fonts_and_wide_figures():
    plots.setup()
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH_IN, 3))
    ax.plot(np.arange(3))
    plots.label(ax, "x", "y", "fine")
    assert plots.readability_problems(fig) == []
    ax.text(0, 0, "tiny", fontsize=plots.MIN_FONT_PT - 2)
    assert any("'tiny'" in p for p in plots.readability_problems(fig))
    plt.close(fig)
    wide, ax = plt.subplots(figsize=(plots.MAX_WIDTH_IN * 1.5, 3))
    ax.plot(np.arange(3))
    assert any("wide" in p for p in plots.readability_problems(wide))
    with pytest.raises(ValueError, match="unreadable"):
        plots.glue_figure("fig_wide", wide)


def test_tables_show_words_rounded_numbers_and_no_plain_index():
    frame = pd.DataFrame({"mean_abs_b": [0.123456, 2.0], "d_ppl_pct": [1.0, -2.5], "n_neurons": [3, 50],
                          "model": ["a", "b"]})
    assert tables.words("mean_abs_b") == "mean |b|" and tables.words("n_neurons") == "n neurons"
    assert tables.words("already words") == "already words" and tables.words(3) == 3
    html = tables.styled(frame).to_html()
    assert "mean |b|" in html and "perplexity change (%)" in html and "n neurons" in html
    assert "0.123" in html and "0.123456" not in html and ">50<" in html
    assert "row_heading" not in html  # the 0, 1 index is hidden
    named = tables.styled(frame.set_index("model")).to_html()
    assert "row_heading" in named and ">a<" in named
    wide = pd.concat({"FFN value": frame[["mean_abs_b"]], "FFN query": frame[["mean_abs_b"]]}, axis=1)
    assert list(tables.readable(wide).columns) == [("FFN value", "mean |b|"), ("FFN query", "mean |b|")]
    assert list(frame.columns) == ["mean_abs_b", "d_ppl_pct", "n_neurons", "model"]  # the data are untouched
    long = pd.DataFrame({"mean_abs_b": np.arange(200) / 7})
    cut = tables._frame_html(long)
    assert "mean |b|" in cut and ("…" in cut or "..." in cut)  # pandas' truncated view, in words
    with pd.option_context("display.max_rows", 500):
        assert "row_heading" not in tables._frame_html(long) and ">28.429<" in tables._frame_html(long)
