import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from edgedet.data.coco import write_coco_dataset
from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import PreprocessConfig, preprocess
from train.data import (
    EvalDataset,
    TrainingDataset,
    build_augmentation,
    collate_eval,
    collate_training,
    open_splits,
    worker_init_fn,
)


def _samples(n: int = 4, size: int = 64) -> SyntheticScenes:
    return SyntheticScenes(n, seed=3, config=SyntheticConfig(image_size=(size, size)))


def test_unaugmented_items_equal_the_runtime_preprocessing():
    samples = _samples()
    config = PreprocessConfig(input_size=(48, 40))
    dataset = TrainingDataset(samples, config, None, seed=0)
    image, target = dataset[1]
    expected, transform = preprocess(samples[1].image, config)
    np.testing.assert_array_equal(image.numpy(), expected[0])
    np.testing.assert_allclose(target["boxes_xyxy"].numpy(),
                               transform.boxes_to_input(samples[1].boxes_xyxy), rtol=1e-6)
    assert target["labels"].dtype == torch.int64


def test_crowd_boxes_are_not_targets():
    image = np.zeros((40, 40, 3), np.uint8)
    sample = Sample(image, [[0, 0, 10, 10], [5, 5, 30, 30]], [0, 1], image_id=1,
                    iscrowd=[True, False])
    dataset = TrainingDataset([sample], PreprocessConfig(input_size=(40, 40)), None, seed=0)
    _, target = dataset[0]
    assert target["labels"].tolist() == [1]


@pytest.mark.parametrize("kind", ["ssd", "retinanet"])
def test_augmented_items_are_deterministic_per_epoch_and_inside_the_input(kind):
    config = PreprocessConfig(input_size=(64, 48),
                              resize="stretch" if kind == "ssd" else "letterbox")
    dataset = TrainingDataset(_samples(), config, build_augmentation(kind, config), seed=7)
    dataset.set_epoch(2)
    a_img, a_t = dataset[0]
    b_img, b_t = dataset[0]
    torch.testing.assert_close(a_img, b_img)
    torch.testing.assert_close(a_t["boxes_xyxy"], b_t["boxes_xyxy"])
    assert a_img.shape == (3, 48, 64)
    boxes = a_t["boxes_xyxy"]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 48).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()
    dataset.set_epoch(3)
    c_img, _ = dataset[0]
    assert not torch.equal(a_img, c_img)


def test_loader_batches_are_the_same_with_and_without_workers():
    config = PreprocessConfig(input_size=(48, 48))
    dataset = TrainingDataset(_samples(), config, build_augmentation("ssd", config), seed=1)

    def batches(workers: int) -> list:
        # forkserver: workers start from a clean process, not from this one, which may hold
        # threads of libraries other tests imported (JAX warns that a fork may deadlock).
        loader = DataLoader(dataset, batch_size=2, num_workers=workers,
                            collate_fn=collate_training, worker_init_fn=worker_init_fn,
                            multiprocessing_context="forkserver" if workers else None)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    for (img_a, tgt_a), (img_b, tgt_b) in zip(serial, parallel, strict=True):
        assert img_a.shape == (2, 3, 48, 48)
        torch.testing.assert_close(img_a, img_b)
        for ta, tb in zip(tgt_a, tgt_b, strict=True):
            torch.testing.assert_close(ta["boxes_xyxy"], tb["boxes_xyxy"])


def test_eval_items_carry_the_frame_geometry():
    samples = _samples(2, size=80)
    config = PreprocessConfig(input_size=(40, 40), resize="letterbox")
    images, records = collate_eval([EvalDataset(samples, config)[i] for i in range(2)])
    assert images.shape == (2, 3, 40, 40)
    assert records[0].width == 80 and records[0].scale_x == pytest.approx(0.5)
    np.testing.assert_array_equal(records[1].boxes_xyxy, samples[1].boxes_xyxy)


def test_open_splits_synthetic_and_coco(tmp_path):
    splits = open_splits("synthetic", img_size=(64, 48), synthetic_train=3, synthetic_val=2,
                         synthetic_seed=5)
    assert len(splits.train) == 3 and len(splits.val) == 2
    assert splits.train.seed == 5 and splits.val.seed == 6
    assert splits.train[0].image.shape == (48, 64, 3)
    samples = list(_samples(2))
    write_coco_dataset(samples, tmp_path / "train", samples and _samples().class_names)
    write_coco_dataset(samples[:1], tmp_path / "val", _samples().class_names)
    coco = open_splits(f"coco:{tmp_path}", img_size=(64, 64))
    assert (len(coco.train), len(coco.val)) == (2, 1)
    with pytest.raises(DatasetError, match="--val-data"):
        open_splits(f"coco:{tmp_path / 'train'}", img_size=(64, 64))
    with pytest.raises(DatasetError, match="expected synthetic"):
        open_splits("pascal:/x", img_size=(64, 64))
    blank = [Sample(s.image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                    image_id=i + 1, file_name=f"{i}.png") for i, s in enumerate(samples)]
    write_coco_dataset(blank, tmp_path / "blank", _samples().class_names)
    with pytest.raises(DatasetError, match="training images hold no annotated object"):
        open_splits(f"coco:{tmp_path / 'blank'}", img_size=(64, 64),
                    val_data=f"coco:{tmp_path / 'val'}")


def test_open_splits_synthetic_cache(tmp_path):
    plain = open_splits("synthetic", img_size=(64, 48), synthetic_train=2, synthetic_val=1)
    cached = open_splits("synthetic", img_size=(64, 48), synthetic_train=2, synthetic_val=1,
                         synthetic_cache=str(tmp_path / "cache"))
    assert cached.train.directory != cached.val.directory  # seeds 0 and 1
    for rendered, stored in ((plain.train[1], cached.train[1]), (plain.val[0], cached.val[0])):
        np.testing.assert_array_equal(rendered.image, stored.image)
        np.testing.assert_array_equal(rendered.boxes_xyxy, stored.boxes_xyxy)
    assert len(list((tmp_path / "cache").glob("*/*.npz"))) == 2


class _BrokenAt(torch.utils.data.Dataset):
    """Items 0..7; item 2 raises, as a corrupt image does."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        if index == 2:
            raise ValueError("cannot read image 2")
        return index


def test_loader_batches_stops_its_workers_when_the_block_fails() -> None:
    # Workers ignore SIGTERM; left to the interpreter's exit (SIGTERM, then wait) they kept a
    # run that had printed its error from exiting.
    from train.data import loader_batches, worker_init_fn

    loader = DataLoader(_BrokenAt(), batch_size=1, num_workers=1, worker_init_fn=worker_init_fn)
    workers = []
    with pytest.raises(ValueError, match="cannot read image 2"), \
            loader_batches(loader) as iterator:
        workers = list(iterator._workers)
        for _ in iterator:
            pass
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
