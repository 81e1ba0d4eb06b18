"""YOLO-format datasets (Ultralytics / Darknet layout: one ``class cx cy w h`` txt per image)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgedet.data.annotated import (
    IMAGE_EXTENSIONS,
    AnnotatedImageDataset,
    ImageRecord,
    check_class_names,
)
from edgedet.data.errors import DatasetError, read_text_file

YamlValue = str | list[str] | dict[str, str]

_OPENERS = {"[": "]", "{": "}"}


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        # In YAML a quote only opens a quoted scalar at the start of a token ("men's" is plain).
        elif char in "'\"" and (i == 0 or line[i - 1] in " \t[{,:"):
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


def _split_flow(body: str) -> list[str]:
    """Split the inside of ``[...]`` or ``{...}`` at commas outside quotes."""
    items, current, quote = [], "", None
    for char in body:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"" and not current.strip():
            quote = char
        elif char == ",":
            items.append(current)
            current = ""
            continue
        current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def _parse_key_value(text: str) -> tuple[str, str]:
    key, _, value = text.partition(":")
    return _unquote(key), _unquote(value)


def _parse_flow(text: str) -> YamlValue:
    items = _split_flow(text.strip()[1:-1])
    if text.strip().startswith("{"):
        return dict(_parse_key_value(item) for item in items)
    return [_unquote(item) for item in items]


def _parse_block(lines: list[str]) -> YamlValue:
    entries = [line.strip() for line in lines if line.strip()]
    if all(entry.startswith("-") for entry in entries):
        return [_unquote(entry[1:]) for entry in entries]
    return dict(_parse_key_value(entry) for entry in entries)


def parse_data_yaml(text: str) -> dict[str, YamlValue]:
    """Parse the top-level keys of an Ultralytics ``data.yaml`` without PyYAML.

    Supported, which covers the files Ultralytics and Roboflow write:

    - ``key: value`` scalars (``path``, ``train``, ``val``, ``test``, ``nc``...), plain or quoted;
    - a list: flow style ``names: [person, 'traffic light']`` (may span lines) or block style
      (``names:`` then ``- person`` lines);
    - a mapping: flow style ``names: {0: person, 1: car}`` or block style (``names:`` then
      indented ``0: person`` lines);
    - ``#`` comments.

    Not supported: anchors, multi-line strings, nesting deeper than one level (such lines are
    skipped). Scalars stay strings: ``nc: 80`` gives ``"80"``.
    """
    lines = [_strip_comment(line).rstrip() for line in text.splitlines()]
    parsed: dict[str, YamlValue] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line[0] in " \t-" or ":" not in line:
            continue  # blank, or inside a structure this parser does not support
        key, _, value = line.partition(":")
        key, value = _unquote(key), value.strip()
        if value[:1] in _OPENERS:
            closer = _OPENERS[value[0]]
            while not value.endswith(closer) and i < len(lines):
                value += " " + lines[i].strip()
                i += 1
            parsed[key] = _parse_flow(value)
        elif value:
            parsed[key] = _unquote(value)
        else:
            block = []
            # A block is the indented lines that follow (a list may also start at column 0).
            while i < len(lines) and (not lines[i].strip() or lines[i][0] in " \t-"):
                block.append(lines[i])
                i += 1
            if any(entry.strip() for entry in block):
                parsed[key] = _parse_block(block)
    return parsed


def _names_from_yaml(value: YamlValue, yaml_path: Path) -> list[str]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        try:
            by_index = {int(k): name for k, name in value.items()}
        except ValueError:
            raise DatasetError(f"{yaml_path}: 'names' mapping keys must be integers") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise DatasetError(
                f"{yaml_path}: 'names' mapping keys must be 0..K-1, found {sorted(by_index)}"
            )
        return [by_index[k] for k in range(len(by_index))]
    raise DatasetError(f"{yaml_path}: 'names' must be a list or a mapping, found {value!r}")


def read_yolo_labels(label_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one YOLO label file.

    Each non-blank line is ``class cx cy w h`` with the box centre and size as fractions of the
    image width and height. Values outside [0, 1] are errors, as in Ultralytics; boxes with a
    zero width or height are skipped; box corners are clipped to the image.

    Returns:
        ``(boxes_xyxy (N, 4) float32 as fractions of the image size, class_ids (N,) int64)``.
    """
    boxes_xyxy, class_ids = [], []
    for line_number, line in enumerate(read_text_file(label_path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{line_number}"
        if len(fields) != 5:
            hint = " (segment/polygon labels are not supported)" if len(fields) > 5 else ""
            raise DatasetError(
                f"{where}: expected 5 fields 'class cx cy w h', found {len(fields)}{hint}"
            )
        try:
            class_id = int(fields[0])
            cx, cy, w, h = (float(field) for field in fields[1:])
        except ValueError:
            raise DatasetError(f"{where}: non-numeric value in {line.strip()!r}") from None
        if not 0 <= class_id < num_classes:
            raise DatasetError(
                f"{where}: class id {class_id} is out of range for {num_classes} classes"
            )
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise DatasetError(
                f"{where}: cx cy w h must be fractions of the image size in [0, 1], "
                f"found {cx:g} {cy:g} {w:g} {h:g}"
            )
        if w <= 0 or h <= 0:
            continue
        boxes_xyxy.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        class_ids.append(class_id)
    boxes = np.clip(np.array(boxes_xyxy, np.float32).reshape(-1, 4), 0.0, 1.0)
    return boxes, np.array(class_ids, np.int64)


class YoloDataset(AnnotatedImageDataset):
    """A YOLO-format dataset as a ``Sequence[Sample]``.

    Layout::

        root/images/<split>/NAME.jpg   root/labels/<split>/NAME.txt    (split given)
        root/images/NAME.jpg           root/labels/NAME.txt            (split=None)

    If ``root/images/<split>`` does not exist, the folder that ``data.yaml`` gives for the split
    (``train: some/dir/images``, relative to ``root``) is used, with its labels where Ultralytics
    looks: the last ``images`` component of the path replaced by ``labels``. ``data.yaml``'s
    ``path:`` key and image-list ``.txt`` files are not supported. Images are the files with an
    image extension directly in the folder, sorted by name; image ids are 1..N in that order.
    An image without a label file has no objects.

    Class names come from ``class_names``, else ``root/data.yaml`` (or ``data.yml``) ``names:``
    (see ``parse_data_yaml``), else ``root/classes.txt`` (one name per line).

    Raises:
        DatasetError: a missing folder, no class names, a malformed label line, a class id out
            of range, or no images.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f"YOLO dataset folder not found: {self.root}")
        yaml_path = next(
            (p for p in (self.root / "data.yaml", self.root / "data.yml") if p.is_file()), None
        )
        data_yaml = parse_data_yaml(read_text_file(yaml_path)) if yaml_path else {}

        if class_names is None:
            class_names = self._class_names_from_files(yaml_path, data_yaml)
        names = check_class_names(class_names, str(self.root))

        self.image_dir = self._find_image_dir(data_yaml)
        self.label_dir = _label_dir_for(self.image_dir)
        if not self.label_dir.is_dir():
            raise DatasetError(f"YOLO label folder not found: {self.label_dir}")
        image_paths = sorted(
            p for p in self.image_dir.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not image_paths:
            subfolders = sorted(p.name for p in self.image_dir.iterdir() if p.is_dir())
            hint = f"; it has subfolders {subfolders}: pass split=" if subfolders else ""
            raise DatasetError(f"no images in {self.image_dir}{hint}")

        records = []
        for image_id, image_path in enumerate(image_paths, start=1):
            label_path = self.label_dir / f"{image_path.stem}.txt"
            if label_path.is_file():
                boxes_xyxy, class_ids = read_yolo_labels(label_path, len(names))
            else:
                boxes_xyxy, class_ids = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
            records.append(
                ImageRecord(
                    image_path=image_path,
                    file_name=image_path.name,
                    image_id=image_id,
                    boxes_xyxy=boxes_xyxy,
                    class_ids=class_ids,
                    iscrowd=np.zeros(len(class_ids), bool),
                    boxes_are_relative=True,
                )
            )
        super().__init__(records, names, source=str(self.image_dir))

    def _class_names_from_files(
        self, yaml_path: Path | None, data_yaml: dict[str, YamlValue]
    ) -> list[str]:
        if yaml_path is not None and "names" in data_yaml:
            return _names_from_yaml(data_yaml["names"], yaml_path)
        classes_txt = self.root / "classes.txt"
        if classes_txt.is_file():
            lines = read_text_file(classes_txt).splitlines()
            return [line.strip() for line in lines if line.strip()]
        raise DatasetError(
            f"{self.root}: no class names: pass class_names=, or add 'names:' to data.yaml, "
            "or a classes.txt with one name per line"
        )

    def _find_image_dir(self, data_yaml: dict[str, YamlValue]) -> Path:
        default = self.root / "images" / self.split if self.split else self.root / "images"
        if default.is_dir():
            return default
        listed = data_yaml.get(self.split) if self.split else None
        if isinstance(listed, str):
            listed_dir = self.root / listed
            if listed_dir.is_dir():
                return listed_dir
            if listed_dir.suffix == ".txt":
                raise DatasetError(
                    f"data.yaml gives {self.split}: {listed}, an image-list file; only image "
                    "folders are supported"
                )
        raise DatasetError(f"YOLO image folder not found: {default}")


def _label_dir_for(image_dir: Path) -> Path:
    """The label folder of an image folder: its last ``images`` component → ``labels``."""
    parts = list(image_dir.parts)
    if "images" not in parts:
        raise DatasetError(
            f"cannot locate labels for {image_dir}: its path has no 'images' folder to "
            "replace with 'labels'"
        )
    last = len(parts) - 1 - parts[::-1].index("images")
    parts[last] = "labels"
    return Path(*parts)
