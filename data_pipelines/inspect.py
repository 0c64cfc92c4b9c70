"""Look inside a shard directory.

    python -m data_pipelines.inspect DIR                      summary
    python -m data_pipelines.inspect DIR --verify             checksums + full decode
    python -m data_pipelines.inspect DIR --split S --rank R --world-size W \\
        --workers K --epoch E --keys                          ids one rank sees, one per line
    python -m data_pipelines.inspect DIR --export extxyz FILE [--split S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipelines.atomic import atomic_write
from data_pipelines.dataset import Dataset, open_dataset
from data_pipelines.loader import epoch_ids
from data_pipelines.schema import DataError, Structure

# isort: split
# Alias for callers on other floors; it moves to data_pipelines.dataset.
from data_pipelines.dataset import iter_split  # noqa: F401


def summary(root: str | Dataset) -> str:
    m = open_dataset(root).manifest
    lines = [
        f"dataset {m['name']}: {m['num_structures']} structures, {m['num_atoms']} atoms, "
        f"layout {m['layout']} (schema {m['schema_version']})",
        f"level of theory: {m.get('level_of_theory') or 'not given'}",
        f"elements: {' '.join(m['elements'])}",
    ]
    for name, sp in m["splits"].items():
        lines.append(
            f"  {name:>6}: {sp['num_structures']:8d} structures {sp['num_atoms']:10d} "
            f"atoms in {sp['num_shards']} shards"
        )
    skipped = m["skipped"]
    lines.append(f"skipped records: {skipped['total']}")
    for reason, n in skipped["by_reason"].items():
        lines.append(f"  {n:8d}  {reason}")
    return "\n".join(lines)


def verify(root: str | Dataset) -> list[str]:
    """Checks every shard's sha256 and decodes every pack; returns the problems."""
    return open_dataset(root).verify()


def to_atoms(s: Structure):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    results = {}
    if s.energy is not None:
        results["energy"] = s.energy
    if s.forces is not None:
        results["forces"] = s.forces
    if s.stress is not None:
        results["stress"] = s.stress.copy()
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["source_id"] = s.source_id
    return atoms


def export_extxyz(root: str | Dataset, path: str, split: str | None = None) -> int:
    """Writes a split (or every split) as extended XYZ; returns the structure count."""
    from ase.io import write

    ds = open_dataset(root)
    n = 0

    def write_all(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w") as fh:
            for s in ds.iter_split(split):
                write(fh, to_atoms(s), format="extxyz")
                n += 1

    atomic_write(path, write_all)
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_pipelines.inspect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", help="shard directory (or URL prefix)")
    p.add_argument("--verify", action="store_true", help="check checksums and decode all")
    p.add_argument("--split", default=None)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--keys", action="store_true", help="print the ids one rank sees")
    p.add_argument("--export", nargs=2, metavar=("FORMAT", "FILE"))
    args = p.parse_args(argv)
    try:
        ds = open_dataset(args.root)
        if args.keys:
            ids = epoch_ids(
                ds,
                args.split or "train",
                args.rank,
                args.world_size,
                args.workers,
                args.epoch,
                args.seed,
                not args.no_shuffle,
            )
            sys.stdout.write("".join(f"{i}\n" for i in ids))
            return 0
        if args.export:
            fmt, path = args.export
            if fmt != "extxyz":
                p.error(f"--export supports extxyz, got {fmt}")
            n = export_extxyz(ds, path, args.split)
            print(f"exported {n} structures to {path}")
            return 0
        print(summary(ds))
        if args.verify:
            problems = ds.verify()
            for line in problems:
                print(f"FAILED {line}")
            print("verify: ok" if not problems else f"verify: {len(problems)} problems")
            return 1 if problems else 0
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
