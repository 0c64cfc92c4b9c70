"""Nested, deterministic subsets of a split for data-size scaling axes.

Every structure gets a fixed number u in [0, 1) from a hash of its id; a subset
is "all structures with u <= threshold". Thresholds grow with the requested
size, so a smaller subset is contained in every larger one, whatever the shard
layout or the number of ranks.
"""

from __future__ import annotations

import hashlib

import numpy as np


def subset_u(source_id: str) -> float:
    digest = hashlib.sha256(f"subset:{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def subset_threshold(root: str, split: str, fraction: float, unit: str = "structures") -> dict:
    """The threshold that keeps `fraction` of a split's structures (or atoms).

    Returns:
        {"threshold", "num_structures", "num_atoms", "fraction", "unit"} of the subset.
    """
    from data_pipelines.inspect import iter_split

    if unit not in ("structures", "atoms"):
        raise ValueError(f"subset unit must be 'structures' or 'atoms', got {unit!r}")
    us, atoms = [], []
    for s in iter_split(root, split):
        us.append(subset_u(s.source_id))
        atoms.append(s.num_atoms)
    if not us:
        raise ValueError(f"split '{split}' of {root} is empty")
    order = np.argsort(us, kind="stable")
    u = np.asarray(us)[order]
    a = np.asarray(atoms)[order]
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
