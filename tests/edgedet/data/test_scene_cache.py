import gc
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgedet.data.errors import DatasetError
from edgedet.data.scene_cache import CachedScenes
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes

SMALL = SyntheticConfig(image_size=(96, 64), min_object_size=6.0)


def _assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_array_equal(a.iscrowd, b.iscrowd)
    assert (a.image_id, a.file_name) == (b.image_id, b.file_name)


class _Counting(SyntheticScenes):
    renders = 0

    def __getitem__(self, index):
        type(self).renders += 1
        return super().__getitem__(index)


def test_a_cached_sample_is_the_rendered_one_and_is_rendered_once(tmp_path: Path) -> None:
    scenes = _Counting(3, seed=5, config=SMALL)
    cached = CachedScenes(scenes, tmp_path)
    first = [cached[i] for i in range(3)]
    assert _Counting.renders == 3
    again = CachedScenes(_Counting(3, seed=5, config=SMALL), tmp_path)  # a later run
    second = [again[i] for i in range(3)]
    assert _Counting.renders == 3  # read from disk, not drawn again
    reference = SyntheticScenes(3, seed=5, config=SMALL)
    for index in range(3):
        _assert_same(first[index], reference[index])
        _assert_same(second[index], reference[index])
    _assert_same(cached[-1], reference[2])
    assert sorted(p.name for p in cached.directory.iterdir()) == [
        "000000.npz", "000001.npz", "000002.npz"]  # no temporary files left


def test_seed_config_and_generator_pick_the_folder(tmp_path: Path) -> None:
    base = CachedScenes(SyntheticScenes(2, seed=1, config=SMALL), tmp_path).directory
    other_seed = CachedScenes(SyntheticScenes(2, seed=2, config=SMALL), tmp_path).directory
    other_look = CachedScenes(SyntheticScenes(2, seed=1, config=SyntheticConfig(
        image_size=(96, 64), min_object_size=6.0, blur_prob=0.0)), tmp_path).directory
    more_images = CachedScenes(SyntheticScenes(5, seed=1, config=SMALL), tmp_path).directory
    assert len({base, other_seed, other_look}) == 3
    assert more_images == base  # a scene depends on (seed, index, config) only


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "wrong size", "unpaired boxes",
                                    "nan boxes", "unknown class"])
def test_a_bad_cache_file_is_rendered_again_and_replaced(tmp_path: Path, damage: str) -> None:
    reference = SyntheticScenes(1, seed=3, config=SMALL)[0]
    cached = CachedScenes(SyntheticScenes(1, seed=3, config=SMALL), tmp_path)
    path = cached.directory / "000000.npz"
    cached[0]
    if damage == "truncated":  # a run killed mid-write by something other than us
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "not a zip":
        path.write_bytes(b"\x00" * 64)
    elif damage == "wrong size":
        np.savez(path, image=np.zeros((10, 10, 3), np.uint8), boxes_xyxy=np.zeros((0, 4)),
                 class_ids=np.zeros(0, np.int64), iscrowd=np.zeros(0, bool))
    elif damage == "unpaired boxes":
        np.savez(path, image=reference.image, boxes_xyxy=np.zeros((2, 4)),
                 class_ids=np.zeros(3, np.int64), iscrowd=np.zeros(3, bool))
    else:  # the right shapes and dtypes, values no scene has (they were trained on)
        boxes = np.full((1, 4), np.nan) if damage == "nan boxes" else np.ones((1, 4))
        np.savez(path, image=reference.image, boxes_xyxy=boxes,
                 class_ids=np.array([0 if damage == "nan boxes" else 99]),
                 iscrowd=np.zeros(1, bool))
    fresh = CachedScenes(SyntheticScenes(1, seed=3, config=SMALL), tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _assert_same(fresh[0], reference)
        gc.collect()  # an unclosed handle of the bad file would warn when collected
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)
            and "000000.npz" in str(w.message)]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    with np.load(path) as stored:  # replaced by a good file
        np.testing.assert_array_equal(stored["image"], reference.image)


def test_index_checks(tmp_path: Path) -> None:
    cached = CachedScenes(SyntheticScenes(2, seed=0, config=SMALL), tmp_path)
    assert len(cached) == 2 and cached.class_names == SyntheticScenes(1).class_names
    with pytest.raises(IndexError):
        cached[2]
    with pytest.raises(TypeError):
        cached["0"]  # type: ignore[index]


def test_a_cache_folder_that_cannot_be_made_is_a_dataset_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match="cannot create the synthetic-scene cache"):
        CachedScenes(SyntheticScenes(1, config=SMALL), blocker)
