"""The run's metrics log: ``metrics.jsonl`` in the run directory (+ TensorBoard if installed).

One JSON object per line, each with a ``type`` (``"train"`` per step, ``"epoch"``, ``"eval"``)
and the global ``iteration`` it was written at; ``read_metrics`` reads one type back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgedet._io import write_bytes_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """JSON-lines log (rank 0), mirrored to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.path = out_dir / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.writer = None
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def truncate_from(self, next_iteration: int, drop_last_eval: bool = False) -> None:
        """Drop the records written at step ``next_iteration`` or later, before a resume.

        ``next_iteration`` is the resume state's step counter: the number of steps done, which
        is the index of the step the resumed run takes first. A record's ``iteration`` is the
        index of the step it was written at (the last finished step for ``epoch``/``eval``),
        so a record belongs to the resumed state exactly when its iteration is smaller.
        Records with a larger or equal index come from the part of the interrupted run that
        the resumed run repeats, and would otherwise appear twice.
        """
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A run killed in the middle of a write leaves a torn last line; it belongs to
                # the interrupted part of the run and is rewritten after the resume.
                continue
            if not isinstance(record, dict) or record.get("iteration", 0) >= next_iteration:
                continue
            if drop_last_eval and record.get("type") == "eval" and (
                    record.get("iteration") == next_iteration - 1):
                continue  # ``drop_last_eval``: the resumed run evaluates that epoch again
            kept.append(line)
        # Atomically: a write cut short (a full disk) must not cost the records kept.
        write_bytes_atomic(self.path, "".join(line + "\n" for line in kept).encode())

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = record.get("type", "train")
            for key, value in record.items():
                if isinstance(value, float | int) and key not in ("epoch", "iteration"):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record.get("iteration", 0))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out_dir: str | Path, kind: str = "train") -> list[dict[str, Any]]:
    """The records of one ``type`` in a run's ``metrics.jsonl``.

    A run killed in the middle of a write leaves a torn last line, which is skipped (as
    ``MetricsLog.truncate_from`` does); any other line that is not a JSON object is a
    ``ValueError`` naming the file and the line.
    """
    path = Path(out_dir) / METRICS_FILE
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the torn last line of a killed run
                break
            raise ValueError(f"{path}, line {number}: not JSON ({error})") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: not a JSON object")
        if record.get("type") == kind:
            records.append(record)
    return records
