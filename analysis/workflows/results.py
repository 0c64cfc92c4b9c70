"""What every workflow returns and writes: a result with flat metrics.

A workflow's ``run()`` returns ``{"settings": ..., <its tables>, "metrics": {...}}``
with metric names ``<workflow>/<name>`` (``relax/rmsd_mean``); with an output
directory it writes the result to ``DIR/results.json`` and the metrics alone to
``DIR/metrics.json``, as JSON with NaN and inf written as null.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from data_pipelines.atomic import write_json


def write_results(out: Path | None, result: dict[str, Any]) -> dict[str, Any]:
    """Writes ``result`` to OUT/results.json and its metrics to OUT/metrics.json.

    Args:
        out: the output directory (created if missing); None writes nothing.
        result: a workflow's result, with a ``"metrics"`` entry.

    Returns:
        ``result``, so a workflow can end with ``return write_results(out, result)``.
    """
    if out is not None:
        write_json(Path(out) / "results.json", result)
        write_json(Path(out) / "metrics.json", result["metrics"])
    return result


def nanmean(values: list[float]) -> float:
    """Mean ignoring NaN (NaN when nothing is left), without numpy's warning."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def fmt(value: float | None, spec: str = ".2e", missing: str = "n/a") -> str:
    """``value`` formatted with ``spec``, or "n/a" when it is None or NaN (nothing measured)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


class Progress:
    """Progress lines of a long workflow on stderr, with the elapsed time, so a
    command that runs for minutes says what it is doing (stdout keeps the summary)."""

    def __init__(self, workflow: str, stream: TextIO | None = None):
        self.workflow = workflow
        self.stream = stream
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(f"{self.workflow} [{self.elapsed():6.1f} s] {message}", file=stream, flush=True)
