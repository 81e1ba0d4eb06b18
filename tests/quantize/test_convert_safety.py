"""Nothing unchecked ever ships: only artifacts that pass replace the previous ones, failing
ones go to OUT/rejected/, a killed run's leftovers are cleaned up by the next run, and two runs
never write one folder at once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgedet._io import DirectoryBusyError, exclusive_lock
from edgedet.artifact import UncheckedArtifactError, load_manifest
from edgedet.detector import Detector
from edgedet.models.checkpoint import CheckpointError
from quantize.convert import ConvertConfig, convert
from tests.quantize.tiny_checkpoint import write_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _convert(checkpoint: Path, out: Path, **changes) -> object:
    settings = {"precisions": ("fp32",), "eval_size": 3, "device": "cpu", "progress": False,
                "allow_weak_reference": True, **changes}  # an untrained model: AP 0
    return convert(ConvertConfig(checkpoint=checkpoint, target="cpu", out=out, **settings))


def test_a_failing_rerun_keeps_the_passing_artifact(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert _convert(checkpoint, out).passed
    good = (out / "tiny_passd_fp32" / "manifest.json").read_bytes()

    report = _convert(checkpoint, out, max_drop=-1.0)  # nothing can pass this
    assert not report.passed
    assert (out / "tiny_passd_fp32" / "manifest.json").read_bytes() == good
    rejected = out / "rejected" / "tiny_passd_fp32"
    assert report.artifacts[0].directory == str(rejected)
    assert load_manifest(rejected)["accuracy"]["passed"] is False
    assert (rejected / "report.md").is_file()
    # The runtime refuses the rejected one unless told otherwise.
    with pytest.raises(UncheckedArtifactError, match="failed its accuracy check"):
        Detector(rejected)
    assert "FAILED" in repr(Detector(rejected, allow_unchecked=True))

    assert _convert(checkpoint, out).passed  # a passing run clears the stale rejected copy
    assert not rejected.exists()


def test_an_inconclusive_check_never_replaces_a_conclusively_checked_artifact(checkpoint,
                                                                               tmp_path):
    out = tmp_path / "out"
    _convert(checkpoint, out)  # inconclusive (an untrained model), nothing there: in place
    in_place = out / "tiny_passd_fp32"
    manifest = json.loads((in_place / "manifest.json").read_text())
    assert manifest["accuracy"]["passed"] and manifest["accuracy"]["inconclusive"]
    del manifest["accuracy"]["inconclusive"]  # stands in for a real, conclusive check
    (in_place / "manifest.json").write_text(json.dumps(manifest))
    good = (in_place / "manifest.json").read_bytes()

    report = _convert(checkpoint, out)  # --allow-weak-reference again: a smoke test
    entry = report.artifacts[0]
    assert report.passed and entry.passed and entry.kept_instead == str(in_place)
    assert entry.directory == str(out / "rejected" / "tiny_passd_fp32")
    assert (in_place / "manifest.json").read_bytes() == good
    assert load_manifest(entry.directory)["accuracy"]["inconclusive"]
    text = (out / "report.md").read_text()
    assert "pass (inconclusive)" in text and "**Inconclusive checks**" in text
    assert f"not put in place: `{in_place}` holds a conclusively checked artifact" in text


def test_the_next_run_cleans_up_after_a_killed_one(checkpoint, tmp_path):
    out = tmp_path / "out"
    _convert(checkpoint, out)
    # What kills at various moments leave behind (see edgedet.artifact.write_artifact):
    (out / ".work-abc123").mkdir()
    (out / ".work-abc123" / "model.onnx").write_bytes(b"x" * 1000)
    (out / ".tiny_passd_fp32.new-q1w2").mkdir()
    (out / ".report.json.e4r5.tmp").write_text("{")
    (out / "rejected").mkdir()
    (out / "rejected" / ".tiny_passd_int8.new-zz").mkdir()
    # A kill between the two renames of the portable swap: the artifact sits in the backup.
    (out / "tiny_passd_fp32").rename(out / ".tiny_passd_fp32.old-t5y6")
    _convert(checkpoint, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == [".lock", "comparison.png", "rejected", "report.json", "report.md",
                     "tiny_passd_fp32"]
    assert list((out / "rejected").iterdir()) == []
    assert load_manifest(out / "tiny_passd_fp32")["accuracy"]["passed"] is True


def test_two_runs_never_write_one_folder(checkpoint, tmp_path):
    out = tmp_path / "out"
    with exclusive_lock(out, "train/main.py"), pytest.raises(
            DirectoryBusyError, match=r"quantize/run\.py cannot write to .*: another process, "
                                      rf"train/main\.py \(pid {os.getpid()}\), is writing"):
        _convert(checkpoint, out)  # e.g. a training run's folder, while it trains
    assert not list(out.glob("tiny_*"))


def test_report_lists_where_each_artifact_went(checkpoint, tmp_path):
    out = tmp_path / "out"
    _convert(checkpoint, out, max_drop=-1.0)
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    assert report["artifacts"][0]["directory"].endswith("rejected/tiny_passd_fp32")
    assert not (out / "tiny_passd_fp32").exists()  # never a failed artifact at the name


def test_a_checkpoint_replaced_while_it_is_read_is_refused(checkpoint, tmp_path, monkeypatch):
    import shutil

    import quantize.convert as convert_module

    stem = tmp_path / "ckpt" / "tiny"
    stem.parent.mkdir()
    shutil.copy(checkpoint, stem.with_suffix(".safetensors"))
    shutil.copy(checkpoint.with_suffix(".json"), stem.with_suffix(".json"))
    original = convert_module.build_from_checkpoint

    def build_then_a_trainer_saves(path):  # training's next save lands meanwhile
        built = original(path)
        data = bytearray(stem.with_suffix(".safetensors").read_bytes())
        data[-1] ^= 1
        stem.with_suffix(".safetensors").write_bytes(bytes(data))
        return built

    monkeypatch.setattr(convert_module, "build_from_checkpoint", build_then_a_trainer_saves)
    with pytest.raises(CheckpointError, match="changed while it was read"):
        _convert(stem, tmp_path / "out")
    assert not (tmp_path / "out").exists()
