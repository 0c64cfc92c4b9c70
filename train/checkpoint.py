"""Atomic, versioned checkpoints: RUN/checkpoints/step-NNNNNNNN/.

A checkpoint is written into RUN/checkpoints/.incomplete/<tag>/ by every rank
(the engine's files, plus one trainer-state file per rank: step, counters,
RNG states, data-loader position, EMA), and only when all ranks are done does
rank 0 write meta.json and rename the folder into place. A folder without
meta.json is never considered, so a kill at any moment leaves the previous
checkpoint as the latest valid one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from data_pipelines.atomic import atomic_write
from train.dist import barrier

FORMAT_VERSION = 1
META = "meta.json"


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(
    run_dir: Path, step: int, engine, trainer_state: dict, rank: int, world_size: int, keep: int
) -> Path:
    """Collective: every rank calls it at the same step."""
    root = Path(run_dir) / "checkpoints"
    staging = root / ".incomplete"
    tag = tag_of(step)
    if rank == 0:
        shutil.rmtree(staging / tag, ignore_errors=True)
        (staging / tag).mkdir(parents=True, exist_ok=True)
    barrier()
    engine.save(staging, tag)
    state = {**trainer_state, "rng": rng_state()}
    atomic_write(staging / tag / f"trainer_rank{rank}.pt", lambda tmp: torch.save(state, tmp))
    barrier()
    final = root / tag
    if rank == 0:
        meta = {"format_version": FORMAT_VERSION, "step": step, "world_size": world_size}
        (staging / tag / META).write_text(json.dumps(meta))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging / tag, final)
        for old in list_valid(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def list_valid(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; incomplete or unreadable ones are skipped."""
    out = []
    for path in sorted(Path(root).glob("step-*")):
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, json.JSONDecodeError):
            warnings.warn(
                f"skipping incomplete checkpoint {path} (no readable {META})", stacklevel=2
            )
            continue
        if meta.get("format_version") != FORMAT_VERSION:
            warnings.warn(
                f"skipping checkpoint {path}: format {meta.get('format_version')}, "
                f"this code reads {FORMAT_VERSION}",
                stacklevel=2,
            )
            continue
        out.append(path)
    return out


def load_latest(run_dir: Path, engine, rank: int, world_size: int) -> dict | None:
    """Loads the newest checkpoint that loads; returns its trainer state or None."""
    root = Path(run_dir) / "checkpoints"
    for path in reversed(list_valid(root)):
        meta = json.loads((path / META).read_text())
        if meta["world_size"] != world_size:
            raise RuntimeError(
                f"checkpoint {path} was written by {meta['world_size']} processes, this run has "
                f"{world_size}; resume with the same number of processes"
            )
        try:
            engine.load(root, path.name)
            state = torch.load(
                path / f"trainer_rank{rank}.pt", map_location="cpu", weights_only=False
            )
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", stacklevel=2)
            continue
        set_rng_state(state["rng"])
        return state
    return None


def load_weights(source: str | Path) -> dict:
    """Model weights from a run dir (its latest checkpoint or model.pt) or a file,
    for starting a new run from another (e.g. stage 2 from stage 1)."""
    source = Path(source)
    if source.is_file():
        sd = torch.load(source, map_location="cpu", weights_only=False)
        return sd.get("state_dict", sd.get("model", sd))
    ckpts = list_valid(source / "checkpoints") if (source / "checkpoints").is_dir() else []
    if (source / META).exists():
        ckpts = [source]
    if not ckpts:
        raise FileNotFoundError(f"no complete checkpoint under {source}")
    state = torch.load(ckpts[-1] / "trainer_rank0.pt", map_location="cpu", weights_only=False)
    return state["ema"]["shadow"] if "ema" in state else state["model"]
