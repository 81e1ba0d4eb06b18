"""report.md's accuracy-control section: a step table per artifact, and what was chosen."""

from quantize.report import _control_lines


def step(index: int, passed: bool, delta: float) -> dict:
    return {"step": index, "action": "plain PTQ" if index == 0 else "+2 float: a, b",
            "calibration": "minmax", "float_layers": 2 * index, "delta_AP": delta,
            "AP": 30.0 + delta, "latency_p50_ms": 10.0, "passed": passed}


def test_a_passing_artifact_is_shipped_and_a_failing_one_is_called_rejected():
    floated = [{"node": "a", "rank": 1, "sqnr_db": 20.0}, {"node": "b", "rank": 2,
                                                          "sqnr_db": 25.0}]
    text = "\n".join(_control_lines({
        "m_int8": {"steps": [step(0, False, -1.5), step(1, True, -0.5)],
                   "calibration": None, "float_layers": floated},
        "m_int8, 2x model (double-scale testing)": {
            "steps": [step(0, False, -1.5), step(1, False, -1.2)], "calibration": None,
            "float_layers": floated}}))
    first, second = text.split("### m_int8, 2x model")
    assert "| 1 | +2 float: a, b | minmax | 2 | -0.50 | 29.50 | 10.00 | pass |" in first
    assert "Shipped: calibration `minmax`, 2 weight layer(s)" in first  # the step's method
    assert "Shipped" not in second
    assert "Best step (outside `--max-drop`: rejected)" in second and "| miss |" in second
    assert _control_lines({}) == []


def test_a_scope_put_back_in_float_is_named_with_the_shipped_step():
    text = "\n".join(_control_lines({
        "m_int8": {"steps": [step(0, False, -1.5), step(1, True, -0.5)],
                   "calibration": None, "float_categories": ["sampling_reads"],
                   "float_layers": []}}))
    assert ("Shipped: calibration `minmax`, `sampling_reads` back in float (beyond the "
            "target's own scope; \"Kept out of INT8\" lists them too), 0 weight layer(s) "
            "returned to float.") in text
