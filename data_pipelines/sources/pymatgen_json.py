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

from data_pipelines.schema import Structure
from data_pipelines.sources.fields import At
from data_pipelines.sources.options import ReaderOptions
from data_pipelines.sources.pymatgen_dict import parse_structure, read_labels, structures
from data_pipelines.sources.textio import json_members

_STRESS_KEYS = ("stress", "virial_stress")  # maml, mlearn


def read_pymatgen_json(path: Path, options: ReaderOptions) -> Iterator[Structure]:
    """Yields one Structure per list element of a mlearn/maml JSON (.json, .json.gz).

    Args:
        path: the file.
        options: keys are looked up in `outputs`, then in the record itself.
    """
    name, file = options.name_of(path), str(path)
    records = json_members(path, file, options.on_error)
    for _, s in structures(records, file, name, options, _structure):
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

    labels = read_labels(lookup, len(numbers), cell, at, options, stress_keys=_STRESS_KEYS)

    info: dict[str, Any] = {}
    for src, dst in (("group", "group"), ("description", "description")):
        if isinstance(record.get(src), str):
            info[dst] = record[src]
    tags = record.get("tags", record.get("tag"))
    if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        tags = ",".join(tags)
    if isinstance(tags, str):
        info["tags"] = tags
    return Structure(
        source_id, numbers, positions, cell, pbc, labels.energy, labels.forces, labels.stress, info
    )
