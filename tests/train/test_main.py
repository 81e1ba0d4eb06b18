import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedet.data.synthetic import SYNTHETIC_CLASSES
from train.checkpoint import load_checkpoint
from train.engine import STATE_FILE
from train.main import build_parser, check_arguments, main, seed_everything
from train.metrics_log import read_metrics
from train.models import build_model

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "passd_mobilenet", "--data", "synthetic", "--img-size", "64",
        "--synthetic-train", "8", "--synthetic-val", "2", "--batch-size", "4",
        "--workers", "0", "--device", "cpu", "--no-progress", "--warmup-iters", "1",
        "--lr", "0.01"]


def _run(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


def test_help_explains_every_flag():
    result = subprocess.run([sys.executable, "train/main.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--model", "--data", "--epochs", "--batch-size", "--img-size", "--lr",
                 "--workers", "--device", "--amp", "--out", "--resume", "--eval-every",
                 "--seed", "--warmup-iters", "--lr-steps", "--momentum", "--weight-decay",
                 "--sync-bn", "--incremental-epochs", "--synthetic-train", "--synthetic-val"):
        assert flag in result.stdout
    assert "passd_mobilenet" in result.stdout and "edgedet.models.passd" in result.stdout
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_resume_reproduces_the_uninterrupted_losses(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run([*TINY, "--epochs", "2", "--out", str(straight)]) == 0
    assert _run([*TINY, "--epochs", "1", "--out", str(split)]) == 0
    first = json.loads((split / "summary.json").read_text())
    assert first["total_seconds"] >= first["seconds"]
    assert _run([*TINY, "--epochs", "2", "--out", str(split), "--resume"]) == 0
    expected = read_metrics(straight)
    actual = read_metrics(split)
    assert [r["iteration"] for r in actual] == [0, 1, 2, 3]
    for a, b in zip(actual, expected, strict=True):
        for key in ("loss", "propose_cls", "attend_box", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7)
    final_a, _ = load_checkpoint(split / "last")
    final_b, config = load_checkpoint(straight / "last")
    for k in final_b:
        torch.testing.assert_close(final_a[k], final_b[k], rtol=1e-5, atol=1e-6)
    assert config["epoch"] == 2 and config["metrics"]["AP"] >= 0
    summary = json.loads((split / "summary.json").read_text())
    assert summary["epochs_run"] == 1
    # The training time counts the first run too, up to the resume state it left.
    assert summary["seconds"] < summary["total_seconds"]
    assert summary["total_seconds"] <= summary["seconds"] + first["total_seconds"] + 1e-6


@pytest.mark.parametrize(("flags", "message"), [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--momentum", "nan"], "--momentum must be a finite number >= 0"),
    (["--momentum", "1"], "--momentum must be below 1"),
    (["--lr-steps", "abc"], "--lr-steps must be comma-separated epochs"),
    (["--lr-steps", "5,2"], "--lr-steps must be increasing"),
    (["--model-arg", "bogus=1"], "--model-arg bogus: passd_mobilenet takes none such"),
    (["--train-split", "x", "--val-split", "y"],  # accepted, and did nothing
     "--train-split, --val-split do nothing with --data synthetic"),
    (["--data", "coco:/nowhere", "--synthetic-size", "640x480"],
     "--synthetic-size do nothing with --data coco:/nowhere"),
    # Synthetic counts with real data, and a split of a --val-data that has none: they were
    # accepted and did nothing.
    (["--data", "coco:/nowhere"], "--synthetic-train, --synthetic-val do nothing with --data "
                                  "coco:/nowhere"),
    (["--val-data", "yolo:/v"], "--synthetic-val do nothing with --data synthetic --val-data"),
    (["--val-data", "coco:/v.json", "--val-split", "x"], "--val-split, --synthetic-val do"),
    (["--lr-steps", "nan"], "--lr-steps must be finite epochs"),  # crashed at the first step
    (["--lr-steps", "0.5,inf"], "--lr-steps must be finite epochs"),
])
def test_values_that_cannot_work_are_refused_before_the_run_is_touched(tmp_path, capsys,
                                                                       flags, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"best_AP": 0.5}')
    with pytest.raises(SystemExit) as exit_info:
        _run([*TINY, "--out", str(run), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert [p.name for p in run.iterdir()] == ["summary.json"]  # the earlier run untouched
    assert (run / "summary.json").read_text() == '{"best_AP": 0.5}'


def test_data_flags_the_run_uses_are_accepted_and_the_counts_get_their_defaults(tmp_path):
    parser = build_parser()
    for flags in (["--data", "synthetic"], ["--data", "voc:/d", "--val-data", "yolo:/v",
                                            "--val-split", "test", "--train-split", "train"]):
        args = parser.parse_args(["--model", "passd_mobilenet", *flags, "--out",
                                  str(tmp_path / "run")])
        check_arguments(parser, args)  # no SystemExit
        assert (args.synthetic_train, args.synthetic_val) == (2000, 200)


@pytest.mark.parametrize(("flags", "message"), [
    (["--incremental-epochs", "1"], "--incremental-epochs applies to HAR-Net models only"),
    (["--model-arg", "width_mult=0"], "width_mult must be > 0"),
    (["--model-arg", "width_mult=abc"], "could not convert string to float: 'abc'"),
])
def test_settings_found_bad_while_setting_up_exit_2_with_one_line(tmp_path, capsys, flags,
                                                                  message):
    # They were raw tracebacks (exit 1) from the model builder and the trainer.
    run = tmp_path / "run"
    assert _run([*TINY, "--epochs", "1", "--out", str(run), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert [p.name for p in run.iterdir() if p.name != ".lock"] == []  # nothing written


def test_out_must_be_a_folder_and_a_batch_needs_enough_images(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        _run([*TINY, "--out", str(tmp_path / "file")])
    assert "is a file" in capsys.readouterr().err
    earlier = tmp_path / "earlier"  # a finished run: a new one without --resume would overwrite
    earlier.mkdir()
    (earlier / "best.safetensors").write_bytes(b"weights")
    with pytest.raises(SystemExit):
        _run([*TINY, "--out", str(earlier)])
    assert "already holds a run (best.safetensors)" in capsys.readouterr().err
    assert [p.name for p in earlier.iterdir()] == ["best.safetensors"]
    # Another folder's resume state continued here would overwrite this run too.
    other = tmp_path / "other"
    other.mkdir()
    (other / "last.state.safetensors").write_bytes(b"state")
    with pytest.raises(SystemExit):
        _run([*TINY, "--out", str(earlier), "--resume", str(other / "last.state.safetensors")])
    assert "is another folder's: continuing that one here would overwrite it" in (
        capsys.readouterr().err)
    assert [p.name for p in earlier.iterdir()] == ["best.safetensors"]
    # 8 training images, batch 16: a one-line dataset error, not a traceback.
    assert _run([*TINY, "--batch-size", "16", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 1
    assert "fewer than --batch-size 16" in capsys.readouterr().err


def test_a_resume_state_of_another_model_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run([*TINY, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert _run([*TINY, "--epochs", "2", "--out", str(run), "--resume",
                 "--model-arg", "width_mult=0.5"]) == 1
    err = capsys.readouterr().err
    assert "does not fit the model and optimiser of these flags" in err
    assert "Traceback" not in err and len(err) < 1000  # not every key of the state dict


REAL_DATA_TINY = [a for a in TINY if a not in ("--synthetic-train", "--synthetic-val", "8", "2")]


def test_bad_data_spec_is_a_clear_error(tmp_path, capsys):
    assert _run([*REAL_DATA_TINY, "--data", "coco:/no/such/dir", "--out", str(tmp_path)]) == 1
    assert "no/such/dir" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 gloo processes x batch 2 against 1 process x batch 4: the same images and initial
    weights per step. With BatchNorm on running statistics (--freeze-bn) what still differs
    is each rank normalising its loss by its own positives, so the first losses agree to a
    few percent and the weight updates point the same way (cosine > 0.94 per part; a run on
    different images reaches only 0.84-0.93)."""
    common = [a for a in TINY if a not in ("--lr", "0.01", "--warmup-iters", "1")] + [
        "--lr", "0.002", "--warmup-iters", "0", "--epochs", "1", "--freeze-bn",
        "--synthetic-val", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "train/main.py", *common, "--out",
                             str(tmp_path / "one")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    two = [a if a != "4" else "2" for a in common]  # --batch-size 4 → 2 per process
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                          "2", "--master_port", "29531", "train/main.py", *two, "--out",
                          str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one_losses = [r["loss"] for r in read_metrics(tmp_path / "one")]
    two_losses = [r["loss"] for r in read_metrics(tmp_path / "two")]
    assert len(one_losses) == len(two_losses) == 2
    assert two_losses[0] == pytest.approx(one_losses[0], rel=0.05)
    w1, _ = load_checkpoint(tmp_path / "one" / "last")
    w2, _ = load_checkpoint(tmp_path / "two" / "last")
    # The same initial weights as main.py builds them (seed 0), to compare the two updates.
    seed_everything(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        initial = build_model("passd_mobilenet", len(SYNTHETIC_CLASSES), (64, 64)).state_dict()
    for part in ("backbone", "fpn", "head"):
        keys = [k for k in w1 if k.startswith(part) and w1[k].is_floating_point()]
        update1 = torch.cat([(w1[k] - initial[k]).flatten() for k in keys])
        update2 = torch.cat([(w2[k] - initial[k]).flatten() for k in keys])
        cosine = torch.nn.functional.cosine_similarity(update1, update2, dim=0).item()
        assert cosine > 0.94, (part, cosine)
    assert len(list((tmp_path / "two").glob("*.safetensors"))) == 3  # rank 0 only, no dupes


def test_model_args_are_parsed_as_json_when_possible() -> None:
    import argparse

    import pytest

    from train.main import parse_model_arg

    assert parse_model_arg("width_mult=0.5") == ("width_mult", 0.5)
    assert parse_model_arg("use_pa=false") == ("use_pa", False)
    assert parse_model_arg("name=abc") == ("name", "abc")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_model_arg("no-equals-sign")


def _bad_backbone_weights(tmp_path: Path) -> dict[str, Path]:
    """One file per reported problem with --backbone-weights."""
    from safetensors.torch import save_file

    files = {"missing": tmp_path / "absent.pth"}
    files["not a checkpoint"] = tmp_path / "notes.pth"
    files["not a checkpoint"].write_text("not weights")
    files["pickled objects"] = tmp_path / "objects.pth"
    torch.save({"args": argparse.Namespace(lr=0.1), "w": np.zeros(2)},
               files["pickled objects"])
    files["does not fit"] = tmp_path / "shapes.safetensors"
    save_file({"extras.0.0.weight": torch.zeros(2)}, str(files["does not fit"]))
    return files


@pytest.mark.parametrize("problem,message", [
    ("missing", "backbone weights file not found"),
    ("not a checkpoint", "not a PyTorch checkpoint"),
    ("pickled objects", "pickles Python objects"),
    ("does not fit", "shape mismatch loading backbone weights"),
])
def test_bad_backbone_weights_are_a_one_line_error(tmp_path, capsys, problem, message):
    path = _bad_backbone_weights(tmp_path)[problem]
    code = _run([*TINY, "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--backbone-weights", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("error: ") and message in err and str(path) in err
    assert "Traceback" not in err and "weights_only" not in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_training_resumes_and_saves_a_cpu_loadable_checkpoint(tmp_path):
    """The path a GPU run takes (CUDA, bf16 autocast, pinned loader workers, resume), which a
    whole HAR-Net training and pruning run on an H200 exercised on 2026-12-04."""
    cuda = [*TINY, "--device", "cuda", "--amp", "bf16", "--workers", "2"]
    assert _run([*cuda, "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert _run([*cuda, "--epochs", "2", "--out", str(tmp_path), "--resume"]) == 0
    state, config = load_checkpoint(tmp_path / "last")
    assert config["epoch"] == 2
    assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in state.values()
               if t.is_floating_point())
    from edgedet.models.checkpoint import build_from_checkpoint

    model, _ = build_from_checkpoint(tmp_path / "last")
    assert next(model.parameters()).device.type == "cpu"


def test_the_interpolation_trained_with_is_the_checkpoints(tmp_path, capsys):
    """What training shrank frames with is what the runtime will: it travels in the
    checkpoint's preprocess section (and from there into every artifact's manifest), and a
    resumed run may not change it halfway."""
    run = [*TINY, "--synthetic-size", "96x80", "--out", str(tmp_path / "linear")]
    assert _run([*run, "--epochs", "1", "--interpolation", "linear"]) == 0
    _, config = load_checkpoint(tmp_path / "linear" / "last")
    assert config["preprocess"]["interpolation"] == "linear"
    assert build_parser().parse_args(["--model", "passd_mobilenet"]).interpolation == "area"
    capsys.readouterr()
    assert _run([*run, "--epochs", "2", "--resume"]) == 1  # --interpolation forgotten
    err = capsys.readouterr().err
    assert "change the run's pre-processing (interpolation 'linear' -> 'area')" in err
    assert "Traceback" not in err
    assert _run([*run, "--epochs", "2", "--resume", "--interpolation", "linear"]) == 0


def test_a_resume_state_remembers_the_pre_processing_without_last_json(tmp_path, capsys):
    # Stopped inside its first epoch: a resume state but no last.json to compare with.
    run = [*TINY, "--synthetic-size", "96x80", "--out", str(tmp_path / "r")]
    assert _run([*run, "--epochs", "1", "--interpolation", "linear"]) == 0
    for name in ("last.json", "last.safetensors", "best.json", "best.safetensors"):
        (tmp_path / "r" / name).unlink(missing_ok=True)
    capsys.readouterr()
    assert _run([*run, "--epochs", "2", "--resume"]) == 1  # --interpolation forgotten
    err = capsys.readouterr().err
    assert "the run's pre-processing was" in err and "'interpolation': 'linear'" in err


def test_a_fresh_run_does_not_append_to_a_killed_runs_log(tmp_path):
    # Killed before its first save: metrics.jsonl and args.json only; the same command again
    # starts a run of its own, and its log holds its steps once.
    out = tmp_path / "r"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"type": "train", "iteration": 0, "loss": 9.0}\n'
                                       '{"type": "train", "iteration": 1, "loss": 9.0}\n')
    assert _run([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    records = read_metrics(out)
    assert [r["iteration"] for r in records] == [0, 1]
    assert all(r["loss"] != 9.0 for r in records)


def test_a_data_loader_workers_error_is_reported_without_the_traceback():
    from train.data import without_worker_traceback

    message = ("Caught DatasetError in DataLoader worker process 1.\nOriginal Traceback (most "
               "recent call last):\n  File \"x.py\", line 3, in f\n    raise DatasetError(m)\n"
               "edgedet.data.errors.DatasetError: images/7.jpg: not a readable image\n")
    assert without_worker_traceback(message) == "images/7.jpg: not a readable image"
    assert without_worker_traceback("plain: message") == "plain: message"
    # A message over several lines keeps them all; a chained error reports the last one.
    message = ("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most "
               "recent call last):\n  File \"a.py\", line 1, in g\n    open(p)\n"
               "OSError: disk\n\nThe above exception was the direct cause of the following "
               "exception:\n\nTraceback (most recent call last):\n  File \"x.py\", line 3, "
               "in f\n    raise DatasetError(m)\n    ^^^^^^^^^^^^^^^^^^^\n"
               "edgedet.data.errors.DatasetError: a.json: 2 problems:\n  box 1: negative width"
               "\n  box 4: class 9 unknown\n")
    assert without_worker_traceback(message) == (
        "a.json: 2 problems:\n  box 1: negative width\n  box 4: class 9 unknown")
    # Message lines that look like frames, and a message that starts on its second line.
    frames = ("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most "
              "recent call last):\n  File \"x.py\", line 3, in f\n    raise DatasetError(m)\n")
    assert without_worker_traceback(
        frames + "edgedet.data.errors.DatasetError: x.json: 2 problems:\n  File name 'a.jpg' "
        "missing\n  box 3 negative\n") == (
        "x.json: 2 problems:\n  File name 'a.jpg' missing\n  box 3 negative")
    assert without_worker_traceback(
        frames + "edgedet.data.errors.DatasetError: \nsecond line\n") == "second line"


def test_resuming_another_folders_state_takes_its_best_checkpoint_along(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run([*TINY, "--epochs", "1", "--out", str(first), "--eval-every", "1"]) == 0
    assert _run([*TINY, "--epochs", "1", "--out", str(second), "--resume",
                 str(first / STATE_FILE)]) == 0  # nothing left to train: no new evaluation
    summary = json.loads((second / "summary.json").read_text())
    assert summary["best_epoch"] == 1
    assert (second / "best.safetensors").read_bytes() == (first / "best.safetensors").read_bytes()


def test_a_folder_another_process_writes_is_refused_naming_that_process(tmp_path, capsys):
    # e.g. `quantize/run.py --out` given the folder of a run still training, or the reverse:
    # the lock file names its holder.
    from edgedet._io import exclusive_lock

    out = tmp_path / "run"
    with exclusive_lock(out, "quantize/run.py"):
        assert _run([*TINY, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (f"train/main.py cannot write to {out}: another process, quantize/run.py "
            f"(pid {os.getpid()}), is writing there") in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written


def test_an_out_folder_the_os_will_not_create_is_a_one_line_error(tmp_path, capsys,
                                                                   monkeypatch):
    # e.g. --out /sys/run or a read-only mount: mkdir's own error, not a traceback.
    def refused(self, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    out = tmp_path / "run"
    assert _run([*TINY, "--epochs", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: train/main.py cannot create {out}: operation not permitted")
    assert not out.exists()


def test_a_resume_says_which_optimiser_settings_the_state_keeps(tmp_path, capsys):
    # The state's weight decay won silently while args.json recorded the new value.
    run = tmp_path / "run"
    assert _run([*TINY, "--epochs", "2", "--out", str(run)]) == 0
    adamw = tmp_path / "adamw"  # the same settings again: no word (betas come back a list)
    assert _run([*TINY, "--epochs", "1", "--optimizer", "adamw", "--out", str(adamw)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*PASSD img_size")
        assert main([*TINY, "--epochs", "2", "--optimizer", "adamw", "--out", str(adamw),
                     "--resume"]) == 0
    with pytest.warns(UserWarning, match=r"--resume keeps the run's optimiser weight_decay "
                                         r"\(0\.0005\), not the value given now"):
        assert main([*TINY, "--epochs", "2", "--out", str(run), "--resume",
                     "--weight-decay", "0.1"]) == 0
    capsys.readouterr()
    recorded = json.loads((run / "args.json").read_text())  # what the run used, not 0.1
    assert recorded["weight_decay"] == 0.0005 and recorded["momentum"] == 0.9
    # Fewer epochs than the run has done: an error, not a run that does nothing.
    assert _run([*TINY, "--epochs", "1", "--out", str(run), "--resume"]) == 1
    assert "--epochs 1 is below the 2 epochs the run has done" in capsys.readouterr().err
