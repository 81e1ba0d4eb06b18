import math
import warnings

import cv2
import numpy as np
import pytest
import torch

from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.head_decoding import decode_head_outputs
from edgedet.preprocess import PreprocessConfig
from train.checkpoint import load_checkpoint
from train.distributed import DistInfo
from train.engine import STATE_FILE, Trainer, TrainingDivergedError
from train.losses import build_criterion
from train.metrics_log import read_metrics
from train.models import build_model, family_defaults
from train.train_config import TrainConfig

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SCENES = SyntheticConfig(image_size=(64, 64), min_objects=1, max_objects=3,
                         min_object_size=14.0, max_object_size=0.6)


def _trainer(tmp_path, model_name: str, size: int, epochs: int, criterion=None, images: int = 2,
             **config) -> Trainer:
    torch.manual_seed(0)
    samples = SyntheticScenes(images, seed=0, config=SCENES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(model_name, len(samples.class_names), (size, size))
    preprocess_config = PreprocessConfig(input_size=(size, size),
                                         resize=family_defaults(model).resize)
    cfg = TrainConfig(epochs=epochs, batch_size=images, lr=config.pop("lr", 0.01),
                      warmup_iters=0, eval_every=0, progress_bar=False, **config)
    return Trainer(model, criterion or build_criterion(model), samples, None,
                   samples.class_names, preprocess_config, None, cfg, tmp_path, CPU)


@pytest.mark.parametrize("model_name,size", [
    ("passd_mobilenet", 64),
    ("harnet_resnet18_small", 64),
    ("dsanet_resnet18", 64),
    pytest.param("daipnet_vgg16", 300, marks=pytest.mark.slow),
])
def test_every_family_learns_on_one_batch(tmp_path, model_name, size):
    trainer = _trainer(tmp_path, model_name, size, epochs=3, lr=0.005)
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert len(losses) == 3 and all(map(math.isfinite, losses))
    assert losses[-1] < losses[0]
    _state, config = load_checkpoint(tmp_path / "last")
    assert config["head_family"] == family_defaults(trainer.bare).family
    assert config["anchor_spec"]["image_size"] == [size, size]


def test_incremental_harnet_switches_attention_on_after_the_main_network(tmp_path):
    trainer = _trainer(tmp_path, "harnet_resnet18_small", 64, epochs=2, incremental_epochs=1)
    calls = []
    original = trainer.bare.set_attention_enabled

    def record(spatial=None, channel=None):
        calls.append((spatial, channel))
        original(spatial=spatial, channel=channel)

    trainer.bare.set_attention_enabled = record
    trainer.fit()
    assert calls == [(False, False), (True, True)]
    # A run resumed before evaluating epoch 1 evaluates it with that epoch's attention (off).
    pending = _trainer(tmp_path, "harnet_resnet18_small", 64, epochs=2, incremental_epochs=1)
    pending.epoch, pending.iteration, pending.epoch_end_pending = 1, 1, True
    pending.save_resume_state()
    resumed = _trainer(tmp_path, "harnet_resnet18_small", 64, epochs=2, incremental_epochs=1)
    head = resumed.bare.head
    assert head.spatial_attention_enabled and head.channel_attention_enabled  # as built
    resumed.resume(tmp_path / STATE_FILE)
    assert not head.spatial_attention_enabled and not head.channel_attention_enabled
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path))
    with pytest.raises(ValueError, match="HAR-Net"):
        _trainer(tmp_path, "passd_mobilenet", 64, epochs=1, incremental_epochs=1)


class NanOn(torch.nn.Module):
    """The real criterion, with a NaN loss at chosen iterations (or always)."""

    def __init__(self, inner: torch.nn.Module, bad: set[int] | None) -> None:
        super().__init__()
        self.inner, self.bad, self.calls = inner, bad, 0

    def forward(self, outputs, priors, targets):
        losses = self.inner(outputs, priors, targets)
        if self.bad is None or self.calls in self.bad:
            losses["loss"] = losses["loss"] * float("nan")
        self.calls += 1
        return losses


def test_a_nan_step_is_skipped_with_a_warning(tmp_path):
    trainer = _trainer(tmp_path, "passd_mobilenet", 64, epochs=3)
    trainer.criterion = NanOn(trainer.criterion, bad={1})
    before_epoch = {}

    original = trainer._train_step

    def step(images, targets):
        if trainer.iteration == 1:
            before_epoch.update({k: v.clone() for k, v in trainer.bare.state_dict().items()})
        result = original(images, targets)
        if trainer.iteration == 2:
            for k, v in trainer.bare.state_dict().items():
                if k.endswith("weight") and v.is_floating_point():
                    torch.testing.assert_close(v, before_epoch[k], rtol=0, atol=0)
        return result

    trainer._train_step = step
    with pytest.warns(RuntimeWarning, match="step skipped"):
        summary = trainer.fit()
    assert summary["skipped_steps"] == 1
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 2]
    state, _ = load_checkpoint(tmp_path / "last")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_persistent_nan_stops_with_a_clear_message_and_saves_nothing(tmp_path):
    trainer = _trainer(tmp_path, "passd_mobilenet", 64, epochs=5, max_bad_steps=3)
    trainer.criterion = NanOn(trainer.criterion, bad=None)
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingDivergedError,
                                                     match="3 consecutive steps"):
        trainer.fit()
    # The epochs before the stop had only skipped steps: what they saved is the untouched,
    # finite initial model.
    state, config = load_checkpoint(tmp_path / "last")
    assert config["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_numpy_decoding_matches_the_models_adjusted_boxes():
    torch.manual_seed(0)
    model = build_model("passd_mobilenet", 3, (320, 320)).eval()
    priors = model.anchor_spec((96, 96)).generate()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 96, 96))
    arrays = {k: v[0].numpy() for k, v in outputs.items()}
    # Zero attend deltas: the decoded boxes are the adjusted default boxes.
    arrays["box_deltas"] = np.zeros_like(arrays["box_deltas"])
    boxes, scores = decode_head_outputs("passd", arrays, priors, model.box_coder_weights)
    adjusted = arrays["adjusted_priors_cxcywh"]
    expected = np.concatenate([adjusted[:, :2] - adjusted[:, 2:] / 2,
                               adjusted[:, :2] + adjusted[:, 2:] / 2], axis=1)
    np.testing.assert_allclose(boxes, expected, rtol=1e-4, atol=1e-3)
    assert scores.shape == (len(priors), 3)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_small_model_overfits_a_handful_of_images(tmp_path):
    """4 synthetic images, evaluated on themselves: AP50 must exceed 0.9.

    The lr decays for the last quarter: from scratch the weights change fast and BatchNorm's
    running statistics (used at evaluation) lag behind them until the steps get small.
    """
    torch.manual_seed(0)
    scenes = SyntheticConfig(image_size=(96, 96), min_objects=1, max_objects=3,
                             min_object_size=20.0, max_object_size=0.7, min_distractors=0,
                             max_distractors=2)
    samples = SyntheticScenes(4, seed=0, config=scenes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("passd_mobilenet", len(samples.class_names), (96, 96))
    cfg = TrainConfig(epochs=OVERFIT_EPOCHS, batch_size=4, lr=0.01, warmup_iters=20,
                      lr_steps=(0.75 * OVERFIT_EPOCHS,), clip_grad_norm=5.0,
                      weight_decay=0.0, eval_every=100, progress_bar=False)
    trainer = Trainer(model, build_criterion(model), samples, samples, samples.class_names,
                      PreprocessConfig(input_size=(96, 96)), None, cfg, tmp_path, CPU)
    summary = trainer.fit()
    assert summary["last_metrics"]["AP50"] > 0.9, summary["last_metrics"]


OVERFIT_EPOCHS = 300  # one step each (4 images, batch 4)


def tiny_trainer(out_dir, epochs: int) -> Trainer:
    """4 tiny synthetic images, 2 steps per epoch, evaluation every epoch (resume tests)."""
    torch.manual_seed(0)
    samples = SyntheticScenes(4, seed=0, config=SCENES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("passd_mobilenet", len(samples.class_names), (64, 64))
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=0.01, warmup_iters=0, eval_every=1,
                      progress_bar=False)
    return Trainer(model, build_criterion(model), samples, samples, samples.class_names,
                   PreprocessConfig(input_size=(64, 64)), None, cfg, out_dir, CPU)


def test_resume_after_an_interruption_mid_epoch_logs_every_step_once(tmp_path):
    """2 steps per epoch, evaluation every epoch; the run is stopped after the first step of
    its second epoch (already logged) and resumed from the state of the first epoch."""

    def build(epochs: int) -> Trainer:
        return tiny_trainer(tmp_path, epochs)

    first = build(epochs=3)
    original = first._train_step

    def step(images, targets):
        if first.iteration == 3:
            raise KeyboardInterrupt
        return original(images, targets)

    first._train_step = step
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 1, 2]

    resumed = build(epochs=3)
    resumed.resume(tmp_path / STATE_FILE)
    resumed.fit()
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 4, 5]
    assert [r["epoch"] for r in read_metrics(tmp_path, "epoch")] == [0, 1, 2]
    assert [r["epoch"] for r in read_metrics(tmp_path, "eval")] == [0, 1, 2]
    # the curves were redrawn after each evaluation, from the whole (resumed) log
    assert cv2.imread(str(tmp_path / "curves.png")).shape == (428, 1280, 3)


def test_a_failed_evaluation_costs_no_trained_epoch(tmp_path):
    """The second epoch's evaluation fails (a corrupt validation image, a kill): its trained
    weights are in the resume state, and the resumed run evaluates that epoch, writes its
    checkpoints and goes on, without training it again."""
    straight = tiny_trainer(tmp_path / "straight", epochs=3)
    straight.fit()

    first = tiny_trainer(tmp_path / "split", epochs=3)
    original = first.evaluate

    def evaluate():
        if first.epoch == 2:
            raise KeyboardInterrupt  # inside the evaluation of epoch 2
        return original()

    first.evaluate = evaluate
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = tiny_trainer(tmp_path / "split", epochs=3)
    resumed.resume(tmp_path / "split" / STATE_FILE)
    assert (resumed.epoch, resumed.iteration, resumed.epoch_end_pending) == (2, 4, True)
    resumed.fit()
    got, expected = read_metrics(tmp_path / "split"), read_metrics(tmp_path / "straight")
    assert [r["iteration"] for r in got] == [0, 1, 2, 3, 4, 5]  # no step trained twice
    assert [r["epoch"] for r in read_metrics(tmp_path / "split", "eval")] == [0, 1, 2]
    for a, b in zip(got, expected, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    final_a, _ = load_checkpoint(tmp_path / "split" / "last")
    final_b, _ = load_checkpoint(tmp_path / "straight" / "last")
    for key in final_b:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6)


def test_a_crash_while_saving_after_an_evaluation_logs_it_once(tmp_path):
    """Epoch 2's evaluation is logged, then writing its checkpoints fails (a full disk): the
    resumed run evaluates epoch 2 again, and the log holds that evaluation once."""
    first = tiny_trainer(tmp_path, epochs=3)
    original = first.save

    def save(is_best):
        if first.epoch == 2:
            raise OSError("disk full")
        return original(is_best)

    first.save = save
    with pytest.raises(OSError, match="disk full"):
        first.fit()
    assert [r["epoch"] for r in read_metrics(tmp_path, "eval")] == [0, 1]
    resumed = tiny_trainer(tmp_path, epochs=3)
    resumed.resume(tmp_path / STATE_FILE)
    resumed.fit()
    assert [r["epoch"] for r in read_metrics(tmp_path, "eval")] == [0, 1, 2]
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 4, 5]


def test_a_mid_epoch_resume_state_continues_the_epoch_exactly(tmp_path):
    """One epoch of 4 steps with the resume state written after every step; the run is
    killed before its 4th step and resumed: the same losses, epoch means and weights as a
    run that was never stopped."""

    def build(out) -> Trainer:
        torch.manual_seed(0)
        samples = SyntheticScenes(8, seed=0, config=SCENES)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model("passd_mobilenet", len(samples.class_names), (64, 64))
        cfg = TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=0, eval_every=0,
                          progress_bar=False, save_every_minutes=1e-9)  # after every step
        return Trainer(model, build_criterion(model), samples, None, samples.class_names,
                       PreprocessConfig(input_size=(64, 64)), None, cfg, out, CPU)

    straight = build(tmp_path / "straight")
    straight.fit()

    killed = build(tmp_path / "split")
    original = killed._train_step

    def step(images, targets):
        if killed.iteration == 3:
            raise KeyboardInterrupt
        return original(images, targets)

    killed._train_step = step
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = build(tmp_path / "split")
    resumed.resume(tmp_path / "split" / STATE_FILE)
    assert (resumed.epoch, resumed.iteration, resumed.batches_done) == (0, 3, 3)
    resumed.fit()

    expected, got = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [r["iteration"] for r in got] == [0, 1, 2, 3]
    for a, b in zip(got, expected, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    epoch_a = read_metrics(tmp_path / "split", "epoch")
    epoch_b = read_metrics(tmp_path / "straight", "epoch")
    assert epoch_a[0]["loss"] == pytest.approx(epoch_b[0]["loss"], rel=1e-6)  # all 4 steps
    final_a, _ = load_checkpoint(tmp_path / "split" / "last")
    final_b, _ = load_checkpoint(tmp_path / "straight" / "last")
    for key in final_b:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6)


def test_channels_last_trains_like_contiguous_and_saves_plain_weights(tmp_path):
    runs = {}
    for channels_last in (False, True):
        out = tmp_path / str(channels_last)
        trainer = _trainer(out, "passd_mobilenet", 64, epochs=2, channels_last=channels_last)
        trainer.fit()
        runs[channels_last] = [r["loss"] for r in read_metrics(out)]
    # Other conv kernels, the same arithmetic up to summation order: the first loss (same
    # weights) agrees closely; after an lr 0.01 step from scratch the rounding has grown.
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    assert runs[True][1] == pytest.approx(runs[False][1], rel=2e-2)
    state, _ = load_checkpoint(tmp_path / "True" / "last")
    assert all(t.is_contiguous() for t in state.values())


def test_a_new_trainer_removes_temporaries_a_killed_run_left(tmp_path):
    # A kill while a checkpoint was being written leaves .NAME.*.tmp beside the good files.
    (tmp_path / ".last.safetensors.x1y2.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".metrics.jsonl.z3.tmp").write_bytes(b"{")
    (tmp_path / "notes.tmp").write_text("not ours: no leading dot")
    _trainer(tmp_path, "passd_mobilenet", 64, epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == [
        "notes.tmp"]
