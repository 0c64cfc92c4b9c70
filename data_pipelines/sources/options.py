"""Options every reader understands, and their command-line form.

The convert CLI adds `--format` and `--skip-invalid` itself; it calls
`add_reader_arguments` for the rest and `options_from_args` to build a
`ReaderOptions`, then sets `on_error` to its own counting callback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from data_pipelines.schema import DataError

EnergyUnit = Literal["eV", "kcal/mol", "kJ/mol", "Hartree"]
StressUnit = Literal["eV/A3", "GPa", "kBar", "kBar-vasp"]
MptrjEnergy = Literal["corrected", "uncorrected"]

ENERGY_UNITS: tuple[str, ...] = get_args(EnergyUnit)
STRESS_UNITS: tuple[str, ...] = get_args(StressUnit)
MPTRJ_ENERGIES: tuple[str, ...] = get_args(MptrjEnergy)
_VOIGT_COMPONENTS = {"xx", "yy", "zz", "yz", "xz", "xy"}


def raise_error(err: DataError) -> None:
    """The default `on_error`: stop at the first bad record."""
    raise err


def check_stress_order(order: str) -> str:
    """Returns `order` normalised ('zx' -> 'xz') or raises ValueError.

    Args:
        order: six comma-separated components, e.g. "xx,yy,zz,xy,yz,zx".
    """
    parts = [p.strip().lower() for p in order.split(",")]
    canon = ["".join(sorted(p)) for p in parts]
    if len(parts) != 6 or set(canon) != _VOIGT_COMPONENTS:
        raise ValueError(
            f"stress order must name each of xx, yy, zz, yz, xz, xy once "
            f"(e.g. 'xx,yy,zz,xy,yz,zx'), got '{order}'"
        )
    return ",".join(parts)


@dataclass
class ReaderOptions:
    """How to find and convert the labels of a file.

    Every field left at None means "the format's own default" (the MPtrj and
    mlearn/maml readers know their units and Voigt order; extended XYZ and ASE
    databases default to ASE units).

    Attributes:
        energy_key: name of the total-energy field.
        forces_key: name of the per-atom forces field.
        stress_key: name of the stress field (6 Voigt values, 9 values or 3x3).
        virial_key: name of a virial field (energy units, extensive), used only
            when no stress is present: stress = -virial / volume.
        energy_unit: unit of energies; forces are taken as energy unit per
            Angstrom and virials as energy units, so this scales them too.
        stress_unit: unit and sign of stresses; "kBar-vasp" is VASP's sign
            (compression positive), all others are ASE's (tension positive).
        stress_order: component order of 6-value stresses and virials.
        mptrj_energy: which MPtrj total energy to use (MP2020-corrected or raw).
        config_type_key: name of the field holding the configuration type (AIMD,
            Vacancy, Surface...), kept as `info["config_type"]`; by default
            extended XYZ and ASE databases read `config_type` and mlearn/maml
            JSON their `group` / data group / `tags` (see pymatgen_json).
        source_name: name used in source ids instead of the file name; set it
            when several inputs share a file name (e.g. "Si/training.json.gz").
        on_error: called with each DataError; raising stops the read, returning
            skips the record (the callback is where skipped records get counted).
    """

    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    virial_key: str | None = None
    energy_unit: EnergyUnit | None = None
    stress_unit: StressUnit | None = None
    stress_order: str | None = None
    mptrj_energy: MptrjEnergy = "corrected"
    config_type_key: str | None = None
    source_name: str | None = None
    on_error: Callable[[DataError], None] = field(default=raise_error, repr=False)

    def __post_init__(self) -> None:
        # Misspelled units are usage errors: fail before reading a single record.
        if self.energy_unit is not None and self.energy_unit not in ENERGY_UNITS:
            raise ValueError(f"energy unit must be one of {ENERGY_UNITS}, got '{self.energy_unit}'")
        if self.stress_unit is not None and self.stress_unit not in STRESS_UNITS:
            raise ValueError(f"stress unit must be one of {STRESS_UNITS}, got '{self.stress_unit}'")
        if self.mptrj_energy not in MPTRJ_ENERGIES:
            raise ValueError(
                f"mptrj energy must be one of {MPTRJ_ENERGIES}, got '{self.mptrj_energy}'"
            )
        if self.stress_order is not None:
            self.stress_order = check_stress_order(self.stress_order)

    def name_of(self, path: str | Path) -> str:
        """The name a file goes by in source ids and error messages."""
        return self.source_name or Path(path).name


def _stress_order_arg(text: str) -> str:
    # argparse turns ArgumentTypeError into a usage error that quotes our message.
    try:
        return check_stress_order(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the reader options (--energy-key ... --mptrj-energy) to `parser`."""
    g = parser.add_argument_group("reader options (default: the format's own convention)")
    g.add_argument("--energy-key", default=None, help="name of the total-energy field")
    g.add_argument("--forces-key", default=None, help="name of the forces field")
    g.add_argument("--stress-key", default=None, help="name of the stress field")
    g.add_argument(
        "--virial-key",
        default=None,
        help="name of a virial field (energy units), used when no stress is present",
    )
    g.add_argument(
        "--energy-unit",
        default=None,
        choices=ENERGY_UNITS,
        help="unit of energies (forces: this unit per Angstrom); ignored for VASP files",
    )
    g.add_argument(
        "--stress-unit",
        default=None,
        choices=STRESS_UNITS,
        help="unit of stresses; kBar-vasp means compression positive; ignored for VASP files",
    )
    g.add_argument(
        "--stress-order",
        default=None,
        type=_stress_order_arg,
        help="Voigt order of 6-value stresses, e.g. xx,yy,zz,xy,yz,zx (ASE: xx,yy,zz,yz,xz,xy)",
    )
    g.add_argument(
        "--mptrj-energy",
        default="corrected",
        choices=MPTRJ_ENERGIES,
        help="MPtrj total energy: MP2020-corrected (default) or uncorrected",
    )
    g.add_argument(
        "--config-type-key",
        default=None,
        help="name of the configuration-type field (default: config_type; mlearn/maml: group, "
        "the file's data group, then tags); kept per structure for per-type errors",
    )


def options_from_args(args: argparse.Namespace) -> ReaderOptions:
    """Builds ReaderOptions from arguments added by `add_reader_arguments`."""
    return ReaderOptions(
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        stress_key=args.stress_key,
        virial_key=args.virial_key,
        energy_unit=args.energy_unit,
        stress_unit=args.stress_unit,
        stress_order=args.stress_order,
        mptrj_energy=args.mptrj_energy,
        config_type_key=args.config_type_key,
    )
