"""A small on-disk cache of parameter counts, so listing presets builds nothing.

Counting a large MACE means importing mace-torch and building e3nn modules
(seconds per preset); counts only change when the configuration, the model
code or the library versions do, so they are cached in one JSON file:
``$MLIP_CACHE_DIR/parameter-counts.json`` (default
``$XDG_CACHE_HOME/mlip-scaling`` or ``~/.cache/mlip-scaling``). The key hashes
the family, the preset's values and overrides, every source file of
``train/models/`` and the torch, mace-torch and e3nn versions, so a stale count
cannot be returned. The cache is only a shortcut: if it cannot be read or
written, counts are computed as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from data_pipelines.atomic import write_json

CACHE_FILE = "parameter-counts.json"
_LIBRARIES = ("torch", "mace-torch", "e3nn")
_MODELS_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where the cache lives (MLIP_CACHE_DIR, else the user's cache folder)."""
    if os.environ.get("MLIP_CACHE_DIR"):
        return Path(os.environ["MLIP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlip-scaling"


@cache
def code_and_versions() -> dict[str, str]:
    """Hash of the model code and the versions of the libraries it builds on."""
    h = hashlib.sha256()
    for path in sorted(_MODELS_DIR.glob("*.py")):
        if path.name not in ("__main__.py", "count_cache.py"):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    out = {"code": h.hexdigest()}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def count_key(family: str, preset: dict[str, Any], overrides: dict[str, Any]) -> str:
    """The cache key of one configuration (a sha256 hex digest)."""
    material = {
        "family": family,
        "preset": preset,
        "overrides": {k: v for k, v in overrides.items() if v is not None},
        **code_and_versions(),
    }
    text = json.dumps(material, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_value(
    file: str, key: str, compute: Callable[[], Any], valid: Callable[[Any], bool]
) -> Any:
    """The value under `key` in the cache file `file` if `valid` accepts it, else
    `compute()` (then stored). Another process may add entries meanwhile: the
    file is re-read and merged before writing, never clobbered."""
    path = cache_dir() / file
    hit = _read(path).get(key)
    if valid(hit):
        return hit
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**_read(path), key: value}, indent=None)
    except OSError:
        pass  # a read-only home still gets correct values, just not faster ones
    return value


def cached_count(key: str, compute: Callable[[], int]) -> int:
    """The cached count under `key`, or `compute()` (then stored)."""
    return cached_value(
        CACHE_FILE, key, lambda: int(compute()), lambda v: isinstance(v, int)
    )
