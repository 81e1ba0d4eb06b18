"""Multi-object tracking on top of `Detections`: a stable id per object across frames.

``Tracker(TrackerOptions()).update(detections)`` takes one frame's ``Detections`` (boxes
``xyxy`` in frame pixels) and returns ``TrackedDetections``: the detections that belong to a
confirmed track, each with its ``track_ids`` entry (ints from 1, never reused). Call it once per
processed frame, in order; a frame with nothing detected is ``Detections.empty()``, so that
tracks age.

The association is ByteTrack (Zhang et al., ECCV 2022): a Kalman filter predicts each track's
box, detections are matched to the predictions by IoU (Hungarian assignment) first with the
confident detections, then with the low-score ones (0.1 < score < ``activation_threshold``),
which keeps tracks alive through frames where an object is seen poorly. Tracking is
class-agnostic, as in ByteTrack: a class that flickers between frames keeps its id.

Which implementation, and why supervision (the optional extra ``track``)
------------------------------------------------------------------------
Two pip packages carry ByteTrack, both from Roboflow:

* ``trackers`` (``ByteTrackTracker``, where ByteTrack is maintained now) depends on
  ``supervision`` itself plus ``opencv-python``, ``rich``, ``requests`` and ``pyDeprecate``: a
  strict superset of supervision's dependencies. Its ``opencv-python`` is the worst part: a
  second OpenCV distribution over the ``opencv-python-headless`` that edgedet depends on (the
  two share the ``cv2`` folder, so one overwrites the other, and the GUI build needs libGL),
  and on a Jetson it would shadow JetPack's GStreamer-enabled cv2 in the venv, which ``csi://``
  cameras need.
* ``supervision`` (``ByteTrack``) needs numpy, scipy (the assignment), matplotlib, pillow, av,
  pyyaml, requests, tqdm, defusedxml and pyDeprecate; from 0.30 on, no OpenCV wheel.

So the extra is supervision, the lighter set. Its ``ByteTrack`` is deprecated since 0.28 in
favour of ``trackers`` and was removed in 0.31, hence the pin ``supervision>=0.30,<0.31``
(0.30.9 tested, with numpy 2.4); the deprecation notice is silenced where the tracker is made.
The wrapper below is the only code that touches it: moving to ``trackers.ByteTrackTracker``
(the same algorithm, ``update`` instead of ``update_with_detections``), once it no longer pulls
``opencv-python``, is a change to ``_supervision``, ``_new_byte_track`` and ``Tracker.update``.

``import edgedet.track`` needs nothing beyond the core; supervision is imported when a
``Tracker`` is made, which raises ``ImportError`` naming the extra when it is missing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgedet.detections import Detections, row_index

TRACK_EXTRA = "track"
INSTALL_HINT = f"pip install 'edgedet[{TRACK_EXTRA}]' (supervision>=0.30,<0.31)"
# ByteTrack's low-score cut: detections at or below it are never associated.
LOW_SCORE_FLOOR = 0.1
# supervision scales its lost-track buffer by frame_rate / 30; at 30 the buffer counts update()
# calls, which is what a caller that drops frames (a live camera app) can reason about.
_BUFFER_FRAME_RATE = 30.0


@dataclass(frozen=True, eq=False)
class TrackedDetections(Detections):
    """``Detections`` that belong to confirmed tracks, with each one's track id.

    Attributes:
        track_ids: ``(N,) int64`` ids, one per row of ``xyxy`` (``x1, y1, x2, y2`` in frame
            pixels), unique within a frame; an object keeps its id from frame to frame, and
            an id is never given to another object.

    Indexing (``tracked[tracked.scores > 0.5]``) keeps the ids with their rows.
    """

    track_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        super().__post_init__()
        ids_in = np.asarray(self.track_ids)
        if ids_in.size and not np.issubdtype(ids_in.dtype, np.integer):
            raise ValueError(f"TrackedDetections.track_ids must be integers, got {ids_in.dtype}")
        ids = ids_in.astype(np.int64).reshape(-1)
        if ids.shape[0] != len(self):
            raise ValueError(f"TrackedDetections has {len(self)} boxes but {ids.shape[0]} "
                             "track ids")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"TrackedDetections.track_ids repeat an id: {ids.tolist()}")
        object.__setattr__(self, "track_ids", ids)

    @classmethod
    def empty(cls, class_names: Sequence[str] = ()) -> TrackedDetections:
        """No tracked detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                   np.zeros((0,), np.int64), tuple(class_names), np.zeros((0,), np.int64))

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> TrackedDetections:
        selected = super().__getitem__(index)  # checks the index (a mask of the wrong length)
        # The same normalisation as Detections.__getitem__, so that ids follow their rows.
        return TrackedDetections(selected.xyxy, selected.scores, selected.class_ids,
                                 selected.class_names, self.track_ids[row_index(index)])

    def __repr__(self) -> str:
        return (f"TrackedDetections(n={len(self)}, classes={len(self.class_names)}, "
                f"ids={self.track_ids.tolist()})")


# activation_threshold + 0.1 must stay below 1 for any track to start.
MAX_ACTIVATION = 0.9


@dataclass(frozen=True)
class TrackerOptions:
    """ByteTrack's settings (defaults: the reference implementation's).

    Attributes:
        activation_threshold: detections scoring at least this are matched first; a new track
            starts only from one scoring at least this + 0.1. Scores between 0.1 and this only
            continue existing tracks. (With a detector's score threshold above it, every
            detection that reaches the tracker is a confident one.)
        lost_track_buffer: ``update`` calls a track survives unmatched (an occlusion, missed
            detections) and is still found again under its id; after that it ends.
        matching_threshold: largest matching cost, ``1 - IoU * score``, between a track's
            predicted box and a confident detection for the two to be matched.
        min_consecutive_frames: matches a new track needs after the detection that started
            it before it is reported (1: from its second frame, ByteTrack's confirmation; on a
            stream's very first frame at once).
    """

    activation_threshold: float = 0.25
    lost_track_buffer: int = 30
    matching_threshold: float = 0.8
    min_consecutive_frames: int = 1

    def __post_init__(self) -> None:
        for name in ("activation_threshold", "matching_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{name} must be a number, got {value!r}")
        # A new track needs a score of activation_threshold + 0.1: at 0.9 and above no score
        # below 1 starts one (ByteTrack then tracked nothing, silently).
        if not LOW_SCORE_FLOOR < self.activation_threshold < MAX_ACTIVATION:
            raise ValueError(f"activation_threshold must be between {LOW_SCORE_FLOOR} and "
                             f"{MAX_ACTIVATION} (a new track needs a score of at least it + "
                             f"0.1), got {self.activation_threshold}")
        if not 0.0 < self.matching_threshold <= 1.0:
            raise ValueError(f"matching_threshold must be in (0, 1], got "
                             f"{self.matching_threshold}")
        for name in ("lost_track_buffer", "min_consecutive_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.lost_track_buffer < 0:
            raise ValueError(f"lost_track_buffer must be >= 0, got {self.lost_track_buffer}")
        if self.min_consecutive_frames < 1:
            raise ValueError(f"min_consecutive_frames must be >= 1, got "
                             f"{self.min_consecutive_frames}")


def _supervision() -> Any:
    """The ``supervision`` module, with its ``ByteTrack``.

    Raises:
        ImportError: supervision is missing, or a version without ByteTrack; the message says
            what to install.
    """
    try:
        import supervision
    except ImportError as exc:
        raise ImportError(f"tracking needs the optional '{TRACK_EXTRA}' extra: "
                          f"{INSTALL_HINT}") from exc
    if not hasattr(supervision, "ByteTrack"):  # 0.31 and later: moved to the trackers package
        raise ImportError(f"supervision {supervision.__version__} has no ByteTrack (removed in "
                          f"0.31): {INSTALL_HINT}")
    return supervision


def _new_byte_track(supervision: Any, options: TrackerOptions) -> Any:
    """supervision's ``ByteTrack`` with ``options``."""
    with warnings.catch_warnings():
        # "ByteTrack was deprecated since v0.28.0": known, and pinned (see the docstring).
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return supervision.ByteTrack(
            track_activation_threshold=options.activation_threshold,
            lost_track_buffer=options.lost_track_buffer,
            minimum_matching_threshold=options.matching_threshold,
            frame_rate=_BUFFER_FRAME_RATE,
            minimum_consecutive_frames=options.min_consecutive_frames,
        )


class Tracker:
    """Gives each object a stable id across the frames of one video or stream.

    One ``Tracker`` per stream; ``update`` once per processed frame, from one thread at a time.
    ``reset`` before another, unrelated stream.

    Args:
        options: ByteTrack's settings (default: ``TrackerOptions()``).

    Attributes:
        frames: ``update`` calls since the tracker was made or reset.

    Raises:
        ImportError: the ``track`` extra (supervision) is not installed.
    """

    def __init__(self, options: TrackerOptions | None = None) -> None:
        if options is not None and not isinstance(options, TrackerOptions):
            raise TypeError(f"Tracker takes a TrackerOptions, got {type(options).__name__}")
        self.options = options or TrackerOptions()
        supervision = _supervision()
        self._sv_detections = supervision.Detections
        self._byte_track = _new_byte_track(supervision, self.options)
        self.frames = 0

    def update(self, detections: Detections) -> TrackedDetections:
        """Associate one frame's detections with the tracks so far.

        Args:
            detections: this frame's ``Detections`` (boxes ``xyxy`` in frame pixels).

        Returns:
            The detections that belong to confirmed tracks, in the input's order (rows as
            given, not smoothed), with their ids. A detection that starts a track is reported
            from the track's second frame; an unmatched low-score detection is left out.

        Raises:
            TypeError: ``detections`` is not a ``Detections``.
        """
        if not isinstance(detections, Detections):
            raise TypeError(f"Tracker.update takes a Detections, got {type(detections).__name__}")
        n = len(detections)
        frame = self._sv_detections(
            xyxy=detections.xyxy.astype(np.float32, copy=False),
            confidence=detections.scores,
            class_id=detections.class_ids,
            data={"row": np.arange(n)},  # where each tracked box came from
        )
        tracked = self._byte_track.update_with_detections(frame)
        self.frames += 1
        if len(tracked) == 0:
            return TrackedDetections.empty(detections.class_names)
        rows = np.asarray(tracked.data["row"], dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        picked = detections[rows[order]]
        return TrackedDetections(picked.xyxy, picked.scores, picked.class_ids,
                                 picked.class_names,
                                 np.asarray(tracked.tracker_id, np.int64)[order])

    @property
    def live_tracks(self) -> int:
        """Tracks not ended yet: those matched recently and those lost for at most
        ``lost_track_buffer`` frames (bounded: ended tracks are dropped)."""
        return len(self._byte_track.tracked_tracks) + len(self._byte_track.lost_tracks)

    def reset(self) -> None:
        """Forget every track (ids start again at 1), e.g. before another video."""
        self._byte_track.reset()
        self.frames = 0

    def __repr__(self) -> str:
        return f"Tracker({self.options}, frames={self.frames}, live_tracks={self.live_tracks})"
