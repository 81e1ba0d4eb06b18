from pathlib import Path

import numpy as np
import pytest

from edgedet import Detector, FrameError
from edgedet.detections import Detections
from edgedet.tiling import Tile, merge_tiles, tile_grid, uncut
from tests.edgedet.tiny_artifacts import (
    PLANTED_DELTAS,
    PlantedObjectHead,
    planted_anchor,
    tiny_anchor_spec,
    write_artifact,
)

NAMES = ("circle", "square", "triangle")


def test_tile_grid_hand_values() -> None:
    # 2 tiles overlapping by a quarter: a crop side is 1 / 1.75 of the frame's.
    tiles = tile_grid((640, 480), 2, 0.25)
    assert tiles == [Tile(0, 0, 366, 275), Tile(274, 0, 366, 275),
                     Tile(0, 205, 366, 275), Tile(274, 205, 366, 275)]
    assert tile_grid((640, 480), 1, 0.25) == [Tile(0, 0, 640, 480)]
    three = tile_grid((100, 50), 3, 0.0)
    assert [t.x for t in three[:3]] == [0, 33, 66] and three[-1].x + three[-1].width == 100
    assert three[-1].y + three[-1].height == 50


@pytest.mark.parametrize("bad", [dict(tiles=0), dict(overlap=1.0), dict(overlap=-0.1)])
def test_tile_grid_rejects_bad_settings(bad: dict) -> None:
    with pytest.raises(ValueError, match=r"tiles must be >= 1|tile overlap must be in \[0, 1\)"):
        tile_grid((640, 480), bad.get("tiles", 2), bad.get("overlap", 0.25))
    with pytest.raises(ValueError, match="too small"):
        tile_grid((3, 3), 4, 0.0)


def test_uncut_drops_only_boxes_at_inner_crop_edges() -> None:
    tile = Tile(100, 0, 200, 100)  # inner edges: left (x=100) and right (x=300 < 400)
    found = Detections(np.array([[50, 10, 150, 60],    # inside
                                 [0.5, 10, 60, 60],    # at the left edge: cut
                                 [150, 10, 199, 60],   # at the right edge: cut
                                 [50, 0, 150, 99.9]],  # top / bottom: frame edges, kept
                                np.float32), [0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0], NAMES)
    np.testing.assert_array_equal(uncut(found, tile, (400, 100)), [True, False, False, True])


def test_merge_maps_crops_to_the_frame_and_keeps_the_best_duplicate() -> None:
    whole = Detections(np.array([[12, 10, 52, 50]], np.float32), [0.6], [1], NAMES)
    corner, middle = Tile(0, 0, 100, 100), Tile(100, 40, 100, 100)
    duplicate = Detections(np.array([[10, 10, 50, 50]], np.float32), [0.65], [1], NAMES)
    new = Detections(np.array([[20, 20, 60, 60]], np.float32), [0.7], [2], NAMES)
    merged = merge_tiles(whole, [(corner, duplicate), (middle, new)], (400, 300),
                         iou_threshold=0.5, max_detections=10)
    np.testing.assert_allclose(merged.xyxy, [[120, 60, 160, 100], [10, 10, 50, 50]])
    np.testing.assert_allclose(merged.scores, [0.7, 0.65])  # the better duplicate stays
    assert merged.labels == ["triangle", "square"]
    assert len(merge_tiles(whole, [(middle, new)], (400, 300), 0.5, max_detections=1)) == 1


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    anchor, _ = planted_anchor()
    model = PlantedObjectHead(tiny_anchor_spec().num_anchors, anchor, class_id=1,
                              deltas=PLANTED_DELTAS)
    return write_artifact(tmp_path_factory.mktemp("tiles") / "planted", model, "ssd")


def test_tiled_detect_finds_the_object_in_the_frame_and_in_every_crop(planted: Path) -> None:
    # The planted model finds one object at input box (7.2, 2.4, 55.2, 34.4) of its 64x48
    # input, whatever it is shown. A 128x96 frame in 2x2 tiles (overlap 0.25) is the whole
    # frame plus four 74x55 crops at x 0 / 54, y 0 / 41, each stretched to 64x48: the object
    # at (tile.x + 7.2 * 74 / 64, tile.y + 2.4 * 55 / 48, ...) in each. No crop box comes
    # near a crop edge and no two overlap enough to suppress, so all five remain.
    frame = np.zeros((96, 128, 3), np.uint8)
    plain = Detector(planted).detect(frame)
    tiled = Detector(planted, tiles=2).detect(frame)
    assert len(plain) == 1 and len(tiled) == 5
    np.testing.assert_allclose(tiled.xyxy[0], plain.xyxy[0], atol=1e-4)  # score ties: whole first
    sx, sy = 74 / 64, 55 / 48
    expected = [[x + 7.2 * sx, y + 2.4 * sy, x + 55.2 * sx, y + 34.4 * sy]
                for y in (0, 41) for x in (0, 54)]
    np.testing.assert_allclose(tiled.xyxy[1:], expected, atol=1e-3)
    assert set(tiled.labels) == {"square"}
    assert "tiled 2x2" in repr(Detector(planted, tiles=2))
    batch = Detector(planted, tiles=2).detect_batch([frame, frame])
    assert [len(d) for d in batch] == [5, 5]


def test_tiled_detect_rejects_bad_frames_and_options(planted: Path) -> None:
    with pytest.raises(FrameError):
        Detector(planted, tiles=2).detect(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(FrameError, match="frame 1"):
        Detector(planted, tiles=2).detect_batch([np.zeros((96, 128, 3), np.uint8), "frame"])
    with pytest.raises(FrameError, match="too small"):
        Detector(planted, tiles=8).detect(np.zeros((3, 3, 3), np.uint8))
    for bad in (dict(tiles=0), dict(tiles=9), dict(tiles=2.0), dict(tile_overlap=0.9)):
        with pytest.raises(ValueError, match=r"tiles must be an integer from 1 to 8|"
                                             r"tile_overlap must be from 0 to 0\.75"):
            Detector(planted, **bad)
