"""Metrics are files first (RUN/metrics.jsonl), W&B second (a mirror)."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

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
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
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


def _start_wandb(run_dir: Path, cfg: LoggerConfig, run_config: dict, name: str):
    import os

    import wandb

    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
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
