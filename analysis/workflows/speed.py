"""Inference speed vs system size, with and without inference-time corrections.

    python -m analysis speed --model emt [--sizes 64 256 1024] [--rot-l-max 3] \
        [--repeats 3] [--out DIR] [--compare MACE_MODEL ...]

Times energy + forces (+ stress) on rattled fcc supercells of each size for
these configurations: the plain model (for a model file, each force mode),
rotationally averaged at each ``--rot-l-max`` (reported per grid size, with
the cost relative to plain divided by the number of rotations: 1.0 means
batching gained nothing, the issue's target is <= 1.2), and space-group
projected (the cost of spglib + the projection; the cells are rattled, so
the group is P1, as in MD). ``--compare`` times other model files (a mace of
matched size) plain on the same cells; ``settings.num_params`` gives the sizes.

Writes ``DIR/results.json`` and ``DIR/metrics.json`` with flat names
``speed/<config>/n<size>/us_per_atom`` (and ``atoms_per_s``, ``cost_vs_plain``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator

from analysis.workflows import foreign
from analysis.workflows.foreign import force_modes, model_kind
from analysis.workflows.memory import peak_memory
from analysis.workflows.model import ModelOptions, check_species
from analysis.workflows.results import write_results
from analysis.workflows.settings import setting
from analysis.workflows.structures import Structures, as_structures
from train.corrections import rotation_grid


@dataclass(frozen=True)
class SpeedSettings:
    """What to time; each field's help and unit are its metadata
    (``python -m analysis speed --help`` lists them)."""

    sizes: tuple[int, ...] = setting(
        (64, 256, 1024), "atoms of each fcc supercell timed (multiples of 4)"
    )
    rot_l_max: tuple[int, ...] = setting(
        (3,), "l_max of each rotational-averaging grid timed (none given: no averaging)", nargs="*"
    )
    repeats: int = setting(3, "timed calls per configuration and size (the median is kept)")
    element: str = setting("Cu", "element of the fcc supercells")
    compare: tuple[str, ...] = setting(
        (),
        "other model files timed plain at the same sizes (e.g. mace of matched size)",
        metavar="MODEL",
        nargs="*",
    )


def fcc_supercell(num_atoms: int, element: str = "Cu", rattle: float = 0.01) -> Atoms:
    """A rattled fcc supercell of exactly ``num_atoms`` atoms (a multiple of 4).

    The 4-atom cubic cell is repeated by the most cube-like factorisation of
    num_atoms / 4.
    """
    if num_atoms % 4:
        raise ValueError(f"size {num_atoms} is not a multiple of 4 (fcc cubic cell)")
    cells = num_atoms // 4
    best = (cells, 1, 1)
    for a in range(1, cells + 1):
        for b in range(a, cells // a + 1):
            if cells % (a * b) == 0:
                c = cells // (a * b)
                if c >= b and max(a, b, c) - min(a, b, c) < max(best) - min(best):
                    best = (a, b, c)
    atoms = bulk(element, "fcc", cubic=True).repeat(best)
    atoms.rattle(rattle, seed=num_atoms)
    return atoms


def time_calculator(calc: Calculator, atoms: Atoms, repeats: int = 3) -> dict[str, float]:
    """Median wall time of energy + forces (+ stress) after one warm-up call.

    ``calc.reset()`` before each call forces a fresh evaluation without moving
    atoms (moving them could change neighbour lists between repeats).
    """
    work = atoms.copy()
    work.calc = calc
    with_stress = bool(work.pbc.all())

    def evaluate() -> None:
        calc.reset()
        work.get_potential_energy()
        work.get_forces()
        if with_stress:
            work.get_stress()

    evaluate()  # warm-up: compilation, caches, neighbour-list allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    # Peak memory above the level before the call (the process high-water mark is
    # monotone over a run and cannot tell configurations apart), from a separate
    # call so that sampling does not slow the timed ones.
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "seconds": seconds,
        "us_per_atom": 1e6 * seconds / len(atoms),
        "atoms_per_s": len(atoms) / seconds,
        "peak_memory_mb": peak_memory(evaluate, device) / 2**20,
    }


def speed_configs(model: ModelOptions, rot_l_max: list[int]) -> dict[str, ModelOptions]:
    """Named configurations to time: plain (per force mode), averaged, projected."""
    plain = model.plain()
    configs = {}
    modes = force_modes(plain.spec)
    for mode in modes:
        configs["plain" if mode is None else mode] = ModelOptions(spec=plain.spec, forces=mode)
    base = configs[next(iter(configs))]
    for l_max in rot_l_max:
        configs[f"rot{l_max}"] = ModelOptions(
            spec=base.spec, forces=base.forces, rotational_average=l_max
        )
    configs["spacegroup"] = ModelOptions(spec=base.spec, forces=base.forces, space_group=True)
    return configs


def model_label(spec: str) -> str:
    """``<family>-<size>`` of an exported model file (``emt`` for EMT, see
    :func:`analysis.workflows.foreign.label` for foreign models)."""
    if spec == "emt":
        return "emt"
    if model_kind(spec) != "ours":
        return foreign.label(spec)
    from train.serialization import safe_load

    payload = safe_load(spec, "model file")
    return f"{payload['family']}-{payload['size']}"


def _num_params(configs: dict[str, ModelOptions]) -> dict[str, int]:
    """Parameters of every configuration's model file (loaded once per file)."""
    from train.export import load_model

    counts: dict[str, int] = {}
    for options in configs.values():
        if options.spec == "emt" or options.spec in counts:
            continue
        if model_kind(options.spec) != "ours":
            found = foreign.num_parameters(options.spec)
            if found is not None:
                counts[options.spec] = found
            continue
        model, _ = load_model(options.spec, forces=options.forces)
        counts[options.spec] = model.num_parameters()
    return {name: counts[o.spec] for name, o in configs.items() if o.spec in counts}


def run(
    model: ModelOptions,
    structures: Structures | None,
    settings: SpeedSettings,
    out: Path | None = None,
    configs: dict[str, ModelOptions] | None = None,
) -> dict:
    """Time every configuration on every cell.

    ``cost_vs_plain`` is relative to the first configuration (the plain model,
    direct forces for a model file); ``cost_vs_plain_per_rotation`` of an averaged
    configuration is relative to the uncorrected configuration with the same
    model and force mode when one was timed before it, else to the first.

    Args:
        model: the model; its corrections are ignored, the configurations are
            what this workflow times.
        structures: cells to time, or None for fcc supercells of
            ``settings.sizes`` atoms (metrics ``speed/<config>/n<size>/...``;
            for given cells ``speed/<config>/<name>/...``).
        settings: sizes, averaging grids, repeats, element, compared models.
        out: output directory for results.json and metrics.json.
        configs: named configurations to time instead of :func:`speed_configs`
            (``model`` and ``settings.rot_l_max`` are then only recorded).

    Returns:
        ``{"settings", "timings": {config: {size or name: timing}}, "metrics"}``.
    """
    sizes, rot_l_max = list(settings.sizes), list(settings.rot_l_max)
    configs = dict(configs) if configs is not None else speed_configs(model, rot_l_max)
    for spec in settings.compare:
        name = model_label(spec)
        while name in configs:
            name += "+"
        configs[name] = ModelOptions(spec=spec)
    # (key in timings, key in metric names, name in errors, atoms)
    if structures is None:
        element = settings.element
        cells = [
            (size, f"n{size}", f"fcc {element} x{size}", fcc_supercell(size, element))
            for size in sizes
        ]
    else:
        cells = [(name, name, name, atoms) for name, atoms in as_structures(structures)]
    timings: dict[str, dict[int | str, dict[str, float]]] = {}
    metrics: dict[str, float] = {}
    for key_of_cell, label, where, atoms in cells:
        first_seconds = math.nan
        uncorrected: dict[tuple, float] = {}  # (model, force mode) -> seconds
        for name, options in configs.items():
            calc = options.build()
            check_species(calc, atoms, where, options.spec)
            timing = time_calculator(calc, atoms, settings.repeats)
            if math.isnan(first_seconds):
                first_seconds = timing["seconds"]
            key = (options.spec, options.forces)
            if options == options.plain():
                uncorrected.setdefault(key, timing["seconds"])
            timing["cost_vs_plain"] = timing["seconds"] / first_seconds
            if options.rotational_average is not None:
                num_rot = len(rotation_grid(options.rotational_average, options.inversion))
                own = uncorrected.get(key, first_seconds)
                timing["num_rotations"] = num_rot
                timing["cost_vs_plain_per_rotation"] = timing["seconds"] / own / num_rot
            timings.setdefault(name, {})[key_of_cell] = timing
            for metric in METRICS:
                if metric in timing:
                    metrics[f"speed/{name}/{label}/{metric}"] = timing[metric]
    result = {
        "settings": {
            "model": model.as_dict(),
            "sizes": sizes,
            "rot_l_max": rot_l_max,
            "repeats": settings.repeats,
            "element": settings.element,
            "configs": {k: v.as_dict() for k, v in configs.items()},
            "num_params": _num_params(configs),
        },
        "timings": timings,
        "metrics": metrics,
    }
    return write_results(out, result)


METRICS = (
    "us_per_atom",
    "atoms_per_s",
    "cost_vs_plain",
    "peak_memory_mb",
    "num_rotations",
    "cost_vs_plain_per_rotation",
)


def summary(model: ModelOptions, settings: SpeedSettings, result: dict, out: Path | None) -> str:
    """The command's lines: time per atom of each configuration at each size."""
    lines = []
    for name, by_cell in result["timings"].items():
        cells = ", ".join(
            f"n={n}: {t['us_per_atom']:.1f} us/atom (x{t['cost_vs_plain']:.2f})"
            for n, t in by_cell.items()
        )
        lines.append(f"speed {model.spec} {name}: {cells}")
    return "\n".join(lines)
