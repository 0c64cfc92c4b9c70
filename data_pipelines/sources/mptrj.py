"""MPtrj JSON: `{mp_id: {frame_id: {structure, corrected_total_energy, force, stress, ...}}}`.

Units as MPtrj writes them: energies eV (total), `force` eV/A, `stress` 3x3 in kBar
with VASP's sign (compression positive). Every frame of one material shares the
material's split (`info["split_key"]` = mp-id): relaxation frames of one material
are near-duplicates and must not straddle train and test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipelines.schema import DataError, Structure
from data_pipelines.sources.fields import (
    ENERGY_SCALE,
    At,
    to_energy,
    to_forces,
    to_stress,
    virial_to_stress,
)
from data_pipelines.sources.options import ReaderOptions
from data_pipelines.sources.pymatgen_dict import parse_structure
from data_pipelines.sources.textio import json_members

ENERGY_KEYS = {"corrected": "corrected_total_energy", "uncorrected": "uncorrected_total_energy"}
DEFAULT_STRESS_UNIT = "kBar-vasp"
DEFAULT_STRESS_ORDER = "xx,yy,zz,xy,yz,zx"  # only used if a file stores 6 values


def read_mptrj(path: Path, options: ReaderOptions) -> Iterator[Structure]:
    """Yields every frame of an MPtrj-layout JSON, one material at a time.

    Args:
        path: the file (.json, optionally .gz/.bz2/.xz).
        options: `mptrj_energy` picks corrected (default) or uncorrected energies;
            an explicit `energy_key` overrides it.
    """
    name, file = options.name_of(path), str(path)
    for mp_id, frames in json_members(path, file, options.on_error):
        if not isinstance(frames, dict):
            options.on_error(DataError(file, mp_id, None, "expected an object frame-id -> frame"))
            continue
        for frame_id, frame in frames.items():
            try:
                s = _structure(frame, str(mp_id), At(file, frame_id), f"{name}#{frame_id}", options)
            except DataError as err:
                options.on_error(err)
                continue
            yield s


def _structure(frame: Any, mp_id: str, at: At, source_id: str, options: ReaderOptions) -> Structure:
    if not isinstance(frame, dict):
        raise at.error(None, "expected a frame object with 'structure', energies and labels")
    numbers, positions, cell, pbc = parse_structure(frame.get("structure"), at)
    escale = ENERGY_SCALE[options.energy_unit or "eV"]
    order = options.stress_order or DEFAULT_STRESS_ORDER

    key = options.energy_key or ENERGY_KEYS[options.mptrj_energy]
    energy = to_energy(frame.get(key), at, key, escale)
    key = options.forces_key or "force"
    forces = to_forces(frame.get(key), len(numbers), at, key, escale)
    key = options.stress_key or "stress"
    stress = to_stress(frame.get(key), at, key, options.stress_unit or DEFAULT_STRESS_UNIT, order)
    if stress is None and options.virial_key:
        key = options.virial_key
        stress = virial_to_stress(frame.get(key), cell, at, key, escale, order)

    # The frame's own mp_id wins over the outer key, should a file disagree.
    mp_id = frame.get("mp_id") if isinstance(frame.get("mp_id"), str) else mp_id
    info = {"mp_id": mp_id, "split_key": mp_id}
    return Structure(source_id, numbers, positions, cell, pbc, energy, forces, stress, info)
