"""pymatgen Structure / Molecule dicts (`Structure.as_dict()`) -> arrays, without pymatgen.

Layout read here: `{"lattice": {"matrix": 3x3, "pbc": [3 bools]?}, "sites": [{"species":
[{"element": "Si", "occu": 1}], "xyz": [3], "abc": [3]}, ...]}`; a Molecule has no
lattice. Cartesian `xyz` is used when present, else fractional `abc` times the
lattice matrix (rows are lattice vectors, as in ASE).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines.schema import DataError, Structure
from data_pipelines.sources.fields import (
    ENERGY_SCALE,
    At,
    is_absent,
    to_energy,
    to_forces,
    to_numbers,
    to_stress,
    virial_to_stress,
)
from data_pipelines.sources.options import ReaderOptions

# Partial occupancies within this of 1 still count as one whole atom.
_OCCU_TOL = 1e-6


def parse_structure(
    d: Any, at: At, field: str = "structure"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (numbers, positions, cell, pbc) of an ordered pymatgen structure dict.

    Args:
        d: the `Structure.as_dict()` or `Molecule.as_dict()` value.
        at: file and record, for errors.
        field: name of `d` inside its record, for errors.

    Raises:
        DataError: naming the offending sub-field (e.g. "structure.sites[3].species")
            when the dict is missing, disordered or not numeric.
    """
    if not isinstance(d, dict):
        raise at.error(field, "missing; expected a pymatgen Structure dict")
    sites = d.get("sites")
    if not isinstance(sites, list) or not sites:
        raise at.error(f"{field}.sites", "expected a non-empty list of sites")

    lattice = d.get("lattice")
    if lattice is None:  # a Molecule
        cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    else:
        cell = _array(
            lattice.get("matrix") if isinstance(lattice, dict) else None,
            (3, 3),
            at,
            f"{field}.lattice.matrix",
        )
        pbc = np.array(lattice.get("pbc", (True, True, True)), dtype=bool).reshape(-1)
        if pbc.shape != (3,):
            raise at.error(f"{field}.lattice.pbc", f"expected 3 booleans, got {pbc.shape}")

    symbols = []
    positions = np.empty((len(sites), 3))
    for i, site in enumerate(sites):
        where = f"{field}.sites[{i}]"
        if not isinstance(site, dict):
            raise at.error(where, "expected a site dict")
        symbols.append(_element(site.get("species"), at, f"{where}.species"))
        if site.get("xyz") is not None:
            positions[i] = _array(site["xyz"], (3,), at, f"{where}.xyz")
        elif site.get("abc") is not None and lattice is not None:
            positions[i] = _array(site["abc"], (3,), at, f"{where}.abc") @ cell
        else:
            raise at.error(where, "expected Cartesian 'xyz' (or fractional 'abc' with a lattice)")
    return to_numbers(symbols, at, f"{field}.sites"), positions, cell, pbc


def _element(species: Any, at: At, field: str) -> str:
    """The element of an ordered site; disordered sites cannot be one atom."""
    if not isinstance(species, list) or len(species) != 1 or not isinstance(species[0], dict):
        raise at.error(field, f"expected one species (an ordered site), got {species!r:.80}")
    sp = species[0]
    occu = sp.get("occu", 1.0)
    if not isinstance(occu, int | float) or abs(occu - 1.0) > _OCCU_TOL:
        raise at.error(field, f"expected occupancy 1 (an ordered site), got {occu!r}")
    element = sp.get("element")
    if not isinstance(element, str):
        raise at.error(field, "expected an 'element' symbol")
    return element


def _array(value: Any, shape: tuple[int, ...], at: At, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise at.error(field, f"expected {shape} numbers, got {value!r:.80}") from None
    if arr.shape != shape:
        raise at.error(field, f"expected shape {shape}, got {arr.shape}")
    return arr


# Both pymatgen-style sources (Alexandria entries, mlearn/maml records) write
# VASP's stress: kBar, compression positive, Voigt order xx, yy, zz, xy, yz, zx.
DEFAULT_STRESS_UNIT = "kBar-vasp"
DEFAULT_STRESS_ORDER = "xx,yy,zz,xy,yz,zx"

Lookup = Callable[[str], tuple[Any, str]]


@dataclass
class Labels:
    """A record's labels in eV, eV/A and eV/A^3 (ASE's sign), and the energy scale
    applied (eV per the file's energy unit) for any other energy-valued field."""

    energy: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None
    energy_scale: float


def read_labels(
    lookup: Lookup,
    num_atoms: int,
    cell: np.ndarray,
    at: At,
    options: ReaderOptions,
    stress_keys: tuple[str, ...] = ("stress",),
    forces_fallback: Callable[[], tuple[Any, str]] | None = None,
) -> Labels:
    """Energy, forces and stress of one pymatgen-style record.

    Args:
        lookup: key -> (value, field name for errors), searching the record's
            own places (``outputs``, ``data``...) in the source's order.
        num_atoms: the structure's atom count (forces must match it).
        cell: (3, 3) cell in A, for a virial.
        at: file and record, for errors.
        options: explicit keys, units and Voigt order override the defaults.
        stress_keys: keys tried in turn when no ``stress_key`` is given.
        forces_fallback: where forces are when ``forces`` is absent (e.g. per site).
    """
    escale = ENERGY_SCALE[options.energy_unit or "eV"]
    order = options.stress_order or DEFAULT_STRESS_ORDER
    value, field = lookup(options.energy_key or "energy")
    energy = to_energy(value, at, field, escale)

    value, field = lookup(options.forces_key or "forces")
    if is_absent(value) and not options.forces_key and forces_fallback is not None:
        value, field = forces_fallback()
    forces = to_forces(value, num_atoms, at, field, escale)

    stress = None
    for key in (options.stress_key,) if options.stress_key else stress_keys:
        value, field = lookup(key)
        if not is_absent(value):
            stress = to_stress(value, at, field, options.stress_unit or DEFAULT_STRESS_UNIT, order)
            break
    if stress is None and options.virial_key:
        value, field = lookup(options.virial_key)
        stress = virial_to_stress(value, cell, at, field, escale, order)
    return Labels(energy, forces, stress, escale)


def structures(
    records: Iterable[tuple[str, Any]],
    file: str,
    name: str,
    options: ReaderOptions,
    parse: Callable[[Any, At, str, ReaderOptions], Structure],
) -> Iterator[tuple[str, Structure]]:
    """(record key, Structure) for every record that parses; a record that does
    not goes to ``options.on_error`` (raise, or count and skip)."""
    for key, record in records:
        try:
            s = parse(record, At(file, key), f"{name}#{key}", options)
        except DataError as err:
            options.on_error(err)
            continue
        yield key, s
