"""Nested, deterministic subsets of a split for data-size scaling axes.

Every structure gets a fixed number u in [0, 1) from a hash of its id; a subset
is "all structures with u <= threshold". Thresholds grow with the requested
size, so a smaller subset is contained in every larger one, whatever the shard
layout or the number of ranks.
"""

from __future__ import annotations

import hashlib

import numpy as np

from data_pipelines.dataset import Dataset, open_dataset

UNITS = ("structures", "atoms")


def subset_u(source_id: str) -> float:
    """The structure's fixed position in [0, 1) on every subset axis."""
    digest = hashlib.sha256(f"subset:{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def threshold_of(u: np.ndarray, num_atoms: np.ndarray, fraction: float, unit: str) -> dict:
    """The threshold keeping `fraction` of the structures (or atoms) given as arrays.

    Args:
        u: (num_structures,) `subset_u` of each structure.
        num_atoms: (num_structures,) atom count of each structure.
        fraction: share to keep, in (0, 1]; at least one structure is kept.
        unit: "structures" or "atoms" (what the fraction counts).

    Returns:
        {"threshold", "num_structures", "num_atoms", "fraction", "unit"} of the subset.
    """
    if unit not in UNITS:
        raise ValueError(f"subset unit must be 'structures' or 'atoms', got {unit!r}")
    order = np.argsort(u, kind="stable")
    u = np.asarray(u)[order]
    a = np.asarray(num_atoms)[order]
    if fraction >= 1.0:
        k = len(u)
    elif unit == "structures":
        k = max(1, int(round(fraction * len(u))))
    else:
        cum = np.cumsum(a)
        k = max(1, int(np.searchsorted(cum, fraction * cum[-1], side="left")) + 1)
    k = min(k, len(u))
    return {
        "threshold": 1.0 if k == len(u) else float(u[k - 1]),
        "num_structures": int(k),
        "num_atoms": int(a[:k].sum()),
        "fraction": fraction,
        "unit": unit,
    }


def subset_threshold(
    data: str | Dataset, split: str, fraction: float, unit: str = "structures"
) -> dict:
    """The threshold that keeps `fraction` of a split's structures (or atoms).

    Reads only ids and atom counts (`Dataset.split_index`), and keeps the
    answer on the Dataset, so a process that passes one Dataset around
    computes each threshold once.

    Args:
        data: a data root or an opened Dataset.
        split: split name in the manifest.
        fraction: share to keep, in (0, 1].
        unit: "structures" or "atoms".

    Returns:
        {"threshold", "num_structures", "num_atoms", "fraction", "unit"} of the subset.
    """
    if unit not in UNITS:
        raise ValueError(f"subset unit must be 'structures' or 'atoms', got {unit!r}")
    ds = open_dataset(data)
    key = (__name__, split, float(fraction), unit)
    if key not in ds.memo:
        index = ds.split_index(split)
        if not index.ids:
            raise ValueError(f"split '{split}' of {ds.root} is empty")
        u_key = (__name__, split, "u")
        if u_key not in ds.memo:  # one hash per structure, shared by every fraction
            ds.memo[u_key] = np.fromiter(
                (subset_u(i) for i in index.ids), dtype=np.float64, count=len(index.ids)
            )
        ds.memo[key] = threshold_of(ds.memo[u_key], index.num_atoms, fraction, unit)
    return dict(ds.memo[key])
