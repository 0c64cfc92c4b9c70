"""Raw label values -> checked numbers in project units, or a DataError naming the field.

Project units: energy eV, forces eV/A, stress eV/A^3 with ASE's sign (tension
positive). Every reader funnels its labels through these functions so that the
unit conversions live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import units
from ase.data import atomic_numbers

from data_pipelines.schema import DataError, voigt_to_matrix

# Multiply a value in the key's unit by this to get eV.
ENERGY_SCALE = {
    "eV": 1.0,
    "kcal/mol": units.kcal / units.mol,
    "kJ/mol": units.kJ / units.mol,
    "Hartree": units.Hartree,
}
# Multiply a stress in the key's unit by this to get eV/A^3 with ASE's sign;
# VASP reports kBar with compression positive, hence the minus sign.
STRESS_SCALE = {
    "eV/A3": 1.0,
    "GPa": units.GPa,
    "kBar": 0.1 * units.GPa,
    "kBar-vasp": -0.1 * units.GPa,
}
ASE_VOIGT_ORDER = "xx,yy,zz,yz,xz,xy"
# Volumes below this (A^3) cannot turn a virial into a stress.
_MIN_VOLUME = 1e-8


@dataclass(frozen=True)
class At:
    """Where a value comes from: the file and the record inside it."""

    file: str
    record: int | str

    def error(self, field: str | None, message: str) -> DataError:
        return DataError(self.file, self.record, field, message)


def is_absent(value: Any) -> bool:
    """None and empty lists both mean "not given" (mlearn/maml write [] for no stress)."""
    if value is None:
        return True
    return isinstance(value, list | tuple | np.ndarray) and len(value) == 0


def to_energy(value: Any, at: At, field: str, scale: float = 1.0) -> float:
    """A total energy in eV; missing or non-numeric values are errors."""
    if is_absent(value):
        raise at.error(field, "missing; expected the total energy (a number)")
    arr = np.asarray(value) if not isinstance(value, str | bool) else None
    if arr is None or arr.size != 1 or arr.dtype.kind not in "iuf":
        raise at.error(field, f"expected the total energy as one number, got {_show(value)}")
    return float(arr.reshape(())) * scale


def to_forces(
    value: Any, num_atoms: int, at: At, field: str, scale: float = 1.0
) -> np.ndarray | None:
    """(num_atoms, 3) forces in eV/A, or None when absent."""
    if is_absent(value):
        return None
    arr = _numbers(value, at, field, f"({num_atoms}, 3) numbers")
    if arr.shape != (num_atoms, 3):
        raise at.error(field, f"expected shape ({num_atoms}, 3), got {arr.shape}")
    return arr * scale


def to_stress(value: Any, at: At, field: str, unit: str, order: str) -> np.ndarray | None:
    """(3, 3) stress in eV/A^3 (ASE sign) from 6 Voigt values, 9 values or 3x3."""
    if is_absent(value):
        return None
    return _to_matrix(value, at, field, order, "stress") * STRESS_SCALE[unit]


def virial_to_stress(
    value: Any, cell: np.ndarray, at: At, field: str, energy_scale: float, order: str
) -> np.ndarray | None:
    """(3, 3) stress in eV/A^3 from a virial in energy units: stress = -virial / volume."""
    if is_absent(value):
        return None
    virial = _to_matrix(value, at, field, order, "virial") * energy_scale
    volume = abs(float(np.linalg.det(cell)))
    if volume < _MIN_VOLUME:
        raise at.error(field, "a virial needs a cell with non-zero volume to become a stress")
    return -virial / volume


def to_numbers(symbols: Any, at: At, field: str) -> np.ndarray:
    """Atomic numbers from chemical symbols (or pass through integers)."""
    out = np.empty(len(symbols), dtype=np.int64)
    for i, sym in enumerate(symbols):
        if isinstance(sym, int | np.integer):
            out[i] = sym
            continue
        z = atomic_numbers.get(str(sym).strip().capitalize())
        if not z:  # ASE maps the dummy 'X' to 0: not an atom we can train on
            raise at.error(f"{field}[{i}]", f"expected a chemical element, got {_show(sym)}")
        out[i] = z
    return out


def _to_matrix(value: Any, at: At, field: str, order: str, what: str) -> np.ndarray:
    expected = f"a {what} as 6 Voigt values, 9 values or 3x3"
    arr = _numbers(value, at, field, expected)
    if arr.shape not in ((6,), (9,), (3, 3)):
        raise at.error(field, f"expected {expected}, got shape {arr.shape}")
    return voigt_to_matrix(arr, order)


def _numbers(value: Any, at: At, field: str, expected: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise at.error(field, f"expected {expected}, got {_show(value)}") from None
    return arr


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
