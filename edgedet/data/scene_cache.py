"""Synthetic scenes rendered once and kept on disk: ``CachedScenes``.

Rendering a 640x480 scene costs 40-80 ms of CPU, and training renders every image again in
every epoch: at the ~5 images/s of the paper-width PASSD on two cores that is a fifth of one
core spent re-drawing the same pictures. Here each sample is rendered once and stored as one
uncompressed ``.npz`` (image, boxes, class ids, crowd flags; ~0.9 MB at 640x480), which loads
in a few milliseconds (measured 6-7 ms against 81-90 ms to render, on the busy 2-core CPU).

The cache folder's name is a hash of everything a scene depends on: the seed, every
``SyntheticConfig`` field, the generator's source files and the numpy / OpenCV versions. A
changed generator therefore never reads pictures drawn by the old one, and a cached sample is
bit-identical to a rendered one (so training resumes exactly with or without the cache).

Each file is written to a temporary name and renamed into place, so a killed run leaves no
half-written sample; a file that does not load or does not look like a sample of this
configuration is rendered again and replaced (with one warning per dataset).
"""

from __future__ import annotations

import collections.abc
import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample
from edgedet.data.synthetic import IMAGE_EXT, SyntheticScenes

# The modules whose code decides what a scene looks like.
_GENERATOR_SOURCES = ("synthetic.py", "synthetic_backgrounds.py", "synthetic_layout.py",
                      "synthetic_shapes.py")


def generator_fingerprint() -> str:
    """sha256 of the scene generator's source files and the numpy / OpenCV versions."""
    digest = hashlib.sha256()
    for name in _GENERATOR_SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    digest.update(f"numpy {np.__version__} opencv {cv2.__version__}".encode())
    return digest.hexdigest()


class CachedScenes(collections.abc.Sequence[Sample]):
    """``scenes`` (a ``SyntheticScenes``) read from ``cache_root`` where rendered before.

    Samples live in ``cache_root/<seed>-<W>x<H>-<hash>/<index>.npz``; any number of processes
    (data-loader workers, runs) may share one cache.

    Raises:
        DatasetError: the cache folder cannot be created.
    """

    def __init__(self, scenes: SyntheticScenes, cache_root: str | os.PathLike[str]) -> None:
        self.scenes = scenes
        self.class_names = scenes.class_names
        key = json.dumps({"seed": scenes.seed, "config": asdict(scenes.config),
                          "generator": generator_fingerprint()}, sort_keys=True, default=list)
        width, height = scenes.config.image_size
        name = (f"seed{scenes.seed}-{width}x{height}-"
                f"{hashlib.sha256(key.encode()).hexdigest()[:16]}")
        self.directory = Path(cache_root) / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create the synthetic-scene cache {self.directory}: "
                               f"{exc}") from exc
        self._warned = False

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"CachedScenes indices must be integers, got {type(index)}")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} out of range for {len(self)} images")
        path = self.directory / f"{int(index):06d}.npz"
        if path.exists():
            sample = self._load(path, int(index))
            if sample is not None:
                return sample
        sample = self.scenes[int(index)]
        self._store(path, sample)
        return sample

    def _load(self, path: Path, index: int) -> Sample | None:
        """The sample stored at ``path``, or None (with a warning) if it is not one."""
        width, height = self.scenes.config.image_size
        try:
            # Our own handle: np.load leaves the file it opened unclosed when the archive is
            # truncated (a ResourceWarning per bad file).
            with open(path, "rb") as handle, np.load(handle) as stored:
                image = stored["image"]
                # Sample checks that boxes, class ids and crowd flags pair up (ValueError).
                sample = Sample(image=image, boxes_xyxy=stored["boxes_xyxy"],
                                class_ids=stored["class_ids"], image_id=index + 1,
                                file_name=f"{index:06d}{IMAGE_EXT}", iscrowd=stored["iscrowd"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            problem = f"unreadable ({exc.__class__.__name__}: {exc})"
        else:
            classes = len(self.scenes.class_names)
            boxes = sample.boxes_xyxy
            if image.dtype == np.uint8 and image.shape == (height, width, 3) and len(
                    sample.iscrowd) == len(sample.class_ids) and np.isfinite(boxes).all() \
                    and ((sample.class_ids >= 0) & (sample.class_ids < classes)).all():
                return sample
            problem = (f"not a sample of this cache (a {image.dtype} {image.shape} image, "
                       f"want uint8 {(height, width, 3)}; or non-finite boxes or class ids "
                       f"outside 0..{classes - 1})")
        if not self._warned:
            warnings.warn(f"synthetic-scene cache file {path} is {problem}; rendering it "
                          "again (further bad files in this cache are replaced silently)",
                          RuntimeWarning, stacklevel=3)
            self._warned = True
        return None

    def _store(self, path: Path, sample: Sample) -> None:
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        try:
            np.savez(temporary, image=sample.image, boxes_xyxy=sample.boxes_xyxy,
                     class_ids=sample.class_ids, iscrowd=sample.iscrowd)
            os.replace(temporary, path)
        except OSError as exc:  # a full disk must not stop training: the sample is good
            temporary.unlink(missing_ok=True)
            if not self._warned:
                warnings.warn(f"cannot write the synthetic-scene cache file {path}: {exc}",
                              RuntimeWarning, stacklevel=3)
                self._warned = True
