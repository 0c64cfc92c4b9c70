"""Metrics are files first (RUN/metrics.jsonl), W&B second (a mirror)."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

from data_pipelines.atomic import write_text
from train.config import LoggerConfig


def _clean(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else str(v)
        out[k] = v
    return out


class MetricLogger:
    """Appends rows to metrics.jsonl (rank 0 only) and mirrors them to W&B.

    On resume from step k, rows logged after k by the interrupted run are
    dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: LoggerConfig,
        enabled: bool,
        resume_step: int | None,
        run_config: dict,
        name: str,
    ):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = _rows_up_to(self.path, resume_step)
            write_text(self.path, "".join(f"{line}\n" for line in kept))
        elif resume_step is None:
            write_text(self.path, "")
        self._fh = open(self.path, "a")  # noqa: SIM115 - closed in close()
        if cfg.kind == "wandb":
            self.wandb = _start_wandb(Path(run_dir), cfg, run_config, name)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = _clean({**row, "time": round(time.time(), 3)})  # unix seconds
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def summary(self, values: dict) -> None:
        if self.wandb is not None:
            for k, v in _clean(values).items():
                if isinstance(v, int | float | str):
                    self.wandb.summary[k] = v

    def close(self) -> None:
        if not self.enabled:
            return
        self._fh.close()
        if self.wandb is not None:
            self.wandb.finish()


def _rows_up_to(path: Path, step: int) -> list[str]:
    """The lines of metrics.jsonl logged at or before ``step`` (the checkpoint a
    run resumes from); a last line torn by a kill is dropped, any other
    unreadable line is an error naming the file and line."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number}: not a JSON row") from None
        if row.get("step", 0) <= step:
            kept.append(line)
    return kept


def _start_wandb(run_dir: Path, cfg: LoggerConfig, run_config: dict, name: str):
    import os

    import wandb

    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    write_text(id_file, run_id)
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=list(cfg.tags),
        name=name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        mode=cfg.mode,
        config=run_config,
        settings=wandb.Settings(console="off", x_disable_stats=True),
    )
