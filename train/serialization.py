"""Loading model files and checkpoints without running code from them.

``torch.load(..., weights_only=False)`` unpickles anything, so a crafted
``model.pt`` or trainer-state file can run a shell command the moment it is
read. Every file this project reads back is loaded with ``weights_only=True``:
tensors, containers and plain Python values only, plus the few named types
below that the files we write (or DeepSpeed writes) really hold. A file that
needs anything else is refused with :class:`UnsafeFileError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


class UnsafeFileError(ValueError):
    """A file that holds Python objects which could run code when loaded."""


def _numpy_globals() -> list:
    """What a pickled numpy array or scalar refers to (checkpoints of format 1
    stored numpy's RNG state as an array)."""
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    found += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.bool_)]
    return found


def deepspeed_globals() -> list:
    """Plain state classes DeepSpeed pickles into its ZeRO optimizer files."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    except ImportError:
        return []
    return [LossScaler, DynamicLossScaler]


def safe_load(path: str | Path, what: str, map_location: Any = "cpu", allow: Iterable = ()) -> Any:
    """``torch.load`` of tensors and plain data only.

    Args:
        path: the file.
        what: what the file should be, for the error ("model file", "checkpoint").
        map_location: as for ``torch.load``.
        allow: further classes the caller knows to be plain state.

    Raises:
        UnsafeFileError: the file refers to anything else; nothing of it ran.
        FileNotFoundError: no such file.
    """
    allowed = [*_numpy_globals(), *allow]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next(
            (line.strip() for line in str(err).splitlines() if "GLOBAL" in line),
            str(err).splitlines()[0] if str(err) else type(err).__name__,
        )
        raise UnsafeFileError(
            f"{path}: refused to load this {what}: it holds Python objects other than "
            f"tensors and plain data ({detail}), which could run code when loaded. Files "
            "written by mlip-scaling never do; do not use a file of unknown origin"
        ) from None
