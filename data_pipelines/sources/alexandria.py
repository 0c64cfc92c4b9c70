"""Alexandria JSON: pymatgen ComputedStructureEntry dicts, plain or .bz2/.gz.

Accepted layouts:
- `{"entries": [entry, ...]}` (the Alexandria download), a plain list of entries,
  or `{name: entry}` (as fairchem's *_computed_structure_entries.json);
- Alexandria's relaxation paths `{alex_id: [{"steps": [{structure, energy, forces,
  stress}, ...]}, ...]}`, every step of one id sharing a split.

Energy: the entry's `energy` field, which pymatgen stores *uncorrected* (the
`correction`, e.g. MP2020 anion/U corrections, is kept apart and recorded in
`info["energy_correction"]`; raw DFT energies are what sAlex/OMat24 train on).
Forces: per-site `properties.forces`, or a record's `forces` (eV/A). Stress: a
record's or `data`'s `stress`, taken as VASP's kBar (compression positive) unless
`stress_unit` says otherwise.
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


def read_alexandria(path: Path, options: ReaderOptions) -> Iterator[Structure]:
    """Yields one Structure per entry (or per relaxation step) of an Alexandria JSON.

    Args:
        path: the file (.json, optionally .bz2/.gz/.xz).
        options: explicit keys are looked up in the entry, then in its `data`.
    """
    name, file = options.name_of(path), str(path)
    for key, value in json_members(path, file, options.on_error, descend="entries"):
        if isinstance(value, list):  # relaxation paths of one material
            records = [
                (f"{key}/{c}/{s}", step)
                for c, calc in enumerate(value)
                for s, step in enumerate(calc.get("steps", []) if isinstance(calc, dict) else [])
            ]
            split_key = str(key)
        elif isinstance(value, dict) and ("structure" in value or "@class" in value):
            records, split_key = [(key, value)], None
        else:  # metadata beside the entries (e.g. "@module"), not a record
            continue
        for _, s in structures(records, file, name, options, _structure):
            if split_key is not None:
                s.info["split_key"] = split_key
            yield s


def _structure(entry: Any, at: At, source_id: str, options: ReaderOptions) -> Structure:
    if not isinstance(entry, dict):
        raise at.error(None, "expected a ComputedStructureEntry object")
    numbers, positions, cell, pbc = parse_structure(entry.get("structure"), at)
    data = entry.get("data") if isinstance(entry.get("data"), dict) else {}

    def lookup(key: str) -> tuple[Any, str]:
        if key in entry:
            return entry[key], key
        return data.get(key), f"data.{key}"

    labels = read_labels(
        lookup,
        len(numbers),
        cell,
        at,
        options,
        forces_fallback=lambda: (
            _site_forces(entry["structure"]),
            "structure.sites[].properties.forces",
        ),
    )
    escale = labels.energy_scale

    info: dict[str, Any] = {}
    entry_id = entry.get("entry_id", data.get("mat_id"))
    if isinstance(entry_id, str):
        info["entry_id"] = entry_id
    correction = entry.get("correction")
    if isinstance(correction, int | float) and correction:
        info["energy_correction"] = float(correction) * escale
    params = entry.get("parameters")
    if isinstance(params, dict) and isinstance(params.get("run_type"), str):
        info["run_type"] = params["run_type"]
    return Structure(
        source_id, numbers, positions, cell, pbc, labels.energy, labels.forces, labels.stress, info
    )


def _site_forces(structure: dict) -> list | None:
    """Per-site `properties.forces` as an (N, 3) list, or None unless every site has them."""
    out = []
    for site in structure.get("sites", []):
        props = site.get("properties") if isinstance(site, dict) else None
        if not isinstance(props, dict) or props.get("forces") is None:
            return None
        out.append(props["forces"])
    return out
