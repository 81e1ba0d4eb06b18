import os

import pytest

from benchmarks.common.timing import MIN_CALLS_PER_PLACEMENT, Timed, time_interleaved
from benchmarks.core_latency import FAR_NS, CoreLatencyProbe, placement


def test_placement_needs_both_readings_on_one_side():
    assert placement(200.0, 250.0) == "near"
    assert placement(FAR_NS, 900.0) == "far"  # the threshold itself counts as far
    assert placement(200.0, 400.0) is None and placement(400.0, 200.0) is None
    assert placement(None, 200.0) is None and placement(200.0, None) is None


class _ScriptedProbe:
    """Readings in a fixed order, as if the CPUs moved apart and back."""

    def __init__(self, readings):
        self.readings = list(readings)

    def measure(self):
        return self.readings.pop(0)


def test_each_items_calls_get_the_placement_read_around_them():
    items = [Timed("t", name, "rt", "fp32", run=lambda: None, detect=detect)
             for name, detect in (("a", lambda: None), ("b", None))]
    # One reading before the first item, then one after each item of each round.
    probe = _ScriptedProbe([200, 210, 500, 600, 650])
    readings = time_interleaved(items, rounds=2, calls=3, warmup=1, probe=probe)

    assert readings == [200, 210, 500, 600, 650] and not probe.readings
    a, b = items
    assert a.runtime_where == ["near"] * 3 + ["far"] * 3  # 200 / 210, then 500 / 600
    assert a.detect_where == a.runtime_where and len(a.detect_ms) == 6
    assert b.runtime_where == [None] * 3 + ["far"] * 3  # 210 / 500 disagree, then 600 / 650
    assert b.detect_where == [] and len(b.runtime_ms) == 6


def test_a_placement_median_needs_enough_calls():
    item = Timed("t", "a", "rt", "fp32", run=lambda: None)
    count = MIN_CALLS_PER_PLACEMENT
    item.runtime_ms = [1.0] * count + [5.0] * (count - 1) + [9.0]
    item.runtime_where = ["near"] * count + ["far"] * (count - 1) + [None]
    assert item.p50("near") == 1.0
    assert item.p50("far") is None  # one call short
    assert item.p50() == 3.0 and item.detect_p50() is None  # (1 + 5) / 2, all calls


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_probe_measures_a_round_trip_and_leaves_the_callers_affinity():
    affinity = os.sched_getaffinity(0)
    with CoreLatencyProbe(trips=1000) as probe:
        assert probe.available
        first, second = probe.measure(), probe.measure()
        helper = probe._helper
    # Physical bounds, not speed: a cache-line handover takes more than 10 ns and, even on
    # a loaded machine, 1 000 of them well under a second each.
    assert 10 < first < 1e6 and 10 < second < 1e6
    assert os.sched_getaffinity(0) == affinity
    assert helper.poll() is not None  # the helper interpreter has exited


def test_probe_is_unavailable_with_one_cpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    probe = CoreLatencyProbe()
    assert not probe.available and probe.measure() is None
    probe.close()  # nothing to close


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_probe_closes_cleanly_after_its_helper_died():
    probe = CoreLatencyProbe(trips=1000)
    probe._helper.kill()
    probe._helper.wait()
    probe.close()  # neither hangs nor raises
    assert not probe.available and probe.measure() is None
