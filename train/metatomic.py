"""Export to metatomic: one TorchScript file for ASE, LAMMPS, i-PI and friends.

    python -m train.export RUN_DIR --format metatomic [--forces direct] --out model.pt

The file is a metatomic ``AtomisticModel`` around :class:`MetatomicPotential`
(the TorchScript twin of ``train.scripted``). It declares:

- ``energy`` (eV, per system or per atom); engines take gradient forces and
  stress by differentiating it (the neighbour-list vectors carry autograd);
- for models with direct heads, ``non_conservative_force`` (eV/A, per atom)
  and ``non_conservative_stress`` (eV/A^3, per system), metatomic's names for
  direct outputs (engines ask for them, e.g. metatomic-ase with
  ``non_conservative=True``);
- one full, strict neighbour list at the model's cutoff; an interaction range
  of cutoff x message-passing layers; length unit angstrom; the elements of
  the training data; the model's dtype.

The model card (``train.card``) travels in the metadata's ``extra``. Loading
needs only torch and metatomic: ``metatomic.torch.load_atomistic_model``.
"""

import json
from pathlib import Path
from typing import Dict, List, Literal, Optional  # noqa: UP035 (see forward)

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    System,
)
from torch import Tensor, nn

from train.card import CARD_KEY
from train.scripted import ScriptedPotential, _periodic_volume

ENERGY = "energy"
NC_FORCE = "non_conservative_force"
NC_STRESS = "non_conservative_stress"
ExportForces = Literal["conservative", "direct", "both"]
REFERENCES = {
    "pet": ["Pozdnyakov and Ceriotti, NeurIPS 2023, arXiv:2305.19302 (point-edge transformer)"],
    "mace": ["Batatia et al., NeurIPS 2022, arXiv:2206.07697 (MACE)"],
}


class MetatomicPotential(nn.Module):
    """metatomic's model interface over a :class:`ScriptedPotential`.

    Args:
        potential: the TorchScript-able potential (not yet scripted).
        direct_outputs: whether the direct heads are exported.
    """

    def __init__(self, potential: ScriptedPotential, direct_outputs: bool):
        super().__init__()
        self.potential = potential
        self.direct_outputs = direct_outputs
        self.nl_options = NeighborListOptions(cutoff=potential.cutoff, full_list=True, strict=True)

    def requested_neighbor_lists(self) -> list[NeighborListOptions]:
        return [self.nl_options]

    # metatomic compares these annotations with typing's List, Dict and Optional
    # objects: hence no `from __future__ import annotations` in this module
    def forward(
        self,
        systems: List[System],  # noqa: UP006
        outputs: Dict[str, ModelOutput],  # noqa: UP006
        selected_atoms: Optional[Labels],  # noqa: UP045
    ) -> Dict[str, TensorMap]:  # noqa: UP006
        # TorchScript reads no module globals: output names are spelled out
        results: dict[str, TensorMap] = {}
        if len(systems) == 0 or len(outputs) == 0:
            return results
        device = systems[0].positions.device
        species, positions, batch = [], [], []
        edge_i, edge_j, shifts, vectors, cells, pbcs = [], [], [], [], [], []
        offset = 0
        for s, system in enumerate(systems):
            neighbors = system.get_neighbor_list(self.nl_options)
            pairs = neighbors.samples.values.to(torch.int64)
            species.append(system.types.to(torch.int64))
            positions.append(system.positions)
            batch.append(torch.full((len(system),), s, dtype=torch.int64, device=device))
            edge_i.append(pairs[:, 0] + offset)
            edge_j.append(pairs[:, 1] + offset)
            shifts.append(pairs[:, 2:5])
            vectors.append(neighbors.values.reshape(-1, 3))
            cells.append(system.cell)
            pbcs.append(system.pbc)
            offset += len(system)
        atom_batch = torch.cat(batch)
        direct = "non_conservative_force" in outputs or "non_conservative_stress" in outputs
        energy, forces, virial = self.potential.atom_outputs(
            torch.cat(species),
            torch.cat(positions),
            atom_batch,
            len(systems),
            torch.cat(edge_i),
            torch.cat(edge_j),
            torch.cat(shifts),
            torch.cat(vectors),
            direct,
        )
        # (system, atom) of every atom; with selected_atoms (domain decomposition)
        # only those count, the others are neighbours
        atom_index = torch.cat([torch.arange(len(sys), device=device) for sys in systems])
        keep = torch.ones_like(atom_batch, dtype=torch.bool)
        if selected_atoms is not None:
            chosen = selected_atoms.values.to(torch.int64)
            starts = torch.cumsum(torch.bincount(atom_batch, minlength=len(systems)), 0)
            starts = starts - torch.bincount(atom_batch, minlength=len(systems))
            keep = torch.zeros_like(keep)
            keep[starts[chosen[:, 0]] + chosen[:, 1]] = True
        atom_samples = Labels(
            ["system", "atom"],
            torch.stack([atom_batch[keep], atom_index[keep]], dim=1).to(torch.int32),
        )
        system_samples = Labels(
            ["system"], torch.arange(len(systems), device=device, dtype=torch.int32)[:, None]
        )
        if "energy" in outputs:
            if outputs["energy"].sample_kind == "atom":
                values, samples = energy[keep][:, None], atom_samples
            else:
                total = energy.new_zeros(len(systems)).index_add(0, atom_batch[keep], energy[keep])
                values, samples = total[:, None], system_samples
            results["energy"] = _single_block(values, samples, [], "energy")
        if "non_conservative_force" in outputs and forces is not None:
            xyz = Labels(["xyz"], torch.arange(3, device=device, dtype=torch.int32)[:, None])
            results["non_conservative_force"] = _single_block(
                forces[keep][:, :, None], atom_samples, [xyz], "non_conservative_force"
            )
        if "non_conservative_stress" in outputs and virial is not None:
            total = virial.new_zeros(len(systems), 3, 3)
            total = total.index_add(0, atom_batch[keep], virial[keep])
            volume = _periodic_volume(torch.stack(cells), torch.stack(pbcs))
            safe = torch.where(volume > 0, volume, torch.ones_like(volume))[:, None, None]
            stress = torch.where((volume > 0)[:, None, None], total / safe, 0.0)
            xyz = torch.arange(3, device=device, dtype=torch.int32)[:, None]
            components = [Labels(["xyz_1"], xyz), Labels(["xyz_2"], xyz)]
            results["non_conservative_stress"] = _single_block(
                stress[:, :, :, None], system_samples, components, "non_conservative_stress"
            )
        return results


def _single_block(values: Tensor, samples: Labels, components: list[Labels], name: str):
    properties = Labels([name], torch.zeros(1, 1, dtype=torch.int32, device=values.device))
    block = TensorBlock(values, samples, components, properties)
    keys = Labels(["_"], torch.zeros(1, 1, dtype=torch.int32, device=values.device))
    return TensorMap(keys, [block])


def atomistic_model(
    model, payload: dict, forces: ExportForces | None = None, dtype: torch.dtype | None = None
) -> AtomisticModel:
    """The metatomic model of an eager model and its file's payload.

    Args:
        model: from ``train.export.load_model`` (any force mode of the file).
        payload: the model file's payload (elements, card, dtype).
        forces: "conservative" (energy only; engines differentiate it),
            "direct" or "both" (energy plus the direct outputs); default:
            what the file was trained for.
        dtype: float32 or float64 (default: the model's).

    Raises:
        ValueError: direct outputs asked of a model without direct heads.
    """
    trained = payload["forces"]
    forces = forces or trained
    if forces != "conservative" and trained == "conservative":
        raise ValueError(
            f"a {payload['family']} model trained with forces=conservative has no direct "
            "heads: export it with --forces conservative"
        )
    dtype = dtype or next(model.parameters()).dtype
    model = model.to(dtype).eval()
    from ase.data import atomic_numbers

    elements = sorted(atomic_numbers[e] for e in payload["elements"])
    potential = ScriptedPotential(model, elements).to(dtype).eval()
    module = MetatomicPotential(potential, direct_outputs=forces != "conservative").eval()
    outputs = {ENERGY: ModelOutput(unit="eV", sample_kind="atom")}
    if forces != "conservative":
        outputs[NC_FORCE] = ModelOutput(unit="eV/Angstrom", sample_kind="atom")
        outputs[NC_STRESS] = ModelOutput(unit="eV/Angstrom^3", sample_kind="system")
    capabilities = ModelCapabilities(
        outputs=outputs,
        atomic_types=elements,
        interaction_range=potential.cutoff * potential.num_layers,
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype="float64" if dtype == torch.float64 else "float32",
    )
    card = dict(payload.get("card") or {})
    card["format"] = "metatomic"
    card["format_details"] = (
        f"metatomic AtomisticModel, outputs {', '.join(outputs)}, "
        f"dtype {capabilities.dtype}, forces exported: {forces}"
    )
    name = card.get("name") or f"{payload['family']}-{payload['size']}"
    metadata = ModelMetadata(
        name=f"mlip-scaling {name}",
        description=(
            f"{payload['family']} ({payload['size']}) trained with mlip-scaling, forces "
            f"{trained}; level of theory: "
            f"{card.get('training_data', {}).get('level_of_theory') or 'not recorded'}"
        ),
        references={"architecture": REFERENCES.get(payload["family"], [])},
        extra={CARD_KEY: json.dumps(card, default=str)},
    )
    return AtomisticModel(module, metadata, capabilities)


def save_metatomic(
    model,
    payload: dict,
    out: str | Path,
    forces: ExportForces | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Writes the metatomic model of a loaded model file.

    Args:
        model, payload: from ``train.export.load_model``; build the model
            ``both`` when exporting direct outputs of a pet trained ``both``.
        out: the metatomic file to write.
        forces: see :func:`atomistic_model`.
        dtype: see :func:`atomistic_model`.
    """
    from data_pipelines.atomic import atomic_write

    exported = atomistic_model(model, payload, forces, dtype)
    return atomic_write(out, lambda tmp: exported.save(str(tmp)))
