"""Model and structure inputs shared by the evaluation workflows.

A *model spec* is ``"emt"`` (ASE's EMT, the reference used in tests and demos)
or a path to an exported model file, which goes to
``train.calculator.load_calculator`` (imported lazily so the workflows run
without torch models). Inference-time corrections (``train.corrections``) are
options of the spec, so every workflow exposes the same flags:
``--forces direct|conservative``, ``--rotational-average L``, ``--inversion``,
``--space-group``.

A *structures spec* is anything ``ase.io.read(FILE, ":")`` reads, or a built-in
set ``builtin:NAME`` (see :data:`BUILTIN_SETS`) so demos need no files.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator

from train.corrections import RotationalAverage, SpaceGroupProjection, symmetry_dataset

ForceMode = Literal["direct", "conservative"]


@dataclass(frozen=True)
class ModelOptions:
    """A model spec plus the inference-time corrections to apply.

    Attributes:
        spec: ``"emt"`` or a model file path.
        forces: force mode for models with both heads; None keeps the model's
            default. EMT forces are always the energy gradient.
        rotational_average: l_max of the averaging grid, None for no averaging.
        inversion: include the inversion in the averaging grid (O(3)).
        space_group: symmetrise forces and stress with the structure's space group.
        symprec: spglib tolerance (A) for the space-group projection.
    """

    spec: str = "emt"
    forces: ForceMode | None = None
    rotational_average: int | None = None
    inversion: bool = False
    space_group: bool = False
    symprec: float = 1e-5

    def build(self) -> Calculator:
        """A fresh calculator for these options."""
        return get_calculator(
            self.spec,
            forces=self.forces,
            rotational_average=self.rotational_average,
            inversion=self.inversion,
            space_group=self.space_group,
            symprec=self.symprec,
        )

    def plain(self) -> ModelOptions:
        """The same model without corrections (force mode kept)."""
        return replace(self, rotational_average=None, inversion=False, space_group=False)

    def describe(self) -> str:
        """A short human-readable label, e.g. ``emt`` or ``model.pt[conservative,rot3]``."""
        tags = [self.forces] if self.forces else []
        if self.rotational_average is not None:
            tags.append(f"rot{self.rotational_average}{'i' if self.inversion else ''}")
        if self.space_group:
            tags.append("spg")
        return self.spec + (f"[{','.join(tags)}]" if tags else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_calculator(
    spec: str,
    *,
    forces: ForceMode | None = None,
    rotational_average: int | None = None,
    inversion: bool = False,
    space_group: bool = False,
    symprec: float = 1e-5,
    **kwargs: Any,
) -> Calculator:
    """Build an ASE calculator from a model spec and correction options.

    Args:
        spec: ``"emt"`` or a path to an exported model file.
        forces: ``"direct"`` or ``"conservative"``; None keeps the default.
        rotational_average: l_max of the rotational-averaging grid, or None.
        inversion: pair each grid rotation with its inversion.
        space_group: project forces and stress onto the space group.
        symprec: spglib tolerance for ``space_group``.
        **kwargs: passed to ``load_calculator`` for model files (device, dtype).

    Returns:
        The calculator.
    """
    if spec.lower() == "emt":
        from ase.calculators.emt import EMT

        calc: Calculator = EMT()
        if rotational_average is not None:
            calc = RotationalAverage(calc, l_max=rotational_average, inversion=inversion)
        if space_group:
            calc = SpaceGroupProjection(calc, symprec=symprec)
        return calc
    if not Path(spec).exists():
        raise FileNotFoundError(f"model file {spec!r} not found (use 'emt' or a model file)")
    from train.calculator import load_calculator  # lazy: pulls in torch and the models

    options: dict[str, Any] = {"inversion": inversion, "space_group": space_group, **kwargs}
    if forces is not None:
        options["forces"] = forces
    if rotational_average is not None:
        options["rotational_average"] = rotational_average
    return load_calculator(spec, **options)


def supported_symbols(calc: Calculator) -> set[str] | None:
    """Element symbols ``calc`` can evaluate, or None when it does not say.

    Unwraps correction wrappers. EMT lists its parameter table; a model
    calculator may expose ``supported_species`` (symbols or atomic numbers).
    """
    from ase.calculators.emt import EMT, parameters
    from ase.data import chemical_symbols

    while hasattr(calc, "base_calculator"):
        calc = calc.base_calculator
    if isinstance(calc, EMT):
        return set(parameters)
    species = getattr(calc, "supported_species", None)
    if species is None:
        return None
    return {chemical_symbols[s] if isinstance(s, int | np.integer) else str(s) for s in species}


def check_species(calc: Calculator, atoms: Atoms, name: str, model: str) -> None:
    """Fail with a clear message when ``atoms`` holds an element the model lacks."""
    known = supported_symbols(calc)
    if known is None:
        return
    missing = sorted(set(atoms.get_chemical_symbols()) - known)
    if missing:
        raise ValueError(
            f"structure {name!r} contains {', '.join(missing)}, which model {model!r} does not "
            f"know (supported: {', '.join(sorted(known))})"
        )


# ---------------------------------------------------------------- structures


def _metals() -> list[tuple[str, Atoms]]:
    # Experimental lattice constants (A); EMT's own minima differ by ~1%, so
    # every structure has something to relax.
    cu3au = Atoms(
        "AuCu3",
        scaled_positions=[[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
        cell=3.75 * np.eye(3),
        pbc=True,
    )
    strained = bulk("Cu", "fcc", a=3.61, cubic=True)
    strained.set_cell(strained.cell.array @ np.diag([1.03, 0.99, 1.0]), scale_atoms=True)
    strained.rattle(0.03, seed=0)
    return [
        ("cu-fcc", bulk("Cu", "fcc", a=3.61)),
        ("al-fcc", bulk("Al", "fcc", a=4.05)),
        ("ni-fcc", bulk("Ni", "fcc", a=3.52)),
        ("au-fcc", bulk("Au", "fcc", a=4.08)),
        ("cu3au-l12", cu3au),
        ("cu-strained", strained),
    ]


def _prototypes() -> list[tuple[str, Atoms]]:
    # Lattice types beyond fcc for symmetry-retention checks; EMT evaluates any
    # geometry of its elements, stable or not (bcc Cu is not).
    return [
        ("cu-bcc", bulk("Cu", "bcc", a=2.87)),
        ("cu-hcp", bulk("Cu", "hcp", a=2.56, c=4.18)),
        ("cuau-rocksalt", bulk("CuAu", "rocksalt", a=5.2)),
    ]


BUILTIN_SETS = (
    "metals",
    "prototypes",
    "cu-fcc",
    "al-fcc",
    "ni-fcc",
    "au-fcc",
    "cu3au-l12",
    "cu-strained",
    "cu-bcc",
    "cu-hcp",
    "cuau-rocksalt",
)


def load_structures(spec: str) -> list[tuple[str, Atoms]]:
    """Read structures as (name, atoms) pairs.

    Args:
        spec: a file ``ase.io.read`` understands (all frames are read), or
            ``builtin:NAME`` with NAME in :data:`BUILTIN_SETS` (``metals``: fcc
            Cu, Al, Ni, Au, L1_2 Cu3Au and a strained, rattled Cu cell;
            ``prototypes``: bcc and hcp Cu and rock-salt CuAu; or one by name).

    Returns:
        Named structures; names come from ``atoms.info['name']`` when present,
        else ``<file stem>-<index>``, and are made unique and path-safe.

    Raises:
        ValueError: unknown built-in name or an empty file.
        FileNotFoundError: missing file.
    """
    if spec.startswith("builtin:"):
        key = spec.split(":", 1)[1]
        if key == "metals":
            pairs = _metals()
        elif key == "prototypes":
            pairs = _prototypes()
        else:
            pairs = [(n, a) for n, a in _metals() + _prototypes() if n == key]
        if not pairs:
            raise ValueError(f"unknown built-in structures {spec!r}; choose from {BUILTIN_SETS}")
        return [(n, a.copy()) for n, a in pairs]
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"structures file {spec!r} not found (or use builtin:metals)")
    from ase.io import read

    frames = read(path, ":")
    if not frames:
        raise ValueError(f"structures file {spec!r} holds no structures")
    named, seen = [], set()
    for i, atoms in enumerate(frames):
        raw = str(atoms.info.get("name") or f"{path.stem}-{i}")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw)
        if name in seen:
            name = f"{name}-{i}"
        seen.add(name)
        named.append((name, atoms))
    return named


def spacegroup(atoms: Atoms, symprec: float) -> tuple[int, str]:
    """International space-group number and symbol (1, 'P1' if spglib finds none)."""
    if not atoms.pbc.all():
        return 1, "P1"
    data = symmetry_dataset(atoms, symprec)
    return (1, "P1") if data is None else (int(data.number), str(data.international))


# ----------------------------------------------------------------- CLI + I/O


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model`` and the correction flags shared by all workflows."""
    parser.add_argument("--model", default="emt", help="'emt' or an exported model file")
    parser.add_argument(
        "--forces",
        choices=["direct", "conservative"],
        default=None,
        help="force mode of a model with both heads (default: the model's own)",
    )
    parser.add_argument(
        "--rotational-average",
        type=int,
        default=None,
        metavar="L",
        help="average over a rotation grid exact to degree L (42 rotations for L=3)",
    )
    parser.add_argument("--inversion", action="store_true", help="add inversion to the grid")
    parser.add_argument(
        "--space-group", action="store_true", help="symmetrise forces/stress with spglib"
    )


def model_options_from_args(args: argparse.Namespace) -> ModelOptions:
    """The :class:`ModelOptions` chosen on the command line."""
    return ModelOptions(
        spec=args.model,
        forces=args.forces,
        rotational_average=args.rotational_average,
        inversion=args.inversion,
        space_group=args.space_group,
    )


def reference_options(model: ModelOptions, reference: str | None) -> ModelOptions | None:
    """The reference calculation: ``reference`` if given ('none' disables it),
    else the same model with conservative forces and no corrections."""
    if reference is not None and reference.lower() == "none":
        return None
    if reference is not None:
        return ModelOptions(spec=reference)
    return ModelOptions(spec=model.spec, forces=None if model.spec == "emt" else "conservative")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None  # JSON has no NaN/inf
    return obj


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (numpy types converted, NaN -> null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")


def nanmean(values: list[float]) -> float:
    """Mean ignoring NaN (NaN when nothing is left), without numpy's warning."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
