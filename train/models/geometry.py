"""Edge geometry from a batch, smooth cutoff functions, and gradient forces/stress.

Every family builds its edge vectors here, from positions, cell and integer
shifts, so that autograd through them gives conservative forces and, with a
symmetric strain applied to positions and cell, the stress (ASE sign:
sigma = (1/V) dE/dstrain, tension positive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from data_pipelines import schema as K


@dataclass
class ModelGraph:
    """The tensors a family's network needs, with geometry already differentiable.

    Attributes:
        species: (num_atoms,) atomic numbers.
        batch: (num_atoms,) structure index of each atom.
        num_structures: number of structures in the batch.
        edge_i: (num_edges,) centre atom of each edge.
        edge_j: (num_edges,) neighbour atom of each edge.
        shifts: (num_edges, 3) integer cell shifts (as int64) of each edge.
        positions: (num_atoms, 3) strained positions, Angstrom.
        shift_vectors: (num_edges, 3) Cartesian shifts S @ cell (strained), Angstrom.
        vectors: (num_edges, 3) r_ij = r_j - r_i + S @ cell, Angstrom.
    """

    species: Tensor
    batch: Tensor
    num_structures: int
    edge_i: Tensor
    edge_j: Tensor
    shifts: Tensor
    positions: Tensor
    shift_vectors: Tensor
    vectors: Tensor

    @property
    def num_atoms(self) -> int:
        return int(self.species.shape[0])

    def select_edges(self, keep: Tensor) -> ModelGraph:
        """Returns the same graph restricted to the edges where `keep` is true."""
        return ModelGraph(
            species=self.species,
            batch=self.batch,
            num_structures=self.num_structures,
            edge_i=self.edge_i[keep],
            edge_j=self.edge_j[keep],
            shifts=self.shifts[keep],
            positions=self.positions,
            shift_vectors=self.shift_vectors[keep],
            vectors=self.vectors[keep],
        )


@dataclass
class Displacement:
    """The leaves that forces and stress are derivatives with respect to."""

    positions: Tensor  # (num_atoms, 3) requires grad
    strain: Tensor  # (num_structures, 3, 3) zeros, requires grad
    cell: Tensor  # (num_structures, 3, 3) unstrained cell
    pbc: Tensor  # (num_structures, 3)


def build_graph(
    batch: dict, dtype: torch.dtype, differentiable: bool
) -> tuple[ModelGraph, Displacement | None]:
    """Builds the model graph of a batch.

    Args:
        batch: a batch dict (keys in data_pipelines.schema).
        dtype: float dtype of the geometry (the model's parameter dtype).
        differentiable: attach a strain and make positions a grad leaf, so that
            forces and stress can be taken with `gradient_outputs`.

    Returns:
        (graph, displacement); displacement is None unless `differentiable`.
    """
    positions = batch[K.POSITIONS].to(dtype)
    cell = batch[K.CELL].to(dtype)
    shifts = batch[K.CELL_SHIFTS].to(dtype)
    species = batch[K.SPECIES]
    atom_batch = batch[K.BATCH]
    num_structures = int(cell.shape[0])
    edge_i, edge_j = batch[K.EDGE_INDEX][0], batch[K.EDGE_INDEX][1]
    displacement = None
    if differentiable:
        if not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        strain = torch.zeros(
            num_structures, 3, 3, dtype=dtype, device=positions.device, requires_grad=True
        )
        displacement = Displacement(positions, strain, cell, batch[K.PBC])
        # A symmetric strain: its derivative is the (symmetric) virial, and a
        # rotation (antisymmetric part) would carry no information anyway.
        sym = 0.5 * (strain + strain.transpose(1, 2))
        eye = torch.eye(3, dtype=dtype, device=positions.device)
        deform = eye + sym  # (num_structures, 3, 3)
        positions = torch.einsum("nk,nkl->nl", positions, deform[atom_batch])
        cell = cell @ deform
    shift_vectors = torch.einsum("ek,ekl->el", shifts, cell[atom_batch[edge_i]])
    vectors = positions[edge_j] - positions[edge_i] + shift_vectors
    graph = ModelGraph(
        species=species,
        batch=atom_batch,
        num_structures=num_structures,
        edge_i=edge_i,
        edge_j=edge_j,
        shifts=torch.round(batch[K.CELL_SHIFTS]).to(torch.int64),
        positions=positions,
        shift_vectors=shift_vectors,
        vectors=vectors,
    )
    return graph, displacement


def periodic_volume(cell: Tensor, pbc: Tensor) -> Tensor:
    """(num_structures,) cell volume where all three directions are periodic, else 0."""
    volume = torch.linalg.det(cell).abs()
    return torch.where(pbc.all(dim=1), volume, torch.zeros_like(volume))


def gradient_outputs(
    energy: Tensor, displacement: Displacement, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """Conservative forces and stress from the energy.

    Args:
        energy: (num_structures,) total energies built from `displacement`.
        displacement: the leaves returned by `build_graph`.
        create_graph: keep the graph (needed to train on forces or stress).

    Returns:
        forces (num_atoms, 3) eV/A, stress (num_structures, 3, 3) eV/A^3 (zero
        for structures that are not periodic in all three directions).
    """
    grad_pos, grad_strain = torch.autograd.grad(
        energy.sum(),
        [displacement.positions, displacement.strain],
        create_graph=create_graph,
        allow_unused=True,
    )
    if grad_pos is None:  # no edges anywhere: the energy is constant
        grad_pos = torch.zeros_like(displacement.positions)
    if grad_strain is None:
        grad_strain = torch.zeros_like(displacement.strain)
    volume = periodic_volume(displacement.cell.detach(), displacement.pbc)
    safe = torch.where(volume > 0, volume, torch.ones_like(volume))
    stress = torch.where(volume[:, None, None] > 0, grad_strain / safe[:, None, None], 0.0)
    return -grad_pos, stress


def cosine_switch(r: Tensor, cutoff: Tensor | float, width: float) -> Tensor:
    """Smooth (C1) switch: 1 below cutoff - width, 0 at and beyond cutoff.

    Args:
        r: distances, Angstrom.
        cutoff: where the switch reaches 0 (scalar or broadcastable to r).
        width: length of the transition region, Angstrom.
    """
    x = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


def adaptive_cutoffs(
    r: Tensor,
    edge_i: Tensor,
    num_atoms: int,
    max_cutoff: float,
    min_cutoff: float,
    width: float,
    target: float,
    num_candidates: int,
    softness: float,
) -> Tensor:
    """Per-atom cutoff radii that keep about `target` (smoothly counted) neighbours.

    For each candidate radius on a grid, the number of neighbours is counted with
    the smooth switch; the atom's radius is the softmax-weighted mean of the
    candidates, weighted by how close their count is to the target. Every step is
    smooth in the distances, so predictions stay continuous as atoms move.

    Args:
        r: (num_edges,) distances, Angstrom.
        edge_i: (num_edges,) centre atom of each edge.
        num_atoms: number of atoms.
        max_cutoff: largest candidate (the neighbour-list radius), Angstrom.
        min_cutoff: smallest candidate, Angstrom.
        width: switch width, Angstrom.
        target: wanted number of neighbours.
        num_candidates: grid size.
        softness: width of the preference around the target, in neighbours.

    Returns:
        (num_atoms,) cutoff radius of each atom, Angstrom.
    """
    grid = torch.linspace(min_cutoff, max_cutoff, num_candidates, dtype=r.dtype, device=r.device)
    weights = cosine_switch(r[:, None], grid[None, :], width)  # (num_edges, num_candidates)
    counts = r.new_zeros(num_atoms, num_candidates).index_add_(0, edge_i, weights)
    logits = -0.5 * ((counts - target) / softness) ** 2
    return torch.softmax(logits, dim=1) @ grid


def reverse_edge_index(edge_i: Tensor, edge_j: Tensor, shifts: Tensor, num_atoms: int) -> Tensor:
    """Index of the reverse edge (j, i, -S) of every edge, or -1 when absent.

    Args:
        edge_i, edge_j: (num_edges,) centre and neighbour atoms.
        shifts: (num_edges, 3) integer cell shifts.
        num_atoms: number of atoms (for the key's radix).
    """
    if edge_i.numel() == 0:
        return edge_i.clone()
    bound = int(shifts.abs().max()) if shifts.numel() else 0
    radix = 2 * bound + 1

    def key(a: Tensor, b: Tensor, s: Tensor) -> Tensor:
        s = s + bound
        return ((a * num_atoms + b) * radix + s[:, 0]) * radix**2 + s[:, 1] * radix + s[:, 2]

    forward = key(edge_i, edge_j, shifts)
    backward = key(edge_j, edge_i, -shifts)
    order = torch.argsort(forward)
    pos = torch.searchsorted(forward[order], backward).clamp(max=forward.numel() - 1)
    found = forward[order][pos] == backward
    return torch.where(found, order[pos], torch.full_like(pos, -1))
