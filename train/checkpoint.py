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
from train.serialization import deepspeed_globals, safe_load

# 2: RNG states as tensors and plain values (weights_only loading), and the
# run's identity (train.resume) in meta.json. Format 1 still loads.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be resumed from; the message says
    which, why, and how to start over on purpose."""


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values (loadable with weights_only)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {
        "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "pos": int(numpy_state["state"]["pos"]),
    }
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["state"]["key"]
        key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        numpy_state = {
            **numpy_state,
            "state": {**numpy_state["state"], "key": key.astype(np.uint32)},
        }
    np.random.set_state(numpy_state)  # format 1 stored numpy's legacy tuple
    random.setstate(state["python"])


def save(
    run_dir: Path,
    step: int,
    engine,
    trainer_state: dict,
    rank: int,
    world_size: int,
    keep: int,
    identity: dict | None = None,
    pinned: tuple[int, ...] = (),
) -> Path:
    """Collective: every rank calls it at the same step.

    Args:
        identity: the settings that determine the run's tensors and data
            (``train.resume.identity``), recorded so a later start can tell
            whether this checkpoint belongs to it.
        pinned: steps whose checkpoints retention never removes.
    """
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
        if identity is not None:
            meta["identity"] = identity
        (staging / tag / META).write_text(json.dumps(meta, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging / tag, final)
        pinned_tags = {tag_of(p) for p in pinned}
        unpinned = [p for p in list_valid(root) if p.name not in pinned_tags]
        for old in unpinned[:-keep] if keep > 0 else []:
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
        if meta.get("format_version") not in READABLE_VERSIONS:
            warnings.warn(
                f"skipping checkpoint {path}: format {meta.get('format_version')}, "
                f"this code reads {READABLE_VERSIONS}",
                stacklevel=2,
            )
            continue
        out.append(path)
    return out


def read_meta(path: Path) -> dict:
    """meta.json of one checkpoint folder.

    Raises:
        CheckpointError: missing or unreadable (the folder is not a checkpoint).
    """
    try:
        return json.loads((Path(path) / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} has no readable {META} ({err})") from None


def load(path: Path, engine, rank: int) -> dict:
    """Loads one checkpoint into ``engine`` and the RNGs; returns the trainer state.

    Raises:
        CheckpointError: the checkpoint cannot be read (never a silent fresh start).
    """
    path = Path(path)
    try:
        engine.load(path.parent, path.name)
        state = safe_load(path / f"trainer_rank{rank}.pt", "checkpoint (trainer state)")
        set_rng_state(state["rng"])
    except Exception as err:  # noqa: BLE001 - any failure is reported the same way
        raise CheckpointError(
            f"cannot resume from checkpoint {path}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. {START_OVER}"
        ) from err
    return state


START_OVER = (
    "To start this run over on purpose, delete its checkpoints/ folder and "
    "metrics.jsonl, or give it a new run_dir"
)


def load_weights(source: str | Path) -> dict:
    """Model weights from a run dir (its latest checkpoint or model.pt) or a file,
    for starting a new run from another (e.g. stage 2 from stage 1).

    From a checkpoint: the EMA weights (what the parent validated and exported)
    and the model's buffers (composition baseline, energy scale) from the
    engine's model state, so a fine-tune starts from the parent's statistics,
    not from ones recomputed on its own data."""
    source = Path(source)
    if source.is_file():
        sd = safe_load(source, "model file or checkpoint")
        return sd.get("state_dict", sd.get("model", sd))
    ckpts = list_valid(source / "checkpoints") if (source / "checkpoints").is_dir() else []
    if (source / META).exists():
        ckpts = [source]
    if not ckpts:
        raise FileNotFoundError(f"no complete checkpoint under {source}")
    state = safe_load(ckpts[-1] / "trainer_rank0.pt", "checkpoint (trainer state)")
    if "ema" not in state:
        return state["model"]
    weights = dict(state["ema"]["shadow"])
    for name, value in engine_model_state(ckpts[-1]).items():
        weights.setdefault(name, value)  # buffers: the EMA holds parameters only
    return weights


def engine_model_state(path: Path) -> dict:
    """The model state dict an engine saved in checkpoint folder ``path`` (torch
    engine: engine.pt; DeepSpeed: *model_states.pt); empty when neither is there."""
    path = Path(path)
    if (path / "engine.pt").exists():
        return safe_load(path / "engine.pt", "checkpoint (engine state)").get("model", {})
    for file in sorted(path.glob("*model_states.pt")):
        sd = safe_load(file, "DeepSpeed checkpoint file", "cpu", allow=deepspeed_globals())
        return sd.get("module", {})
    return {}
