"""gender-neurons: a reproducible study of gender bias inside language models.

All computation of the book lives in this package; the chapters in ``notebooks/``
only narrate and call it.
"""

__version__ = "0.1.0"
