"""RUN/metrics.jsonl: one JSON object per logged step, written by training, read by analysis and the report."""
from __future__ import annotations

import json
import math
import os


class MetricsLog:
    """The writer. On resume, lines after the resumed step (and a line cut short by a crash) are dropped."""

    def __init__(self, path: str, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and os.path.exists(path):
            with open(path) as f:
                kept = [l for l in f if _logged_step(l) <= resume_step]
            with open(path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line cut short by a crash (so it is dropped)."""
    try:
        return json.loads(line).get("step", 0) if line.endswith("\n") else math.inf
    except json.JSONDecodeError:
        return math.inf


def read_metrics_log(run_dir: str) -> list[dict]:
    """RUN/metrics.jsonl as a list of records ([] when absent); unreadable lines are skipped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [r for r in records if isinstance(r, dict)]
