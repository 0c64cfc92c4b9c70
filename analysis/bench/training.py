"""Training-loop benchmark, every number against a baseline measured in this run.

    python -m analysis.bench.training --out runs/bench/train.json

On the same generated shards and 2 threads: training throughput (atoms/s) of
pet direct, pet conservative and mace at matched size; the DeepSpeed engine
against a plain torch loop doing the same steps; the fraction of step time
spent waiting for data with 2 loader workers; achieved FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_throughput(data: str, run_dir: Path, *overrides: str, steps: int = 30) -> dict:
    cmd = [sys.executable, "-m", "train", f"data.root={data}", f"run_dir={run_dir}",
           "logger=none", "trainer.val_every=0", "trainer.checkpoint_every=0",
           f"trainer.max_steps={steps}", "trainer.threads=2", *overrides]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "2"})
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "atoms_per_s" in x]
    rows = rows[3:]  # first steps warm up allocators and caches
    summary = json.loads((run_dir / "summary.json").read_text())
    atoms = sum(r["atoms_per_s"] * r["step_time_s"] for r in rows)
    seconds = sum(r["step_time_s"] for r in rows)
    rate = atoms / seconds
    return {
        "atoms_per_s": rate,
        "median_step_s": statistics.median(r["step_time_s"] for r in rows),
        "data_wait_fraction": sum(r["data_wait_fraction"] * r["step_time_s"] for r in rows)
        / seconds,
        "num_params": summary["num_params"],
        "flops_per_atom": summary["flops_per_atom"],
        "achieved_gflop_per_s": rate * summary["flops_per_atom"] / 1e9,
    }


def _stamp(line: str) -> float:
    from datetime import datetime

    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def mace_peer(data: str, workdir: Path, cutoff: float, batch_size: int = 8) -> dict:
    """mace-torch's own trainer (mace_run_train) on the same training structures,
    with the hyper-parameters of our mace `xxs` preset; one epoch, timed from its
    log (start of training to the end of epoch 0)."""
    import torch

    from data_pipelines.dataset import iter_split
    from data_pipelines.inspect import export_extxyz

    workdir.mkdir(parents=True, exist_ok=True)
    xyz = workdir / "train.xyz"
    export_extxyz(data, str(xyz), "train")
    atoms = sum(s.num_atoms for s in iter_split(data, "train"))
    cmd = [str(Path(sys.executable).with_name("mace_run_train")), "--name", "peer",
           "--train_file", str(xyz), "--valid_fraction", "0.05", "--model", "MACE",
           "--num_channels", "14", "--max_L", "1", "--correlation", "3", "--max_ell", "2",
           "--num_interactions", "2", "--radial_MLP", "[32]", "--r_max", str(cutoff),
           "--batch_size", str(batch_size), "--max_num_epochs", "1", "--device", "cpu",
           "--E0s", "average", "--energy_key", "energy", "--forces_key", "forces",
           "--stress_key", "stress", "--default_dtype", "float32", "--seed", "0"]
    subprocess.run(cmd, cwd=workdir, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "2"})
    log = (workdir / "logs" / "peer_run-0.log").read_text().splitlines()
    start = next(_stamp(x) for x in log if "Started training" in x)
    end = next(_stamp(x) for x in log if "Epoch 0:" in x)
    # mace_run_train pickles the whole module; this file was written by the
    # peer run just above, in a folder of this benchmark, so it is trusted.
    model = torch.load(workdir / "peer.model", weights_only=False, map_location="cpu")
    params = sum(p.numel() for p in model.parameters())
    return {"atoms_per_s": 0.95 * atoms / (end - start), "num_params": params,
            "epoch_seconds": end - start, "batch_size": batch_size}


def run(num_structures: int = 600, steps: int = 30, size: str = "xxs",
        only: tuple[str, ...] = ()) -> dict:
    from data_pipelines.convert import write_dataset
    from data_pipelines.generate import generate_structures

    res: dict = {"size": size, "steps": steps, "threads": 2}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = str(tmp / "data")
        write_dataset(generate_structures(num_structures, seed=1), data, shard_size=200)
        stored = str(tmp / "stored")  # the same data with neighbour lists in the shards
        write_dataset(generate_structures(num_structures, seed=1), stored, shard_size=200,
                      store_edges_cutoff=5.0)
        common = [f"size={size}", "data.max_atoms=128", "model.knobs.cutoff=5.0"]
        cases = {
            "pet-direct": ["model=pet", "forces=direct"],
            "pet-conservative": ["model=pet", "forces=conservative"],
            "mace": ["model=mace"],
            "pet-direct-torch-engine": ["model=pet", "forces=direct", "engine=torch"],
            "pet-direct-2-workers": ["model=pet", "forces=direct", "data.num_workers=2"],
            "pet-direct-2-workers-stored-edges": ["model=pet", "forces=direct",
                                                  "data.num_workers=2"],
        }
        if only:
            unknown = set(only) - set(cases)
            if unknown:
                raise SystemExit(f"--cases {','.join(sorted(unknown))}: choose from "
                                 f"{','.join(cases)}")
            cases = {k: v for k, v in cases.items() if k in only}
        for name, over in cases.items():
            root = stored if name.endswith("stored-edges") else data
            res[name] = train_throughput(root, tmp / name, *common, *over, steps=steps)
            print(f"{name:28s} {res[name]['atoms_per_s']:8.1f} atoms/s  "
                  f"wait {100 * res[name]['data_wait_fraction']:.1f}%  "
                  f"{res[name]['achieved_gflop_per_s']:.2f} GFLOP/s", flush=True)
        if only:  # a subset of the cases: the figures below need all of them
            return res
        try:
            res["peer-mace_run_train"] = mace_peer(data, tmp / "peer", cutoff=5.0)
            print(f"{'peer mace_run_train':28s} "
                  f"{res['peer-mace_run_train']['atoms_per_s']:8.1f} atoms/s", flush=True)
        except (subprocess.CalledProcessError, StopIteration, OSError) as err:
            res["peer-mace_run_train"] = {"error": str(err)}
    d, c = res["pet-direct"]["atoms_per_s"], res["pet-conservative"]["atoms_per_s"]
    res["ratio_direct_vs_conservative"] = d / c
    res["ratio_pet_direct_vs_mace"] = d / res["mace"]["atoms_per_s"]
    res["deepspeed_overhead"] = res["pet-direct-torch-engine"]["atoms_per_s"] / d - 1
    peer = res["peer-mace_run_train"].get("atoms_per_s")
    if peer:
        res["ratio_mace_vs_mace_run_train"] = res["mace"]["atoms_per_s"] / peer
    res["targets"] = {
        "DeepSpeed overhead vs plain torch <= 10%": res["deepspeed_overhead"] <= 0.10,
        "data wait < 5% of step time with 2 workers":
            res["pet-direct-2-workers"]["data_wait_fraction"] < 0.05,
        "data wait < 5% of step time with 2 workers, stored neighbour lists":
            res["pet-direct-2-workers-stored-edges"]["data_wait_fraction"] < 0.05,
        "pet direct faster than conservative in training": d > c,
    }
    if peer:
        res["targets"]["our mace loop at least as fast as mace_run_train"] = (
            res["ratio_mace_vs_mace_run_train"] >= 1.0)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.training", description=__doc__)
    p.add_argument("--out", default="runs/bench/train.json")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--size", default="xxs")
    p.add_argument("--cases", default="", help="comma-separated subset of the cases (default: all)")
    args = p.parse_args(argv)
    res = run(steps=args.steps, size=args.size,
              only=tuple(c for c in args.cases.split(",") if c))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    for k, v in res.get("targets", {}).items():
        print(f"{'PASS' if v else 'MISS'}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
