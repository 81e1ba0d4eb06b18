"""The model a Detector runs is the one its artifact check read: one handle of the folder for
the manifest and the files, and the runtimes load those bytes, not the files again."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from edgedet import Detector
from edgedet.artifact import MANIFEST_NAME, Artifact
from edgedet.artifact import _FolderReader as FolderReader
from edgedet.backends import BACKENDS
from tests.edgedet.tiny_artifacts import TinyHead, write_artifact

FRAME = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _same(a, b) -> bool:
    return (np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.class_ids, b.class_ids))


def test_a_folder_swapped_while_it_is_read_gives_one_artifact_whole(tmp_path: Path,
                                                                    monkeypatch) -> None:
    # quantize/publish.py replaces a zoo entry by exchanging two folders; a reader that
    # opened each file by its path got the old manifest with the new model (2.4% of loads
    # in a review's race), or a spurious "corrupt" error.
    old = write_artifact(tmp_path / "entry", TinyHead("ssd", seed=0), "ssd")
    new = write_artifact(tmp_path / "new", TinyHead("ssd", seed=1), "ssd")
    assert (old / "model.onnx").read_bytes() != (new / "model.onnx").read_bytes()
    expected_manifest = json.loads((old / MANIFEST_NAME).read_text())
    expected_model = (old / "model.onnx").read_bytes()
    read = FolderReader.read

    def read_then_swap(self: FolderReader, name: str) -> bytes | None:
        data = read(self, name)
        if name == MANIFEST_NAME and not (tmp_path / "retired").exists():
            os.rename(old, tmp_path / "retired")  # the exchange, in two renames
            os.rename(new, old)
        return data

    monkeypatch.setattr(FolderReader, "read", read_then_swap)
    loaded = Artifact.load(old)
    assert loaded.manifest == expected_manifest
    assert loaded.contents["model.onnx"] == expected_model


@pytest.mark.parametrize("kind", ["openvino", "per_thread_onnxruntime"])
def test_the_runtime_runs_the_checked_bytes_even_if_the_files_change(
        tmp_path: Path, monkeypatch, kind: str) -> None:
    # OpenVINO maps its weights file (rewritten in place: other results; truncated: SIGBUS),
    # and a per-thread backend (TFLite, TensorRT) loaded the file again, unchecked, for each
    # new thread.
    if kind == "openvino":
        pytest.importorskip("openvino")
        artifact = write_artifact(tmp_path / "a", TinyHead("ssd"), "ssd", backend="openvino")
        backend = "openvino"
    else:
        artifact = write_artifact(tmp_path / "a", TinyHead("ssd"), "ssd")
        monkeypatch.setitem(BACKENDS, "ort_per_thread", dataclasses.replace(
            BACKENDS["onnxruntime"], name="ort_per_thread", session_per_thread=True))
        backend = "ort_per_thread"
    detector = Detector(artifact, backend=backend, score_threshold=0.0)
    before = detector.detect(FRAME)
    assert len(before)
    for name in json.loads((artifact / MANIFEST_NAME).read_text())["files"]:
        size = (artifact / name).stat().st_size
        with open(artifact / name, "r+b") as handle:  # in place: what an mmap would see
            handle.write(bytes(size))
    results = [detector.detect(FRAME)]
    other = threading.Thread(target=lambda: results.append(detector.detect(FRAME)))
    other.start()
    other.join()
    assert len(results) == 2 and all(_same(before, result) for result in results)


def test_what_is_not_a_regular_file_is_missing_and_leaves_no_descriptor(tmp_path: Path) -> None:
    # A folder where a file should be raised IsADirectoryError and leaked its descriptor; a
    # FIFO blocked the load for good.
    from edgedet.artifact import ManifestError

    artifact = write_artifact(tmp_path / "a", TinyHead("ssd"), "ssd")
    (artifact / "model.onnx").unlink()
    fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    for make in (lambda p: p.mkdir(), os.mkfifo):
        make(artifact / "model.onnx")
        with pytest.raises(ManifestError, match="model file missing"):
            Artifact.load(artifact)
        os.rmdir(artifact / "model.onnx") if (artifact / "model.onnx").is_dir() else \
            (artifact / "model.onnx").unlink()
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds


def test_threads_that_end_free_their_sessions(tmp_path: Path, monkeypatch) -> None:
    # A per-thread backend kept every ended thread's session until close() (a thread per
    # request grew without bound).
    import gc

    artifact = write_artifact(tmp_path / "a", TinyHead("ssd"), "ssd")
    monkeypatch.setitem(BACKENDS, "ort_per_thread", dataclasses.replace(
        BACKENDS["onnxruntime"], name="ort_per_thread", session_per_thread=True))
    detector = Detector(artifact, backend="ort_per_thread")
    for _ in range(5):
        thread = threading.Thread(target=lambda: detector.detect(FRAME))
        thread.start()
        thread.join()
    gc.collect()
    assert len(detector.backend._sessions) == 1  # the first thread's, which is still here
    detector.close()
    with pytest.raises(RuntimeError, match="closed"):
        detector.backend.run(np.zeros((1, 3, 48, 64), np.float32))


def test_a_backend_whose_constructor_predates_contents_still_loads(tmp_path: Path,
                                                                   monkeypatch) -> None:
    artifact = write_artifact(tmp_path / "a", TinyHead("ssd"), "ssd")
    monkeypatch.setitem(BACKENDS, "legacy", dataclasses.replace(
        BACKENDS["onnxruntime"], name="legacy",
        implementation="tests.edgedet.backends.toy_backend:LegacyOrtBackend"))
    assert _same(Detector(artifact, backend="legacy").detect(FRAME),
                 Detector(artifact).detect(FRAME))
