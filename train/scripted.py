"""TorchScript versions of both model families, for engines without Python.

    potential = scripted_potential(model)     # a torch.jit.ScriptModule
    out = potential(species, positions, cell, pbc, batch, edge_index, cell_shifts,
                    gradient=True, direct=False)

Each family has a scriptable core that shares only the weights with the eager
model: PET's is :class:`train.scripted_pet.PETCore`; MACE's is the mace-torch
network compiled by e3nn's ``jit.compile``, mace's own scripting route (the
one behind its LAMMPS export). What the eager base class adds (isolated-atom
subtraction, energy scale, composition baseline) becomes three per-element
tables computed once from the eager model: isolated-atom energies depend on
the weights only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.models.base import NUM_ELEMENT_SLOTS, AtomisticModel
from train.scripted_pet import PETCore


class MACECore(nn.Module):
    """MACEModel.atom_outputs with the mace-torch network compiled by e3nn.

    Args:
        model: an eager MACEModel; its network is copied, then compiled.
    """

    def __init__(self, model: AtomisticModel):
        super().__init__()
        from e3nn.util import jit  # mace's scripting route; e3nn loads slowly

        from train.mace_torch import copy_network

        self.num_elements = len(model.config.elements)
        self.register_buffer("element_index", model.element_index.clone())
        self.network = jit.compile(copy_network(model.network), in_place=True)

    def forward(
        self,
        species: Tensor,
        positions: Tensor,
        batch: Tensor,
        num_structures: int,
        edge_i: Tensor,
        edge_j: Tensor,
        shifts: Tensor,
        vectors: Tensor,
        direct: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        index = self.element_index[species]
        if bool((index < 0).any()):
            raise ValueError("MACE model got an atomic number it was not built for")
        if not positions.requires_grad:
            # mace marks its input positions as requiring grad: not the caller's
            positions = positions.detach().clone()
        # mace rebuilds r_ij from positions and Cartesian shifts: the shifts that
        # reproduce the given vectors (autograd then reaches positions and cell
        # through the vectors, whoever built them)
        shift_vectors = vectors - (positions[edge_j] - positions[edge_i])
        counts = torch.bincount(batch, minlength=num_structures)
        ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        dtype = positions.dtype
        data = {
            "positions": positions,
            "node_attrs": F.one_hot(index, self.num_elements).to(dtype),
            "edge_index": torch.stack([edge_i, edge_j]),
            "shifts": shift_vectors,
            "unit_shifts": shifts.to(dtype),
            "cell": positions.new_zeros(3 * num_structures, 3),
            "batch": batch,
            "ptr": ptr,
        }
        out = self.network(data, training=False, compute_force=False)
        energy = out["node_energy"]
        assert energy is not None
        return energy, None, None


def _periodic_volume(cell: Tensor, pbc: Tensor) -> Tensor:
    volume = torch.linalg.det(cell).abs()
    return torch.where(pbc.all(dim=1), volume, torch.zeros_like(volume))


class ScriptedPotential(nn.Module):
    """A model family's core plus the base class's per-element energy terms.

    Attributes:
        cutoff: neighbour-list radius, Angstrom.
        num_layers: message-passing steps (the interaction range is
            ``cutoff * num_layers``).
        has_direct: whether the model has direct force and stress heads.

    Args:
        model: an eager model (``train.export.load_model``), in eval mode.
        elements: atomic numbers to tabulate isolated-atom energies for
            (default: every element the family accepts).
    """

    def __init__(self, model: AtomisticModel, elements: list[int] | None = None):
        super().__init__()
        if model.family == "pet":
            self.core = PETCore(model)
            self.num_layers = int(model.config.num_gnn_layers)
            default = list(range(1, NUM_ELEMENT_SLOTS))
        elif model.family == "mace":
            self.core = MACECore(model)
            self.num_layers = int(model.config.num_interactions)
            default = list(model.config.elements)
        else:
            raise ValueError(f"no TorchScript version of model family '{model.family}'")
        self.cutoff = float(model.cutoff)
        self.has_direct = model.forces != "conservative"
        dtype = model.dtype
        zs = torch.tensor(sorted(elements or default), dtype=torch.int64)
        isolated = torch.zeros(NUM_ELEMENT_SLOTS, dtype=dtype)
        with torch.no_grad():
            isolated[zs] = model._isolated_values(zs, dtype).detach().to(dtype)
        self.register_buffer("isolated", isolated)
        self.register_buffer("baseline", model.composition_baseline.detach().to(dtype).clone())
        self.register_buffer("scale", model.energy_scale.detach().to(dtype).clone())

    def atom_outputs(
        self,
        species: Tensor,
        positions: Tensor,
        batch: Tensor,
        num_structures: int,
        edge_i: Tensor,
        edge_j: Tensor,
        shifts: Tensor,
        vectors: Tensor,
        direct: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Per-atom energies (eV), direct forces (eV/A) and virials (eV) of a graph.

        Args:
            species: (num_atoms,) atomic numbers.
            positions: (num_atoms, 3) Angstrom.
            batch: (num_atoms,) structure of each atom.
            num_structures: number of structures.
            edge_i, edge_j: (num_edges,) centre and neighbour of each edge.
            shifts: (num_edges, 3) integer cell shifts (int64).
            vectors: (num_edges, 3) r_j - r_i + shifts @ cell, Angstrom.
            direct: compute the direct heads too (None otherwise).
        """
        energy, forces, virial = self.core(
            species, positions, batch, num_structures, edge_i, edge_j, shifts, vectors, direct
        )
        dtype = positions.dtype
        scale = self.scale.to(dtype)
        learned = energy - self.isolated.to(dtype)[species]
        atom_energy = learned.to(dtype) * scale + self.baseline.to(dtype)[species]
        if forces is not None:
            forces = forces.to(dtype) * scale
        if virial is not None:
            virial = virial.to(dtype) * scale
        return atom_energy, forces, virial

    def forward(
        self,
        species: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        edge_index: Tensor,
        cell_shifts: Tensor,
        gradient: bool,
        direct: bool,
    ) -> dict[str, Tensor]:
        """What the eager model's forward returns, from the same batch tensors.

        ``gradient`` gives ``forces``/``stress`` by autograd (call it with grad
        enabled); ``direct`` the head outputs, under ``forces``/``stress`` when
        ``gradient`` is off and under ``direct_forces``/``direct_stress`` when on.
        """
        num_structures = cell.shape[0]
        edge_i, edge_j = edge_index[0], edge_index[1]
        strain = torch.zeros(num_structures, 3, 3, dtype=positions.dtype, device=positions.device)
        strained, strained_cell = positions, cell
        if gradient:
            positions = positions.detach().requires_grad_(True)
            strain.requires_grad_(True)
            eye = torch.eye(3, dtype=positions.dtype, device=positions.device)
            deform = eye + 0.5 * (strain + strain.transpose(1, 2))
            strained = torch.einsum("nk,nkl->nl", positions, deform[batch])
            strained_cell = cell @ deform
        shift_vectors = torch.einsum("ek,ekl->el", cell_shifts, strained_cell[batch[edge_i]])
        vectors = strained[edge_j] - strained[edge_i] + shift_vectors
        shifts = torch.round(cell_shifts).to(torch.int64)
        atom_energy, forces, virial = self.atom_outputs(
            species, strained, batch, num_structures, edge_i, edge_j, shifts, vectors, direct
        )
        energy = atom_energy.new_zeros(num_structures).index_add(0, batch, atom_energy)
        out: dict[str, Tensor] = {"energy": energy}
        volume = _periodic_volume(cell.detach(), pbc)
        safe = torch.where(volume > 0, volume, torch.ones_like(volume))[:, None, None]
        periodic = (volume > 0)[:, None, None]
        if gradient:
            grads = torch.autograd.grad([energy.sum()], [positions, strain], allow_unused=True)
            grad_pos, grad_strain = grads[0], grads[1]
            out["forces"] = -grad_pos if grad_pos is not None else torch.zeros_like(positions)
            if grad_strain is None:
                grad_strain = torch.zeros_like(strain)
            out["stress"] = torch.where(periodic, grad_strain / safe, 0.0)
        if forces is not None and virial is not None:
            total = virial.new_zeros(num_structures, 3, 3).index_add(0, batch, virial)
            stress = torch.where(periodic, total / safe, 0.0)
            prefix = "direct_" if gradient else ""
            out[prefix + "forces"] = forces
            out[prefix + "stress"] = stress
        return out


def scripted_potential(model: AtomisticModel) -> torch.jit.ScriptModule:
    """The TorchScript twin of an eager model (same weights, dtype and device)."""
    parameter = next(model.parameters())
    potential = ScriptedPotential(model.eval()).to(parameter.device, parameter.dtype)
    return torch.jit.script(potential.eval())
