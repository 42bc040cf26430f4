"""Figure style shared by every chapter: seaborn, a colour-blind-safe palette, labelled axes,
and a size that keeps every label readable in the book's page.

A figure is shown at most :data:`PAGE_WIDTH_PX` CSS pixels wide, so a wide image is shrunk and
its text with it. :func:`glue_figure` (what every chapter uses to publish a figure) refuses a
figure whose text would end up smaller than :data:`MIN_TEXT_PX` on the page: one with a font
below :data:`MIN_FONT_PT`, or one wider than :data:`MAX_WIDTH_IN`. The browser test of the
book (``tests/test_book.py``) measures the same rule on the rendered pages.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.text import Text
from myst_nb import glue

from . import tables

PALETTE = "colorblind"
#: fixed colours for the two genders and for "other" (Okabe-Ito via seaborn's colorblind set)
GENDER_COLORS = {"male": sns.color_palette(PALETTE)[0], "female": sns.color_palette(PALETTE)[1],
                 "neutral": sns.color_palette(PALETTE)[7]}

#: pixels per inch of the saved figures (the PNG that a chapter glues into its page)
DPI = 110
#: The widest a figure is shown, in CSS pixels: Chromium at a 1280-px-wide window, with
#: sphinx-book-theme's sidebars shown (measured on the rendered book: a figure's box is 676 px,
#: its image at most 660). A wider image is shrunk to this; narrower windows shrink it further.
PAGE_WIDTH_PX = 660
#: The smallest text a reader is asked to read, in CSS pixels at the page width (about 7 pt
#: on a desktop screen; smaller text is where the figures of issue 20 became unreadable).
MIN_TEXT_PX = 9
#: The smallest font size a figure may use, in points. Seaborn's "notebook" context sets tick
#: labels and legends to 11 pt and titles to 12 pt; annotations and dense legends may go down
#: to this size, no further.
MIN_FONT_PT = 9
#: The widest figure, in inches (its saved bounding box), whose smallest text stays readable:
#: a point is DPI / 72 pixels, and the image is shrunk by PAGE_WIDTH_PX / (width * DPI), so
#: MIN_FONT_PT text shows at MIN_FONT_PT / 72 * PAGE_WIDTH_PX / width pixels.
MAX_WIDTH_IN = MIN_FONT_PT / 72 * PAGE_WIDTH_PX / MIN_TEXT_PX
#: The width to draw a full-width figure at (inches): the page width at DPI, so that it is shown
#: at its natural size and its 11-pt labels at 17 px.
PAGE_WIDTH_IN = PAGE_WIDTH_PX / DPI


def setup(context: str = "notebook") -> None:
    """Apply the book's look (call once at the top of a chapter): the seaborn theme for
    figures, and :func:`analysis_lib.tables.setup` for the tables a cell displays."""
    tables.setup()
    sns.set_theme(context=context, style="whitegrid", palette=PALETTE)
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "figure.figsize": (PAGE_WIDTH_IN, 4.0),
                         "axes.titleweight": "bold"})


def label(ax, xlabel: str, ylabel: str, title: str | None = None):
    """Set axis labels (and title); every figure in the book has both axes labelled."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


def min_display_scale(dpi: float = DPI) -> float:
    """The smallest shown/natural width ratio of an image saved at ``dpi`` at which text of
    :data:`MIN_FONT_PT` is still :data:`MIN_TEXT_PX` on the page."""
    return MIN_TEXT_PX / (MIN_FONT_PT * dpi / 72)


def readability_problems(fig) -> list[str]:
    """What makes ``fig`` unreadable in the page: fonts below :data:`MIN_FONT_PT`, and a saved
    width (the tight bounding box that the book's PNG has, with its padding) above
    :data:`MAX_WIDTH_IN`. An empty list means readable."""
    problems = []
    small = sorted({(round(t.get_fontsize(), 1), t.get_text().strip()[:40]) for t in fig.findobj(Text)
                    if t.get_visible() and t.get_text().strip() and t.get_fontsize() < MIN_FONT_PT - 1e-6})
    problems += [f"text {text!r} is {size} pt (at least {MIN_FONT_PT} pt)" for size, text in small]
    width = fig.get_tightbbox(fig.canvas.get_renderer()).width + 2 * plt.rcParams["savefig.pad_inches"]
    if width > MAX_WIDTH_IN + 1e-6:
        problems.append(f"the figure is {width:.2f} in wide with its labels and legend (at most {MAX_WIDTH_IN:.2f} in; "
                        "facet it into rows or split it)")
    return problems


def glue_figure(name: str, fig) -> None:
    """Glue ``fig`` under ``name`` for a ``{glue:figure}`` and close it, after checking that its
    text will be readable in the page (:func:`readability_problems`); raises ``ValueError`` if not."""
    problems = readability_problems(fig)
    if problems:
        plt.close(fig)
        raise ValueError(f"Figure {name!r} would be unreadable in the book's page: " + "; ".join(problems) + ".")
    glue(name, fig, display=False)
    plt.close(fig)
