"""Data-pipeline benchmark: conversion and streaming against ASE, in one run.

    python -m analysis.bench.data --out runs/bench/data.json [--num-structures N]

Baselines measured in the same run on the same structures: `ase.io.read` of
the extended XYZ file, ASE's own neighbour list, and (for a mid-epoch resume)
the epoch's first batch. Peak memory of convert
and stream is measured in fresh subprocesses at N and 10 N structures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_structures(num: int, seed: int = 0):
    """Rattled fcc/bcc cells of 4-32 atoms with random labels (I/O is measured,
    not physics, so labels need not come from a calculator)."""
    from ase.build import bulk

    from data_pipelines.schema import Structure

    elements = ["Cu", "Al", "Ni", "Pd", "Ag"]
    for k in range(num):
        rng = np.random.default_rng([seed, k])
        atoms = bulk(str(rng.choice(elements)), "fcc", cubic=True)
        atoms = atoms * tuple(int(v) for v in rng.integers(1, 3, 3))
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        n = len(atoms)
        yield Structure(f"bench#{k}", atoms.numbers, atoms.positions, atoms.cell.array,
                        atoms.pbc, energy=float(rng.normal(-4 * n, 1)),
                        forces=rng.normal(0, 0.5, (n, 3)), stress=rng.normal(0, 0.01, (3, 3)))


def write_extxyz(structures, path: Path) -> None:
    from ase.io import write

    from data_pipelines.inspect import to_atoms

    with open(path, "w") as fh:
        for s in structures:
            write(fh, to_atoms(s), format="extxyz")


def _timed(fn, repeat: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _peak_rss_mib(code: str) -> float:
    """Runs python code in a fresh process; returns how far its resident memory rose
    above the process after its imports (MiB), sampled every 2 ms, i.e. the memory
    the work itself needed. (ru_maxrss cannot tell: importing torch peaks higher.)"""
    script = (
        "import threading, time, psutil, numpy, torch, ase, vesin, data_pipelines.convert, "
        "data_pipelines.loader, data_pipelines.sources\n"
        "proc = psutil.Process(); base = proc.memory_info().rss; peak = [base]; run = [True]\n"
        "def watch():\n"
        "    while run[0]:\n"
        "        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.002)\n"
        "w = threading.Thread(target=watch); w.start()\n"
        + code
        + "\nrun[0] = False; w.join(); print(max(peak[0] - base, 0))"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True)
    return max(int(out.stdout.strip().splitlines()[-1]), 1024) / 2**20


def run(num_structures: int = 2000, cutoff: float = 5.0, memory_check: bool = True) -> dict:
    import torch
    from ase.io import read
    from ase.neighborlist import neighbor_list

    from data_pipelines.dataset import open_dataset
    from data_pipelines.graph import neighbour_list
    from data_pipelines.loader import LoaderConfig, StreamingLoader, worker_stream

    torch.set_num_threads(2)
    res: dict = {"num_structures": num_structures, "cutoff_A": cutoff}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        structures = list(synthetic_structures(num_structures))
        num_atoms = sum(s.num_atoms for s in structures)
        res["num_atoms"] = num_atoms
        xyz = tmp / "data.xyz"
        write_extxyz(structures, xyz)

        t_ase, frames = _timed(lambda: read(xyz, index=":", format="extxyz"))
        assert len(frames) == num_structures
        res["ase_read_structures_per_s"] = num_structures / t_ase

        def convert():
            from data_pipelines.convert import main

            main([str(xyz), "--out", str(tmp / "shards"), "--format", "extxyz", "--no-progress",
                  "--split", "train=1.0", "--shard-size", "1000", "--stats-cutoff", str(cutoff)])

        t_conv, _ = _timed(convert)
        res["convert_structures_per_s"] = num_structures / t_conv
        res["convert_atoms_per_s"] = num_atoms / t_conv
        root = str(tmp / "shards")
        data = open_dataset(root)
        cfg = LoaderConfig(root=root, cutoff=cutoff, max_atoms=512, shuffle=True)

        def decode_only(c=cfg):
            return sum(1 for _ in worker_stream(c, data, 0, 0, 1, 0, 1))

        # sha256 of each shard as it streams (the default) against an opt-out
        unverified = dataclasses.replace(cfg, verify_checksums=False)
        t_dec, count = _timed(decode_only, repeat=5)
        t_unv, _ = _timed(lambda: decode_only(unverified), repeat=5)
        assert count == num_structures
        res["stream_decode_structures_per_s"] = num_structures / t_dec
        res["stream_decode_atoms_per_s"] = num_atoms / t_dec
        res["stream_decode_unverified_structures_per_s"] = num_structures / t_unv
        res["ratio_decode_checksum_cost"] = t_dec / t_unv

        def full_path():
            return sum(len(b["ids"]) for b in StreamingLoader(cfg))

        t_full, count = _timed(full_path, repeat=3)
        assert count == num_structures
        res["stream_full_structures_per_s"] = num_structures / t_full
        res["stream_full_atoms_per_s"] = num_atoms / t_full

        # the same shards converted with their neighbour lists stored
        # (convert --store-edges): the loader reads them instead of running vesin
        def convert_stored():
            from data_pipelines.convert import main

            main([str(xyz), "--out", str(tmp / "stored"), "--format", "extxyz",
                  "--no-progress", "--split", "train=1.0", "--shard-size", "1000",
                  "--stats-cutoff", str(cutoff), "--store-edges", str(cutoff)])

        t_conv_stored, _ = _timed(convert_stored)
        res["convert_stored_edges_structures_per_s"] = num_structures / t_conv_stored
        res["shard_bytes_ratio_stored_edges"] = sum(
            f.stat().st_size for f in (tmp / "stored").rglob("*.tar")) / sum(
            f.stat().st_size for f in (tmp / "shards").rglob("*.tar"))
        stored_cfg = dataclasses.replace(cfg, root=str(tmp / "stored"))
        t_stored, count = _timed(
            lambda: sum(len(b["ids"]) for b in StreamingLoader(stored_cfg)), repeat=3)
        assert count == num_structures
        res["stream_full_stored_edges_structures_per_s"] = num_structures / t_stored
        # a model with a smaller cutoff than the stored one: pairs filtered
        smaller = dataclasses.replace(stored_cfg, cutoff=0.8 * cutoff)
        t_filtered, _ = _timed(
            lambda: sum(len(b["ids"]) for b in StreamingLoader(smaller)), repeat=3)
        res["stream_full_stored_edges_smaller_cutoff_structures_per_s"] = (
            num_structures / t_filtered)

        # Object-store streaming: the same shards served over HTTP on loopback
        # (data_pipelines.serve), read through the loader's https-style root
        from data_pipelines.serve import serve_root

        with serve_root(root) as url:
            http_cfg = dataclasses.replace(cfg, root=url)
            http_data = open_dataset(url)
            t_http_dec, count = _timed(
                lambda: sum(1 for _ in worker_stream(http_cfg, http_data, 0, 0, 1, 0, 1)),
                repeat=3)
            assert count == num_structures
            t_http_full, _ = _timed(
                lambda: sum(len(b["ids"]) for b in StreamingLoader(http_cfg)), repeat=3)
        res["stream_http_decode_structures_per_s"] = num_structures / t_http_dec
        res["stream_http_full_structures_per_s"] = num_structures / t_http_full
        res["ratio_http_vs_local_decode"] = t_dec / t_http_dec
        res["ratio_http_vs_local_full"] = t_full / t_http_full

        # A resume starts at the window holding the saved position and replays
        # nothing before it: late in the epoch the first batch costs what the
        # epoch's first batch costs (windows of one shard here).
        def first_batch(position: int):
            loader = StreamingLoader(dataclasses.replace(cfg, buffer_size=256))
            loader.state.positions[0] = position
            return next(iter(loader))

        t_fresh, _ = _timed(lambda: first_batch(0), repeat=3)
        t_resume, _ = _timed(lambda: first_batch(int(0.9 * num_structures)), repeat=3)
        res["first_batch_s"] = t_fresh
        res["first_batch_after_resume_at_90pct_s"] = t_resume
        res["ratio_resume_vs_first_batch"] = t_resume / t_fresh

        t_vesin, _ = _timed(lambda: [neighbour_list(s.positions, s.cell, s.pbc, cutoff)
                                     for s in structures], repeat=3)
        subset = frames[: max(num_structures // 10, 50)]
        t_asenl, _ = _timed(lambda: [neighbor_list("ijS", a, cutoff) for a in subset])
        res["vesin_structures_per_s"] = num_structures / t_vesin
        res["ase_neighbour_list_structures_per_s"] = len(subset) / t_asenl

        res["ratio_decode_vs_ase_read"] = res["stream_decode_structures_per_s"] / res[
            "ase_read_structures_per_s"]
        res["ratio_full_vs_ase_read"] = res["stream_full_structures_per_s"] / res[
            "ase_read_structures_per_s"]
        res["ratio_vesin_vs_ase_neighbour_list"] = res["vesin_structures_per_s"] / res[
            "ase_neighbour_list_structures_per_s"]
        res["ratio_full_stored_edges_vs_ase_read"] = res[
            "stream_full_stored_edges_structures_per_s"] / res["ase_read_structures_per_s"]
        res["ratio_full_stored_edges_smaller_cutoff_vs_ase_read"] = res[
            "stream_full_stored_edges_smaller_cutoff_structures_per_s"] / res[
            "ase_read_structures_per_s"]

    if memory_check:
        res["memory"] = memory_growth(num_structures, cutoff)
    res["targets"] = {
        "decode_vs_ase_read >= 10": res["ratio_decode_vs_ase_read"] >= 10,
        "full_vs_ase_read >= 2": res["ratio_full_vs_ase_read"] >= 2,
        "full with stored neighbour lists vs ase_read >= 2": res[
            "ratio_full_stored_edges_vs_ase_read"] >= 2,
        "vesin_vs_ase_neighbour_list >= 100": res["ratio_vesin_vs_ase_neighbour_list"] >= 100,
        "decode checksum cost <= 5% (verified / unverified time <= 1.05)": res[
            "ratio_decode_checksum_cost"] <= 1.05,
        "resume at 90% of an epoch <= 1.5x its first batch (no replay)": res[
            "ratio_resume_vs_first_batch"] <= 1.5,
    }
    if memory_check:
        res["targets"]["convert peak memory flat (10x data: growth < 1.5x)"] = (
            res["memory"]["convert_ratio"] < 1.5)
        res["targets"]["stream peak memory flat (10x data: growth < 1.5x)"] = (
            res["memory"]["stream_ratio"] < 1.5)
    return res


def memory_growth(num_structures: int, cutoff: float) -> dict:
    """Peak RSS of convert and of one streamed epoch at N and 10 N structures."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):
            n = num_structures * scale
            xyz = Path(tmp) / f"d{scale}.xyz"
            shards = Path(tmp) / f"s{scale}"
            write_extxyz(synthetic_structures(n, seed=scale), xyz)
            out[f"convert_peak_mib_{scale}x"] = _peak_rss_mib(
                "from data_pipelines.convert import main\n"
                f"main([{str(xyz)!r}, '--out', {str(shards)!r}, '--format', 'extxyz', "
                f"'--no-progress', '--shard-size', '1000', '--stats-cutoff', '{cutoff}'])")
            out[f"stream_peak_mib_{scale}x"] = _peak_rss_mib(
                "from data_pipelines.loader import LoaderConfig, StreamingLoader\n"
                f"cfg = LoaderConfig(root={str(shards)!r}, cutoff={cutoff}, max_atoms=512)\n"
                "n = sum(len(b['ids']) for b in StreamingLoader(cfg))")
    out["convert_ratio"] = out["convert_peak_mib_10x"] / out["convert_peak_mib_1x"]
    out["stream_ratio"] = out["stream_peak_mib_10x"] / out["stream_peak_mib_1x"]
    out["sizes"] = [num_structures, 10 * num_structures]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.data", description=__doc__)
    p.add_argument("--out", default="runs/bench/data.json")
    p.add_argument("--num-structures", type=int, default=2000)
    p.add_argument("--no-memory", action="store_true")
    args = p.parse_args(argv)
    res = run(args.num_structures, memory_check=not args.no_memory)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        if k not in ("targets", "memory"):
            print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")
    for k, v in res.get("memory", {}).items():
        print(f"memory.{k:33s} {v}")
    for k, v in res["targets"].items():
        print(f"{'PASS' if v else 'MISS'}  {k}")
    _ = resource  # peak RSS of this process is not reported; subprocesses measure it
    return 0


if __name__ == "__main__":
    sys.exit(main())
