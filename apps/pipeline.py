"""What the camera apps share: their model/source options, the detector (and tracker) they
load, the per-frame detect → track → draw step with its FPS meter and text panel, and
detections as JSON records.

``webcam.py`` (a window, or headless with --save) and ``web_viewer.py`` (a browser page) are
two outputs of the same loop body: ``FrameStep(detector, tracker)(frame)`` returns the
annotated frame, its detections and timings. Capture (sources, the capture thread,
reconnects) is the sibling ``capture.py``.

apps/ is not a package: an app next to this file imports it as ``import pipeline`` (a script's
own folder is on ``sys.path``). Uses only the public edgedet API.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from edgedet import Detections, Detector, FrameError
from edgedet.backends import BACKENDS
from edgedet.draw import draw_detections, draw_text_panel
from edgedet.options import APPLICATION_SCORE_THRESHOLD, MAX_TILES
from edgedet.track import TrackedDetections, Tracker, TrackerOptions

# isort: split
# A sibling module, not a package: run as a script, the app's folder is on sys.path.
from capture import ImageFolderSource, log

DEFAULT_MODEL = "passd_mobilenet_int8"
SOURCE_HELP = ("0 (camera index), csi://0 (Jetson CSI camera; optionally "
               "?width=1280&height=720&fps=30&flip=0), a video file, rtsp://... / http://... "
               "stream, a FIFO (path or file:// URL), a folder of images, or 'demo' (default: "
               "camera 0, else the demo video)")


class FpsMeter:
    """Frames per second over the last ``window`` frames."""

    def __init__(self, window: int = 30) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=window)

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both apps take: --source, --model, --backend, --device, --allow-unchecked,
    --score-threshold, --double-scale, --tiles, --track and --max-frames."""
    parser.add_argument("--source", default=None, help=SOURCE_HELP)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="zoo model name or artifact directory (default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                        help="inference runtime (default: the artifact's own)")
    parser.add_argument("--device", default=None,
                        help="where the runtime runs the model, e.g. GPU or NPU for OpenVINO, "
                        "cuda or tensorrt for ONNX Runtime (default: its CPU)")
    parser.add_argument("--allow-unchecked", action="store_true",
                        help="run an artifact whose accuracy check failed or never ran "
                        "(refused by default)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="minimum score to draw (default: the manifest's application "
                        f"threshold, {APPLICATION_SCORE_THRESHOLD} for every zoo model; the "
                        "low one AP was measured with is its evaluation setting)")
    parser.add_argument("--double-scale", action="store_true",
                        help="HAR-Net's double-scale testing: each frame also runs at 2x input "
                        "and the outputs are merged (better on small objects; the 2x run has "
                        "4x the pixels, so frames take about 4-6x as long; "
                        "artifacts converted with quantize/run.py --double-scale)")
    parser.add_argument("--tiles", type=int, default=1, metavar="N",
                        help="tiled inference for small objects: each frame also runs as an "
                        "N x N grid of overlapping crops (N*N+1 model runs per frame; 2 finds "
                        "about twice the objects of the demo video; default: 1, off)")
    parser.add_argument("--track", action="store_true",
                        help="give each object an id that follows it from frame to frame "
                        "(ByteTrack; needs pip install 'edgedet[track]'); only tracked objects "
                        "are drawn, each from its second frame")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (exit status 2) for values argparse cannot check itself."""
    if args.source == "":  # a path would read it as the current folder
        parser.error("--source is empty; give a camera index, a file, a folder, a URL or demo")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be >= 1")
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:
        parser.error(f"--score-threshold must be from 0 to 1, got {args.score_threshold}")
    if not 1 <= args.tiles <= MAX_TILES:
        parser.error(f"--tiles must be from 1 to {MAX_TILES}, got {args.tiles}")


def load_detector(args: argparse.Namespace) -> Detector:
    """The detector the options name.

    Raises:
        ValueError, RuntimeError, OSError: a bad model, artifact or backend (one-line
            messages, for the app to print).
    """
    overrides: dict[str, object] = (
        {} if args.score_threshold is None else {"score_threshold": args.score_threshold})
    if getattr(args, "double_scale", False):
        overrides["double_scale"] = True
    if getattr(args, "tiles", 1) > 1:
        overrides["tiles"] = args.tiles
    return Detector(args.model, backend=args.backend, device=args.device,
                    allow_unchecked=args.allow_unchecked, **overrides)


def make_tracker(args: argparse.Namespace) -> Tracker | None:
    """A tracker with the default ByteTrack settings when --track is given, else None.

    Raises:
        ImportError: the ``track`` extra is missing (the message says what to install).
    """
    return Tracker(TrackerOptions()) if args.track else None


def panel_lines(detector: Detector, fps: float, detections: Detections) -> list[str]:
    """The text panel drawn on every frame: model and runtime, FPS, what is in view."""
    tracked = " tracked" if isinstance(detections, TrackedDetections) else ""
    return [f"{detector.name} ({detector.backend_name})", f"{fps:.1f} FPS",
            f"{len(detections)}{tracked} objects"]


def detection_records(detections: Detections) -> list[dict[str, Any]]:
    """JSON-ready detections: label, class id, score, ``box_xyxy`` (frame pixels), and
    ``track_id`` when tracking."""
    track_ids = (detections.track_ids.tolist() if isinstance(detections, TrackedDetections)
                 else [None] * len(detections))
    return [{"label": label, "class_id": int(class_id), "score": round(float(score), 4),
             "box_xyxy": [round(float(v), 1) for v in box],
             **({} if track_id is None else {"track_id": int(track_id)})}
            for (box, score, class_id), label, track_id
            in zip(detections, detections.labels, track_ids, strict=True)]


@dataclass(frozen=True)
class FrameResult:
    """One processed frame.

    Attributes:
        canvas: the BGR ``uint8 (H, W, 3)`` frame with boxes, labels (and track ids) and the
            text panel drawn.
        detections: boxes ``xyxy`` in the frame's pixels; ``TrackedDetections`` (with
            ``track_ids``) when tracking.
        detect_s: seconds spent detecting (and tracking) this frame.
        fps: frames per second over the last frames (``FpsMeter``).
    """

    canvas: np.ndarray
    detections: Detections
    detect_s: float
    fps: float


class FrameStep:
    """The loop body of both apps: detect, track (when a tracker is given), draw.

    Not thread-safe: one loop calls it (the tracker and the FPS meter keep per-stream state).
    """

    def __init__(self, detector: Detector, tracker: Tracker | None = None) -> None:
        self.detector = detector
        self.tracker = tracker
        self._fps = FpsMeter()

    def __call__(self, frame: np.ndarray) -> FrameResult:
        started = time.perf_counter()
        detections: Detections = self.detector.detect(frame)
        track_ids = None
        if self.tracker is not None:
            tracked = self.tracker.update(detections)
            detections, track_ids = tracked, tracked.track_ids
        detect_s = time.perf_counter() - started
        fps = self._fps.tick()
        canvas = draw_text_panel(draw_detections(frame, detections, track_ids=track_ids),
                                 panel_lines(self.detector, fps, detections))
        return FrameResult(canvas, detections, detect_s, fps)

    def reset(self) -> None:
        """Start a new stream (e.g. a video played again): the tracker forgets its tracks."""
        if self.tracker is not None:
            self.tracker.reset()


def skip_unusable_image(source: object, frame: np.ndarray, error: FrameError) -> None:
    """Log and go on past an image of a folder the model cannot take (smaller than --tiles
    needs), as ``edgedet detect`` does: the folder's other images may be fine. From any other
    source ``error`` is raised again (a camera's or video's frames all have one size)."""
    if not isinstance(source, ImageFolderSource) or source.count < 2:
        raise error
    height, width = frame.shape[:2]
    log(f"skipping a {width}x{height} image of {source.description}: {error}")


def interruptible(app: Callable[[], int]) -> int:
    """``app()``'s exit status, or 130 for a Ctrl-C that comes before the app's own handling
    (while it loads the model or renders the demo)."""
    try:
        return app()
    except KeyboardInterrupt:
        log("interrupted")
        return 130


def run_as_script(main: Callable[[], int]) -> NoReturn:
    """An app's ``if __name__ == "__main__"``: exit with ``main()``'s status."""
    # A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored:
    # `kill -INT` from a supervisor would be lost. SIGINT always means "stop (and save)", and
    # so does SIGTERM (`kill`, `timeout`, a service manager): by default it would end the
    # process at once and leave the recording as a hidden temporary file.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
