"""Whether a start resumes, starts fresh, or stops: a run directory is one run.

Every checkpoint records the run's *identity*: the settings that determine
its tensors and the data it streams (model, forces, knobs, data root and
subset, batching, seed, dtype, engine). A start that finds checkpoints with
another identity stops, naming the keys that differ, before it writes
anything. Settings outside the identity (``trainer.max_steps``, logging,
validation and checkpoint cadence, learning rate, EMA decay) may change on resume.

``trainer.resume``:
    auto     resume from the newest checkpoint if there is one, else start fresh;
    never    refuse a run directory that already holds a run;
    require  fail unless there is a checkpoint to resume from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from train.checkpoint import (
    READABLE_VERSIONS,
    START_OVER,
    CheckpointError,
    read_meta,
)
from train.config import ConfigError, TrainConfig

IDENTITY_KEYS = (
    "model.family",
    "model.size",
    "model.forces",
    "model.knobs",
    "data.root",
    "data.sources",
    "data.fraction",
    "data.fraction_unit",
    "data.train_split",
    "data.cutoff_A",
    "data.max_atoms",
    "data.max_edges",
    "data.max_structures",
    "data.buffer_size",
    "data.num_workers",
    "seed",
    "trainer.dtype",
    "engine.kind",
    "engine.zero_stage",
    "optim.name",
)
# Files that say a run directory already holds a run.
RUN_FILES = ("checkpoints", "metrics.jsonl", "summary.json", "model.pt")


def _normalised_root(root: str | None) -> str | None:
    """A local data root as an absolute path, so a resume from another working
    directory still matches; URLs and ``pipe:`` roots as given."""
    if root is None or "://" in root or root.startswith("pipe:"):
        return root
    return str(Path(root).resolve())


def identity(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that make a run this run (see IDENTITY_KEYS), as plain values."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    out = {}
    for dotted in IDENTITY_KEYS:
        node: Any = tree
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    out["data.root"] = _normalised_root(out["data.root"])
    if not out["data.sources"]:  # one root: identities as recorded before mixtures existed
        del out["data.sources"]
    else:
        out["data.sources"] = [
            {**src, "root": _normalised_root(str(src["root"]))} for src in out["data.sources"]
        ]
    return out


def identity_hash(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: saved -> now`` for every identity key that differs."""
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Every checkpoint folder of a run, oldest first (complete or not)."""
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def resume_point(run_dir: Path, cfg: TrainConfig, world_size: int) -> Path | None:
    """The checkpoint this start resumes from, or None for a fresh start.

    Reads only; a start that must stop has written nothing.

    Raises:
        ConfigError: ``trainer.resume`` refuses the run directory as it is.
        CheckpointError: the newest checkpoint is unreadable, of an unknown
            format, written by another number of processes, or of another run.
    """
    mode = cfg.trainer.resume
    run_dir = Path(run_dir)
    if mode == "never":
        present = [name for name in RUN_FILES if (run_dir / name).exists()]
        if present:
            raise ConfigError(
                f"trainer.resume=never: {run_dir} already holds a run ({', '.join(present)}); "
                "choose a new run_dir, or delete it to start over"
            )
        return None
    found = checkpoint_dirs(run_dir)
    if not found:
        if mode == "require":
            raise ConfigError(f"trainer.resume=require: {run_dir} has no checkpoint to resume from")
        return None
    newest = found[-1]
    meta = read_meta(newest)
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {newest} has format version {version}; this code reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Resume it with the code that wrote it. "
            f"{START_OVER}"
        )
    if meta.get("world_size") != world_size:
        raise CheckpointError(
            f"checkpoint {newest} was written by {meta.get('world_size')} processes, this run "
            f"has {world_size}; resume with the same number of processes. {START_OVER}"
        )
    saved = meta.get("identity")
    if saved is not None:  # format 1 did not record it
        changed = differences(saved, identity(cfg))
        if changed:
            raise CheckpointError(
                f"{run_dir} holds checkpoints of another run; these settings differ "
                f"(checkpoint -> now): {'; '.join(changed)}. Nothing was changed. Use a new "
                f"run_dir for the new settings, or the old settings to resume. {START_OVER}"
            )
    return newest
