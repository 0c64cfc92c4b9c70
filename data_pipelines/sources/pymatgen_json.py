"""mlearn / maml JSON lists: `[{structure, outputs: {energy, forces, stress | virial_stress}}]`.

Units as written by these projects (VASP PBE): energy eV (total), forces eV/A,
stress in kBar with VASP's sign (compression positive), Voigt order
xx, yy, zz, xy, yz, zx. Trap: mlearn's `Mo/training.json.gz` has the last two
swapped (xx, yy, zz, xy, zx, yz); read it with `stress_order="xx,yy,zz,xy,zx,yz"`.
mlearn records are independent calculations, so no split key is set.

Configuration type (`info["config_type"]`, for errors per type): the record's
`config_type_key` field when one is given; else mlearn's `group` (AIMD-NVT,
Vacancy, Elastic, Surface); maml's `group` is a composition ("Mo", "W-Mo"), and
its type is the data group in the file name (`Mo_AIMD.json.gz` -> "AIMD",
`MoW_SS.json.gz` -> "SS"); else the record's `tags`. The raw `group` and `tags`
are kept too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ase.data import atomic_numbers

from data_pipelines.schema import Structure
from data_pipelines.sources.fields import At
from data_pipelines.sources.options import ReaderOptions
from data_pipelines.sources.pymatgen_dict import parse_structure, read_labels, structures
from data_pipelines.sources.textio import json_members, strip_compression

_STRESS_KEYS = ("stress", "virial_stress")  # maml, mlearn
_FORMULA_PART = re.compile(r"(?:[A-Z][a-z]?\d*)+")
_SYMBOL = re.compile(r"[A-Z][a-z]?")


def read_pymatgen_json(path: Path, options: ReaderOptions) -> Iterator[Structure]:
    """Yields one Structure per list element of a mlearn/maml JSON (.json, .json.gz).

    Args:
        path: the file.
        options: keys are looked up in `outputs`, then in the record itself.
    """
    name, file = options.name_of(path), str(path)
    file_group = data_group(path)
    records = json_members(path, file, options.on_error)
    for _, s in structures(records, file, name, options, _structure):
        if "config_type" not in s.info:
            config_type = _config_type(s.info, file_group)
            if config_type is not None:
                s.info["config_type"] = config_type
        yield s


def is_composition(text: str) -> bool:
    """True for "Mo", "W-Mo", "Ni3Mo": element symbols (with counts), '-' or '_' apart."""
    parts = re.split(r"[-_ ]", text.strip())
    return all(
        _FORMULA_PART.fullmatch(p) and all(sym in atomic_numbers for sym in _SYMBOL.findall(p))
        for p in parts
    )


def data_group(path: Path) -> str | None:
    """maml's data group from a file name `<composition>_<type>.json[.gz]`, e.g. "AIMD"."""
    stem = strip_compression(path.name)
    stem = stem[: -len(".json")] if stem.lower().endswith(".json") else stem
    head, sep, tail = stem.partition("_")
    return tail if sep and tail and is_composition(head) else None


def _config_type(info: dict[str, Any], file_group: str | None) -> str | None:
    group = info.get("group")
    if group and not is_composition(group):
        return group
    return file_group or info.get("tags")


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
    if isinstance(tags, str) and tags:
        info["tags"] = tags
    if options.config_type_key:
        value, _ = lookup(options.config_type_key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            info["config_type"] = str(value)
    return Structure(
        source_id, numbers, positions, cell, pbc, labels.energy, labels.forces, labels.stress, info
    )
