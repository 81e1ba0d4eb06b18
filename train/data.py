"""Training and evaluation data: datasets from ``--data``, augmentation, batching, seeding.

A training item is ``(image FloatTensor[3, H, W], target)`` with ``target = {"boxes_xyxy":
FloatTensor[G, 4] in model-input pixels, "labels": LongTensor[G]}``; images are resized and
normalised by ``edgedet.preprocess.preprocess`` itself, so training sees exactly what the
runtime feeds the model. Crowd / difficult boxes are left out of the training targets.

An evaluation item is ``(image, EvalRecord)``: the record carries what is needed to map
detections back to the original image and the ground truth for COCO evaluation.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from edgedet.data.annotated import AnnotatedImageDataset
from edgedet.data.coco import CocoDataset
from edgedet.data.datasets import open_dataset
from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample
from edgedet.data.scene_cache import CachedScenes
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import PreprocessConfig, preprocess
from train.augment import RetinaAugmentation, SsdAugmentation, drop_small_boxes
from train.graceful_stop import ignore_stop_signals

Augmentation = SsdAugmentation | RetinaAugmentation

# Boxes narrower or lower than this many input pixels after augmentation are not targets:
# nothing of them is left to see.
MIN_TARGET_SIZE = 1.0


@dataclass
class DataSplits:
    """The training and validation samples of one ``--data`` spec."""

    train: Sequence[Sample]
    val: Sequence[Sample]
    class_names: tuple[str, ...]
    description: str


def _coco_split(root: Path, split: str) -> CocoDataset | None:
    """A COCO split in ``root/<split>/annotations.json`` (edgedet's layout) or in the official
    layout ``root/annotations/instances_<split>.json`` + ``root/<split>/``."""
    if (root / split / "annotations.json").is_file():
        return CocoDataset(root / split)
    official = root / "annotations" / f"instances_{split}.json"
    if official.is_file():
        return CocoDataset(official, image_dir=root / split)
    return None


# Synthetic images per split when none are asked for (train/main.py --synthetic-train / -val).
SYNTHETIC_TRAIN, SYNTHETIC_VAL = 2000, 200


def open_splits(
    data: str,
    *,
    img_size: tuple[int, int],
    synthetic_train: int = SYNTHETIC_TRAIN,
    synthetic_val: int = SYNTHETIC_VAL,
    synthetic_seed: int = 0,
    synthetic_config: SyntheticConfig | None = None,
    synthetic_cache: str | None = None,
    train_split: str | None = None,
    val_split: str | None = None,
    val_data: str | None = None,
) -> DataSplits:
    """Open the train and val samples named by ``--data``.

    ``synthetic``: train = ``SyntheticScenes(synthetic_train, seed=synthetic_seed)``, val =
    ``SyntheticScenes(synthetic_val, seed=synthetic_seed + 1)``, images of ``img_size``;
    with ``synthetic_cache`` (a folder) each scene is rendered once and read from there after
    (``edgedet.data.scene_cache``: the same samples, a few ms each instead of 40-90 ms).
    ``coco:PATH``: ``PATH/<split>/annotations.json`` or ``PATH/annotations/instances_<split>
    .json`` with splits ``train``/``val`` (``train2017``/``val2017`` tried too), or a single
    annotations file / folder for training with ``val_data`` naming the validation set.
    ``voc:PATH``: splits ``trainval`` / ``test``. ``yolo:PATH``: splits ``train`` / ``val``.
    ``val_data`` (any ``SCHEME:PATH``) always overrides the validation set.
    """
    scheme, _, path = data.partition(":")
    train: Sequence[Sample] | None = None
    val: Sequence[Sample] | None = None
    if data == "synthetic":
        config = synthetic_config or SyntheticConfig(image_size=tuple(img_size))
        train = SyntheticScenes(synthetic_train, seed=synthetic_seed, config=config)
        val = SyntheticScenes(synthetic_val, seed=synthetic_seed + 1, config=config)
        if synthetic_cache is not None:
            train, val = CachedScenes(train, synthetic_cache), CachedScenes(val, synthetic_cache)
        description = (f"synthetic: {synthetic_train} train images (seed {synthetic_seed}), "
                       f"{synthetic_val} val images (seed {synthetic_seed + 1}), "
                       f"{config.image_size[0]}x{config.image_size[1]}")
    elif scheme == "coco":
        root = Path(path)
        if root.is_dir():
            for train_name, val_name in ((train_split or "train", val_split or "val"),
                                         ("train2017", "val2017")):
                train = _coco_split(root, train_name)
                val = _coco_split(root, val_name)
                if train is not None:
                    break
        if train is None:
            train = open_dataset(data)
        if val is None and val_data is None:
            raise DatasetError(
                f"{data}: no validation split found (looked for {root}/val/annotations.json "
                f"and {root}/annotations/instances_val.json); name one with --val-data")
        description = f"{data} ({len(train)} train images)"
    elif scheme in ("voc", "yolo"):
        default_train, default_val = ("trainval", "test") if scheme == "voc" else ("train",
                                                                                    "val")
        train = open_dataset(data, split=train_split or default_train)
        val = None if val_data else open_dataset(data, split=val_split or default_val)
        description = f"{data} ({len(train)} train images)"
    else:
        raise DatasetError(f"--data {data!r}: expected synthetic, coco:PATH, voc:PATH or "
                           "yolo:PATH")
    if val_data is not None:
        val = open_dataset(val_data, split=val_split if not val_data.startswith("coco:")
                           else None)
    for split, samples in (("training", train), ("validation", val)):
        if isinstance(samples, AnnotatedImageDataset) and samples.num_objects == 0:
            raise DatasetError(f"{samples.source}: the {split} images hold no annotated object "
                               "(nothing to learn from or to measure)")
    if tuple(val.class_names) != tuple(train.class_names):
        raise DatasetError(f"training classes {train.class_names} differ from validation "
                           f"classes {val.class_names}")
    return DataSplits(train, val, tuple(train.class_names),
                      f"{description}, {len(val)} val images")


def build_augmentation(kind: str, config: PreprocessConfig) -> Augmentation | None:
    """``"ssd"``, ``"retinanet"`` or ``"none"`` augmentation for inputs under ``config``."""
    if kind == "none":
        return None
    if kind == "ssd":
        mean = config.mean if config.color_order == "bgr" else config.mean[::-1]
        return SsdAugmentation(fill_bgr=tuple(float(v) for v in mean))
    if kind == "retinanet":
        return RetinaAugmentation(input_size=tuple(config.input_size),
                                  pad_value=config.pad_value,
                                  interpolation=config.interpolation)
    raise ValueError(f"unknown augmentation {kind!r} (ssd, retinanet or none)")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample in one epoch (independent of workers)."""
    return np.random.default_rng([seed, epoch, index])


class TrainingDataset(Dataset):
    """Samples → augmented, preprocessed training items (see the module docstring).

    ``set_epoch(e)`` must be called before each epoch's iterator is created; workers that
    are started afterwards copy it (the loader is not persistent for this reason).
    """

    def __init__(self, samples: Sequence[Sample], config: PreprocessConfig,
                 augmentation: Augmentation | None, seed: int) -> None:
        self.samples = samples
        self.config = config
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        keep = ~sample.iscrowd
        image, boxes, labels = sample.image, sample.boxes_xyxy[keep], sample.class_ids[keep]
        if self.augmentation is not None:
            image, boxes, labels = self.augmentation(
                image, boxes, labels, sample_rng(self.seed, self.epoch, int(index)))
        tensor, transform = preprocess(image, self.config)
        boxes = transform.boxes_to_input(boxes)
        width, height = self.config.input_size
        boxes = np.clip(boxes, 0, np.array([width, height, width, height], dtype=np.float32))
        boxes, labels = drop_small_boxes(boxes, labels, MIN_TARGET_SIZE)
        target = {
            "boxes_xyxy": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        }
        return torch.from_numpy(tensor[0]), target


@dataclass
class EvalRecord:
    """One validation image's bookkeeping (frame geometry and ground truth, frame pixels)."""

    image_id: int
    width: int
    height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray | None = None  # the file's object areas (``Sample.areas``)


class EvalDataset(Dataset):
    """Samples → ``(preprocessed image (3, H, W), EvalRecord)``, no augmentation."""

    def __init__(self, samples: Sequence[Sample], config: PreprocessConfig) -> None:
        self.samples = samples
        self.config = config

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, EvalRecord]:
        sample = self.samples[index]
        tensor, transform = preprocess(sample.image, self.config)
        record = EvalRecord(
            image_id=int(sample.image_id), width=sample.width, height=sample.height,
            scale_x=transform.scale_x, scale_y=transform.scale_y,
            pad_x=transform.pad_x, pad_y=transform.pad_y,
            boxes_xyxy=sample.boxes_xyxy, class_ids=sample.class_ids,
            iscrowd=np.asarray(sample.iscrowd, dtype=bool), areas=sample.areas,
        )
        return torch.from_numpy(tensor[0]), record


def collate_training(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``[(image, target)] -> (images [N, 3, H, W], [target])``."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def collate_eval(
    batch: list[tuple[torch.Tensor, EvalRecord]],
) -> tuple[torch.Tensor, list[EvalRecord]]:
    images, records = zip(*batch, strict=True)
    return torch.stack(images), list(records)


def worker_init_fn(worker_id: int) -> None:
    """Seed each loader worker's global generators from its torch seed.

    Augmentation draws from per-sample generators (``sample_rng``); this only makes any
    other use of ``random`` / ``numpy.random`` in a worker reproducible. OpenCV's own
    thread pool is turned off in workers: the workers already use every core.
    """
    import cv2

    ignore_stop_signals()  # the main process saves and stops (train.graceful_stop)
    cv2.setNumThreads(0)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


@contextlib.contextmanager
def loader_batches(loader: DataLoader) -> Iterator[Iterator]:
    """``iter(loader)`` whose worker processes are stopped when the block ends, an error
    included. Workers ignore SIGTERM (``worker_init_fn``), so workers left to the interpreter's
    exit, which stops them with SIGTERM and then waits, kept a failed run from exiting (a
    broken validation image with ``--workers 1``: the error printed, then a hang)."""
    iterator = iter(loader)
    try:
        yield iterator
    finally:
        # Private but stable since torch 1.x; a single-process iterator has none.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class ResumableSampler(Sampler[int]):
    """``sampler``'s order for the epoch from its ``start``-th index on (mid-epoch resume)."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.start


def without_worker_traceback(message: str) -> str:
    """A DataLoader worker re-raises its error with the worker's whole traceback in the
    message ("Caught DatasetError in DataLoader worker process 1. Original Traceback ...");
    the error itself follows the last traceback's frames: its first line not indented, which
    names the type ("edgedet.data.errors.DatasetError: ..."), and every line after it (a
    message can span lines, indented ones too)."""
    if "in DataLoader worker process" not in message:
        return message
    lines = message.strip("\n").splitlines()
    starts = [i for i, line in enumerate(lines)  # "Original Traceback ..." first, then plain
              if line.endswith("Traceback (most recent call last):") and not line[0].isspace()]
    if not starts:
        return message
    start = starts[-1] + 1
    # The frames: "  File ..." lines, their source lines and caret markers, all indented.
    while start < len(lines) - 1 and (not lines[start].strip() or lines[start][0].isspace()):
        start += 1
    first, *rest = lines[start:]
    name, colon, text = first.partition(": ")
    if colon and name and " " not in name:  # "module.Type: text" (a type has no spaces)
        first = text
    elif first.endswith(":") and " " not in first:  # "module.Type:" (an empty first line)
        first = ""
    return "\n".join([first, *rest]).strip("\n")
