"""What each reader assumed about a file's labels, in words, for the manifest and --help.

Every reader turns its file's energy, forces and stress into project units
(eV total, eV/A, eV/A^3 with ASE's sign: tension positive). Which field it
read, in which unit, sign and Voigt order, is a choice a reader of the dataset
must be able to check later, so `describe` states it per quantity and the
converter stores that in `manifest.json` under each source's `conventions`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from data_pipelines.sources.fields import ASE_VOIGT_ORDER
from data_pipelines.sources.options import ReaderOptions

PYMATGEN_VOIGT_ORDER = "xx,yy,zz,xy,yz,zx"  # VASP's and pymatgen's order

STRESS_UNIT_TEXT = {
    "eV/A3": "eV/A^3, ASE sign (tension positive)",
    "GPa": "GPa, ASE sign (tension positive)",
    "kBar": "kBar, ASE sign (tension positive)",
    "kBar-vasp": "kBar, VASP sign (compression positive)",
}
TARGET_STRESS = "eV/A^3, ASE sign (tension positive)"


@dataclass(frozen=True)
class _Defaults:
    """A format's own fields and units, used where ReaderOptions leave None."""

    energy: str
    forces: str
    stress: str
    stress_unit: str
    stress_order: str
    energy_note: str = ""
    config_type: str = "config_type"


_DEFAULTS: dict[str, _Defaults] = {
    "extxyz": _Defaults(
        "energy", "forces (else force)", "stress", "eV/A3", ASE_VOIGT_ORDER,
    ),
    "ase-db": _Defaults(
        "energy (calculator results)", "forces (calculator results)",
        "stress (calculator results)", "eV/A3", ASE_VOIGT_ORDER,
    ),
    "mptrj": _Defaults(
        "corrected_total_energy", "force", "stress", "kBar-vasp", PYMATGEN_VOIGT_ORDER,
        config_type="(none)",
    ),
    "alexandria": _Defaults(
        "energy", "forces (else structure.sites[].properties.forces)", "stress (else data.stress)",
        "kBar-vasp", PYMATGEN_VOIGT_ORDER,
        energy_note=", uncorrected (the entry's correction is kept in info.energy_correction)",
        config_type="(none)",
    ),
    "pymatgen-json": _Defaults(
        "outputs.energy", "outputs.forces", "outputs.stress (else outputs.virial_stress)",
        "kBar-vasp", PYMATGEN_VOIGT_ORDER,
        config_type="group (mlearn), else the file's data group (maml Mo_AIMD -> AIMD), else tags",
    ),
}  # fmt: skip

_VASP = {
    "energy": "eV total, sigma->0 (e_0_energy) as ASE's vasp reader gives it",
    "forces": "eV/A as ASE's vasp reader gives them",
    "stress": f"{TARGET_STRESS}, from kBar VASP sign (compression positive), turned by ASE",
    "config_type": "(none)",
}


def describe(fmt: str, options: ReaderOptions | None = None) -> dict[str, str]:
    """The convention a reader applied to each quantity, e.g. for mlearn JSON:

    {"energy": "eV total, from outputs.energy in eV", "forces": "eV/A, from
    outputs.forces in eV/A", "stress": "eV/A^3, ASE sign (tension positive), from
    kBar, VASP sign (compression positive), Voigt xx,yy,zz,xy,yz,zx", ...}

    Args:
        fmt: a reader name (see data_pipelines.sources.FORMATS).
        options: the options the file was read with (None: the defaults).
    """
    options = options if options is not None else ReaderOptions()
    if fmt == "vasp":
        return dict(_VASP)
    d = _DEFAULTS[fmt]
    eunit = options.energy_unit or "eV"
    energy_key = options.energy_key or d.energy
    if fmt == "mptrj" and not options.energy_key:
        energy_key = f"{options.mptrj_energy}_total_energy"
    sunit = options.stress_unit or d.stress_unit
    order = options.stress_order or d.stress_order
    stress = f"{TARGET_STRESS}, from {options.stress_key or d.stress} in {STRESS_UNIT_TEXT[sunit]}"
    stress += f", Voigt {order} when 6 values"
    if fmt == "extxyz" and not options.stress_key:
        stress += f" (a 3x3 header value: as ASE writes it, {ASE_VOIGT_ORDER})"
    if fmt == "extxyz" or options.virial_key:
        virial = options.virial_key or "virial"
        stress += f"; else -{virial}/volume from {virial} in {eunit}"
    return {
        "energy": f"eV total, from {energy_key} in {eunit}"
        + ("" if options.energy_key else d.energy_note),
        "forces": f"eV/A, from {options.forces_key or d.forces} in {eunit}/A",
        "stress": stress,
        "config_type": options.config_type_key or d.config_type,
    }


def help_text(formats: Iterable[str]) -> str:
    """The default conventions of each format in `formats`, for the converter's --help."""
    lines = ["conventions each reader applies by default (stored per source in manifest.json):"]
    for fmt in formats:
        lines.append(f"  {fmt}:")
        lines.extend(f"    {k:12s}{v}" for k, v in describe(fmt).items())
    return "\n".join(lines)
