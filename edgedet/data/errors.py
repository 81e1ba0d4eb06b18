"""The one exception type the dataset readers raise for bad input, and their text reader."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent.

    The message names the offending file (and line or entry where there is one) and says what is
    wrong with it. A ``ValueError`` subclass, so callers that only know about ``ValueError`` still
    catch it.
    """


def read_text_file(path: Path) -> str:
    """A dataset's text file (labels, class lists, splits, data.yaml): UTF-8, with or without
    the byte-order mark Windows editors write (left in, it would start the first class name or
    file name); DatasetError naming the file when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") \
            from error
