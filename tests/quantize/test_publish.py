import json
from pathlib import Path

import numpy as np
import pytest

from edgedet._io import write_json_atomic
from edgedet.artifact import ManifestError, load_manifest, sha256_file
from edgedet.detector import Detector
from edgedet.double_scale import DoubleScaleError
from quantize.publish import main, publish
from tests.edgedet.test_detector_double_scale import write_constant_artifact
from tests.edgedet.tiny_artifacts import TinyHead, write_artifact


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    out = write_artifact(tmp_path / "run" / "tiny_int8", TinyHead("ssd", 3), "ssd")
    (out / "report.md").write_text("# report\n")
    # The tiny model's own check cannot tell (its reference scores AP 0); here it stands
    # for a conclusively checked artifact.
    manifest = load_manifest(out)
    manifest["accuracy"] = {k: v for k, v in manifest["accuracy"].items()
                            if k != "inconclusive"}
    write_json_atomic(out / "manifest.json", manifest)
    return out


def test_publish_copies_renames_and_stays_loadable(artifact: Path, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    out = publish(artifact, "tiny_model", zoo)
    assert out == zoo / "tiny_model"
    manifest = load_manifest(out)  # hashes verified
    assert manifest["name"] == "tiny_model"
    assert (out / "report.md").read_text() == "# report\n"
    frame = np.zeros((48, 64, 3), np.uint8)
    assert len(Detector(out).detect(frame)) == len(Detector(artifact).detect(frame))


def test_publish_refuses_a_corrupt_artifact_and_keeps_the_old_entry(artifact: Path,
                                                                   tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    publish(artifact, "tiny_model", zoo)
    model = artifact / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(ManifestError, match=r"model\.onnx"):
        publish(artifact, "tiny_model", zoo)
    load_manifest(zoo / "tiny_model")  # the published copy is intact
    assert main([str(artifact), "--name", "tiny_model", "--zoo-dir", str(zoo)]) == 2
    assert main([str(artifact), "--name", "bad name", "--zoo-dir", str(zoo)]) == 2


def test_publish_refuses_an_unchecked_artifact(tmp_path: Path) -> None:
    unchecked = write_artifact(tmp_path / "run" / "u", TinyHead("ssd", 3), "ssd", checked=False)
    with pytest.raises(ManifestError, match="no accuracy check") as refused:
        publish(unchecked, "u", tmp_path / "zoo")
    assert "allow-unchecked" not in str(refused.value)  # publish has no such flag
    assert "the zoo takes only artifacts that passed" in str(refused.value)
    assert not (tmp_path / "zoo" / "u").exists()
    assert main([str(unchecked), "--name", "u", "--zoo-dir", str(tmp_path / "zoo")]) == 2


def test_publish_stops_while_another_publish_holds_the_zoo(artifact: Path,
                                                           tmp_path: Path) -> None:
    from edgedet._io import DirectoryBusyError, exclusive_lock

    zoo = tmp_path / "zoo"
    with exclusive_lock(zoo, "quantize/publish.py"):
        with pytest.raises(DirectoryBusyError, match=r"another process, quantize/publish\.py"):
            publish(artifact, "tiny_model", zoo)
        assert main([str(artifact), "--name", "tiny_model", "--zoo-dir", str(zoo)]) == 2
    assert [p.name for p in zoo.iterdir()] == [".lock"]  # nothing staged, nothing cleaned
    publish(artifact, "tiny_model", zoo)  # and once the other one is done
    assert (zoo / "tiny_model" / "manifest.json").is_file()


@pytest.mark.parametrize("second_check", ["passed", "failed", "missing", "inconclusive"])
def test_publish_ships_a_2x_model_only_if_its_own_check_passed(tmp_path: Path, capsys,
                                                               second_check: str) -> None:
    source = write_constant_artifact(tmp_path / "run" / "constant")
    manifest_path = source / "manifest.json"
    manifest = load_manifest(source)
    if second_check != "passed":
        accuracy = manifest["double_scale"]["accuracy"]
        manifest["double_scale"]["accuracy"] = (
            None if second_check == "missing" else {**accuracy, "passed": False}
            if second_check == "failed" else {**accuracy, "inconclusive": "a weak reference"})
    write_json_atomic(manifest_path, manifest)
    (source / "report.md").write_text("# Accuracy report\n\n| 2x row |\n")
    write_json_atomic(source / "report.json", {"name": "constant", "double_scale": {"ap": 1}})
    out = publish(source, "constant", tmp_path / "zoo")
    published = load_manifest(out)  # hashes verified
    frame = np.zeros((64, 64, 3), np.uint8)
    assert len(Detector(out).detect(frame)) == len(Detector(source).detect(frame))
    if second_check == "passed":
        assert published["double_scale"] == manifest["double_scale"]
        assert sha256_file(out / "model_2x.onnx") == manifest["files"]["model_2x.onnx"]
        assert capsys.readouterr().err == ""
        return
    assert published["double_scale"] is None
    assert list(published["files"]) == ["model.onnx"]
    assert not (out / "model_2x.onnx").exists()
    assert "publishing without it" in capsys.readouterr().err
    why = {"failed": "failed its accuracy check", "missing": "has no accuracy check",
           "inconclusive": "passed an inconclusive accuracy check"}[second_check]
    report_md = (out / "report.md").read_text()
    assert report_md.startswith("> **Published as zoo model `constant` without its "
                                "double-scale 2x model** (model_2x.onnx): that model " + why)
    assert report_md.endswith("# Accuracy report\n\n| 2x row |\n")
    report = json.loads((out / "report.json").read_text())
    assert report == {"published_without": {"double_scale": {"files": ["model_2x.onnx"],
                                                             "why": why}},
                      "name": "constant", "double_scale": {"ap": 1}}
    assert (source / "report.md").read_text() == "# Accuracy report\n\n| 2x row |\n"
    with pytest.raises(DoubleScaleError, match="no 2x model"):
        Detector(out, double_scale=True)


def test_an_inconclusive_check_and_stray_files_do_not_reach_the_zoo(artifact: Path,
                                                                   tmp_path: Path, capsys) -> None:
    # An inconclusive check (--allow-weak-reference) was published with a warning only, and
    # every file of the folder travelled (a lock, temporaries, a stray array).
    manifest = load_manifest(artifact)
    manifest["accuracy"] = {**manifest["accuracy"], "inconclusive": "the reference scores 0"}
    manifest["files"] = {k: v.upper() for k, v in manifest["files"].items()}  # (allowed)
    write_json_atomic(artifact / "manifest.json", manifest)
    for stray in (".lock", ".report.json.k3j2.tmp", "scratch.npy"):
        (artifact / stray).write_text("x")
    (artifact / "comparison.png").write_bytes(b"png")
    with pytest.raises(ValueError, match=r"inconclusive .*--allow-inconclusive"):
        publish(artifact, "tiny", tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "tiny").exists()
    assert main([str(artifact), "--name", "tiny", "--zoo-dir", str(tmp_path / "zoo"),
                 "--allow-inconclusive"]) == 0
    assert "was inconclusive" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "zoo" / "tiny").iterdir()) == [
        "comparison.png", "manifest.json", "model.onnx", "report.md"]


def test_a_killed_publish_s_hidden_folders_are_no_models_and_are_cleaned(
        artifact: Path, tmp_path: Path, monkeypatch) -> None:
    from edgedet import zoo
    from edgedet.artifact_writer import clean_leftovers

    root = tmp_path / "zoo"
    publish(artifact, "tiny", root)
    staged = root / ".tiny.new-abc123"  # a staged copy a kill left, manifest and all
    staged.mkdir()
    for f in (root / "tiny").iterdir():
        (staged / f.name).write_bytes(f.read_bytes())
    link = root / ".other.new-def456"  # an entry that was a link, swapped out
    link.symlink_to(root / "tiny")
    monkeypatch.setattr(zoo, "ZOO_DIR", root)
    assert zoo.list_models() == ["tiny"]
    done = clean_leftovers(root)
    assert sorted(done) == ["removed unfinished .other.new-def456",
                            "removed unfinished .tiny.new-abc123"]
    assert sorted(p.name for p in root.iterdir() if p.name != ".lock") == ["tiny"]
    assert (root / "tiny" / "manifest.json").is_file()


@pytest.mark.parametrize("name", ["Tiny", "tiny-model", "ｔｉｎｙ", "con", "com1", "__pycache__",
                                  "1tiny", "", "../x", "a/b"])
def test_zoo_names_are_lower_case_ascii_words(artifact: Path, tmp_path: Path,
                                              name: str) -> None:
    # isidentifier() let through names one folder holds on a case-insensitive disk beside
    # another ("Tiny" / "tiny"), full-width letters, Windows device names, __pycache__.
    with pytest.raises(ValueError, match="lower-case letters, digits and underscores"):
        publish(artifact, name, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").iterdir())


def test_a_backend_suffix_in_the_name_must_be_the_artifact_s_backend(artifact: Path,
                                                                     tmp_path: Path) -> None:
    # Detector("tiny", backend="openvino") loads an entry named tiny_openvino for OpenVINO.
    with pytest.raises(ValueError, match="says backend 'openvino', but the artifact is a "
                                         "onnxruntime build"):
        publish(artifact, "tiny_openvino", tmp_path / "zoo")
    assert publish(artifact, "tiny_onnxruntime", tmp_path / "zoo").name == "tiny_onnxruntime"


def test_an_interrupted_publish_leaves_the_entry_as_it_was(artifact: Path, tmp_path: Path,
                                                          monkeypatch, capsys) -> None:
    # (A SIGTERM is an interrupt too when publish.py runs as its own command.)
    import edgedet.artifact_writer as writer

    zoo = tmp_path / "zoo"
    publish(artifact, "tiny", zoo)
    before = (zoo / "tiny" / "manifest.json").read_bytes()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_replace_directory", interrupted)
    assert main([str(artifact), "--name", "tiny", "--zoo-dir", str(zoo)]) == 130
    assert "interrupted; the zoo entry is as it was" in capsys.readouterr().err
    assert (zoo / "tiny" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in zoo.iterdir()) == [".lock", "tiny"]  # no staged copy left
