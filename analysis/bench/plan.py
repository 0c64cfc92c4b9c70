"""Epoch-plan benchmark: one epoch of a 100M-structure split on 512 ranks, plans only.

    python -m analysis.bench.plan --out runs/bench/plan.json [--structures N --shards S
        --ranks R --workers K]

OMat24 alone holds over 100M structures and the largest published run used
512 GPUs. No structure data is made: a synthetic manifest (20,000 shards, fake
checksums) is written and opened the way a rank opens a real one, and the
loader plans one epoch from it. Measured:

- per rank, in a fresh process: opening the manifest and planning the rank's
  K DataLoader workers (time, Python peak and resident memory growth);
- the whole epoch (all R x K workers): exactly-once coverage checked on the
  plans' pieces (`data_pipelines.plan.check_coverage`), per-rank structure
  counts, and steps per rank at a fixed number of structures per batch;
- at 1M structures x 64 ranks x 4 workers: exactly once by materialising
  every structure index of every worker's stream order;
- the serialized loader state of a rank mid-epoch (JSON and torch.save), at
  both sizes, to show it does not grow with the data.

Targets: plan under 10 s and 1 GB per rank, state under 1 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def shard_counts(num_structures: int, num_shards: int) -> np.ndarray:
    """(num_shards,) structures per shard: equal, the remainder spread over the first."""
    counts = np.full(num_shards, num_structures // num_shards, dtype=np.int64)
    counts[: num_structures % num_shards] += 1
    return counts


def write_manifest(root: Path, counts: np.ndarray, pack_size: int = 64) -> None:
    """A manifest.json that the loader accepts, for shards that are never read."""
    shards = [
        {"file": f"train/shard-{k:06d}.tar", "num_structures": int(c), "sha256": f"{k:064x}"}
        for k, c in enumerate(counts)
    ]
    manifest = {"pack_size": pack_size, "splits": {"train": {"shards": shards}}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _rank_cost(root: str, rank: int, ranks: int, workers: int, window: int) -> dict:
    """Opens the root and plans one rank's workers in a fresh process: seconds and memory."""
    code = f"""
import json, time, tracemalloc, psutil, numpy, torch
from data_pipelines.dataset import open_dataset
from data_pipelines.loader import LoaderConfig, worker_plan
proc = psutil.Process()
def once():
    data = open_dataset({root!r})
    cfg = LoaderConfig(root=data, buffer_size={window}, num_workers={workers})
    return data, [worker_plan(cfg, data, 0, {rank}, {ranks}, w, {workers})
                  for w in range({workers})]
base = proc.memory_info().rss
t0 = time.perf_counter(); kept = once(); seconds = time.perf_counter() - t0
rss = proc.memory_info().rss - base
del kept
tracemalloc.start(); kept = once(); peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({{"seconds": seconds, "rss_growth_mib": rss / 2**20,
                   "python_peak_mib": peak / 2**20}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _state_size(root: str, rank: int, ranks: int, workers: int, window: int) -> dict:
    """Bytes of a rank's loader state mid-epoch (every worker half-way through its range)."""
    import torch

    from data_pipelines.loader import LoaderConfig, StreamingLoader, worker_plan

    loader = StreamingLoader(LoaderConfig(root=root, buffer_size=window, num_workers=workers),
                             rank=rank, world_size=ranks)
    for w in range(workers):
        plan = worker_plan(loader.cfg, loader.data, 0, rank, ranks, w, workers)
        loader.state.positions[w] = plan.num_structures // 2
    loader.state.batches = 10**6
    state = loader.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    return {"json_bytes": len(json.dumps(state)), "torch_save_bytes": buf.tell()}


def whole_epoch(counts: np.ndarray, ranks: int, workers: int, window: int,
                batch_structures: int = 16) -> dict:
    """Plans every global worker, checks coverage on pieces, and counts per-rank work."""
    from data_pipelines.plan import check_coverage, epoch_layout, plan_epoch

    t0 = time.perf_counter()
    layout = epoch_layout(counts, seed=0, epoch=0)
    total = ranks * workers
    plans = [plan_epoch(layout, g, total, window) for g in range(total)]
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    cover = check_coverage(counts, plans)
    t_check = time.perf_counter() - t0
    per_worker = np.array([p.num_structures for p in plans]).reshape(ranks, workers)
    per_rank = per_worker.sum(axis=1)
    # each worker packs its own batches; a rank's steps are its workers' batches
    steps = (-(-per_worker // batch_structures)).sum(axis=1)
    window_sizes = np.concatenate([np.diff(p.window_starts) for p in plans])
    return {
        **cover,
        "plan_all_workers_s": t_plan,
        "check_coverage_s": t_check,
        "per_rank_min": int(per_rank.min()),
        "per_rank_max": int(per_rank.max()),
        "batch_structures": batch_structures,
        "steps_per_rank_min": int(steps.min()),
        "steps_per_rank_max": int(steps.max()),
        "window_structures_max": int(window_sizes.max()),
    }


def materialised(counts: np.ndarray, ranks: int, workers: int, window: int) -> dict:
    """Exactly once by counting every structure index of every worker's stream."""
    from data_pipelines.plan import epoch_layout, plan_epoch, stream_indices

    t0 = time.perf_counter()
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    layout = epoch_layout(counts, seed=0, epoch=0)
    total = ranks * workers
    seen = np.zeros(int(counts.sum()), dtype=np.int64)
    for g in range(total):
        seen += np.bincount(stream_indices(plan_epoch(layout, g, total, window), offsets),
                            minlength=len(seen))
    return {
        "num_structures": len(seen),
        "ranks": ranks,
        "workers": workers,
        "exactly_once": bool(np.all(seen == 1)),
        "seconds": time.perf_counter() - t0,
    }


def run(num_structures: int = 100_000_000, num_shards: int = 20_000, ranks: int = 512,
        workers: int = 8, window: int = 1024, small: tuple[int, int, int] = (1_000_000, 64, 4),
        ) -> dict:
    counts = shard_counts(num_structures, num_shards)
    res: dict = {"num_structures": num_structures, "num_shards": num_shards, "ranks": ranks,
                 "workers_per_rank": workers, "window": window}
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big"
        write_manifest(big, counts)
        res["manifest_mib"] = (big / "manifest.json").stat().st_size / 2**20
        res["per_rank"] = _rank_cost(str(big), ranks // 2, ranks, workers, window)
        res["whole_epoch"] = whole_epoch(counts, ranks, workers, window)
        res["state"] = _state_size(str(big), ranks // 2, ranks, workers, window)
        n_small, r_small, k_small = small
        small_counts = shard_counts(n_small, max(n_small * num_shards // num_structures, 1))
        res["small"] = materialised(small_counts, r_small, k_small, window)
        little = Path(tmp) / "small"
        write_manifest(little, small_counts)
        res["small"]["state"] = _state_size(str(little), r_small // 2, r_small, k_small, window)
    per_rank, whole, state = res["per_rank"], res["whole_epoch"], res["state"]
    res["targets"] = {
        "plan per rank < 10 s": per_rank["seconds"] < 10,
        "plan memory per rank < 1 GB": max(per_rank["rss_growth_mib"],
                                           per_rank["python_peak_mib"]) < 1024,
        "loader state < 1 MB": max(state.values()) < 2**20,
        "exactly once (pieces tile every shard)": whole["num_structures"] == num_structures,
        "ranks' structures differ by <= 1": whole["per_rank_max"] - whole["per_rank_min"] <= 1,
        "exactly once (materialised, small scale)": res["small"]["exactly_once"],
    }
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/plan.json")
    p.add_argument("--structures", type=int, default=100_000_000)
    p.add_argument("--shards", type=int, default=20_000)
    p.add_argument("--ranks", type=int, default=512)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--window", type=int, default=1024)
    args = p.parse_args(argv)
    res = run(args.structures, args.shards, args.ranks, args.workers, args.window)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    for section in ("per_rank", "whole_epoch", "state", "small"):
        for k, v in res[section].items():
            shown = f"{v:.4g}" if isinstance(v, float) else v
            print(f"{section}.{k:30s} {shown}")
    for k, v in res["targets"].items():
        print(f"{'PASS' if v else 'MISS'}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
