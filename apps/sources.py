"""What ``--source`` names, opened as one of capture's frame sources.

``open_source(spec)`` turns a spec into a ``capture.FrameSource``: a camera index, a Jetson CSI
camera (``csi://N``), an RTSP/HTTP stream URL, a video file, a named pipe (FIFO) given as a path
or a ``file://`` URL, a folder of images (or one image), or the built-in demo video (rendered
once into the cache). With no source given, camera 0 is used if it delivers a frame, else the
demo video.

A CSI camera is read through GStreamer (``nvarguscamerasrc``, the Argus camera stack and ISP),
which OpenCV opens with ``cv2.CAP_GSTREAMER``: it needs an OpenCV built with GStreamer, such as
JetPack's (pip's opencv-python wheels have none). ``csi://0?width=1920&height=1080&fps=30&flip=0``
asks for a size, a frame rate and a flip or rotation (``CSI_RANGES``; unset: 1280x720 at 30 fps,
not flipped).

The frame sources, the settings (timeouts, the demo video's length) and ``SourceError`` live in
``capture.py``, which re-exports this module's names: an app imports ``capture`` only. This
module uses them as ``capture.NAME`` when called, so that what an app or a test sets on
``capture`` (a constant, ``log``, a stand-in ``LiveSource``) holds here too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import urllib.parse
import urllib.request
from pathlib import Path

import cv2

# The query parameters of csi://N and the values each accepts (the defaults: CsiCamera's).
# flip is nvvidconv's flip-method: 0 none, 1 rotate 90° counter-clockwise, 2 rotate 180°,
# 3 rotate 90° clockwise, 4 flip horizontally, 5 flip across the upper-right diagonal,
# 6 flip vertically, 7 flip across the upper-left diagonal.
CSI_RANGES: dict[str, tuple[int, int]] = {
    "width": (1, 8192),
    "height": (1, 8192),
    "fps": (1, 240),
    "flip": (0, 7),
}
CSI_SENSOR_IDS = (0, 255)  # nvarguscamerasrc's sensor-id range
CSI_USAGE = ("csi://N (N: the sensor id, 0 for the first camera), optionally followed by "
             "?width=W&height=H&fps=F&flip=M")


@dataclasses.dataclass(frozen=True)
class CsiCamera:
    """A Jetson CSI camera (``sensor_id``) and the frames asked of it."""

    sensor_id: int = 0
    width: int = 1280
    height: int = 720
    fps: int = 30
    flip: int = 0  # nvvidconv's flip-method (see CSI_RANGES)

    def __str__(self) -> str:
        flip = f", flip-method {self.flip}" if self.flip else ""
        return f"CSI camera {self.sensor_id} ({self.width}x{self.height} at {self.fps} fps{flip})"

    def pipeline(self) -> str:
        """The GStreamer pipeline that OpenCV opens (``cv2.CAP_GSTREAMER``) for this camera."""
        return " ! ".join([
            # The sensor through libargus and the ISP (debayering, exposure, white balance).
            f"nvarguscamerasrc sensor-id={self.sensor_id}",
            # The size and rate asked of it (Argus picks the sensor mode), as NV12 in NVMM
            # memory: DMA buffers that the hardware units share without a CPU copy.
            f"video/x-raw(memory:NVMM), width={self.width}, height={self.height}, "
            f"framerate={self.fps}/1, format=NV12",
            # The hardware converter (VIC): flips or rotates (for a 90° rotation it swaps the
            # output's width and height itself) and writes BGRx into CPU memory; it cannot
            # write 3-byte BGR.
            f"nvvidconv flip-method={self.flip}",
            "video/x-raw, format=BGRx",
            # BGRx to BGR, OpenCV's layout (on the CPU).
            "videoconvert",
            "video/x-raw, format=BGR",
            # Hands the frames to OpenCV, keeping only the newest (drop, max-buffers=1): a
            # reader that falls behind gets the latest frame, not a backlog.
            "appsink drop=true max-buffers=1",
        ])


def _csi_int(spec: str, name: str, text: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise capture.SourceError(f"source {spec!r}: {name} must be an integer from {low} to "
                                  f"{high}, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise capture.SourceError(f"source {spec!r}: {name} must be from {low} to {high}, "
                                  f"got {value}")
    return value


def parse_csi(spec: str) -> CsiCamera:
    """``csi://N[?width=W&height=H&fps=F&flip=M]`` as a CsiCamera.

    Raises:
        SourceError: not of that form, an unknown or repeated parameter, or a value that is not
            an integer or out of its range (``CSI_RANGES``); the message names it.
    """
    try:
        parts = urllib.parse.urlsplit(spec)
    except ValueError:  # e.g. an unclosed "[" in the host part
        parts = None
    if (parts is None or parts.scheme != "csi" or not parts.netloc or parts.path
            or parts.fragment):
        raise capture.SourceError(f"source {spec!r}: give a CSI camera as {CSI_USAGE}")
    sensor_id = _csi_int(spec, "the sensor id", parts.netloc, *CSI_SENSOR_IDS)
    values: dict[str, int] = {}
    for name, text in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name not in CSI_RANGES:
            raise capture.SourceError(f"source {spec!r}: unknown parameter {name!r} (known: "
                                      f"{', '.join(CSI_RANGES)})")
        if name in values:
            raise capture.SourceError(f"source {spec!r}: parameter {name!r} given twice")
        values[name] = _csi_int(spec, name, text, *CSI_RANGES[name])
    return CsiCamera(sensor_id, **values)


def gstreamer_available() -> bool:
    """Whether this OpenCV was built with GStreamer ("GStreamer: YES" in its build info)."""
    return re.search(r"^\s*GStreamer:\s*YES\b", cv2.getBuildInformation(), re.MULTILINE) is not None


def open_csi_camera(spec: str) -> capture.FrameSource:
    """A Jetson CSI camera (``csi://N?...``, see ``parse_csi``): a live source, reconnected
    like a stream.

    Raises:
        SourceError: a bad spec, an OpenCV without GStreamer, or a camera that does not open.
    """
    camera = parse_csi(spec)
    if not gstreamer_available():
        raise capture.SourceError(
            f"source {spec!r}: a CSI camera is read through GStreamer, and this OpenCV "
            f"({cv2.__version__}) was built without it, as pip's opencv-python wheels are. On a "
            "Jetson, JetPack's OpenCV (python3-opencv) has it: use a venv made with "
            "`python3 -m venv --system-site-packages`, without opencv-python(-headless) "
            "installed in it, so that `import cv2` finds JetPack's")
    try:
        return capture.LiveSource(camera.pipeline(), "CSI camera", description=str(camera))
    except capture.SourceError as exc:
        raise capture.SourceError(
            f"{exc}. Check the camera alone: gst-launch-1.0 nvarguscamerasrc "
            f"sensor-id={camera.sensor_id} num-buffers=30 ! fakesink (it prints the "
            "sensor's modes: one must offer that frame rate at that size or larger)") from None


def cache_dir() -> Path:
    """``$EDGEDET_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgedet``, else ``~/.cache/edgedet``."""
    if os.environ.get("EDGEDET_CACHE_DIR"):
        return Path(os.environ["EDGEDET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgedet"


def demo_video_path() -> Path:
    """Where the built-in demo video is cached (it may not be rendered yet)."""
    return cache_dir() / f"demo_seed{capture.DEMO_SEED}_{capture.DEMO_FRAMES}frames.mp4"


def _cached_frame_count(path: Path) -> int | None:
    """The frames ``path``'s index declares; None where it is missing or unreadable."""
    if not path.is_file():
        return None
    with capture.quiet_opencv():
        video = cv2.VideoCapture(str(path))
        try:
            return capture.declared_frame_count(video, path) if video.isOpened() else None
        finally:
            video.release()


def demo_video() -> Path:
    """The built-in demo video, rendered into the cache on first use (and again when the
    cached file is not the whole demo: cut short, corrupt or replaced)."""
    frames, seed = capture.DEMO_FRAMES, capture.DEMO_SEED
    path = demo_video_path()
    if _cached_frame_count(path) != frames:
        what = "again: the cached copy is not the whole demo" if path.exists() else "once"
        capture.log(f"rendering the demo video {what} ({frames} frames) into {path}")
        capture.render_synthetic_video(path, num_frames=frames, seed=seed, fps=capture.DEMO_FPS,
                                       progress=False)
    return path


def open_camera_or_demo() -> capture.FrameSource:
    """Camera 0 if one opens and delivers a frame; otherwise the demo video."""
    # OpenCV logs a warning per backend it tries for a missing camera; the fallback says it all.
    try:
        with capture.quiet_opencv():
            camera = capture.LiveSource(0, "camera")
    except capture.SourceError:
        camera = None
    if camera is not None:
        return camera
    capture.log("no camera found: running on the built-in demo video")
    return capture.VideoFileSource(demo_video(), "the demo video")


def file_url_path(url: str) -> Path:
    """The local path of a ``file:`` URL (``file:///tmp/cam.fifo``, ``file://localhost/...``);
    SourceError if it names another host."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise capture.SourceError(f"{url!r} names host {parts.netloc!r}: only local file:// "
                                  "URLs (file:///path) are supported")
    return Path(urllib.request.url2pathname(parts.path))


def local_source_path(spec: str | None) -> Path | None:
    """The local file or folder a ``--source`` names (a path, a ``file:`` URL, the cached
    demo video for ``demo`` or no source), or None for a camera, a stream or a ``file:`` URL
    of another host."""
    if not spec or spec == "demo":  # no source: the demo where no camera opens
        return demo_video_path()
    if spec.isdigit() or spec.lower().startswith("csi:"):
        return None
    if spec.lower().startswith("file:"):
        try:
            return file_url_path(spec)
        except capture.SourceError:  # open_source reports it
            return None
    return None if "://" in spec else Path(spec)


def open_source(spec: str | None) -> capture.FrameSource:
    """``--source``: None (camera 0, else demo), ``demo``, a camera index, a CSI camera
    (``csi://N?...``), a stream URL, a folder of images, an image, a video file or a FIFO (a
    path or a ``file://`` URL).

    Raises:
        SourceError: the source does not exist or cannot be opened.
    """
    if spec is None:
        return open_camera_or_demo()
    if spec == "demo":
        return capture.VideoFileSource(demo_video(), "the demo video")
    if spec.isdigit():
        return capture.LiveSource(int(spec), "camera")
    if spec.lower().startswith("csi:"):
        return open_csi_camera(spec)
    if spec.lower().startswith("file:"):
        path = file_url_path(spec)
    elif "://" in spec:
        return capture.LiveSource(spec, "stream")
    else:
        path = Path(spec)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise capture.SourceError(
            f"source {spec!r} not found: give a camera index (0), a Jetson CSI camera "
            "(csi://0), a stream URL (rtsp://...), a video file, a FIFO, a folder of images, "
            "or 'demo'") from None
    except OSError as exc:
        raise capture.SourceError(f"cannot access source {spec!r}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        images = sorted(p for p in path.iterdir()
                        if p.suffix.lower() in capture.IMAGE_SUFFIXES and p.is_file())
        return capture.ImageFolderSource(images, f"folder {path}")
    if stat.S_ISFIFO(mode):  # a live feed: another process writes video into the pipe
        return capture.LiveSource(str(path), "FIFO")
    if not stat.S_ISREG(mode):
        raise capture.SourceError(f"source {spec!r} is not a video file, image, folder or FIFO "
                                  "(a camera is given by its index, e.g. 0)")
    if path.suffix.lower() in capture.IMAGE_SUFFIXES:
        return capture.ImageFolderSource([path], f"image {path}")
    return capture.VideoFileSource(path, f"video {path}")


# isort: split
# Imported last: capture imports this module (for its re-exports) while it loads, and with
# every name above already defined either module can be imported first.
import capture  # noqa: E402
