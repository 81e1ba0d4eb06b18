"""`Detections`: what a detector returns for one frame, as parallel numpy arrays."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


def row_index(index: int | slice | np.ndarray | Sequence[int]) -> slice | np.ndarray:
    """A ``Detections`` index as numpy indexes its arrays: an int keeps the ``(N, 4)`` shape
    (one row), a list or tuple becomes an array (``[]``: an empty selection, not a float
    array numpy refuses)."""
    if isinstance(index, int | np.integer):
        index = [int(index)]
    if isinstance(index, list | tuple):
        index = np.asarray(index, dtype=np.int64 if len(index) == 0 else None)
    return index


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one frame.

    Attributes:
        xyxy: ``(N, 4) float32`` boxes in input-frame pixels, ``x1, y1, x2, y2`` with
            ``x1 <= x2`` and ``y1 <= y2``.
        scores: ``(N,) float32`` confidences.
        class_ids: ``(N,) int64`` 0-based indices into ``class_names``.
        class_names: the model's class list (shared by every frame, not per box).

    Arrays are validated and converted on construction, so a ``Detections`` always holds
    consistent shapes and dtypes (the SDK's decoder, whose arrays are valid by construction,
    skips the checks: ``_unchecked``). Index it like a numpy array (``dets[dets.scores > 0.5]``,
    ``dets[:10]``, ``dets[[0, 2]]``) to get another ``Detections``.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy must have shape (N, 4), got {xyxy.shape}")
        n = xyxy.shape[0]
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        class_ids_in = np.asarray(self.class_ids)
        if (
            class_ids_in.size
            and not np.issubdtype(class_ids_in.dtype, np.integer)
            and not np.all(np.mod(class_ids_in, 1) == 0)
        ):
            raise ValueError("Detections.class_ids must be whole numbers")
        if class_ids_in.size and not np.all(np.abs(class_ids_in) < 2**62):  # before the cast
            raise ValueError(f"Detections.class_ids out of range: {class_ids_in.max()}")
        class_ids = class_ids_in.astype(np.int64).reshape(-1)
        if scores.shape[0] != n or class_ids.shape[0] != n:
            raise ValueError(
                f"Detections arrays disagree in length: xyxy {n}, scores {scores.shape[0]}, "
                f"class_ids {class_ids.shape[0]}"
            )
        if not np.all(np.isfinite(xyxy)) or not np.all(np.isfinite(scores)):
            raise ValueError("Detections contain NaN or infinite boxes or scores")
        # An inverted box (x2 < x1, e.g. an x, y, w, h row read as xyxy) would draw and
        # count as area 0 and match nothing; say so here rather than downstream.
        inverted = np.flatnonzero((xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1]))
        if inverted.size:
            raise ValueError(f"Detections.xyxy needs x1 <= x2 and y1 <= y2; box "
                             f"{int(inverted[0])} is {xyxy[inverted[0]].tolist()} "
                             f"({inverted.size} inverted)")
        if n and class_ids.min() < 0:
            raise ValueError(f"Detections.class_ids must be >= 0, got {class_ids.min()}")
        if isinstance(self.class_names, str):  # "abc" would become three classes a, b, c
            raise ValueError(f"Detections.class_names must be a sequence of names, got the "
                             f"string {self.class_names!r}")
        names = tuple(str(c) for c in self.class_names)
        if names and n and class_ids.max() >= len(names):
            raise ValueError(
                f"class id {class_ids.max()} out of range for {len(names)} class names"
            )
        # frozen dataclass: assign the normalised arrays through object.__setattr__
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)
        object.__setattr__(self, "class_names", names)

    @classmethod
    def _unchecked(cls, xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                   class_names: tuple[str, ...]) -> Detections:
        """A ``Detections`` of arrays that already are what ``__post_init__`` makes: ``xyxy
        (N, 4) float32`` finite with ``x1 <= x2, y1 <= y2``, ``scores (N,) float32`` finite,
        ``class_ids (N,) int64`` indices into ``class_names``, a tuple of str. For the
        decoder, once per frame: the checks cost 0.04-0.07 ms of a frame with the caches
        cold after an inference (a tenth of the decoding)."""
        detections = object.__new__(cls)
        for name, value in (("xyxy", xyxy), ("scores", scores), ("class_ids", class_ids),
                            ("class_names", class_names)):
            object.__setattr__(detections, name, value)
        return detections

    @classmethod
    def empty(cls, class_names: Sequence[str] = ()) -> Detections:
        """No detections."""
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0,), np.int64),
            tuple(class_names),
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> Detections:
        index = row_index(index)
        if isinstance(index, np.ndarray) and index.dtype == bool and index.shape != (len(self),):
            raise IndexError(
                f"boolean mask of shape {index.shape} does not match {len(self)} detections"
            )
        return Detections(
            self.xyxy[index], self.scores[index], self.class_ids[index], self.class_names
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, float, int]]:
        """Yields ``(xyxy (4,), score, class_id)`` per detection."""
        for i in range(len(self)):
            yield self.xyxy[i], float(self.scores[i]), int(self.class_ids[i])

    @property
    def labels(self) -> list[str]:
        """Class name of each detection (the class id as text when names are unknown)."""
        if not self.class_names:
            return [str(int(c)) for c in self.class_ids]
        return [self.class_names[int(c)] for c in self.class_ids]

    @property
    def area(self) -> np.ndarray:
        """``(N,) float32`` box areas in pixels²."""
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def sorted_by_score(self) -> Detections:
        """The same detections, highest score first (stable for ties)."""
        return self[np.argsort(-self.scores, kind="stable")]

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, classes={len(self.class_names)})"
