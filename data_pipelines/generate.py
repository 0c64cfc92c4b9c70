"""Built-in synthetic DFT-like data: ASE's EMT on small metal and alloy cells.

    python -m data_pipelines.generate --calculator emt --num-structures N --seed S --out DIR
        [--shard-size N] [--name NAME] [--workers N] [--progress/--no-progress]

Structures are rattled, strained (with shear), vacancy and surface cells of
Al, Cu, Ag, Au, Ni, Pd, Pt and their random substitutional alloys (fcc mostly,
some bcc and hcp), plus short MD snapshots (Langevin or velocity Verlet) at
300, 600 and 1200 K; 2-64 atoms, mostly 4-32. Every structure is labelled with
energy (eV), forces (eV/A) and stress (eV/A^3, ASE sign).

Structure i depends only on (seed, i): its random generator is
``np.random.default_rng([seed, i])``. So a run is bit-for-bit reproducible, and
the first k structures of a run of N > k are the run of k (data-size subsets nest).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator
from functools import cache, partial
from itertools import product
from typing import NamedTuple

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc110, fcc111
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.data import atomic_numbers
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet

from data_pipelines.schema import Structure


class CalculatorSpec(NamedTuple):
    """A labelling calculator: a factory for a fresh instance and its manifest label."""

    factory: Callable[[], Calculator]
    level_of_theory: str


CALCULATORS: dict[str, CalculatorSpec] = {
    "emt": CalculatorSpec(EMT, "EMT (ASE)"),
}

ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
# EMT's own equilibrium fcc lattice constants (A; energy minimum of ASE 3.29's EMT).
# Centring cells on these rather than on experiment keeps unstrained samples near
# EMT's minimum instead of uniformly compressed by its ~1% mismatch.
FCC_A = {"Al": 3.993, "Cu": 3.590, "Ag": 4.063, "Au": 4.056, "Ni": 3.487, "Pd": 3.878, "Pt": 3.922}
KINDS = {"rattled": 0.25, "strained": 0.2, "vacancy": 0.15, "surface": 0.15, "md": 0.25}
# bcc and hcp are not EMT minima for these metals; a few of them widen the
# sampled environments the way high-throughput DFT sets do.
LATTICES = {"fcc": 0.7, "bcc": 0.15, "hcp": 0.15}
BASIS_ATOMS = {"fcc": {False: 1, True: 4}, "bcc": {False: 1, True: 2}, "hcp": {False: 2}}
NUM_ELEMENTS = {1: 0.35, 2: 0.45, 3: 0.2}  # pure metals, binary and ternary alloys
TEMPERATURES_K = (300.0, 600.0, 1200.0)
MIN_ATOMS, MAX_ATOMS = 2, 64
TYPICAL_ATOMS = (4, 32)  # most cells fall in this range; the rest are down-weighted
MAX_REPEAT = 4  # per lattice direction
MD_TIMESTEP_FS = 2.0
MD_FRICTION_PER_FS = 0.02  # strong coupling: a few steps must already look thermal
WORKER_CHUNK = 16  # structures per task sent to a worker process


def _choose(rng: np.random.Generator, table: dict) -> object:
    """One key of `table`, drawn with its value as the (unnormalised) probability."""
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _composition(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Elements of a pure metal or random alloy and their (Dirichlet) fractions."""
    num = int(_choose(rng, NUM_ELEMENTS))
    elements = [ELEMENTS[i] for i in sorted(rng.choice(len(ELEMENTS), num, replace=False))]
    return elements, rng.dirichlet(np.ones(num))


def _decorate(rng: np.random.Generator, atoms: Atoms, elements: list[str], p: np.ndarray):
    """Random substitutional occupation of every site."""
    species = [atomic_numbers[e] for e in elements]
    atoms.numbers = rng.choice(species, size=len(atoms), p=p)


def _fcc_a(elements: list[str], p: np.ndarray) -> float:
    """Vegard's law: the alloy's lattice constant is the composition-weighted mean."""
    return float(sum(f * FCC_A[e] for e, f in zip(elements, p)))


@cache
def _supercells(lattice: str) -> tuple[list[tuple[bool, tuple[int, ...], int]], np.ndarray]:
    """All (cubic cell?, repeats, atom count) of a lattice in the atom range, with weights.

    Weights make each atom count equally likely inside TYPICAL_ATOMS (and a quarter
    as likely outside), so counts are not dominated by the many ways to make 8 or 16.
    """
    options = [
        (cubic, reps, num_basis * int(np.prod(reps)))
        for cubic, num_basis in BASIS_ATOMS[lattice].items()
        for reps in product(range(1, MAX_REPEAT + 1), repeat=3)
        if MIN_ATOMS <= num_basis * int(np.prod(reps)) <= MAX_ATOMS
    ]
    sizes = np.array([n for *_, n in options])
    weight = np.where((sizes >= TYPICAL_ATOMS[0]) & (sizes <= TYPICAL_ATOMS[1]), 1.0, 0.25)
    weight /= np.array([np.sum(sizes == n) for n in sizes])
    return options, weight / weight.sum()


def _bulk(rng: np.random.Generator, min_atoms: int = MIN_ATOMS) -> tuple[Atoms, dict]:
    """A random supercell of an fcc, bcc or hcp alloy at its Vegard volume."""
    lattice = str(_choose(rng, LATTICES))
    options, weight = _supercells(lattice)
    while True:  # rejection keeps the weights' shape above min_atoms
        cubic, reps, num_atoms = options[int(rng.choice(len(options), p=weight))]
        if num_atoms >= min_atoms:
            break
    elements, p = _composition(rng)
    a_fcc = _fcc_a(elements, p)
    # Equal volume per atom (a^3/4) in every lattice; hcp with ideal c/a.
    if lattice == "fcc":
        atoms = bulk("Cu", "fcc", a=a_fcc, cubic=cubic)
    elif lattice == "bcc":
        atoms = bulk("Cu", "bcc", a=a_fcc / 2 ** (1 / 3), cubic=cubic)
    else:
        a_hcp = a_fcc / np.sqrt(2)
        atoms = bulk("Cu", "hcp", a=a_hcp, c=a_hcp * np.sqrt(8 / 3))
    atoms = atoms.repeat(reps)
    _decorate(rng, atoms, elements, p)
    return atoms, {"lattice": lattice}


def _rattle(rng: np.random.Generator, atoms: Atoms, sigma: float) -> None:
    atoms.positions += rng.normal(0.0, sigma, size=atoms.positions.shape)


def _rattled(rng: np.random.Generator, spec: CalculatorSpec) -> tuple[Atoms, dict]:
    atoms, info = _bulk(rng)
    atoms.set_cell(atoms.cell.array * rng.uniform(0.97, 1.03), scale_atoms=True)
    sigma = float(rng.uniform(0.01, 0.12))
    _rattle(rng, atoms, sigma)
    return atoms, {**info, "rattle_A": round(sigma, 4)}


def _strained(rng: np.random.Generator, spec: CalculatorSpec) -> tuple[Atoms, dict]:
    atoms, info = _bulk(rng)
    # Symmetric strain: up to 5% normal and 4% shear, so stress labels get
    # off-diagonal components, not only the pressure.
    eps = np.diag(rng.uniform(-0.05, 0.05, 3))
    shear = rng.uniform(-0.04, 0.04, 3)
    eps[1, 2] = eps[2, 1] = shear[0]
    eps[0, 2] = eps[2, 0] = shear[1]
    eps[0, 1] = eps[1, 0] = shear[2]
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    _rattle(rng, atoms, 0.03)
    return atoms, {**info, "max_strain": round(float(np.abs(eps).max()), 4)}


def _vacancy(rng: np.random.Generator, spec: CalculatorSpec) -> tuple[Atoms, dict]:
    atoms, info = _bulk(rng, min_atoms=4)
    num_vacancies = 1 if len(atoms) < 16 else int(rng.integers(1, 3))
    del atoms[sorted(rng.choice(len(atoms), num_vacancies, replace=False).tolist())]
    _rattle(rng, atoms, float(rng.uniform(0.02, 0.1)))
    return atoms, {**info, "num_vacancies": num_vacancies}


def _surface(rng: np.random.Generator, spec: CalculatorSpec) -> tuple[Atoms, dict]:
    facet = str(rng.choice(["100", "111", "110"]))
    size = (int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(3, 7)))
    elements, p = _composition(rng)
    vacuum = float(rng.uniform(4.0, 7.0))
    build = {"100": fcc100, "111": fcc111, "110": fcc110}[facet]
    atoms = build("Cu", size=size, a=_fcc_a(elements, p), vacuum=vacuum)
    _decorate(rng, atoms, elements, p)
    # Half the slabs are periodic across the vacuum too, as plane-wave DFT sees them.
    if rng.random() < 0.5:
        atoms.pbc = True
    _rattle(rng, atoms, float(rng.uniform(0.01, 0.08)))
    return atoms, {"lattice": "fcc", "facet": facet, "vacuum_A": round(vacuum, 3)}


def _md(rng: np.random.Generator, spec: CalculatorSpec) -> tuple[Atoms, dict]:
    atoms, info = _bulk(rng, min_atoms=3)
    num_vacancies = int(rng.random() < 0.25)
    if num_vacancies:
        del atoms[int(rng.integers(len(atoms)))]
    temperature = float(rng.choice(TEMPERATURES_K))
    # Start near the thermal displacement amplitude (~sqrt(T)) so a few steps suffice.
    _rattle(rng, atoms, 0.05 * np.sqrt(temperature / 300.0))
    # Maxwell-Boltzmann momenta drawn here: ASE renamed its helper between versions.
    sigma_p = np.sqrt(atoms.get_masses()[:, None] * units.kB * temperature)
    atoms.set_momenta(sigma_p * rng.standard_normal((len(atoms), 3)))
    atoms.calc = spec.factory()
    integrator = str(rng.choice(["langevin", "verlet"]))
    dt, friction = MD_TIMESTEP_FS * units.fs, MD_FRICTION_PER_FS / units.fs
    if integrator == "langevin":
        dyn = Langevin(
            atoms, dt, temperature_K=temperature, friction=friction, fixcm=False, rng=rng
        )
    else:
        dyn = VelocityVerlet(atoms, dt)
    num_steps = int(rng.integers(5, 21))
    dyn.run(num_steps)
    md = {"temperature_K": temperature, "integrator": integrator, "num_steps": num_steps}
    return atoms, {**info, **md, "timestep_fs": MD_TIMESTEP_FS, "num_vacancies": num_vacancies}


BUILDERS = dict(rattled=_rattled, strained=_strained, vacancy=_vacancy, surface=_surface, md=_md)


def _calculator(name: str) -> CalculatorSpec:
    if name not in CALCULATORS:
        raise ValueError(f"unknown calculator '{name}'; valid names: {', '.join(CALCULATORS)}")
    return CALCULATORS[name]


def make_structure(index: int, seed: int = 0, calculator: str = "emt") -> Structure:
    """Builds and labels structure `index` of the stream for `seed`.

    Args:
        index: position in the stream (>= 0); with the seed it fixes the structure.
        seed: non-negative seed of the whole stream.
        calculator: a key of CALCULATORS.
    """
    spec = _calculator(calculator)
    rng = np.random.default_rng([seed, index])
    kind = str(_choose(rng, KINDS))
    atoms, info = BUILDERS[kind](rng, spec)
    atoms.wrap()  # MD and rattling move atoms out of the cell; labels are unchanged
    atoms.calc = spec.factory()  # fresh: no state carried between structures
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    # Stress needs a volume; every cell here has one (slabs include the vacuum).
    has_stress = "stress" in atoms.calc.implemented_properties and atoms.cell.rank == 3
    stress = atoms.get_stress(voigt=False) if has_stress else None
    return Structure(
        source_id=f"{calculator}-s{seed}-{index:07d}",
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell.array.copy(),
        pbc=atoms.pbc.copy(),
        energy=energy,
        forces=forces.copy(),
        stress=stress,
        info={"kind": kind, "formula": atoms.get_chemical_formula(), **info},
    )


def generate_structures(
    num_structures: int,
    seed: int = 0,
    calculator: str = "emt",
    start: int = 0,
    *,
    num_workers: int = 1,
) -> Iterator[Structure]:
    """Yields structures start, ..., start + num_structures - 1 of the stream for `seed`.

    Args:
        num_structures: how many structures to yield.
        seed: non-negative seed; the same seed gives bit-identical structures.
        calculator: labelling calculator, a key of CALCULATORS.
        start: index of the first structure, so a stream can be produced in pieces.
        num_workers: processes; the output is the same (in order, bit for bit) for any
            number, since each structure depends only on (seed, index). Workers are
            spawned, so a script using more than one needs `if __name__ == "__main__":`.

    Raises:
        ValueError: on an unknown calculator or a negative count, seed or start.
    """
    _calculator(calculator)  # fail at the call, not at the first structure
    if num_structures < 0 or seed < 0 or start < 0:
        raise ValueError("num_structures, seed and start must be non-negative")
    return _generate(range(start, start + num_structures), seed, calculator, num_workers)


def _generate(indices: range, seed: int, calculator: str, num_workers: int) -> Iterator[Structure]:
    build = partial(make_structure, seed=seed, calculator=calculator)
    if num_workers <= 1 or len(indices) < 2 * WORKER_CHUNK:
        yield from map(build, indices)
        return
    # spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy
    # mid-state; imap keeps the order, so the stream is independent of num_workers.
    with mp.get_context("spawn").Pool(num_workers) as pool:
        yield from pool.imap(build, indices, chunksize=WORKER_CHUNK)


class _Counted:
    """An iterable that knows its length, so the progress bar can show an ETA."""

    def __init__(self, iterator: Iterator[Structure], length: int):
        self._iterator, self._length = iterator, length

    def __iter__(self) -> Iterator[Structure]:
        return self._iterator

    def __len__(self) -> int:
        return self._length


def main(argv: list[str] | None = None) -> int:
    from data_pipelines.convert import write_dataset

    p = argparse.ArgumentParser(
        prog="python -m data_pipelines.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--calculator", default="emt", choices=list(CALCULATORS))
    p.add_argument("--num-structures", type=int, required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the structures and the splits")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shard-size", type=int, default=5000, help="structures per shard")
    p.add_argument("--name", default=None, help="dataset name (default: the --out folder)")
    p.add_argument("--store-edges", type=float, default=None, metavar="CUTOFF",
                   help="store neighbour lists within CUTOFF (A) in the shards "
                   "(as convert --store-edges)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="default: all cores")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar (default: on a terminal only)")
    args = p.parse_args(argv)
    if args.num_structures < 1:
        p.error("--num-structures must be at least 1")
    if args.seed < 0:
        p.error("--seed must be non-negative")
    options = dict(calculator=args.calculator, num_structures=args.num_structures, seed=args.seed)
    structures = generate_structures(
        args.num_structures, args.seed, args.calculator, num_workers=args.workers
    )
    manifest = write_dataset(
        _Counted(structures, args.num_structures),
        args.out,
        splits={"train": 0.9, "val": 0.05, "test": 0.05},
        shard_size=args.shard_size,
        seed=args.seed,  # salts the split hash; structures nest across N, so do splits
        name=args.name,
        level_of_theory=_calculator(args.calculator).level_of_theory,
        sources=[{"path": f"generate:{args.calculator}", "sha256": None, "options": options}],
        store_edges_cutoff=args.store_edges,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    counts = ", ".join(f"{k} {v['num_structures']}" for k, v in manifest["splits"].items())
    print(f"wrote {manifest['num_structures']} structures to {args.out} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
