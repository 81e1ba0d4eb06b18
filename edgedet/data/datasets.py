"""Open a dataset from a one-string spec, as the command-line tools take it."""

from __future__ import annotations

from edgedet.data.annotated import AnnotatedImageDataset
from edgedet.data.coco import CocoDataset
from edgedet.data.errors import DatasetError
from edgedet.data.voc import VocDataset
from edgedet.data.yolo import YoloDataset

SCHEMES = ("coco", "voc", "yolo")


def open_dataset(spec: str, split: str | None = None) -> AnnotatedImageDataset:
    """Open the dataset named by ``spec``, a ``SCHEME:PATH`` string.

    ==================  ================================================================
    ``coco:PATH``       ``CocoDataset(PATH)``: an annotations JSON file (images in
                        ``images/`` beside it) or a folder holding ``annotations.json``
                        and ``images/``
    ``voc:PATH``        ``VocDataset(PATH, split)``: a VOC year folder (``VOC2007``);
                        ``split`` defaults to ``"trainval"``
    ``yolo:PATH``       ``YoloDataset(PATH, split)``: a folder with ``images/`` and
                        ``labels/``
    ==================  ================================================================

    Only the first ``:`` separates the scheme, so the path itself may contain colons
    (``voc:C:/data/VOC2007``). The split is a keyword argument rather than part of the string
    for the same reason. The synthetic dataset is not opened here.

    Raises:
        DatasetError: an unknown scheme, a missing path, a split given for COCO, or any error
            of the reader.
    """
    scheme, colon, path = spec.partition(":")
    if not colon or scheme not in SCHEMES:
        raise DatasetError(
            f"dataset spec {spec!r}: expected SCHEME:PATH with SCHEME one of {', '.join(SCHEMES)}"
        )
    if not path:
        raise DatasetError(f"dataset spec {spec!r}: no path after '{scheme}:'")
    if scheme == "coco":
        if split is not None:
            raise DatasetError(
                f"dataset spec {spec!r}: COCO datasets have no split; name the annotations file "
                "of the split instead"
            )
        return CocoDataset(path)
    if scheme == "voc":
        return VocDataset(path, split=split or "trainval")
    return YoloDataset(path, split=split)
