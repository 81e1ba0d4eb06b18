"""The one exception type the dataset readers raise for bad input."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent.

    The message names the offending file (and line or entry where there is one) and says what is
    wrong with it. A ``ValueError`` subclass, so callers that only know about ``ValueError`` still
    catch it.
    """
