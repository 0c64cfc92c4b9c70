"""A small EMT shard set shared by the training tests, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipelines.convert import write_dataset
from tests.data_pipelines.helpers import emt_structures

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def emt_shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("emt_shards")
    write_dataset(emt_structures(160, seed=5, molecules=False), out, shard_size=40, pack_size=8,
                  splits={"train": 0.8, "val": 0.1, "test": 0.1})
    return str(out)


def train_cli(*overrides: str, env: dict | None = None, check: bool = True, nproc: int = 1,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `python -m train` (or torchrun with nproc > 1) the way a user does."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "train", *overrides]
    else:
        cmd = [sys.executable, "-m", "train", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None) if nproc > 1 or key not in (env or {}) else None
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()
            if line.strip()]
