"""edgedet.track: ids that stay with their objects on a synthetic video with known trajectories."""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from edgedet.detections import Detections
from edgedet.track import TrackedDetections, Tracker, TrackerOptions

needs_track_extra = pytest.mark.skipif(importlib.util.find_spec("supervision") is None,
                                       reason="the 'track' extra (supervision) is not installed")

FRAME_W, FRAME_H = 640, 480
NUM_FRAMES = 80
CLASSES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Mover:
    """A box moving on a straight line, present from ``start`` to ``end`` (exclusive) while
    some of it is inside the frame."""

    start: int
    end: int
    x: float  # top-left corner at ``start``
    y: float
    vx: float  # pixels per frame
    vy: float
    w: float
    h: float
    class_id: int

    def box(self, frame: int) -> np.ndarray | None:
        """``x1, y1, x2, y2`` clipped to the frame, or None when absent or out of sight."""
        if not self.start <= frame < self.end:
            return None
        t = frame - self.start
        x1, y1 = self.x + self.vx * t, self.y + self.vy * t
        box = np.clip([x1, y1, x1 + self.w, y1 + self.h], 0, [FRAME_W, FRAME_H] * 2)
        if box[2] - box[0] < 8 or box[3] - box[1] < 8:  # (almost) left the frame
            return None
        return box


MOVERS = {
    # A and B cross head-on (their boxes overlap almost fully around frame 34).
    "A": Mover(0, NUM_FRAMES, 20, 100, 8, 0, 60, 60, 0),
    "B": Mover(0, NUM_FRAMES, 560, 110, -8, 0, 60, 60, 1),
    # C appears at frame 10 at the top and crosses A and B's lane.
    "C": Mover(10, NUM_FRAMES, 300, 0, 1, 5, 50, 70, 2),
    # D leaves through the right edge (its box shrinks as it goes; out of sight from frame 22).
    "D": Mover(0, NUM_FRAMES, 480, 300, 7, 1, 80, 50, 0),
    # E appears at frame 30 after D left, and is gone (not detected) from frame 60.
    "E": Mover(30, 60, 10, 360, 9, -1, 70, 60, 1),
}
# Frames in which an object is not detected (a missed detection: its track must survive).
MISSED = {("A", 20), ("B", 40), ("B", 41), ("C", 50)}
EMPTY_TAIL = 40  # frames with nothing in them after the video: every track must end


def synthetic_video(seed: int = 0) -> list[tuple[Detections, list[str]]]:
    """Per frame: the detections (jittered boxes, noisy scores, shuffled, plus a low-score
    false positive now and then) and, per row, the ground-truth object ("" for noise)."""
    rng = np.random.default_rng(seed)
    frames = []
    for frame in range(NUM_FRAMES):
        boxes, scores, class_ids, names = [], [], [], []
        for name, mover in MOVERS.items():
            box = mover.box(frame)
            if box is None or (name, frame) in MISSED:
                continue
            boxes.append(box + rng.normal(0, 1.5, 4))
            scores.append(rng.uniform(0.45, 0.95))
            class_ids.append(mover.class_id)
            names.append(name)
        if frame % 7 == 3:  # a one-frame false positive somewhere else
            x, y = rng.uniform(0, FRAME_W - 40), rng.uniform(0, FRAME_H - 40)
            boxes.append(np.array([x, y, x + 30, y + 30]))
            scores.append(rng.uniform(0.3, 0.5))
            class_ids.append(2)
            names.append("")
        order = rng.permutation(len(boxes))  # detectors sort by score, not by object
        detections = Detections(np.array(boxes, np.float32).reshape(-1, 4),
                                np.array(scores, np.float32), np.array(class_ids), CLASSES)
        frames.append((detections[order], [names[i] for i in order]))
    return frames


def ground_truth_of(tracked: TrackedDetections, detections: Detections,
                    names: list[str]) -> list[str]:
    """The object behind each tracked row (tracked rows are input rows, unchanged)."""
    result = []
    for box in tracked.xyxy:
        (row,) = np.flatnonzero(np.all(detections.xyxy == box, axis=1))
        result.append(names[row])
    return result


def run_tracker(tracker: Tracker, seed: int = 0
                ) -> tuple[dict[str, list[tuple[int, int]]], dict[int, set[str]]]:
    """Tracks the synthetic video: per object, (frame, track id) where it was reported; per
    track id, the objects it was given to."""
    ids_of: dict[str, list[tuple[int, int]]] = {name: [] for name in MOVERS}
    objects_of: dict[int, set[str]] = {}
    for frame, (detections, names) in enumerate(synthetic_video(seed)):
        tracked = tracker.update(detections)
        assert isinstance(tracked, TrackedDetections)
        assert tracked.class_names == CLASSES
        for name, track_id in zip(ground_truth_of(tracked, detections, names),
                                  tracked.track_ids.tolist(), strict=True):
            objects_of.setdefault(track_id, set()).add(name)
            if name:
                ids_of[name].append((frame, track_id))
    return ids_of, objects_of


def count_id_switches(ids_of: dict[str, list[tuple[int, int]]]) -> int:
    """Times an object's track id differs from the one it had when last reported."""
    return sum(sum(a[1] != b[1] for a, b in itertools.pairwise(seq)) for seq in ids_of.values())


@needs_track_extra
@pytest.mark.parametrize("seed", range(5))
def test_ids_stay_with_their_objects_through_crossings_and_missed_frames(seed: int) -> None:
    tracker = Tracker(TrackerOptions())
    ids_of, objects_of = run_tracker(tracker, seed)
    # The crossings and missed frames cost no switch; D's exit through the frame's edge (a box
    # that shrinks under the Kalman filter's prediction) sometimes does: 0 or 1 per sequence.
    switches = count_id_switches(ids_of)
    assert switches <= 1, {name: sorted({i for _, i in seq}) for name, seq in ids_of.items()}
    # No id is shared by two objects, and the one-frame false positives get no track at all.
    assert all(len(names) == 1 for names in objects_of.values()), objects_of
    assert not any("" in names for names in objects_of.values())
    # Every object is reported on nearly every frame it is detected (a new track is confirmed
    # on its second frame; boxes cut by the frame's edge are the hard part).
    for name, mover in MOVERS.items():
        detected = sum(mover.box(f) is not None and (name, f) not in MISSED
                       for f in range(NUM_FRAMES))
        assert len(ids_of[name]) >= 0.8 * detected, (name, len(ids_of[name]), detected)


@needs_track_extra
def test_tracks_end_when_objects_leave_and_ids_are_never_reused() -> None:
    options = TrackerOptions(lost_track_buffer=10)
    tracker = Tracker(options)
    ids_of, _ = run_tracker(tracker)
    last_frame = {name: max(f for f, _ in seq) for name, seq in ids_of.items()}
    # D leaves through the right edge, E stops being detected at frame 60: their ids are gone.
    assert last_frame["D"] < 22 and last_frame["E"] == 59
    ids_after = {i for name in ("A", "B", "C") for f, i in ids_of[name] if f > 60}
    assert not ids_after & {i for _, i in ids_of["D"] + ids_of["E"]}
    # E entered after D left: it got a new id, not D's.
    assert not {i for _, i in ids_of["E"]} & {i for _, i in ids_of["D"]}
    # After the video, nothing is detected: every track ends within the lost-track buffer.
    assert tracker.live_tracks >= 3
    empty = Detections.empty(CLASSES)
    for _ in range(options.lost_track_buffer + 2):
        assert len(tracker.update(empty)) == 0
    assert tracker.live_tracks == 0
    tracker.reset()
    assert tracker.frames == 0 and tracker.live_tracks == 0


def test_tracked_detections_index_with_their_ids() -> None:
    tracked = TrackedDetections([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4]], [0.9, 0.5, 0.7],
                                [0, 1, 2], CLASSES, [7, 3, 9])
    assert tracked[tracked.scores > 0.6].track_ids.tolist() == [7, 9]
    assert tracked[1].track_ids.tolist() == [3] and tracked[[2, 0]].track_ids.tolist() == [9, 7]
    nothing = tracked[[]]  # an empty selection, as for Detections
    assert len(nothing) == 0 and nothing.track_ids.shape == (0,)
    assert tracked.sorted_by_score().track_ids.tolist() == [7, 9, 3]
    assert len(TrackedDetections.empty(CLASSES)) == 0
    assert isinstance(tracked, Detections)  # drawing, JSON and the apps take either


@needs_track_extra
def test_bad_input_gives_clear_errors() -> None:
    tracker = Tracker()
    with pytest.raises(TypeError, match="takes a Detections"):
        tracker.update(np.zeros((1, 4)))
    with pytest.raises(TypeError, match="TrackerOptions"):
        Tracker({"lost_track_buffer": 5})
    with pytest.raises(ValueError, match="activation_threshold"):
        TrackerOptions(activation_threshold=1.5)
    with pytest.raises(ValueError, match=r"a new track needs a score of at least it \+ 0.1"):
        TrackerOptions(activation_threshold=0.9)  # tracked nothing, silently
    for bad in ("0.5", None, True):
        with pytest.raises(ValueError, match="activation_threshold must be a number"):
            TrackerOptions(activation_threshold=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lost_track_buffer"):
        TrackerOptions(lost_track_buffer=-1)
    with pytest.raises(ValueError, match="min_consecutive_frames must be an integer"):
        TrackerOptions(min_consecutive_frames=1.5)
    with pytest.raises(ValueError, match="2 boxes but 1 track ids"):
        TrackedDetections([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5, 0.5], [0, 0], (), [1])
    with pytest.raises(ValueError, match="repeat an id"):
        TrackedDetections([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5, 0.5], [0, 0], (), [4, 4])
    with pytest.raises(ValueError, match="must be integers"):
        TrackedDetections([[0, 0, 1, 1]], [0.5], [0], (), [1.5])


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "supervision", None)  # import supervision → ImportError
    with pytest.raises(ImportError, match=r"pip install 'edgedet\[track\]'"):
        Tracker()


def test_the_sdk_imports_without_the_tracker_package() -> None:
    # edgedet.track and edgedet.draw load supervision only when a Tracker is made.
    code = ("import sys; import edgedet, edgedet.track, edgedet.draw; "
            "assert 'supervision' not in sys.modules, 'supervision imported eagerly'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
