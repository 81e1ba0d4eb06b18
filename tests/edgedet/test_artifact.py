import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from edgedet.anchors import GridAnchorSpec
from edgedet.artifact import (
    Artifact,
    ManifestError,
    accuracy_section,
    check_summary,
    load_manifest,
    make_manifest,
    sha256_file,
    validate_manifest,
)
from edgedet.artifact_writer import write_artifact
from edgedet.options import APPLICATION_SCORE_THRESHOLD
from edgedet.preprocess import PreprocessConfig

MODEL_BYTES = bytes(range(256)) * 40  # stands in for a model file: the manifest only hashes it


def _manifest(files: dict[str, str]) -> dict:
    spec = GridAnchorSpec(image_size=(32, 32), feature_sizes=((4, 4),), strides=(8,),
                          base_sizes=(32.0,))
    return {
        "format_version": 1,
        "name": "m",
        "architecture": "tiny",
        "head_family": "ssd",
        "class_names": ["a", "b"],
        "preprocess": PreprocessConfig(input_size=(32, 32)).to_dict(),
        "anchor_spec": spec.to_dict(),
        "box_coder_weights": [10, 10, 5, 5],
        "outputs": [{"name": "cls_logits", "shape": [1, 16, 3], "meaning": "logits"},
                    {"name": "box_deltas", "shape": [1, 16, 4], "meaning": "deltas"}],
        "input": {"name": "images", "shape": [1, 3, 32, 32], "dtype": "float32"},
        "postprocess": {"score_threshold": 0.1, "nms_mode": "hard"},
        "precision": "int8",
        "backend": "onnxruntime",
        "files": files,
        "source": {"checkpoint": "x"},
        "accuracy": None,
    }


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    (tmp_path / "model.onnx").write_bytes(MODEL_BYTES)
    manifest = _manifest({"model.onnx": hashlib.sha256(MODEL_BYTES).hexdigest()})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def _edit(artifact: Path, **changes: object) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest.update(changes)
    (artifact / "manifest.json").write_text(json.dumps(manifest))


def test_sha256_file_known_value(tmp_path: Path) -> None:
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_a_valid_artifact_loads(artifact: Path) -> None:
    manifest = load_manifest(artifact)
    assert manifest["name"] == "m" and manifest["class_names"] == ["a", "b"]


def test_flipped_byte_names_the_file(artifact: Path) -> None:
    data = bytearray(MODEL_BYTES)
    data[100] ^= 0x80
    (artifact / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"model file .*model\.onnx is corrupt or truncated"):
        load_manifest(artifact)
    load_manifest(artifact, verify_files=False)  # hashing can be skipped explicitly


def test_truncated_file_names_the_file_and_its_size(artifact: Path) -> None:
    (artifact / "model.onnx").write_bytes(MODEL_BYTES[:1000])
    with pytest.raises(ManifestError, match=r"model\.onnx is corrupt or truncated.*1000 bytes"):
        load_manifest(artifact)


def test_missing_model_file_names_it(artifact: Path) -> None:
    (artifact / "model.onnx").unlink()
    with pytest.raises(ManifestError, match=r"model file missing: .*model\.onnx"):
        load_manifest(artifact)


def test_missing_or_broken_manifest(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="artifact directory not found"):
        load_manifest(tmp_path / "nowhere")
    (artifact / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"manifest\.json is not valid JSON"):
        load_manifest(artifact)
    (artifact / "manifest.json").unlink()
    with pytest.raises(ManifestError, match=r"manifest\.json not found"):
        load_manifest(artifact)


@pytest.mark.parametrize(("changes", "message"), [
    ({"format_version": 4}, "format_version 4 is not supported .*a newer edgedet"),
    ({"format_version": True}, "format_version True is not supported"),
    ({"head_family": "yolo"}, "head_family 'yolo'"),
    ({"class_names": []}, "class_names must be a non-empty list"),
    ({"precision": "int4"}, "precision 'int4'"),
    ({"backend": "tvm"}, "backend 'tvm'"),
    ({"box_coder_weights": [10, 10, 5]}, "box_coder_weights must be 4 positive numbers"),
    ({"preprocess": {"input_size": [0, 32]}}, "bad preprocess section"),
    ({"anchor_spec": {"kind": "hexagonal"}}, "bad anchor_spec section"),
    ({"outputs": [{"name": "cls_logits", "shape": [1, 17, 3]}]},
     "'cls_logits' has 17 anchors but anchor_spec generates 16"),
    ({"files": {"../model.onnx": "0" * 64}}, "must be relative and inside"),
    ({"files": {"model.onnx": "abc"}}, "must be 64 hex digits"),
    ({"postprocess": {"nms_mode": "fast"}}, "postprocess: nms_mode must be one of"),
    ({"postprocess": {"iou_threshold": 5}}, "postprocess: iou_threshold must be in"),
    ({"preprocess": {"input_size": [64, 48], "mean": [float("nan"), 0, 0], "std": [1, 1, 1]}},
     "mean and std need 3 finite values"),
    ({"preprocess": {"input_size": [64, 48], "pad_value": 999}}, "pad_value must be in 0..255"),
    ({"preprocess": {"input_size": [64, 48]}}, r"preprocess lacks \['mean', 'std'\]"),
    ({"preprocess": {"input_size": [64, 48], "interpolation": "lanczos"}},
     "interpolation must be 'area' or 'linear'"),
    ({"accuracy": {"AP": "high", "reference_AP": 1, "delta_AP": 0, "max_drop": 1,
                   "passed": True, "eval_data": {}}}, "accuracy.AP must be a number"),
    ({"double_scale": {"input_size": 5, "anchor_spec": {}, "files": ["m.onnx"]}},
     "double_scale.input_size 5 is not twice"),
    ({"application": {"score_threshold": 1.5}}, r"application: score_threshold must be in"),
    ({"application": {"iou_threshold": 5.0}}, r"application: iou_threshold must be in"),
    ({"application": [0.4]}, "application must be an object"),
    ({"backend": ["onnxruntime"]}, r"backend \['onnxruntime'\] is not one of"),
    ({"precision": {"int8": 1}}, "precision .* is not one of"),
    ({"box_coder_weights": [10 ** 400, 10, 5, 5]}, "box_coder_weights must be 4 positive"),
    ({"outputs": [{"name": "cls_logits", "shape": [16, 3]}]}, "needs a shape"),
    ({"input": {"name": "images", "shape": [1, 3, 32, 64]}}, "does not match preprocess"),
    ({"accuracy": {"AP": 1.0}}, "accuracy section lacks"),
    ({"accuracy": {"AP": 1, "reference_AP": 1, "delta_AP": 0, "max_drop": 1,
                   "passed": "yes", "eval_data": {}}}, "accuracy.passed must be"),
])
def test_invalid_fields_are_named(artifact: Path, changes: dict, message: str) -> None:
    _edit(artifact, **changes)
    with pytest.raises(ManifestError, match=message):
        load_manifest(artifact)


def test_missing_fields_are_listed() -> None:
    manifest = _manifest({"model.onnx": "0" * 64})
    del manifest["anchor_spec"], manifest["files"]
    with pytest.raises(ManifestError, match=r"x\.json: missing field\(s\) \['anchor_spec', "
                                            r"'files'\]"):
        validate_manifest(manifest, source="x.json")
    with pytest.raises(ManifestError, match="must hold a JSON object"):
        validate_manifest([1, 2])


def _without_files() -> dict:
    manifest = _manifest({})
    del manifest["files"]
    return manifest


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_make_manifest_fills_the_contract_and_validates() -> None:
    fields = {k: v for k, v in _without_files().items()
              if k not in ("format_version", "input", "kept_out_of_int8")}
    manifest = make_manifest(**fields)
    assert manifest["input"] == {"name": "images", "shape": [1, 3, 32, 32], "dtype": "float32"}
    assert manifest["format_version"] == 1 and manifest["kept_out_of_int8"] == []
    # Linear shrinking, which a version-1 reader would silently read as area: version 2.
    linear = make_manifest(**{**fields, "preprocess": {**fields["preprocess"],
                                                      "interpolation": "linear"}})
    assert linear["format_version"] == 2
    for version in (1, 2):  # both read, a version-1 linear manifest included
        validate_manifest({**linear, "format_version": version, "files": {}},
                          require_files=False)
    assert manifest["application"] == {"score_threshold": APPLICATION_SCORE_THRESHOLD}
    assert manifest["postprocess"]["score_threshold"] == 0.1  # the evaluation setting stays
    with pytest.raises(ManifestError, match="precision 'int4'"):
        make_manifest(**{**fields, "precision": "int4"})


def test_accuracy_section_passes_within_max_drop() -> None:
    eval_data = {"data": "synthetic:1"}
    assert accuracy_section({"AP": 29.0, "reference_AP": 30.0, "delta_AP": -1.0}, 1.0,
                            eval_data)["passed"] is True
    failed = accuracy_section({"AP": 28.9, "reference_AP": 30.0, "delta_AP": -1.1}, 1.0,
                              eval_data)
    assert failed["passed"] is False and failed["eval_data"] == eval_data


def test_a_check_whose_reference_scores_no_more_than_the_drop_fails() -> None:
    # A reference at AP 0 (an untrained model, eval images without its classes): an artifact
    # detecting nothing would show no drop, so the check proves nothing.
    for reference in (0.0, 1.0):
        vacuous = accuracy_section({"AP": 0.0, "reference_AP": reference,
                                    "delta_AP": -reference}, 1.0, {})
        assert vacuous["passed"] is False
        assert "an artifact that detects nothing would pass" in vacuous["inconclusive"]
        assert "inconclusive: the reference scores AP" in check_summary({"accuracy": vacuous})
    assert accuracy_section({"AP": 1.1, "reference_AP": 1.1, "delta_AP": 0.0}, 1.0,
                            {})["passed"] is True


def test_write_artifact_hashes_and_manifest_last(tmp_path: Path) -> None:
    model_file = _file(tmp_path / "exported.onnx", b"onnx bytes")
    report = _file(tmp_path / "r.md", b"# report")
    out = write_artifact(tmp_path / "art", {"model.onnx": model_file}, _without_files(),
                         extra_files={"report.md": report})
    assert sorted(os.listdir(out)) == ["manifest.json", "model.onnx", "report.md"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {"model.onnx": hashlib.sha256(b"onnx bytes").hexdigest()}
    assert load_manifest(out)["name"] == "m"


def test_staged_artifact_is_what_ships(tmp_path: Path) -> None:
    source = _file(tmp_path / "exported.onnx", b"checked bytes")
    staged = Artifact.stage(tmp_path / "staged", {"model.onnx": source}, _without_files())
    assert not (staged.directory / "manifest.json").exists()  # staged only, not written
    assert staged.files == {"model.onnx": tmp_path / "staged" / "model.onnx"}
    accuracy = accuracy_section({"AP": 30.0, "reference_AP": 30.0, "delta_AP": 0.0}, 1.0, {})
    out = write_artifact(tmp_path / "art", staged.files,
                         {**staged.manifest, "accuracy": accuracy})
    assert Artifact.load(out).manifest["accuracy"]["passed"] is True
    # A model file changed after the check does not ship.
    (staged.directory / "model.onnx").write_bytes(b"other bytes")
    with pytest.raises(ManifestError, match="differ from the manifest's hashes"):
        write_artifact(tmp_path / "art2", staged.files, dict(staged.manifest))
    assert not (tmp_path / "art2").exists()


def test_replacing_an_artifact_is_atomic(tmp_path: Path) -> None:
    xml = _file(tmp_path / "a.xml", b"<net/>")
    weights = _file(tmp_path / "a.bin", b"\x00\x01")
    target = tmp_path / "out" / "art"
    write_artifact(target, {"model.onnx": _file(tmp_path / "old.onnx", b"old")},
                   {**_without_files(), "name": "v1"})
    write_artifact(target, {"model.xml": xml, "model.bin": weights},
                   {**_without_files(), "name": "v2", "backend": "openvino"})
    assert sorted(os.listdir(target)) == ["manifest.json", "model.bin", "model.xml"]
    assert json.loads((target / "manifest.json").read_text())["name"] == "v2"
    assert os.listdir(target.parent) == ["art"]  # no staging or backup directory left

    # A failure while building the new one leaves the good artifact as it was.
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}
    with pytest.raises(ManifestError, match="not found"):
        write_artifact(target, {"model.onnx": tmp_path / "missing.onnx"}, _without_files())
    with pytest.raises(ManifestError, match="plain file name"):
        write_artifact(target, {"../model.onnx": xml}, _without_files())
    with pytest.raises(ManifestError, match="plain file name"):
        write_artifact(target, {"manifest.json": xml}, _without_files())
    with pytest.raises(ManifestError, match="at least one model file"):
        write_artifact(target, {}, _without_files())
    with pytest.raises(ManifestError, match="precision"):
        write_artifact(target, {"model.onnx": xml}, {**_without_files(), "precision": "int4"})
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == before
    assert os.listdir(target.parent) == ["art"]


@pytest.mark.skipif(sys.platform != "linux", reason="the one-step swap is renameat2 (Linux)")
def test_replacing_never_leaves_the_name_missing(tmp_path: Path, monkeypatch) -> None:
    from edgedet import artifact_writer as artifact_module

    target = tmp_path / "art"
    write_artifact(target, {"model.onnx": _file(tmp_path / "a.onnx", b"one")}, _without_files())
    seen_missing = []
    real_replace = os.replace

    def watching_replace(src, dst):  # what a kill between two renames would leave
        real_replace(src, dst)
        seen_missing.append(not target.exists())

    monkeypatch.setattr(artifact_module.os, "replace", watching_replace)
    write_artifact(target, {"model.onnx": _file(tmp_path / "b.onnx", b"two")}, _without_files())
    assert (target / "model.onnx").read_bytes() == b"two"
    assert not any(seen_missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "art", "b.onnx"]


def test_clean_leftovers_restores_a_backup_and_removes_half_copies(tmp_path: Path) -> None:
    from edgedet.artifact_writer import clean_leftovers

    write_artifact(tmp_path / "a", {"model.onnx": _file(tmp_path / "m", b"m")},
                   _without_files())
    (tmp_path / "a").rename(tmp_path / ".a.old-123")  # killed between the two renames
    (tmp_path / ".b.new-456").mkdir()  # killed while copying
    (tmp_path / "b").mkdir()
    (tmp_path / ".b.old-789").mkdir()  # killed after the swap, before deleting the backup
    (tmp_path / ".manifest.json.abc.tmp").write_text("{")  # killed mid-write
    done = clean_leftovers(tmp_path)
    assert len(done) == 4 and any("restored a" in d for d in done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "m"]
    assert load_manifest(tmp_path / "a")["name"] == "m"
