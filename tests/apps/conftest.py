"""Fixtures for the apps' tests: apps/capture.py and apps/webcam.py as the apps import them,
tiny models, and FIFOs fed by a writer thread."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.apps.helpers import APPS, WEBCAM_PY, FifoFeeder
from tests.edgedet.tiny_artifacts import (
    PLANTED_DELTAS,
    PlantedObjectHead,
    TinyHead,
    planted_anchor,
    tiny_anchor_spec,
    write_artifact,
)


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """apps/capture.py, imported the way the apps import it: as a module beside them.

    Reconnect delays are shrunk (0.01, 0.02, 0.04 s); the timeouts are not, so that a slow
    machine never sees a stall that is not there. Tests of stalls shrink those themselves.
    """
    monkeypatch.syspath_prepend(str(APPS))
    module = importlib.import_module("capture")
    monkeypatch.setenv("EDGEDET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(module, "DEMO_FRAMES", 12)
    monkeypatch.setattr(module, "RECONNECT_BASE_DELAY_S", 0.01)
    return module


@pytest.fixture
def app(capture):
    """A fresh apps/webcam.py module (it imports ``capture``, found through the fixture)."""
    spec = importlib.util.spec_from_file_location("webcam_app", WEBCAM_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    anchor, _ = planted_anchor()
    planted = PlantedObjectHead(tiny_anchor_spec().num_anchors, anchor, 1, PLANTED_DELTAS)
    return {"tiny": write_artifact(root / "tiny", TinyHead("ssd"), "ssd"),
            "planted": write_artifact(root / "planted", planted, "ssd")}


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A named pipe in ``tmp_path``."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes (FIFOs) on this platform")
    path = tmp_path / "cam.fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def feed(fifo: Path) -> Iterator[Callable[..., FifoFeeder]]:
    """Starts a FifoFeeder on ``fifo`` (keyword arguments as FifoFeeder's); stopped after
    the test."""
    feeders: list[FifoFeeder] = []

    def start(**kwargs) -> FifoFeeder:
        feeder = FifoFeeder(fifo, **kwargs)
        feeder.start()
        feeders.append(feeder)
        return feeder

    yield start
    for feeder in feeders:
        feeder.stop()
