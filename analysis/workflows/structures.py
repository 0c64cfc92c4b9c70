"""The structures a workflow evaluates: files, or built-in sets so demos need no files.

A *structures spec* is anything ``ase.io.read(FILE, ":")`` reads, optionally
with ASE's frame selection ``FILE@0`` or ``FILE@:4``, or a built-in set
``builtin:NAME`` (see :data:`BUILTIN_SETS`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

from train.corrections import symmetry_dataset

# what a workflow's run() takes: a spec, or (name, atoms) pairs already read
Structures = str | list[tuple[str, Atoms]]
STRUCTURES_HELP = (
    "a file ase.io.read reads (FILE@0 or FILE@:4: some of its frames), or builtin:metals, "
    "builtin:prototypes or one by name (builtin:cu-fcc)"
)


def _metals() -> list[tuple[str, Atoms]]:
    # Experimental lattice constants (A); EMT's own minima differ by ~1%, so
    # every structure has something to relax.
    cu3au = Atoms(
        "AuCu3",
        scaled_positions=[[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
        cell=3.75 * np.eye(3),
        pbc=True,
    )
    strained = bulk("Cu", "fcc", a=3.61, cubic=True)
    strained.set_cell(strained.cell.array @ np.diag([1.03, 0.99, 1.0]), scale_atoms=True)
    strained.rattle(0.03, seed=0)
    return [
        ("cu-fcc", bulk("Cu", "fcc", a=3.61)),
        ("al-fcc", bulk("Al", "fcc", a=4.05)),
        ("ni-fcc", bulk("Ni", "fcc", a=3.52)),
        ("au-fcc", bulk("Au", "fcc", a=4.08)),
        ("cu3au-l12", cu3au),
        ("cu-strained", strained),
    ]


def _prototypes() -> list[tuple[str, Atoms]]:
    # Lattice types beyond fcc for symmetry-retention checks; EMT evaluates any
    # geometry of its elements, stable or not (bcc Cu is not).
    return [
        ("cu-bcc", bulk("Cu", "bcc", a=2.87)),
        ("cu-hcp", bulk("Cu", "hcp", a=2.56, c=4.18)),
        ("cuau-rocksalt", bulk("CuAu", "rocksalt", a=5.2)),
    ]


BUILTIN_SETS = (
    "metals",
    "prototypes",
    "cu-fcc",
    "al-fcc",
    "ni-fcc",
    "au-fcc",
    "cu3au-l12",
    "cu-strained",
    "cu-bcc",
    "cu-hcp",
    "cuau-rocksalt",
)


def load_structures(spec: str) -> list[tuple[str, Atoms]]:
    """Read structures as (name, atoms) pairs.

    Args:
        spec: a file ``ase.io.read`` understands (all frames, or those
            ``FILE@INDEX`` selects: ``@0``, ``@-1``, ``@:4``, ``@2:10:2``), or
            ``builtin:NAME`` with NAME in :data:`BUILTIN_SETS` (``metals``: fcc
            Cu, Al, Ni, Au, L1_2 Cu3Au and a strained, rattled Cu cell;
            ``prototypes``: bcc and hcp Cu and rock-salt CuAu; or one by name).

    Returns:
        Named structures; names come from ``atoms.info['name']`` when present,
        else ``<file stem>-<index>``, and are made unique and path-safe.

    Raises:
        ValueError: unknown built-in name or an empty file.
        FileNotFoundError: missing file.
    """
    if spec.startswith("builtin:"):
        key = spec.split(":", 1)[1]
        if key == "metals":
            pairs = _metals()
        elif key == "prototypes":
            pairs = _prototypes()
        else:
            pairs = [(n, a) for n, a in _metals() + _prototypes() if n == key]
        if not pairs:
            raise ValueError(f"unknown built-in structures {spec!r}; choose from {BUILTIN_SETS}")
        return [(n, a.copy()) for n, a in pairs]
    path, selection = Path(spec), None
    if not path.exists() and "@" in spec:
        path, selection = Path(spec.rsplit("@", 1)[0]), spec.rsplit("@", 1)[1]
    if not path.exists():
        raise FileNotFoundError(f"structures file {str(path)!r} not found (or use builtin:metals)")
    from ase.io import read

    frames = read(path, ":")
    if not frames:
        raise ValueError(f"structures file {spec!r} holds no structures")
    indices = list(range(len(frames)))
    if selection is not None:
        indices = _select(indices, selection, spec)
    named, seen = [], set()
    for i, atoms in ((i, frames[i]) for i in indices):
        raw = str(atoms.info.get("name") or f"{path.stem}-{i}")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw)
        if name in seen:
            name = f"{name}-{i}"
        seen.add(name)
        named.append((name, atoms))
    return named


def _select(indices: list[int], selection: str, spec: str) -> list[int]:
    """The frame numbers ``@selection`` picks (an index or a slice, as ASE writes them)."""
    try:
        if ":" in selection:
            parts = [int(p) if p.strip() else None for p in selection.split(":")]
            if len(parts) > 3:
                raise ValueError
            picked = indices[slice(*parts)]
        else:
            picked = [indices[int(selection)]]
    except (ValueError, IndexError):
        raise ValueError(
            f"structures {spec!r}: @{selection} selects nothing of {len(indices)} frames "
            "(give an index, @0, or a slice, @:4)"
        ) from None
    if not picked:
        raise ValueError(f"structures {spec!r}: @{selection} selects none of {len(indices)} frames")
    return picked


def spacegroup(atoms: Atoms, symprec: float) -> tuple[int, str]:
    """International space-group number and symbol (1, 'P1' if spglib finds none)."""
    if not atoms.pbc.all():
        return 1, "P1"
    data = symmetry_dataset(atoms, symprec)
    return (1, "P1") if data is None else (int(data.number), str(data.international))


def as_structures(structures: Structures) -> list[tuple[str, Atoms]]:
    """(name, atoms) pairs: ``structures`` itself, or read from its spec."""
    return load_structures(structures) if isinstance(structures, str) else list(structures)
