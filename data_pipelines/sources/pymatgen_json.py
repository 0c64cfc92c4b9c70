"""mlearn / maml JSON lists: `[{structure, outputs: {energy, forces, stress | virial_stress}}]`.

Units as written by these projects (VASP PBE): energy eV (total), forces eV/A,
stress in kBar with VASP's sign (compression positive), Voigt order
xx, yy, zz, xy, yz, zx. Trap: mlearn's `Mo/training.json.gz` has the last two
swapped (xx, yy, zz, xy, zx, yz); read it with `stress_order="xx,yy,zz,xy,zx,yz"`.
mlearn records are independent calculations, so no split key is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipelines.schema import DataError, Structure
from data_pipelines.sources.fields import (
    ENERGY_SCALE,
    At,
    is_absent,
    to_energy,
    to_forces,
    to_stress,
    virial_to_stress,
)
from data_pipelines.sources.options import ReaderOptions
from data_pipelines.sources.pymatgen_dict import parse_structure
from data_pipelines.sources.textio import json_members

DEFAULT_STRESS_UNIT = "kBar-vasp"
DEFAULT_STRESS_ORDER = "xx,yy,zz,xy,yz,zx"
_STRESS_KEYS = ("stress", "virial_stress")  # maml, mlearn


def read_pymatgen_json(path: Path, options: ReaderOptions) -> Iterator[Structure]:
    """Yields one Structure per list element of a mlearn/maml JSON (.json, .json.gz).

    Args:
        path: the file.
        options: keys are looked up in `outputs`, then in the record itself.
    """
    name, file = options.name_of(path), str(path)
    for key, record in json_members(path, file, options.on_error):
        try:
            s = _structure(record, At(file, key), f"{name}#{key}", options)
        except DataError as err:
            options.on_error(err)
            continue
        yield s


def _structure(record: Any, at: At, source_id: str, options: ReaderOptions) -> Structure:
    if not isinstance(record, dict):
        raise at.error(None, "expected a record object with 'structure' and 'outputs'")
    numbers, positions, cell, pbc = parse_structure(record.get("structure"), at)
    outputs = record.get("outputs")
    if not isinstance(outputs, dict):
        raise at.error("outputs", "missing; expected {energy, forces, stress}")

    def lookup(key: str) -> tuple[Any, str]:
        if key not in outputs and key in record:
            return record[key], key
        return outputs.get(key), f"outputs.{key}"

    escale = ENERGY_SCALE[options.energy_unit or "eV"]
    order = options.stress_order or DEFAULT_STRESS_ORDER
    value, field = lookup(options.energy_key or "energy")
    energy = to_energy(value, at, field, escale)
    value, field = lookup(options.forces_key or "forces")
    forces = to_forces(value, len(numbers), at, field, escale)

    stress = None
    for key in (options.stress_key,) if options.stress_key else _STRESS_KEYS:
        value, field = lookup(key)
        if not is_absent(value):
            stress = to_stress(value, at, field, options.stress_unit or DEFAULT_STRESS_UNIT, order)
            break
    if stress is None and options.virial_key:
        value, field = lookup(options.virial_key)
        stress = virial_to_stress(value, cell, at, field, escale, order)

    info: dict[str, Any] = {}
    for src, dst in (("group", "group"), ("description", "description")):
        if isinstance(record.get(src), str):
            info[dst] = record[src]
    tags = record.get("tags", record.get("tag"))
    if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        tags = ",".join(tags)
    if isinstance(tags, str):
        info["tags"] = tags
    return Structure(source_id, numbers, positions, cell, pbc, energy, forces, stress, info)
