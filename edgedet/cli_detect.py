"""``edgedet detect SOURCE``: run a detector on an image, a folder of images or a video."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgedet.cli_common import (
    IMAGE_SUFFIXES,
    SIGPIPE_STATUS,
    CliError,
    detach_stdout,
    load_detector,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgedet.detections import Detections
    from edgedet.detector import Detector


def _describe(name: str, detections: Detections) -> str:
    boxes = ", ".join(f"{label} {score:.2f} [{' '.join(f'{v:.0f}' for v in box)}]"
                      for (box, score, _), label in zip(detections, detections.labels,
                                                         strict=True))
    return f"{name}: {len(detections)} objects" + (f": {boxes}" if boxes else "")


def _detections_json(name: str, detections: Detections) -> str:
    return json.dumps({"source": name, "detections": [
        {"label": label, "class_id": class_id, "score": round(score, 5),
         "xyxy": [round(float(v), 2) for v in box]}
        for (box, score, class_id), label in zip(detections, detections.labels, strict=True)]})


def cmd_detect(args: argparse.Namespace) -> int:
    """``edgedet detect``: print (and with ``--save`` draw) the detections of every image of
    SOURCE or frame of a video; everything about ``--save`` is checked before the model
    loads. When standard output's reader leaves (``| head -1``), it stops quietly with
    status 141, or with ``--save`` goes on writing the annotated files without printing."""
    source = Path(args.source)
    if not source.exists():
        raise CliError(f"source not found: {source} (give an image, a folder of images or a "
                       "video file)")
    if stat.S_ISFIFO(source.stat().st_mode):  # opening it would wait for a writer, silently
        raise CliError(f"{source} is a named pipe; edgedet detect reads files (a live pipe: "
                       "python apps/webcam.py --source PIPE)")
    if args.max_frames is not None and args.max_frames < 1:
        raise CliError("--max-frames must be >= 1")
    if args.save is not None:
        _check_save(source, args.save)
    detector = load_detector(args)

    reader_gone = False

    def report(name: str, detections: Detections) -> None:
        nonlocal reader_gone
        if reader_gone:
            return
        try:  # flushed per line, so that a reader that left is noticed here
            print(_detections_json(name, detections) if args.json
                  else _describe(name, detections), flush=True)
        except BrokenPipeError:  # e.g. `edgedet detect ... | head -1`
            reader_gone = True
            detach_stdout()
            if not args.save:  # nothing left to do; with --save, the files still get written
                raise _ReaderGoneError from None

    try:
        return _detect_each(args, source, detector, report)
    except _ReaderGoneError:
        return SIGPIPE_STATUS


class _ReaderGoneError(Exception):
    """Standard output's reader closed it and nothing else is being written."""


def _detect_each(args: argparse.Namespace, source: Path, detector: Detector,
                 report: Callable[[str, Detections], None]) -> int:
    """Detect on every image of ``source`` (or frame of its video) and ``report`` each."""
    import cv2

    from edgedet._io import write_bytes_atomic
    from edgedet.draw import draw_detections
    from edgedet.image_io import ImageReadError, read_image
    from edgedet.preprocess import FrameError

    if source.is_dir() or source.suffix.lower() in IMAGE_SUFFIXES:
        images = (sorted(p for p in source.iterdir()
                         if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                  if source.is_dir() else [source])
        if not images:
            raise CliError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {source}")
        skipped = []
        for path in images:
            try:
                frame = read_image(path)
                detections = detector.detect(frame)
            except (ImageReadError, FrameError) as exc:  # unreadable, or unusable (--tiles)
                problem = str(exc) if isinstance(exc, ImageReadError) else f"{path}: {exc}"
                if not source.is_dir():
                    raise CliError(problem) from exc
                # One bad file must not cost the rest of the folder: report it, go on, and
                # fail at the end so that scripts still notice.
                print(f"edgedet detect: skipped: {problem}", file=sys.stderr)
                skipped.append(path)
                continue
            report(path.name, detections)
            if args.save:
                out = args.save / path.name if source.is_dir() else args.save
                drawn = draw_detections(frame, detections)
                try:
                    ok, encoded = cv2.imencode(out.suffix, drawn)
                except cv2.error:
                    ok = False
                if not ok:  # the suffix has a writer (checked before the run): the image
                    raise CliError(f"OpenCV could not encode the {drawn.shape[1]}x"
                                   f"{drawn.shape[0]} result as {out.suffix} for {out} "
                                   "(too large for the format? JPEG takes at most 65500 "
                                   "pixels a side, WebP 16383)")
                try:
                    write_bytes_atomic(out, encoded.tobytes())
                except OSError as exc:  # its message names the temporary file
                    raise CliError(f"cannot write {out}: {exc.strerror or exc}") from exc
        if skipped:
            raise CliError(f"{len(skipped)} of {len(images)} images in {source} were skipped "
                           f"(listed above); the other {len(images) - len(skipped)} were "
                           "processed")
        return 0
    return _detect_video(args, source, detector, report)


def _check_save(source: Path, save: Path) -> None:
    """Refuse a ``--save`` that would overwrite the source or cannot take the output."""
    import cv2

    if save.exists() and os.path.samefile(save, source):  # links and hard links too
        raise CliError(f"--save {save} is the source: the annotated copy would replace it")
    if source.is_dir():
        if save.exists() and not save.is_dir():
            raise CliError(f"--save {save} is a file; a folder of images needs a folder")
    elif save.is_dir():
        raise CliError(f"--save {save} is a folder; give the file to write")
    elif source.suffix.lower() in IMAGE_SUFFIXES and not cv2.haveImageWriter(str(save)):
        raise CliError(f"cannot write an image as {save} (use an extension such as .jpg)")


def _detect_video(args: argparse.Namespace, source: Path, detector: Detector,
                  report: Callable[[str, Detections], None]) -> int:
    """Run ``detector`` on every frame of a video file; ``--save`` writes an annotated copy."""
    import cv2

    from edgedet.draw import draw_detections
    from edgedet.video import (
        AtomicVideoWriter,
        declared_frame_count,
        early_end_problem,
        save_video_problem,
    )

    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise CliError(f"cannot read {source} as an image or a video")
    if args.save and (problem := save_video_problem(args.save, source)):
        capture.release()
        raise CliError(problem)
    reported_fps = capture.get(cv2.CAP_PROP_FPS)  # 0, NaN or thousands from some sources
    fps = reported_fps if 0 < reported_fps < 1000 else 25.0
    declared = declared_frame_count(capture, source)
    writer = AtomicVideoWriter(args.save, fps) if args.save else None
    count = 0
    cut_short: str | None = None
    try:
        while args.max_frames is None or count < args.max_frames:
            ok, frame = capture.read()
            if not ok:
                cut_short = early_end_problem(str(source), count, declared)
                break
            detections = detector.detect(frame)
            report(f"frame_{count:06d}", detections)
            count += 1
            if writer is not None:
                writer.write(draw_detections(frame, detections))
        if count == 0:
            raise CliError(f"no frames could be read from {source}")
        if writer is not None:
            writer.finish()
    finally:
        capture.release()
        if writer is not None:
            writer.discard()  # a no-op once finished; otherwise removes the temporary file
    print(f"{count} frames" + (f", annotated video: {args.save}" if args.save else ""),
          file=sys.stderr)
    if cut_short is not None:
        # The frames read were processed (and saved: a complete video of them), but the run
        # must not pass for a whole one.
        print(f"edgedet detect: error: {cut_short}", file=sys.stderr)
        return 1
    return 0
