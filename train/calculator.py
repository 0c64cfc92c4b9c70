"""ASE calculator for an exported model file, with the inference-time corrections.

calc = load_calculator("runs/x/model.pt", forces="direct", rotational_average=3)
atoms.calc = calc; atoms.get_forces()
calc = load_calculator("runs/x/model.pt", head="r2SCAN")   # a model with heads
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers

from data_pipelines import schema as K
from data_pipelines.batching import Graph, collate, make_graph, with_head
from data_pipelines.schema import Structure
from train.models.base import DIRECT_FORCES, DIRECT_STRESS


def _structure(atoms: Atoms) -> Structure:
    return Structure("ase", atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)


def _rotated_graph(reference: Graph, structure: Structure) -> Graph | None:
    """``reference``'s neighbour list for ``structure`` if the latter is the same
    periodic structure rigidly rotated (positions and cell; fractional coordinates,
    hence cell shifts, unchanged), else None."""
    ref = reference.structure
    if (
        structure.num_atoms != ref.num_atoms
        or not (structure.pbc.all() and ref.pbc.all())
        or not np.array_equal(structure.numbers, ref.numbers)
    ):
        return None
    try:
        rotation = np.linalg.solve(ref.cell, structure.cell)  # ref.cell @ R = cell
    except np.linalg.LinAlgError:
        return None
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-10):
        return None
    if not np.allclose(ref.positions @ rotation, structure.positions, rtol=0.0, atol=1e-8):
        return None
    return Graph(structure, reference.edge_i, reference.edge_j, reference.shifts)


class ModelCalculator(Calculator):
    """Energy, forces and stress of a trained model (eV, eV/A, eV/A^3).

    Args:
        model: a model from `train.export.load_model`.
        forces: "direct" (heads, no autograd) or "conservative" (-dE/dr).
        max_atoms: atoms per forward pass when evaluating many structures (the
            rotated copies of rotational averaging). None picks by device: 4096 on
            a GPU, where bigger batches fill the device; 256 on a CPU, where a
            forward pass costs the same per atom at any size until its tensors
            leave the cache, and more per atom beyond (measured in BENCHMARKS.md).
        head: the energy head of a model with heads per level of theory
            (model.knobs.heads); None: the first. A model without heads takes none.

    Raises:
        ValueError: an unknown head, naming the model's heads.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model,
        elements: list[str],
        forces: str = "conservative",
        max_atoms: int | None = None,
        head: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.head_index = model.head_index(head)
        self.head = head if head is not None else (model.head_names or (None,))[0]
        self.model = model
        model.cache_isolated = True  # fixed weights: isolated-atom energies once
        self.forces_mode = forces
        self.supported_species = sorted(atomic_numbers[e] for e in elements)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        if max_atoms is None:
            max_atoms = 4096 if self.device.type == "cuda" else 256
        self.max_atoms = max_atoms

    def _graphs(self, structures: list[Atoms]) -> list[Graph]:
        graphs: list[Graph] = []
        built: Graph | None = None  # the last neighbour list computed from scratch
        for atoms in structures:
            structure = _structure(atoms)
            graph = _rotated_graph(built, structure) if built is not None else None
            if graph is None:
                graph = built = make_graph(structure, self.model.cutoff)
            graphs.append(graph)
        return graphs

    def _keys(self, out: dict) -> tuple[str, str]:
        if self.forces_mode == "direct" and DIRECT_FORCES in out:
            return DIRECT_FORCES, DIRECT_STRESS
        return K.FORCES, K.STRESS

    def evaluate(self, structures: list[Atoms]) -> list[dict]:
        """Results for several structures, packed into as few forward passes as fit.

        A periodic structure that is a rigid rotation of an earlier one of the
        same call (the copies of rotational averaging) reuses its neighbour list.
        """
        results: list[dict] = []
        graphs = self._graphs(structures)
        start = 0
        while start < len(structures):
            chunk, atoms = [], 0
            while start + len(chunk) < len(structures) and (
                not chunk or atoms + len(structures[start + len(chunk)]) <= self.max_atoms
            ):
                atoms += len(structures[start + len(chunk)])
                chunk.append(structures[start + len(chunk)])
            batch = collate(graphs[start : start + len(chunk)], dtype=self.dtype)
            if self.model.head_names:
                with_head(batch, self.head_index)
            batch = {
                k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            with torch.no_grad():
                out = self.model(batch)
            f_key, s_key = self._keys(out)
            energy = out[K.ENERGY].detach().double().cpu().numpy()
            forces = out[f_key].detach().double().cpu().numpy()
            stress = out[s_key].detach().double().cpu().numpy()
            ptr = batch[K.PTR].cpu().numpy()
            for k, a in enumerate(chunk):
                res = {
                    "energy": float(energy[k]),
                    "free_energy": float(energy[k]),
                    "forces": forces[ptr[k] : ptr[k + 1]].copy(),
                }
                if a.pbc.all():  # ASE's Voigt order: xx yy zz yz xz xy
                    s = stress[k]
                    res["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
                results.append(res)
            start += len(chunk)
        return results

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = self.evaluate([self.atoms])[0]


def load_calculator(
    model_file,
    forces: str | None = None,
    rotational_average: int | None = None,
    inversion: bool = False,
    space_group: bool = False,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    symprec: float = 1e-5,
    max_atoms: int | None = None,
    head: str | None = None,
) -> Calculator:
    """An ASE calculator for an exported model, optionally corrected.

    Args:
        model_file: a file written by `python -m train.export` (or RUN_DIR/model.pt).
        forces: "direct" or "conservative" (default: conservative when the model
            can differentiate its energy, i.e. always, unless it was trained direct).
        rotational_average: l_max of the rotation quadrature (None: off).
        inversion: pair every rotation with its inversion (O(3) average).
        space_group: project energy, forces and stress onto the crystal's symmetry.
        max_atoms: atoms per forward pass for batched evaluation (see
            :class:`ModelCalculator`; None picks by device).
        head: the energy head of a model with heads (None: the first); an unknown
            one fails naming the model's heads.
    """
    from train.corrections import RotationalAverage, SpaceGroupProjection
    from train.export import load_model

    model, payload = load_model(model_file, forces=forces, device=device, dtype=dtype)
    mode = forces or ("direct" if payload["forces"] == "direct" else "conservative")
    calc: Calculator = ModelCalculator(
        model, payload["elements"], forces=mode, max_atoms=max_atoms, head=head
    )
    if rotational_average is not None:
        base = calc

        def batch_fn(structures):
            return base.evaluate(structures)

        calc = RotationalAverage(
            base, l_max=rotational_average, inversion=inversion, batch_fn=batch_fn
        )
        calc.supported_species = base.supported_species
    if space_group:
        inner = calc
        calc = SpaceGroupProjection(inner, symprec=symprec)
        calc.supported_species = inner.supported_species
    return calc
