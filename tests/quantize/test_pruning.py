"""Structured pruning of HAR-Net: shapes, couplings, checkpoint round trip and export parity."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgedet.data.synthetic import SYNTHETIC_CLASSES
from edgedet.models.attention import CrossLevelGroupNorm
from edgedet.models.channel_plan import ChannelPlanError, apply_channel_plan
from edgedet.models.checkpoint import build_from_checkpoint, load_checkpoint
from edgedet.models.harnet import harnet_resnet18_small
from edgedet.models.summary import count_gflops, summarize_checkpoint
from edgedet.preprocess import PreprocessConfig
from quantize.export_onnx import export_onnx
from quantize.prune_schedule import PruneConfig, validation_ap
from quantize.pruning import prune_channels, prune_to_flops, pruned_config
from tests.quantize.conftest import he_normal, randomise
from train.checkpoint import save_checkpoint

INPUT_SIZE = (160, 128)


def tiny_harnet() -> nn.Module:
    generator = torch.Generator().manual_seed(21)
    model = harnet_resnet18_small(num_classes=len(SYNTHETIC_CLASSES), img_size=INPUT_SIZE)
    he_normal(model, generator)
    for attention in model.aligned_attention.values():
        randomise(attention.offset, generator, std=0.05)
    for module in model.modules():  # CLGN affine: varied, so magnitudes rank channels
        if isinstance(module, CrossLevelGroupNorm):
            randomise(module, generator, std=1.0)
    return model.eval()


# Pruned as the shipped model was (``prune.py --allocation sensitivity --steps 2``): two steps,
# some parts of the network by their own ratio (``prune_to_flops``'s part weights become such
# ratios; these values are the test's own).
STEPS_BY_PART = [
    (0.25, {"head.branches.box": 0.5, "backbone.layer4": 0.5, "fpn": 0.125}),
    (0.2, {"head.branches.cls": 0.4, "backbone.layer3": 0.35, "aligned_attention": 0.3}),
]


@pytest.fixture(scope="module", params=["uniform", "by_part_in_two_steps"])
def pruned_pair(request) -> tuple[nn.Module, nn.Module]:
    model = tiny_harnet()
    # Tag every CLGN channel with its index in the bias (the criterion reads weights only),
    # so the test can tell which channels survived.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CrossLevelGroupNorm):
                module.bias.copy_(torch.arange(module.bias.numel(), dtype=torch.float32))
        # CLSE: fc2's bias tags its output channels, fc1's first row its input positions.
        for task in ("cls", "box"):
            se = model.head.branches[task].channel_attention
            se.fc2.bias.copy_(torch.arange(se.fc2.out_features, dtype=torch.float32))
            se.fc1.weight[0] = torch.arange(se.fc1.in_features, dtype=torch.float32) * 1e-3
    pruned = copy.deepcopy(model)
    if request.param == "uniform":
        prune_channels(pruned, INPUT_SIZE, ratio=0.3)
    else:
        for ratio, part_ratios in STEPS_BY_PART:
            prune_channels(pruned, INPUT_SIZE, ratio, part_ratios=part_ratios)
    return model, pruned


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, INPUT_SIZE[1], INPUT_SIZE[0], generator=torch.Generator()
                       .manual_seed(seed))


def test_pruning_keeps_output_shapes_and_shrinks_the_network(pruned_pair):
    model, pruned = pruned_pair
    images = _images()
    with torch.no_grad():
        before, after = model.forward_export(images), pruned.forward_export(images)
    assert [t.shape for t in after] == [t.shape for t in before]
    assert all(torch.isfinite(t).all() for t in after)
    assert count_gflops(pruned, INPUT_SIZE) < 0.7 * count_gflops(model, INPUT_SIZE)


def test_every_coupling_stays_consistent(pruned_pair):
    model, pruned = pruned_pair
    head, fpn = pruned.head, pruned.fpn
    fpn_channels = fpn.p7.weight.shape[0]
    assert fpn_channels < 128 and fpn_channels % 16 == 0
    assert all(c.weight.shape[0] == fpn_channels for c in
               [*fpn.lateral_convs, *fpn.output_convs, fpn.p6, fpn.p7])
    for task in ("cls", "box"):
        branch = head.branches[task]
        assert branch.convs[0].weight.shape[1] == fpn_channels
        for conv, norm, nxt in zip(branch.convs, branch.norms,
                                   [*branch.convs[1:], branch.extra_conv], strict=True):
            width = conv.weight.shape[0]
            assert width < 128 and width % norm.num_groups == 0  # CLGN groups stay 16
            assert norm.weight.shape == norm.bias.shape == (width,)
            assert nxt.weight.shape[1] == width
            kept = norm.bias.detach().round().long()  # the original channel indices
            per_group = torch.bincount(kept // (128 // norm.num_groups),
                                       minlength=norm.num_groups)
            assert (per_group == width // norm.num_groups).all(), "groups pruned unequally"
        extra = branch.extra_conv.weight.shape[0]
        se = branch.channel_attention
        assert se.fc1.in_features == 5 * extra and se.fc2.out_features == extra
        assert se.fc1.out_features == 5 * 128 // 16  # CLSE's hidden width is the design's
        kept = se.fc2.bias.detach().round().long()
        columns = (se.fc1.weight[0].detach() / 1e-3).round().long()
        # Level l's max-pooled vector sits at l * C in the concatenation: the same channels
        # go from every level's slice.
        assert columns.tolist() == [level * 128 + int(i) for level in range(5) for i in kept]
    predictor_in = {head.cls_logits.weight.shape[1], head.box_deltas.weight.shape[1]}
    assert predictor_in == {head.branches["cls"].extra_conv.weight.shape[0]} | {
        head.branches["box"].extra_conv.weight.shape[0]}
    assert head.cls_logits.weight.shape[0] == 9 * len(SYNTHETIC_CLASSES)
    assert head.box_deltas.weight.shape[0] == 9 * 4
    spatial = [m for m in head.spatial_attention.layers if isinstance(m, nn.Conv2d)]
    assert spatial[0].weight.shape[:2] == (16, fpn_channels)
    assert [m.weight.shape[0] for m in spatial] == [16, 16, 16, 16, 1]
    backbone = pruned.backbone
    for level, stage in (("c4", backbone.layer3), ("c5", backbone.layer4)):
        attention = pruned.aligned_attention[level]
        # The deformable conv loses channels like every other layer (it once kept all:
        # torch-pruning started no channel group at it).
        full_deform = model.aligned_attention[level].deform.out_channels
        assert attention.deform.out_channels < full_deform
        assert attention.deform.out_channels % 16 == 0
        trunk = stage[-1].conv2.weight.shape[0]
        hidden = attention.reduce.weight.shape[0]
        assert attention.reduce.weight.shape[1] == trunk == attention.expand.weight.shape[0]
        assert attention.offset.weight.shape[:2] == (18, hidden)
        assert attention.deform.in_channels == attention.deform.weight.shape[1] == hidden
        assert attention.expand.weight.shape[1] == attention.deform.out_channels
        assert trunk % 16 == 0
    for conv in (backbone.conv1, backbone.layer1[0].conv1, backbone.layer2[0].conv1):
        assert conv.weight.shape[0] % 16 == 0


def test_pruned_checkpoint_rebuilds_exactly_and_exports_with_parity(pruned_pair, tmp_path):
    _, pruned = pruned_pair
    pruned.config = pruned_config(pruned)
    plan = pruned.config["channel_plan"]
    assert "fpn.p7.weight" in plan and "head.cls_logits.bias" not in plan
    config = {**pruned.config, "class_names": list(SYNTHETIC_CLASSES),
              "preprocess": PreprocessConfig(input_size=INPUT_SIZE).to_dict()}
    save_checkpoint(tmp_path / "pruned", pruned, config)
    rebuilt, rebuilt_config = build_from_checkpoint(tmp_path / "pruned")
    assert rebuilt_config["channel_plan"] == plan
    assert rebuilt.config["channel_plan"] == plan
    images = _images(1)
    with torch.no_grad():
        expected = pruned.forward_export(images)
        got = rebuilt.forward_export(images)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    measured = summarize_checkpoint(str(tmp_path / "pruned"))
    assert measured.narrowed["fpn.p7"] == (128, pruned.fpn.p7.weight.shape[0])
    assert "head.cls_logits" not in measured.narrowed
    assert measured.gflops < 0.7 * measured.full_gflops
    onnx_path = export_onnx(rebuilt, tmp_path / "pruned.onnx", INPUT_SIZE)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    for a, b in zip(expected, outputs, strict=True):
        np.testing.assert_allclose(b, a.numpy(), rtol=1e-3, atol=1e-3)


def test_prune_to_flops_reaches_the_target_with_the_smallest_ratio():
    model = tiny_harnet()
    full = count_gflops(model, INPUT_SIZE)
    pruned, result = prune_to_flops(model, INPUT_SIZE, 0.6 * full)
    assert result.gflops_after == pytest.approx(count_gflops(pruned, INPUT_SIZE))
    assert result.gflops_after <= 0.6 * full
    assert result.params_after < result.params_before
    assert count_gflops(model, INPUT_SIZE) == full  # the input model is left alone
    # A noticeably smaller ratio misses the target (the bisection did not overshoot).
    less = prune_channels(copy.deepcopy(model), INPUT_SIZE, max(result.ratio - 0.05, 0.0))
    assert count_gflops(less, INPUT_SIZE) > 0.6 * full
    with pytest.raises(ValueError, match="already within"):
        prune_to_flops(model, INPUT_SIZE, 2 * full)


def test_part_weights_reach_targets_past_the_narrowest_layers_ceiling():
    # Once pruned, the narrowest layers are 32 wide: no ratio may pass 0.5 there, but parts
    # with weights below 1 still have room, and the bisection must search it.
    step1 = prune_channels(tiny_harnet(), INPUT_SIZE, 0.4)
    weights = {"backbone.conv1": 0.52, "backbone.layer1": 0.52, "backbone.layer2": 0.56,
               "backbone.layer3": 0.64, "backbone.layer4": 2.0, "aligned_attention": 1.43,
               "fpn": 0.64, "head.branches.cls": 0.39, "head.branches.box": 1.83}
    target = 0.3 * count_gflops(step1, INPUT_SIZE)  # needs a ratio past 0.5
    pruned, result = prune_to_flops(step1, INPUT_SIZE, target, part_weights=weights)
    assert result.ratio > 0.5 and result.gflops_after <= target
    widths = [m.weight.shape[0] for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert min(widths) >= 1


def test_channel_plan_errors_name_the_problem():
    model = tiny_harnet()
    with pytest.raises(ChannelPlanError, match="not a tensor"):
        apply_channel_plan(model, {"head.no_such_layer.weight": [3]})
    with pytest.raises(ChannelPlanError, match="groups"):
        apply_channel_plan(tiny_harnet(), {"head.branches.cls.norms.0.weight": [100]})
    grouped = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(ChannelPlanError, match="grouped"):
        apply_channel_plan(grouped, {"0.weight": [4, 4, 3, 3]})


def _tiny_checkpoint(stem) -> None:
    model = tiny_harnet()
    config = {**model.config, "class_names": list(SYNTHETIC_CLASSES),
              "input_size": list(INPUT_SIZE),
              "preprocess": PreprocessConfig(input_size=INPUT_SIZE, resize="letterbox").to_dict(),
              "anchor_spec": model.anchor_spec(INPUT_SIZE).to_dict(),
              "box_coder_weights": list(model.box_coder_weights), "head_family": "retinanet",
              "output_names": list(model.export_output_names),
              "postprocess": {"score_threshold": 0.05, "iou_threshold": 0.5,
                              "pre_nms_top_k": 100, "max_detections": 100},
              "data": "synthetic", "synthetic_size": list(INPUT_SIZE),
              "metrics": {"AP": 0.5}}  # not what this random model scores
    save_checkpoint(stem, model, config)


def test_prune_cli_prunes_fine_tunes_and_resumes(tmp_path, capsys):
    from quantize.prune import main

    _tiny_checkpoint(tmp_path / "full")
    argv = ["--checkpoint", str(tmp_path / "full"), "--out", str(tmp_path / "out"),
            "--steps", "1", "--target-flops", "0.6", "--finetune-images", "4",
            "--val-images", "4", "--no-baseline", "--no-progress",
            "--", "--batch-size", "4", "--workers", "0", "--optimizer", "adamw"]
    assert main(argv) == 0
    log = json.loads((tmp_path / "out" / "prune_log.json").read_text())
    (step,) = log["steps"]
    assert step["gflops"] <= 0.6 * log["start"]["gflops"]
    # The start's AP is measured on the steps' split, not copied from the checkpoint's record.
    assert log["start"]["ap_recorded"] == 0.5
    assert log["start"]["ap"] == pytest.approx(validation_ap(
        build_from_checkpoint(tmp_path / "full")[0], load_checkpoint(tmp_path / "full")[1],
        PruneConfig(checkpoint=str(tmp_path / "full"), out="", val_images=4, progress=False)))
    assert (tmp_path / "out" / "pruned.safetensors").is_file()
    # Fine-tuning kept the plan: the result rebuilds at the pruned widths.
    model, config = build_from_checkpoint(tmp_path / "out" / "pruned")
    assert config["channel_plan"] and config["postprocess"]["nms_mode"] == "soft+voting"
    assert count_gflops(model, INPUT_SIZE) == pytest.approx(step["gflops"])
    # A second run reads the finished step back instead of pruning and training again, and
    # the start AP too (a log from before it was measured, without "ap_recorded", is not).
    from quantize import prune_schedule

    assert prune_schedule._recorded_start_ap(tmp_path / "out" / "prune_log.json") == \
        log["start"]["ap"]
    old_log = tmp_path / "old_log.json"
    old_log.write_text(json.dumps({"start": {"ap": 0.5}}))
    assert prune_schedule._recorded_start_ap(old_log) is None
    mtime = (tmp_path / "out" / "step1" / "finetune" / "best.safetensors").stat().st_mtime
    assert main(argv) == 0
    assert (tmp_path / "out" / "step1" / "finetune" / "best.safetensors").stat().st_mtime == mtime
    assert "step 1" in capsys.readouterr().out
    # Killed after its last resume state, before its summary: the resumed fine-tuning has
    # nothing left to train, and the step's time is still the first run's.
    from safetensors import safe_open

    from train.checkpoint import STATE_KEY
    from train.engine import STATE_FILE

    finetune = tmp_path / "out" / "step1" / "finetune"
    (finetune / "summary.json").unlink()
    with safe_open(str(finetune / STATE_FILE), framework="pt") as handle:
        trained = json.loads(handle.metadata()[STATE_KEY])["progress"]["seconds"]
    assert trained > 0
    assert main(argv) == 0
    (step,) = json.loads((tmp_path / "out" / "prune_log.json").read_text())["steps"]
    assert step["finetune_seconds"] >= trained


def test_prune_cli_rerun_rules(tmp_path, capsys):
    # Two steps whose second target the first step's rounding already reached; a rerun with
    # other settings; a fine-tuning killed before its first resume state.
    from quantize.prune import main
    from train.engine import STATE_FILE

    _tiny_checkpoint(tmp_path / "full")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tmp_path / "full"), "--out", str(out), "--steps", "2",
            "--target-flops", "0.85", "--finetune-images", "4", "--val-images", "4",
            "--no-baseline", "--no-progress",
            "--", "--batch-size", "4", "--workers", "0", "--optimizer", "adamw"]
    assert main(argv) == 0, capsys.readouterr().err
    log = json.loads((out / "prune_log.json").read_text())
    first, second = log["steps"]
    assert first["gflops"] <= 0.85 ** 0.5 * log["start"]["gflops"]
    if first["gflops"] <= 0.85 * log["start"]["gflops"]:  # rounding overshot step 2's target
        assert second["ratio"] == 0.0 and second["gflops"] == first["gflops"]
    else:
        assert second["ratio"] > 0.0
    assert main([*argv[:7], "0.6", *argv[8:]]) == 1
    assert "holds a pruning run with other settings (target_flops_ratio=0.85)" in (
        capsys.readouterr().err)
    # Killed inside its first save: checkpoints but no resume state and no summary.
    finetune = out / "step2" / "finetune"
    (finetune / "summary.json").unlink()
    (finetune / STATE_FILE).unlink(missing_ok=True)
    assert main(argv) == 0
    assert "cut short before it could be resumed" in capsys.readouterr().err
    assert (finetune / "summary.json").is_file()
    assert len(list(out.glob("step2/finetune.incomplete-*"))) == 1  # kept aside


def test_prune_cli_refuses_an_out_folder_another_run_holds(tmp_path, capsys):
    from edgedet._io import exclusive_lock
    from quantize.prune import main

    _tiny_checkpoint(tmp_path / "full")
    out = tmp_path / "out"
    with exclusive_lock(out, "quantize/prune.py"):
        assert main(["--checkpoint", str(tmp_path / "full"), "--out", str(out),
                     "--no-progress"]) == 2
    assert "another process, quantize/prune.py (pid" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == [".lock"]  # nothing pruned or written


def test_prune_cli_names_an_out_folder_the_os_will_not_create(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from quantize.prune import main

    _tiny_checkpoint(tmp_path / "full")

    def refused(self, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "full"), "--out", str(out),
                 "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: quantize/prune.py cannot create {out}: operation not permitted")


def test_prune_cli_refuses_bad_flags(tmp_path, capsys):
    from quantize.prune import main

    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--out", str(tmp_path), "--target-flops", "1.5"])
    assert "--target-flops" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # before --out is made
        main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "new")])
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    from edgedet.models.passd import passd_mobilenet

    passd = passd_mobilenet(num_classes=2)
    save_checkpoint(tmp_path / "passd", passd, {**passd.config, "head_family": "passd"})
    with pytest.raises(SystemExit):  # not what the couplings were written for
        main(["--checkpoint", str(tmp_path / "passd"), "--out", str(tmp_path / "new")])
    assert "prunes the RetinaNet family" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "passd"), "--out", str(tmp_path / "a_file" / "x")])
    assert "which is a file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    _tiny_checkpoint(tmp_path / "full")
    start = ["--checkpoint", str(tmp_path / "full"), "--out", str(tmp_path / "out")]
    for flags, message in ((["--finetune-images", "-5"], "must be at least 1"),
                           # Synthetic counts with real data: accepted and ignored before.
                           (["--data", "coco:x", "--finetune-images", "100", "--val-images",
                             "9"], "--finetune-images, --val-images do nothing with --data "
                            "coco:x"),
                           (["--", "--bogus-flag", "1"], "unrecognized arguments: --bogus-flag"),
                           (["--", "--lr", "nan"], "--lr must be a finite number"),
                           # Flags each fine-tuning gets from prune.py would silently win.
                           (["--", "--data", "coco:x"], "--data after -- is set by "
                            "quantize/prune.py (from --data)"),
                           (["--", "--epo", "3"], "--epochs after -- is set by "
                            "quantize/prune.py (from --finetune-epochs)"),
                           (["--", "--resume"], "--resume after -- is set by"),
                           (["--", "--val-data", "coco:x"], "--val-data after -- is set by"),
                           (["--", "--synthetic-seed", "5"], "--synthetic-seed after --"),
                           (["--distill", "--", "--distill-from", "x"],
                            "--distill-from after -- is set by quantize/prune.py (from "
                            "--distill)"),
                           (["--", "--model-arg", "depth=1", "--out", "x"],
                            "--model-arg after -- is set by quantize/prune.py (from the "
                            "checkpoint); --out after -- is set by quantize/prune.py")):
        with pytest.raises(SystemExit):  # not after the first pruning step
            main([*start, *flags])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # Without --distill a teacher of the user's own is theirs to give (steps and baseline).
    from quantize.prune import _check_training_flags, build_parser

    _check_training_flags(["--distill-from", str(tmp_path / "full")], build_parser(),
                          distill=False)


@pytest.mark.slow  # a second prune + fine-tune + baseline (about 40 s alone on 2 cores)
def test_prune_cli_distills_the_steps_from_the_model_being_pruned_not_the_baseline(tmp_path):
    from quantize.prune import main
    from train.metrics_log import read_metrics

    _tiny_checkpoint(tmp_path / "full")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "full"), "--out", str(out), "--steps", "1",
                 "--target-flops", "0.6", "--finetune-images", "4", "--val-images", "4",
                 "--distill", "--no-progress", "--", "--batch-size", "4", "--workers", "0",
                 "--optimizer", "adamw"]) == 0
    step_args = json.loads((out / "step1" / "finetune" / "args.json").read_text())
    baseline_args = json.loads((out / "baseline" / "args.json").read_text())
    assert step_args["distill_from"] == str(tmp_path / "full")
    assert baseline_args["distill_from"] is None
    step_rows = [r for r in read_metrics(out / "step1" / "finetune") if r["type"] == "train"]
    assert step_rows and all(r["kd_cls"] >= 0 and r["kd_box"] >= 0 for r in step_rows)


def test_validation_ap_reads_the_fine_tunings_scene_cache_and_device(tmp_path):
    from quantize.prune_schedule import PruneConfig, _train_flag, validation_ap

    _tiny_checkpoint(tmp_path / "full")
    model, ckpt_config = build_from_checkpoint(tmp_path / "full")
    config = PruneConfig(checkpoint=str(tmp_path / "full"), out=str(tmp_path / "out"),
                         val_images=3, train_args=("--lr", "1e-4", "--synthetic-cache",
                                                   str(tmp_path / "cache"), "--device=cpu"))
    assert _train_flag(config, "--synthetic-cache") == str(tmp_path / "cache")
    assert _train_flag(config, "--device") == "cpu"
    assert _train_flag(config, "--amp") is None
    ap = validation_ap(model, ckpt_config, config)
    assert 0.0 <= ap <= 1.0
    # The validation scenes (seed 1) were rendered into the cache, once each.
    (folder,) = (tmp_path / "cache").glob("seed1-*")
    assert len(list(folder.glob("*.npz"))) == 3
    assert next(model.parameters()).device.type == "cpu"


def test_fine_tuning_flags_pass_train_main_s_checks_on_real_and_synthetic_data(tmp_path):
    # train/main.py refuses synthetic counts with real data; the schedule gives them only for
    # synthetic data.
    from pathlib import Path

    from quantize.prune_schedule import PruneConfig, _training_argv
    from train.main import build_parser, check_arguments

    ckpt_config = {"architecture": "harnet_resnet18_small", "kwargs": {"num_classes": 3},
                   "preprocess": {"input_size": [64, 64]}, "synthetic_size": [96, 64]}
    for data, synthetic in (("yolo:/d", False), ("synthetic", True)):
        config = PruneConfig(checkpoint="c", out=str(tmp_path), data=data, finetune_images=7)
        argv = _training_argv(config, ckpt_config, Path("init"), tmp_path / "ft", 1)
        parser = build_parser()
        args = parser.parse_args(argv)
        check_arguments(parser, args)  # no SystemExit
        assert ("--synthetic-train" in argv) == synthetic
        assert args.synthetic_train == (7 if synthetic else 2000)
