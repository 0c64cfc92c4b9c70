"""Extended XYZ, with any key names for energy, forces, stress and virial.

Frames are cut from the text here (count line + comment + atom lines) and each is
parsed by ASE's extended-XYZ parser. Cutting the frames ourselves gives every
frame its line number and lets a malformed frame be skipped without losing the
rest of the file (ASE's own reader indexes the whole file first and stops at the
first bad header).

ASE moves `energy`, `forces` and `stress` into `atoms.calc.results`; other names
stay in `atoms.info` (per frame) or `atoms.arrays` (per atom), so all places are
searched. Defaults: energy `energy`, forces `forces` then `force`, stress
`stress`, virial `virial` (used when no stress is present). Units default to ASE's.
The frame's `config_type` (or `config_type_key`) is kept as `info["config_type"]`.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io.extxyz import key_val_str_to_dict, read_xyz

from data_pipelines.schema import DataError, Structure
from data_pipelines.sources.fields import (
    ASE_VOIGT_ORDER,
    ENERGY_SCALE,
    At,
    is_absent,
    to_energy,
    to_forces,
    to_stress,
    virial_to_stress,
)
from data_pipelines.sources.options import ReaderOptions
from data_pipelines.sources.textio import open_text

_COUNT_LINE = re.compile(r"\s*\d+\s*")
_PARSE_ERRORS = (ValueError, KeyError, IndexError, TypeError, OSError, StopIteration)


def read_extxyz(path: Path, options: ReaderOptions) -> Iterator[Structure]:
    """Yields one Structure per frame; record key = frame index (0-based).

    Args:
        path: the file (.xyz/.extxyz, optionally .gz/.bz2/.xz).
        options: key names, energy unit (scales forces and virials too),
            stress unit and Voigt order of 6-value stresses.
    """
    name, file = options.name_of(path), str(path)
    with open_text(path) as fh:
        for index, line_no, text in _frames(fh, file, options.on_error):
            at = At(file, f"{index} (line {line_no})")
            try:
                atoms, shapes = _parse_frame(text, at, line_no)
                s = _structure(atoms, shapes, at, f"{name}#{index}", options)
            except DataError as err:
                options.on_error(err)
                continue
            yield s


def _frames(
    fh: io.TextIOBase, file: str, on_error: Callable[[DataError], None]
) -> Iterator[tuple[int, int, str]]:
    """Yields (frame index, line number of its count line, frame text)."""
    lines = enumerate(fh, start=1)
    index, line_no = 0, 0
    lost = False  # inside garbage, looking for the next count line
    try:
        for line_no, line in lines:
            if not line.strip():
                continue
            if not _COUNT_LINE.fullmatch(line):
                if not lost:
                    on_error(
                        DataError(
                            file,
                            f"{index} (line {line_no})",
                            "atom count",
                            f"expected the number of atoms alone on a line, "
                            f"got {line.strip()[:40]!r}",
                        )
                    )
                    index += 1
                    lost = True
                continue
            lost = False
            num_atoms = int(line)
            chunk = [line, *itertools.islice((text for _, text in lines), num_atoms + 1)]
            if len(chunk) < num_atoms + 2:
                got = max(len(chunk) - 2, 0)
                on_error(
                    DataError(
                        file,
                        f"{index} (line {line_no})",
                        "atoms",
                        f"file ends after {got} of {num_atoms} atom lines (truncated?)",
                    )
                )
                return
            yield index, line_no, "".join(chunk)
            index += 1
    except (EOFError, OSError, UnicodeDecodeError) as err:
        # A compressed file cut short (EOFError), or not text: nothing more can be read.
        on_error(
            DataError(
                file,
                f"{index} (after line {line_no})",
                None,
                f"cannot read further: {type(err).__name__}: {err}",
            )
        )


def _parse_frame(text: str, at: At, line_no: int) -> tuple[Atoms, dict[str, tuple]]:
    """ASE-parses one frame; also returns the shape each comment-line value had."""
    shapes: dict[str, tuple] = {}
    comment_ok = [not text.split("\n", 2)[1].strip()]  # ASE skips the parser for a blank one

    def parser(comment: str) -> dict[str, Any]:
        d = key_val_str_to_dict(comment)
        shapes.update((k, np.shape(v)) for k, v in d.items())
        comment_ok[0] = True
        return d

    try:
        atoms = next(read_xyz(io.StringIO(text), index=0, properties_parser=parser))
    except _PARSE_ERRORS as err:
        if comment_ok[0]:  # the comment line parsed, so the atom lines did not
            field = f"atom lines {line_no + 2}-{line_no + 1 + int(text.split(maxsplit=1)[0])}"
        else:
            field = f"comment line {line_no + 1}"
        raise at.error(field, f"could not parse: {type(err).__name__}: {err}") from None
    return atoms, shapes


def _structure(
    atoms: Atoms, shapes: dict[str, tuple], at: At, source_id: str, options: ReaderOptions
) -> Structure:
    results = atoms.calc.results if atoms.calc is not None else {}

    def per_frame(key: str) -> Any:
        return results[key] if key in results else atoms.info.get(key)

    def per_atom(key: str) -> Any:
        return results[key] if key in results else atoms.arrays.get(key)

    n = len(atoms)
    cell = atoms.cell.array
    escale = ENERGY_SCALE[options.energy_unit or "eV"]
    order = options.stress_order or ASE_VOIGT_ORDER

    key = options.energy_key or "energy"
    energy = to_energy(per_frame(key), at, key, escale)

    forces = None
    for key in (options.forces_key,) if options.forces_key else ("forces", "force"):
        if not is_absent(value := per_atom(key)):
            forces = to_forces(value, n, at, key, escale)
            break

    key = options.stress_key or "stress"
    value = per_frame(key)
    # ASE rewrites a 3x3 `stress` as 6 values in its own Voigt order.
    key_order = ASE_VOIGT_ORDER if shapes.get(key) == (3, 3) else order
    stress = to_stress(value, at, key, options.stress_unit or "eV/A3", key_order)
    if stress is None:
        key = options.virial_key or "virial"
        stress = virial_to_stress(per_frame(key), cell, at, key, escale, order)

    info = {}
    config_type = atoms.info.get(options.config_type_key or "config_type")
    if isinstance(config_type, str | int) and not isinstance(config_type, bool):
        info["config_type"] = str(config_type)
    return Structure(
        source_id, atoms.numbers, atoms.positions, cell, atoms.pbc, energy, forces, stress, info
    )
