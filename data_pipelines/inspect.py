"""Look inside a shard directory.

    python -m data_pipelines.inspect DIR                      summary
    python -m data_pipelines.inspect DIR --verify             checksums + full decode
    python -m data_pipelines.inspect DIR --split S --rank R --world-size W \\
        --workers K --epoch E --keys                          ids one rank sees, one per line
    python -m data_pipelines.inspect DIR --export extxyz FILE [--split S]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator

from data_pipelines import shards
from data_pipelines.loader import epoch_ids, load_manifest, open_stream, resolve
from data_pipelines.schema import DataError, Structure


def summary(root: str) -> str:
    m = load_manifest(root)
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


def verify(root: str) -> list[str]:
    """Checks every shard's sha256 and decodes every pack; returns the problems."""
    m = load_manifest(root)
    problems = []
    for sp in m["splits"].values():
        for shard in sp["shards"]:
            location = resolve(root, shard["file"])
            try:
                with open_stream(location) as fh:
                    data = fh.read()
            except OSError as err:
                problems.append(f"{location}: cannot read ({err})")
                continue
            if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                problems.append(f"{location}: sha256 mismatch (corrupted or replaced)")
                continue
            import io

            try:
                count = sum(
                    len(shards.decode_pack(blob, f"{location}:{key}"))
                    for key, blob in shards.iter_shard_packs(io.BytesIO(data), location)
                )
            except DataError as err:
                problems.append(str(err))
                continue
            if count != shard["num_structures"]:
                problems.append(
                    f"{location}: {count} structures, manifest says {shard['num_structures']}"
                )
    return problems


def iter_split(root: str, split: str | None = None) -> Iterator[Structure]:
    """All structures of one split (or all splits) in manifest order."""
    m = load_manifest(root)
    for name, sp in m["splits"].items():
        if split is not None and name != split:
            continue
        for shard in sp["shards"]:
            location = resolve(root, shard["file"])
            with open_stream(location) as fh:
                for key, blob in shards.iter_shard_packs(fh, location):
                    yield from shards.decode_pack(blob, f"{location}:{key}")


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


def export_extxyz(root: str, path: str, split: str | None = None) -> int:
    from ase.io import write

    n = 0
    with open(path, "w") as fh:
        for s in iter_split(root, split):
            write(fh, to_atoms(s), format="extxyz")
            n += 1
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
        if args.keys:
            ids = epoch_ids(
                args.root,
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
            n = export_extxyz(args.root, path, args.split)
            print(f"exported {n} structures to {path}")
            return 0
        print(summary(args.root))
        if args.verify:
            problems = verify(args.root)
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
