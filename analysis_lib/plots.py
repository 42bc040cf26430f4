"""Figure style shared by every chapter: seaborn, a colour-blind-safe palette, labelled axes."""

from __future__ import annotations


import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = "colorblind"
#: fixed colours for the two genders and for "other" (Okabe-Ito via seaborn's colorblind set)
GENDER_COLORS = {"male": sns.color_palette(PALETTE)[0], "female": sns.color_palette(PALETTE)[1],
                 "neutral": sns.color_palette(PALETTE)[7]}


def setup(context: str = "notebook") -> None:
    """Apply the book's seaborn theme (call once at the top of a chapter)."""
    sns.set_theme(context=context, style="whitegrid", palette=PALETTE)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (7.5, 4.2),
                         "axes.titleweight": "bold"})


def label(ax, xlabel: str, ylabel: str, title: str | None = None):
    """Set axis labels (and title); every figure in the book has both axes labelled."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax
