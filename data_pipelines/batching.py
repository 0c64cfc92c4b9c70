"""Packing graphs into batches by an atom (and edge) budget, and collating them
into flat tensors with batch indices (keys in data_pipelines.schema)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from data_pipelines import schema as K
from data_pipelines.graph import structure_edges
from data_pipelines.schema import Structure

# Batch key a multi-head model reads (not written by collate: the head is a
# property of the data source, set by train.build / the calculator).
HEAD = "head"  # (num_structures,) int64: index into the model's heads (model.knobs.heads)


def with_head(batch: dict, head: int) -> dict:
    """``batch`` with every structure labelled with head index ``head``."""
    batch[HEAD] = torch.full((len(batch[K.NUM_ATOMS]),), int(head), dtype=torch.int64)
    return batch


class HeadLabelled:
    """A loader whose batches carry one head index (``HEAD``) for every structure.

    Everything else (``reset``, ``state_dict``, ``set_epoch``, ``state``, ...) is
    the wrapped loader's.
    """

    def __init__(self, loader, head: int):
        self.loader = loader
        self.head = int(head)

    def __getattr__(self, name: str):
        if name == "loader":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield with_head(batch, self.head)


@dataclass
class Graph:
    """A structure with its neighbour list (see graph.neighbour_list)."""

    structure: Structure
    edge_i: np.ndarray  # (num_edges,)
    edge_j: np.ndarray  # (num_edges,)
    shifts: np.ndarray  # (num_edges, 3)

    @property
    def num_atoms(self) -> int:
        return self.structure.num_atoms

    @property
    def num_edges(self) -> int:
        return int(self.edge_i.shape[0])


def make_graph(structure: Structure, cutoff: float) -> Graph:
    i, j, s = structure_edges(structure, cutoff)
    return Graph(structure, i, j, s)


_NP_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.bfloat16: np.float32}


def collate(graphs: list[Graph], dtype: torch.dtype = torch.float64) -> dict:
    """Flat batch of several graphs; labels that a structure lacks are zero-filled
    and flagged by has_energy / has_forces / has_stress.

    Conversions happen in numpy: torch's multithreaded `.to()` on many small
    tensors costs more than it saves, badly so on a busy machine.
    """
    fdt = _NP_DTYPES[dtype]

    def floats(array: np.ndarray) -> torch.Tensor:
        out = torch.from_numpy(np.ascontiguousarray(array, dtype=fdt))
        return out.to(dtype) if dtype == torch.bfloat16 else out

    structures = [g.structure for g in graphs]
    num_atoms = np.array([s.num_atoms for s in structures], dtype=np.int64)
    ptr = np.zeros(len(structures) + 1, dtype=np.int64)
    np.cumsum(num_atoms, out=ptr[1:])
    offsets = np.repeat(ptr[:-1], [g.num_edges for g in graphs])
    edge_i = np.concatenate([g.edge_i for g in graphs]) + offsets
    edge_j = np.concatenate([g.edge_j for g in graphs]) + offsets
    shifts = np.concatenate([g.shifts for g in graphs]).reshape(-1, 3)
    forces = np.concatenate(
        [s.forces if s.forces is not None else np.zeros((s.num_atoms, 3)) for s in structures]
    )
    stress = np.stack([s.stress if s.stress is not None else np.zeros((3, 3)) for s in structures])
    energy = np.array([s.energy if s.energy is not None else 0.0 for s in structures])
    return {
        K.SPECIES: torch.from_numpy(np.concatenate([s.numbers for s in structures])),
        K.POSITIONS: floats(np.concatenate([s.positions for s in structures])),
        K.CELL: floats(np.stack([s.cell for s in structures])),
        K.PBC: torch.from_numpy(np.stack([s.pbc for s in structures])),
        K.BATCH: torch.from_numpy(np.repeat(np.arange(len(structures)), num_atoms)),
        K.PTR: torch.from_numpy(ptr),
        K.NUM_ATOMS: torch.from_numpy(num_atoms),
        K.EDGE_INDEX: torch.from_numpy(np.stack([edge_i, edge_j])),
        K.CELL_SHIFTS: floats(shifts),
        K.ENERGY: floats(energy),
        K.FORCES: floats(forces),
        K.STRESS: floats(stress),
        K.HAS_ENERGY: torch.from_numpy(np.array([s.energy is not None for s in structures])),
        K.HAS_FORCES: torch.from_numpy(np.array([s.forces is not None for s in structures])),
        K.HAS_STRESS: torch.from_numpy(np.array([s.stress is not None for s in structures])),
        K.IDS: [s.source_id for s in structures],
        K.CONFIG_TYPE: [K.config_type_of(s.info) for s in structures],
    }


def batch_structures(
    structures: list[Structure], cutoff: float, dtype: torch.dtype = torch.float64
) -> dict:
    """Convenience: neighbour lists + collate for an in-memory list (tests, inference)."""
    return collate([make_graph(s, cutoff) for s in structures], dtype=dtype)


class AtomBudgetBatcher:
    """Greedy streaming packer: a batch closes when the next graph would push it
    past `max_atoms` atoms, `max_edges` edges or `max_structures` structures.

    A single graph over the budget is emitted alone and counted in
    `num_oversized`, never dropped.
    """

    def __init__(
        self, max_atoms: int, max_edges: int | None = None, max_structures: int | None = None
    ):
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be positive, got {max_atoms}")
        self.max_atoms = max_atoms
        self.max_edges = max_edges
        self.max_structures = max_structures
        self.num_oversized = 0

    def _fits(self, atoms: int, edges: int, count: int) -> bool:
        if atoms > self.max_atoms:
            return False
        if self.max_edges is not None and edges > self.max_edges:
            return False
        return self.max_structures is None or count <= self.max_structures

    def __call__(self, graphs: Iterable[Graph]) -> Iterator[list[Graph]]:
        pending: list[Graph] = []
        atoms = edges = 0
        for g in graphs:
            if pending and not self._fits(
                atoms + g.num_atoms, edges + g.num_edges, len(pending) + 1
            ):
                yield pending
                pending, atoms, edges = [], 0, 0
            if not pending and not self._fits(g.num_atoms, g.num_edges, 1):
                self.num_oversized += 1
            pending.append(g)
            atoms += g.num_atoms
            edges += g.num_edges
        if pending:
            yield pending
