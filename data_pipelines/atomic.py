"""Files written whole: a reader sees the old file or the new one, never half.

Every floor writes through these helpers (shards and manifests here, run
directories in ``train/``, study files in ``slurm/``), so a kill at any point
leaves each file either absent, as it was, or complete. The temporary file
sits beside the target (same file system, so ``os.replace`` is atomic) and
carries the process id, so two writers never share one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temporary_path(path: str | Path) -> Path:
    """Where a new version of ``path`` is written before it replaces it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp)`` then moves ``tmp`` onto ``path``; removes ``tmp`` on error."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays, paths and tuples made JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None  # JSON has no NaN or inf
    return obj


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Writes ``data`` as JSON (numpy values converted, NaN and inf as null) atomically,
    creating the parent folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(jsonable(data), indent=indent) + "\n")
