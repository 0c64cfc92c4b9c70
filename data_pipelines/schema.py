"""The in-memory structure record and the batch keys every stage agrees on.

Units everywhere downstream of the readers: energy eV (total, per structure),
positions and cell in Angstrom, forces eV/A, stress eV/A^3 with ASE's sign
(tension positive, stress = (1/V) dE/dstrain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

SCHEMA_VERSION = 1

UNITS = {
    "energy": "eV",
    "positions": "Angstrom",
    "cell": "Angstrom",
    "forces": "eV/Angstrom",
    "stress": "eV/Angstrom^3 (ASE sign: tension positive)",
}

# Batch keys (flat tensors with batch indices), shapes in comments.
SPECIES = "species"  # (num_atoms,) int64 atomic numbers
POSITIONS = "positions"  # (num_atoms, 3) float
CELL = "cell"  # (num_structures, 3, 3) float, rows are lattice vectors
PBC = "pbc"  # (num_structures, 3) bool
BATCH = "batch"  # (num_atoms,) int64 index of the structure each atom belongs to
PTR = "ptr"  # (num_structures + 1,) int64 offsets of each structure's atoms
NUM_ATOMS = "num_atoms"  # (num_structures,) int64
EDGE_INDEX = "edge_index"  # (2, num_edges) int64 global atom indices (centre i, neighbour j)
CELL_SHIFTS = "cell_shifts"  # (num_edges, 3) float integer shifts S: r_ij = r_j - r_i + S @ cell
ENERGY = "energy"  # (num_structures,) float eV total
FORCES = "forces"  # (num_atoms, 3) float eV/A
STRESS = "stress"  # (num_structures, 3, 3) float eV/A^3
HAS_ENERGY = "has_energy"  # (num_structures,) bool
HAS_FORCES = "has_forces"  # (num_structures,) bool
HAS_STRESS = "has_stress"  # (num_structures,) bool
IDS = "ids"  # list[str] of length num_structures (not a tensor)
CONFIG_TYPE = "config_type"  # list[str | None] of length num_structures (not a tensor)

# Where a structure's configuration type (AIMD, Vacancy, Elastic, Surface, ...)
# lives in `Structure.info`, in order: the readers write "config_type";
# data_pipelines.generate has always written its builder name as "kind".
CONFIG_TYPE_INFO_KEYS = ("config_type", "kind")


def config_type_of(info: dict[str, Any]) -> str | None:
    """The configuration type recorded in a structure's info, or None.

    Shards written before readers kept it simply have none: old data stays readable.
    """
    for key in CONFIG_TYPE_INFO_KEYS:
        value = info.get(key)
        if isinstance(value, str) and value:
            return value
    return None


class DataError(ValueError):
    """Bad input, with the file, the record and the field it concerns."""

    def __init__(self, file: str, record: int | str | None, field: str | None, message: str):
        self.file = str(file)
        self.record = record
        self.field = field
        self.reason = message
        where = f"{self.file}"
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class StoredEdges(NamedTuple):
    """A neighbour list stored with a structure (``convert --store-edges``):
    every pair within ``cutoff`` (Angstrom), as graph.neighbour_list returns it."""

    cutoff: float
    i: np.ndarray  # (num_edges,)
    j: np.ndarray  # (num_edges,)
    shifts: np.ndarray  # (num_edges, 3) integer cell shifts


@dataclass
class Structure:
    """One labelled structure in project units.

    Attributes:
        source_id: stable id, unique within a dataset (file stem + record key).
        numbers: (num_atoms,) atomic numbers.
        positions: (num_atoms, 3) Cartesian positions, Angstrom.
        cell: (3, 3) lattice vectors as rows, Angstrom (zeros for molecules).
        pbc: (3,) periodic directions.
        energy: total energy, eV, or None when absent.
        forces: (num_atoms, 3) eV/A, or None.
        stress: (3, 3) eV/A^3, ASE sign, or None.
        info: small JSON-serialisable metadata (kept in the shard), e.g.
            "config_type" (see config_type_of) and "split_key".
        edges: its neighbour list when the shards store one (StoredEdges), else None.
    """

    source_id: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    edges: StoredEdges | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(3)
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.stress is not None:
            self.stress = voigt_to_matrix(np.asarray(self.stress, dtype=np.float64))

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def validate(self, file: str = "?", record: int | str | None = None) -> None:
        """Raises DataError if any field is missing, mis-shaped or not finite."""
        n = self.num_atoms
        rec = record if record is not None else self.source_id
        if n == 0:
            raise DataError(file, rec, "numbers", "structure has no atoms")
        if np.any(self.numbers < 1) or np.any(self.numbers > 118):
            raise DataError(file, rec, "numbers", "atomic numbers must lie in 1..118")
        if self.positions.shape != (n, 3):
            raise DataError(
                file, rec, "positions", f"expected shape ({n}, 3), got {self.positions.shape}"
            )
        if not np.all(np.isfinite(self.positions)):
            raise DataError(file, rec, "positions", "contains NaN or inf")
        if not np.all(np.isfinite(self.cell)):
            raise DataError(file, rec, "cell", "contains NaN or inf")
        if np.any(self.pbc) and abs(np.linalg.det(self.cell)) < 1e-8:
            raise DataError(file, rec, "cell", "periodic structure with a singular cell")
        if self.energy is not None and not np.isfinite(self.energy):
            raise DataError(file, rec, "energy", f"energy is not finite ({self.energy})")
        if self.forces is not None:
            if self.forces.shape != (n, 3):
                raise DataError(
                    file, rec, "forces", f"expected shape ({n}, 3), got {self.forces.shape}"
                )
            if not np.all(np.isfinite(self.forces)):
                raise DataError(file, rec, "forces", "contains NaN or inf")
        if self.stress is not None and not np.all(np.isfinite(self.stress)):
            raise DataError(file, rec, "stress", "contains NaN or inf")


def voigt_to_matrix(s: np.ndarray, order: str = "xx,yy,zz,yz,xz,xy") -> np.ndarray:
    """Returns a (3, 3) symmetric matrix from a 3x3, 9-vector or 6-vector.

    Args:
        s: the stress values.
        order: component order of a 6-vector (ASE's Voigt order by default).
    """
    s = np.asarray(s, dtype=np.float64)
    if s.shape == (3, 3):
        return s
    if s.shape == (9,):
        return s.reshape(3, 3)
    if s.shape == (6,):
        idx = {"x": 0, "y": 1, "z": 2}
        out = np.zeros((3, 3))
        for value, comp in zip(s, order.split(",")):
            a, b = idx[comp.strip()[0]], idx[comp.strip()[1]]
            out[a, b] = out[b, a] = value
        return out
    raise ValueError(f"stress must have 6, 9 or 3x3 values, got shape {s.shape}")
