"""Export a mace model to a plain mace-torch model file.

    python -m train.export RUN_DIR --format mace --out model.model

The file is what ``mace_run_train`` writes (a pickled ``mace.modules.MACE``),
so mace-torch's own tools take it: ``mace.calculators.MACECalculator``,
``mace_create_lammps_model``, fine-tuning. Our base class's energy terms are
folded into the network: with scale s (``energy_scale``), composition
baseline b_Z and isolated-atom energies u_Z, our atom energy
``s (raw - u_Z) + b_Z`` is mace's ``E0_Z + raw'`` with ``E0_Z = b_Z - s u_Z``
and the readouts' last weights times s (the readouts are linear in them, so
raw' = s raw). The model card is a ``mlip-scaling-card.json`` record of the
file's zip archive, which ``torch.load`` ignores.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import torch

from train.card import CARD_RECORD


def copy_network(network: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of a mace-torch network.

    ``copy.deepcopy`` alone fails on mace's ``EmptyParam`` (the zero weights of
    pruned contraction paths: its constructor takes no requires_grad), so such
    parameters are rebuilt by their own constructor and handed to deepcopy.
    """
    memo: dict[int, object] = {}
    for parameter in network.parameters():
        if type(parameter) is not torch.nn.Parameter:
            try:
                copy.deepcopy(parameter)
            except TypeError:
                memo[id(parameter)] = type(parameter)(parameter.detach().clone())
    return copy.deepcopy(network, memo)


def mace_network(model) -> torch.nn.Module:
    """A mace-torch MACE that alone computes what our MACEModel does."""
    if model.family != "mace":
        raise ValueError(f"only mace models export to mace-torch files, not {model.family}")
    network = copy_network(model.network).eval()
    scale = float(model.energy_scale)
    zs = torch.tensor(list(model.config.elements), dtype=torch.int64)
    with torch.no_grad():
        isolated = model._isolated_values(zs, model.dtype).to(torch.float64)
        baseline = model.composition_baseline.to(torch.float64)[zs]
        for readout in network.readouts:
            last = getattr(readout, "linear_2", None)
            last = readout.linear if last is None else last
            for parameter in last.parameters():
                parameter.mul_(scale)
        energies = network.atomic_energies_fn.atomic_energies
        e0 = (baseline - scale * isolated).to(energies.dtype)
        energies.copy_(e0.expand_as(energies))
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def save_mace_torch(model, payload: dict, out: str | Path) -> Path:
    """Writes the mace-torch model file of a loaded mace model file.

    Args:
        model, payload: from ``train.export.load_model``.
        out: the file to write.
    """
    from data_pipelines.atomic import atomic_write

    network = mace_network(model)
    card = dict(payload.get("card") or {})
    card["format"] = "mace-torch"
    card["format_details"] = (
        f"pickled mace.modules.{type(network).__name__} (load with mace.calculators."
        "MACECalculator); gradient forces and stress only"
    )

    def write(tmp: Path) -> None:
        torch.save(network, tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            top = archive.namelist()[0].split("/")[0]
            archive.writestr(f"{top}/{CARD_RECORD}", json.dumps(card, default=str))

    return atomic_write(out, write)
