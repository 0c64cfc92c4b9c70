"""One reader per DFT file format, each an iterator of `Structure` in project units.

    for s in read_structures("train.xyz", options=ReaderOptions(energy_unit="kcal/mol")):
        ...

Every reader yields structures with a stable `source_id` ("<file name>#<record
key>", unique within the file), converts units on the way in (energy eV, forces
eV/A, stress eV/A^3 with ASE's sign), sets `info["split_key"]` where records
must share a split, and passes each malformed record to `options.on_error` as a
DataError naming the file, record and field (by default that raises; if it
returns, the reader goes on with the next record). NaN values pass through:
`Structure.validate` is the converter's business.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from data_pipelines.schema import DataError, Structure
from data_pipelines.sources.alexandria import read_alexandria
from data_pipelines.sources.asedb import read_ase_db
from data_pipelines.sources.extxyz import read_extxyz
from data_pipelines.sources.mptrj import read_mptrj
from data_pipelines.sources.options import ReaderOptions, add_reader_arguments, options_from_args
from data_pipelines.sources.pymatgen_json import read_pymatgen_json
from data_pipelines.sources.textio import peek_text, strip_compression
from data_pipelines.sources.vasp import read_vasp

__all__ = [
    "FORMATS",
    "ReaderOptions",
    "add_reader_arguments",
    "detect_format",
    "options_from_args",
    "read_structures",
]

Reader = Callable[[Path, ReaderOptions], Iterator[Structure]]

FORMATS: dict[str, Reader] = {
    "extxyz": read_extxyz,
    "ase-db": read_ase_db,
    "mptrj": read_mptrj,
    "alexandria": read_alexandria,
    "pymatgen-json": read_pymatgen_json,
    "vasp": read_vasp,
}

# What the beginning of a JSON file looks like in each layout, tried in order.
_JSON_LAYOUTS: tuple[tuple[str, re.Pattern], ...] = (
    (
        "alexandria",
        re.compile(
            r'^\s*\{\s*"entries"\s*:|"@class"\s*:\s*"ComputedStructureEntry"'
            r'|"steps"\s*:\s*\['
        ),
    ),
    ("mptrj", re.compile(r'"(un)?corrected_total_energy"\s*:')),
    ("pymatgen-json", re.compile(r'"outputs"\s*:\s*\{')),
    ("ase-db", re.compile(r'^\s*\{\s*"\d+"\s*:\s*\{|"nextid"\s*:')),
)


def detect_format(path: str | Path) -> str:
    """Names the format of `path` from its extension and, for JSON, its layout.

    Raises:
        DataError: naming the file when the format cannot be told.
    """
    path = Path(path)
    name = strip_compression(path.name).lower()
    compressed = name != path.name.lower()
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if name.endswith((".db", ".aselmdb")) and not compressed:
        return "ase-db"
    if "outcar" in name or "vasprun" in name or name.endswith(".xml"):
        return "vasp"
    if name.endswith(".json"):
        try:
            head = peek_text(path)
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise DataError(str(path), None, None, f"cannot read the file: {err}") from None
        for fmt, pattern in _JSON_LAYOUTS:
            # ASE's JSON database backend cannot read compressed files.
            if pattern.search(head) and not (fmt == "ase-db" and compressed):
                return fmt
        raise DataError(
            str(path),
            None,
            None,
            "JSON layout not recognised (expected an ASE database, MPtrj, Alexandria entries "
            "or a mlearn/maml record list); pass --format",
        )
    raise DataError(
        str(path),
        None,
        None,
        f"cannot tell the format from the file name; pass --format (one of {', '.join(FORMATS)})",
    )


def read_structures(
    path: str | Path, fmt: str = "auto", options: ReaderOptions | None = None
) -> Iterator[Structure]:
    """Iterates over the structures of one file.

    Args:
        path: the input file.
        fmt: a name from FORMATS, or "auto" to call `detect_format`.
        options: key names, units, error handling; defaults to ReaderOptions().

    Raises:
        ValueError: for an unknown format name.
        DataError: when the file is missing or its format cannot be told;
            record-level errors go to `options.on_error` instead.
    """
    path = Path(path)
    options = options if options is not None else ReaderOptions()
    if not path.is_file():
        raise DataError(str(path), None, None, "file not found")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of: auto, {', '.join(FORMATS)}")
    return FORMATS[fmt](path, options)
