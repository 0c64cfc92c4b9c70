"""Raw DFT files -> WebDataset shards, manifest and statistics.

    python -m data_pipelines.convert INPUT... --out DIR [--format auto|...]
        [--shard-size N] [--split train=0.9,val=0.05,test=0.05] [--seed S]
        [--name NAME] [--skip-invalid] [--allow-empty] [reader options]

Writes DIR/<split>/shard-NNNNNN.tar (layout in data_pipelines.shards),
DIR/stats.json and, last, DIR/manifest.json. The manifest names each input by
its path relative to the inputs' common folder (`sources_root`, by name only)
with its sha256, and records the units, sign and Voigt order its reader
applied (`conventions`, listed below). Every file is written to a
temporary name and renamed into place, and an existing manifest is removed
before anything else, so an interrupted run never leaves a directory that
looks complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from ase.data import atomic_numbers
from tqdm import tqdm

from data_pipelines import shards
from data_pipelines.atomic import write_text
from data_pipelines.graph import store_edges
from data_pipelines.schema import SCHEMA_VERSION, UNITS, DataError, Structure, config_type_of
from data_pipelines.stats import StatsAccumulator

DEFAULT_SPLITS = {"train": 0.9, "val": 0.05, "test": 0.05}
MANIFEST = shards.MANIFEST_FILE
STATS = shards.STATS_FILE


def parse_splits(text: str) -> dict[str, float]:
    """'train=0.9,val=0.05,test=0.05' -> dict; fractions must sum to 1."""
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--split: expected NAME=FRACTION, got '{part}'")
        out[name.strip()] = float(value)
    check_split_names(out)
    if abs(sum(out.values()) - 1.0) > 1e-9 or any(v < 0 for v in out.values()):
        raise ValueError(f"--split fractions must be non-negative and sum to 1, got {text}")
    return out


def check_split_names(splits: dict[str, float]) -> None:
    """Split names become folder names and manifest paths: letters, digits, '_', '-'."""
    for name in splits:
        if not shards.SPLIT_NAME.fullmatch(name):
            raise ValueError(
                f"split name {name!r}: expected letters, digits, '_' or '-' (starting with a "
                "letter or digit), since it names a folder and the manifest's shard paths"
            )


class EmptyDatasetError(ValueError):
    """No structure was kept: the inputs were empty or every record was skipped."""

    def __init__(self, out: Path, skipped: Counter):
        self.skipped = dict(skipped)
        total = sum(skipped.values())
        if total:
            reasons = "; ".join(f"{n} x {r}" for r, n in sorted(skipped.items()))
            what = f"all {total} records were skipped as invalid ({reasons})"
        else:
            what = "the inputs hold no structures"
        super().__init__(
            f"{out}: no structures to write: {what}. Fix the inputs or reader options, or "
            "pass --allow-empty (allow_empty=True) to write an empty dataset anyway"
        )


def split_of(key: str, fractions: dict[str, float], seed: int = 0) -> str:
    """Deterministic split from a hash of the key: independent of file order and of
    every other structure, so adding files never moves an existing structure."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64
    acc = 0.0
    names = list(fractions)
    for name in names:
        acc += fractions[name]
        if u < acc:
            return name
    return names[-1]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class _SplitWriter:
    """Fills equal-sized shards of one split, pack by pack."""

    def __init__(self, out_dir: Path, split: str, shard_size: int, pack_size: int, cutoff,
                 store_edges: float | None = None):
        self.dir = out_dir / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.shard_size = shard_size
        self.pack_size = pack_size
        self.shards: list[dict] = []
        self.stats = StatsAccumulator(cutoff)
        self.store_edges = store_edges
        self._pack: list[Structure] = []
        self._writer: shards.ShardWriter | None = None
        self._file = None
        self._count = 0
        self._atoms = 0
        self._packs = 0
        self.config_types: Counter = Counter()

    def add(self, s: Structure) -> None:
        if self.store_edges is not None:
            store_edges(s, self.store_edges)  # before stats: they reuse it
        self.stats.add(s)
        self.config_types[config_type_of(s.info) or "(none)"] += 1
        self._pack.append(s)
        self._count += 1
        self._atoms += s.num_atoms
        if len(self._pack) == self.pack_size or self._count == self.shard_size:
            self._flush_pack()
        if self._count == self.shard_size:
            self._close_shard()

    def _flush_pack(self) -> None:
        if not self._pack:
            return
        if self._writer is None:
            self._tmp = self.dir.parent / (shards.shard_file(self.split, len(self.shards)) + ".tmp")
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in _close_shard
            self._writer = shards.ShardWriter(self._file)
        self._writer.add(
            f"s{len(self.shards):06d}p{self._packs:06d}", shards.encode_pack(self._pack)
        )
        self._packs += 1
        self._pack = []

    def _close_shard(self) -> None:
        self._flush_pack()
        if self._writer is None:
            return
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = shards.shard_file(self.split, len(self.shards))
        final = self.dir.parent / name
        os.replace(self._tmp, final)
        self.shards.append(
            {
                "file": name,
                "num_structures": self._count,
                "num_atoms": self._atoms,
                "num_packs": self._packs,
                "bytes": final.stat().st_size,
                "sha256": sha256_file(final),
            }
        )
        self._writer = None
        self._count = self._atoms = self._packs = 0

    def finish(self) -> dict:
        self._close_shard()
        return {
            "num_structures": sum(s["num_structures"] for s in self.shards),
            "num_atoms": sum(s["num_atoms"] for s in self.shards),
            "num_shards": len(self.shards),
            "config_types": dict(sorted(self.config_types.items())),
            "shards": self.shards,
        }


def write_dataset(
    structures: Iterable[Structure],
    out_dir: str | Path,
    *,
    splits: dict[str, float] | None = None,
    shard_size: int = 5000,
    pack_size: int = 64,
    seed: int = 0,
    name: str | None = None,
    level_of_theory: str | None = None,
    sources: list[dict] | None = None,
    sources_root: str | None = None,
    skip_invalid: bool = False,
    skipped: Counter | None = None,
    stats_cutoff: float | None = 5.0,
    store_edges_cutoff: float | None = None,
    progress: bool = False,
    allow_empty: bool = False,
) -> dict:
    """Validates, splits and shards a stream of structures; returns the manifest.

    Args:
        structures: the stream (any iterable; consumed once).
        out_dir: output directory (created; an old manifest in it is removed first).
        splits: split name -> fraction; the split of a structure is a hash of
            info["split_key"] if set (e.g. an MPtrj material), else its source id.
        shard_size: structures per shard (the last shard of a split may be smaller).
        pack_size: structures per WebDataset sample.
        seed: salt of the split hash.
        skip_invalid: skip structures that fail validation instead of raising;
            they are counted by reason in the manifest.
        sources: one entry per input file (path relative to `sources_root`,
            sha256, format, the conventions its reader applied, ...).
        sources_root: the name (not the path) of the folder source paths are
            relative to.
        skipped: counter of records already skipped upstream (by the readers).
        stats_cutoff: cutoff (A) for the mean neighbour count in stats.json.
        store_edges_cutoff: store every structure's neighbour list within this
            cutoff (A) in the shards; loaders at this cutoff or a smaller one
            read it instead of computing it (about 14 bytes per pair).
        allow_empty: write a dataset even if no structure is kept; otherwise that
            is an EmptyDatasetError (and no manifest is written).
    """
    splits = dict(splits or DEFAULT_SPLITS)
    check_split_names(splits)
    if shard_size < 1 or pack_size < 1:
        raise ValueError("shard_size and pack_size must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    skipped = skipped if skipped is not None else Counter()
    writers = {
        sp: _SplitWriter(
            out, sp, shard_size, min(pack_size, shard_size), stats_cutoff, store_edges_cutoff
        )
        for sp in splits
    }
    for old in out.glob("*/shard-*.tar*"):
        old.unlink()
    for s in tqdm(structures, desc="convert", unit=" structures", disable=not progress):
        try:
            s.validate(file=s.source_id.partition("#")[0], record=s.source_id)
        except DataError as err:
            if not skip_invalid:
                raise
            skipped[f"{err.field}: {err.reason}"] += 1
            continue
        key = s.info.get("split_key", s.source_id)
        writers[split_of(str(key), splits, seed)].add(s)
    split_info = {sp: w.finish() for sp, w in writers.items()}
    if not allow_empty and not any(v["num_structures"] for v in split_info.values()):
        raise EmptyDatasetError(out, skipped)
    stats = {sp: w.stats.result() for sp, w in writers.items()}
    train_split = "train" if "train" in stats else next(iter(stats))
    elements = sorted(
        {el for st in stats.values() for el in st["elements"]}, key=atomic_numbers.__getitem__
    )
    write_text(
        out / STATS,
        json.dumps({"split": train_split, **stats[train_split], "per_split": stats}, indent=1),
    )
    atom_counts = Counter()
    for st in stats.values():
        atom_counts.update(st["element_counts"])
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "layout": shards.LAYOUT_NAME,
        "layout_version": shards.LAYOUT_VERSION,
        "name": name or out.name,
        "level_of_theory": level_of_theory,
        "units": UNITS,
        "sources_root": sources_root,
        "sources": sources or [],
        "split_fractions": splits,
        "split_seed": seed,
        "shard_size": shard_size,
        "pack_size": min(pack_size, shard_size),
        "elements": elements,
        "element_atom_counts": dict(atom_counts),
        "num_structures": sum(v["num_structures"] for v in split_info.values()),
        "num_atoms": sum(v["num_atoms"] for v in split_info.values()),
        "splits": split_info,
        "skipped": {"total": sum(skipped.values()), "by_reason": dict(sorted(skipped.items()))},
        "stats_file": STATS,
        "stored_edges_cutoff": store_edges_cutoff,
    }
    write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def source_root(inputs: list[str]) -> tuple[str, dict[str, str]]:
    """The inputs' common folder, by its name only, and each input's path relative to it.

    The manifest records these, never absolute paths: a dataset directory is
    shared and moved, and where its inputs once lay on one machine is neither
    portable nor anyone else's business. The sha256 identifies the file.
    """
    paths = {p: Path(p).resolve() for p in inputs}
    common = Path(os.path.commonpath([str(q.parent) for q in paths.values()]))
    return common.name, {p: q.relative_to(common).as_posix() for p, q in paths.items()}


def source_names(inputs: list[str]) -> dict[str, str]:
    """Names that prefix source ids: the file name, or, when several inputs share a
    file name (mlearn's */training.json.gz, many vasprun.xml), the path relative
    to their common folder, so ids stay unique across the dataset."""
    paths = {p: Path(p).resolve() for p in inputs}
    plain = [q.name for q in paths.values()]
    if len(set(plain)) == len(plain):
        return {p: q.name for p, q in paths.items()}
    common = Path(os.path.commonpath([str(q.parent) for q in paths.values()]))
    return {p: str(q.relative_to(common)) for p, q in paths.items()}


def _read_inputs(
    inputs, fmt, options, skipped: Counter, sources: list[dict]
) -> Iterator[Structure]:
    from data_pipelines.sources import conventions, detect_format, read_structures

    names = source_names(inputs)
    _, relative = source_root(inputs)
    for path in inputs:
        actual = detect_format(path) if fmt == "auto" else fmt
        entry = {"path": relative[path], "name": names[path], "sha256": sha256_file(path),
                 "bytes": Path(path).stat().st_size, "format": actual,
                 "conventions": conventions.describe(actual, options), "num_read": 0}
        sources.append(entry)
        options.source_name = names[path]
        for s in read_structures(path, actual, options):
            entry["num_read"] += 1
            yield s


def main(argv: list[str] | None = None) -> int:
    from data_pipelines.sources import FORMATS, add_reader_arguments, conventions, options_from_args

    p = argparse.ArgumentParser(
        prog="python -m data_pipelines.convert",
        description=__doc__,
        epilog=conventions.help_text(FORMATS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="input files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    p.add_argument("--shard-size", type=int, default=5000, help="structures per shard")
    p.add_argument("--pack-size", type=int, default=64, help="structures per sample")
    p.add_argument("--split", default="train=0.9,val=0.05,test=0.05")
    p.add_argument("--seed", type=int, default=0, help="salt of the split hash")
    p.add_argument("--name", default=None, help="dataset name (default: the --out folder)")
    p.add_argument("--level-of-theory", default=None, help="label, e.g. 'PBE/PAW 520 eV'")
    p.add_argument("--stats-cutoff", type=float, default=5.0, help="A, for neighbour counts")
    p.add_argument(
        "--store-edges",
        type=float,
        default=None,
        metavar="CUTOFF",
        help="store neighbour lists within CUTOFF (A) in the shards: training at that cutoff "
        "or a smaller one reads them instead of computing them (about 14 bytes per pair)",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip (and count) invalid records instead of failing",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="write the dataset even if no structure is kept (an error otherwise)",
    )
    p.add_argument("--no-progress", action="store_true")
    add_reader_arguments(p)
    args = p.parse_args(argv)
    for path in args.inputs:
        if not Path(path).is_file():
            p.error(f"input file not found: {path}")
    try:
        splits = parse_splits(args.split)
    except ValueError as err:
        p.error(str(err))
    skipped: Counter = Counter()

    def on_error(err: DataError) -> None:
        if not args.skip_invalid:
            raise err
        skipped[f"{err.field}: {err.reason}"] += 1

    options = options_from_args(args)
    options.on_error = on_error
    sources: list[dict] = []
    try:
        manifest = write_dataset(
            _read_inputs(args.inputs, args.format, options, skipped, sources),
            args.out,
            splits=splits,
            shard_size=args.shard_size,
            pack_size=args.pack_size,
            seed=args.seed,
            name=args.name,
            level_of_theory=args.level_of_theory,
            sources=sources,
            sources_root=source_root(args.inputs)[0],
            skip_invalid=args.skip_invalid,
            allow_empty=args.allow_empty,
            skipped=skipped,
            stats_cutoff=args.stats_cutoff,
            store_edges_cutoff=args.store_edges,
            # a bar on a terminal only: in a log file it is a line of carriage returns
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except EmptyDatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        print("(use --skip-invalid to skip and count such records)", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v['num_structures']}" for k, v in manifest["splits"].items())
    print(f"wrote {manifest['num_structures']} structures to {args.out} ({counts})")
    if manifest["skipped"]["total"]:
        print(f"skipped {manifest['skipped']['total']} invalid records:")
        for reason, n in manifest["skipped"]["by_reason"].items():
            print(f"  {n:8d}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
