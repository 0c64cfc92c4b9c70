"""FLOPs per atom of the reference batch, measured once per configuration.

Every run counts its model's FLOPs on the first training batch in file order
(`train.build.reference_flops`): about 2-3 s of start-up on 2 CPU cores, paid
again by each cooldown branch of a WSD ladder and each run of a sweep that
shares a model and data set. The count depends only on the model's
configuration, its force mode, the reference batch (data set, split, cutoff,
atom budget) and the code that builds them, so it is cached beside the
parameter counts (``$MLIP_CACHE_DIR``, `train/models/count_cache.py`) under
a key that hashes all of these: a stale count cannot be returned. If the
cache cannot be read or written, the count is measured as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from train.models.count_cache import cached_value, code_and_versions

CACHE_FILE = "flops-per-atom.json"
_DATA_CODE = Path(__file__).resolve().parents[1] / "data_pipelines"


@cache
def _data_code() -> str:
    """Hash of the code that turns shards into the reference batch."""
    h = hashlib.sha256()
    for path in sorted(_DATA_CODE.rglob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def flops_key(model: Any, manifest: dict, batch: dict[str, Any]) -> str:
    """The cache key (sha256 hex) of one model configuration on one reference batch.

    Args:
        model: the built model; its ``config`` dataclass, class, force mode,
            parameter count and dtype enter the key.
        manifest: the data set's manifest (its shard checksums name the data).
        batch: what selects the reference batch and how it is built (split,
            cutoff, atom budget, device).
    """
    config = model.config
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)
    first = next(iter(model.parameters()), None)
    material = {
        "model": type(model).__name__,
        "config": config,
        "forces": getattr(model, "forces", None),
        "num_params": sum(p.numel() for p in model.parameters()),
        "dtype": str(first.dtype) if first is not None else None,
        "shards": [s.get("sha256") for split in manifest.get("splits", {}).values()
                   for s in split.get("shards", [])],
        "manifest_name": manifest.get("name"),
        "batch": batch,
        "data_code": _data_code(),
        **code_and_versions(),
    }
    text = json.dumps(material, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def cached_flops(key: str, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The counts cached under ``key``, or ``measure()`` (then stored)."""
    return cached_value(
        CACHE_FILE,
        key,
        lambda: {k: float(v) for k, v in measure().items()},
        lambda hit: isinstance(hit, dict) and bool(hit)
        and all(isinstance(v, float) for v in hit.values()),
    )
