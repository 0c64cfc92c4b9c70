"""VASP output: vasprun.xml and OUTCAR (optionally compressed), every ionic step.

Parsing is ASE's (`vasp-xml`, `vasp-out`), which already converts to project
units: energy is the sigma->0 extrapolated total energy (`e_0_energy`, with ASE's
workaround for the VASP bug in the final `<energy>` block), forces eV/A, stress
from VASP's kBar (compression positive) to eV/A^3 with ASE's sign. The unit and
key options are therefore ignored here. All ionic steps of one file share a
split: consecutive relaxation steps are near-duplicates.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import ParseError as XMLParseError

import ase.io

from data_pipelines.schema import DataError, Structure
from data_pipelines.sources.fields import ASE_VOIGT_ORDER, At, to_energy, to_forces, to_stress
from data_pipelines.sources.options import ReaderOptions
from data_pipelines.sources.textio import open_text, strip_compression

_FIXED = (
    "energy_key",
    "forces_key",
    "stress_key",
    "virial_key",
    "energy_unit",
    "stress_unit",
    "stress_order",
    "config_type_key",
)
_PARSE_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    OSError,
    EOFError,
    XMLParseError,
    ase.io.ParseError,
)


def ase_format(path: Path) -> str:
    """ASE's format name for a VASP output file: 'vasp-out' (OUTCAR) or 'vasp-xml'."""
    return "vasp-out" if "OUTCAR" in path.name.upper() else "vasp-xml"


def read_vasp(path: Path, options: ReaderOptions) -> Iterator[Structure]:
    """Yields one Structure per ionic step; record key = step index (0-based).

    Args:
        path: a vasprun.xml or OUTCAR, optionally .gz/.bz2/.xz.
        options: only `on_error` and `source_name` apply (VASP's units are fixed).
    """
    name, file = options.name_of(path), str(path)
    fmt = ase_format(path)
    ignored = [k for k in _FIXED if getattr(options, k) is not None]
    if ignored:  # say so rather than drop the user's choice silently
        warnings.warn(
            f"{file}: VASP's keys and units are fixed; ignoring {', '.join(ignored)}", stacklevel=2
        )
    num_steps = 0  # steps parsed so far = index of the step being parsed
    try:
        for step, atoms in enumerate(ase.io.iread(str(path), index=":", format=fmt)):
            num_steps = step + 1
            at = At(file, step)
            try:
                results = atoms.calc.results if atoms.calc is not None else {}
                energy = to_energy(results.get("energy"), at, "energy")
                forces = to_forces(results.get("forces"), len(atoms), at, "forces")
                stress = to_stress(results.get("stress"), at, "stress", "eV/A3", ASE_VOIGT_ORDER)
            except DataError as err:
                options.on_error(err)
                continue
            info = {"ionic_step": step, "split_key": name}
            yield Structure(
                f"{name}#{step}",
                atoms.numbers,
                atoms.positions,
                atoms.cell.array,
                atoms.pbc,
                energy,
                forces,
                stress,
                info,
            )
    except DataError:
        raise  # from on_error above: the caller chose to stop
    except _PARSE_ERRORS as err:
        # The file cannot be read past this point; report where it broke and stop.
        options.on_error(
            DataError(file, num_steps, None, f"could not parse: {type(err).__name__}: {err}")
        )
        return
    if fmt == "vasp-xml" and not _xml_complete(path):
        # ASE silently drops the unfinished last step of a killed run; say so.
        options.on_error(
            DataError(
                file,
                num_steps,
                "calculation",
                "file is truncated (no closing </modeling>): "
                "the unfinished last ionic step was not read",
            )
        )


def _xml_complete(path: Path, tail_chars: int = 4096) -> bool:
    """True if the (decompressed) file ends with vasprun's closing tag."""
    if strip_compression(path.name) == path.name:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(fh.tell() - tail_chars, 0))
            tail = fh.read().decode("utf-8", errors="replace")
    else:
        tail = ""
        with open_text(path) as fh:
            while chunk := fh.read(1 << 20):
                tail = (tail + chunk)[-tail_chars:]
    return "</modeling>" in tail
