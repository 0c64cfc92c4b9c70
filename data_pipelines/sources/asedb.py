"""ASE databases: SQLite `.db`, `.json`, and OMat24-style `.aselmdb` (LMDB backend).

ASE stores results in its own units (eV, eV/A, eV/A^3 tension positive), so those
are the defaults. Rows are keyed by their database id. Row metadata that ties
frames together (MPtrj's `mp_id`, in key-value pairs or row data) becomes the
split key. A row's `config_type` (or `config_type_key`) is kept as `info["config_type"]`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ase.db
import lmdb
import numpy as np

from data_pipelines.schema import DataError, Structure
from data_pipelines.sources.fields import (
    ASE_VOIGT_ORDER,
    ENERGY_SCALE,
    At,
    to_energy,
    to_forces,
    to_stress,
    virial_to_stress,
)
from data_pipelines.sources.options import ReaderOptions

# Scalar row metadata worth keeping in `info` (kept small: it travels in every shard).
INFO_KEYS = ("mp_id", "task_id", "calc_id", "ionic_step", "uid", "sid")
_SPLIT_KEYS = ("mp_id",)  # metadata naming the material a frame belongs to


def connect(path: Path) -> ase.db.core.Database:
    """Opens an ASE database read-only where the backend allows it."""
    if not path.is_file():
        # ase.db.connect would silently create an empty database instead.
        raise DataError(str(path), None, None, "file not found")
    if path.suffix == ".aselmdb":
        # readonly: no LMDB lock file, safe on read-only storage and across workers.
        return ase.db.connect(str(path), type="aselmdb", readonly=True)
    return ase.db.connect(str(path), use_lock_file=False)


def read_ase_db(path: Path, options: ReaderOptions) -> Iterator[Structure]:
    """Yields one Structure per row of an ASE database.

    Args:
        path: a `.db`, `.json` or `.aselmdb` file.
        options: explicit keys are looked up in the row's key-value pairs, its
            data, then its calculator results.
    """
    name, file = options.name_of(path), str(path)
    db = connect(path)
    last_id = None
    try:
        for row in db.select():
            last_id = row.id
            try:
                s = _structure(row, At(file, row.id), f"{name}#{row.id}", options)
            except DataError as err:
                options.on_error(err)
                continue
            yield s
    except DataError:
        raise  # from on_error above: the caller chose to stop
    except (sqlite3.Error, lmdb.Error, OSError, ValueError, KeyError) as err:
        # A corrupt database cannot be read past this point.
        where = "the first row" if last_id is None else f"after row {last_id}"
        options.on_error(
            DataError(file, where, None, f"cannot read the database: {type(err).__name__}: {err}")
        )
    finally:
        close = getattr(db, "close", None)
        if close is not None:
            close()


def _structure(row: Any, at: At, source_id: str, options: ReaderOptions) -> Structure:
    kvp = row.key_value_pairs
    data = row.get("data") or {}

    def lookup(key: str) -> tuple[Any, str]:
        if key in kvp:
            return kvp[key], key
        if key in data:
            return data[key], f"data.{key}"
        return row.get(key), key

    numbers = np.asarray(row.numbers)
    cell = np.asarray(row.cell, dtype=np.float64)
    escale = ENERGY_SCALE[options.energy_unit or "eV"]
    order = options.stress_order or ASE_VOIGT_ORDER
    # Default keys read the calculator results ASE wrote, never a same-named data entry.
    if options.energy_key:
        value, field = lookup(options.energy_key)
    else:
        value, field = row.get("energy"), "energy"
    energy = to_energy(value, at, field, escale)
    if options.forces_key:
        value, field = lookup(options.forces_key)
    else:
        value, field = row.get("forces"), "forces"
    forces = to_forces(value, len(numbers), at, field, escale)
    if options.stress_key:
        value, field = lookup(options.stress_key)
    else:
        value, field = row.get("stress"), "stress"
    stress = to_stress(value, at, field, options.stress_unit or "eV/A3", order)
    if stress is None and options.virial_key:
        value, field = lookup(options.virial_key)
        stress = virial_to_stress(value, cell, at, field, escale, order)

    info: dict[str, Any] = {}
    for key in INFO_KEYS:
        value = kvp.get(key, data.get(key))
        if isinstance(value, np.generic):  # numpy scalars are not JSON-serialisable
            value = value.item()
        if isinstance(value, str | int | float | bool):
            info[key] = value
    info.pop("config_type", None)
    key = options.config_type_key or "config_type"
    value = kvp.get(key, data.get(key))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str | int) and not isinstance(value, bool):
        info["config_type"] = str(value)  # always a string: it names a group of errors
    for key in _SPLIT_KEYS:
        if isinstance(info.get(key), str):
            info["split_key"] = info[key]
            break
    return Structure(source_id, numbers, row.positions, cell, row.pbc, energy, forces, stress, info)
