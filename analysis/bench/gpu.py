"""The GPU check: training and inference on one accelerator, measured.

    python -m analysis.bench.gpu --out DIR [--device cuda] [--steps 300] [--quick]

Run by ``bench/gpu_check.sh`` on a lent GPU machine (see that script for the
wheels it installs first). It

1. generates EMT training data (``data_pipelines.generate``),
2. trains pet ``xs`` (the published 4.5M ladder point) with direct forces, the
   same with conservative forces, and mace at matched size, each through
   ``python -m train`` with world size 1 on the device's backend (NCCL on a
   GPU, so the trainer's collectives run on CUDA tensors), bf16 autocast and
   TF32, then pet direct once more under ``torch.compile``;
3. times inference (energy + forces) of pet direct and conservative on Cu/Au
   cells from 1k to 100k atoms;

and writes DIR/gpu.json: atoms/s, achieved FLOP/s against the card's bf16 and
fp32 peaks, peak GPU memory, compile counters and the compiled/eager speed
ratio, and us/atom per cell size. ``--device cpu --quick`` runs the same path
on tiny models and cells, which is what the tests check on a machine without
a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# Dense peak throughput per card in TFLOP/s (vendor data sheets: H100/H200 SXM
# bf16 989, TF32 494, fp32 67; A100 SXM bf16 312, TF32 156, fp32 19.5).
PEAKS_TFLOPS = {
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def card_peaks(name: str) -> dict | None:
    """The peak table of a card by its CUDA device name, None when unknown."""
    for key, peaks in PEAKS_TFLOPS.items():
        if key in name:
            return peaks
    return None


def runs_for(quick: bool) -> list[tuple[str, list[str]]]:
    """(label, train overrides) of every training run of the check."""
    pet, mace = ("tiny", "tiny") if quick else ("xs", "xs")
    common = ["engine.precision=bf16", "engine.tf32=true"]
    return [
        ("pet-direct", ["model=pet", f"size={pet}", "forces=direct", *common]),
        ("pet-conservative", ["model=pet", f"size={pet}", "forces=conservative", *common]),
        ("mace", ["model=mace", f"size={mace}", *common]),
        (
            "pet-direct-compiled",
            ["model=pet", f"size={pet}", "forces=direct", *common,
             "engine.compile=eager" if quick else "engine.compile=inductor"],
        ),
    ]


def train_run(data: Path, run_dir: Path, overrides: list[str], device: str, steps: int,
              max_atoms: int) -> dict:
    """One training run through the command line; throughput from metrics.jsonl."""
    cmd = [
        sys.executable, "-m", "train", f"data.root={data}", f"run_dir={run_dir}",
        "logger=none", "engine=zero0", f"trainer.device={device}",
        f"trainer.max_steps={steps}", "trainer.val_every=0", "trainer.checkpoint_every=0",
        "trainer.progress=none", f"data.max_atoms={max_atoms}", *overrides,
    ]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stdout[-1500:] + proc.stderr[-1500:]).strip(), "wall_s": wall}
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"atoms_per_s"' in x]
    warm = rows[max(1, len(rows) // 5):] or rows  # first fifth: allocator and compile warm-up
    seconds = sum(r["step_time_s"] for r in warm)
    rate = sum(r["atoms_per_s"] * r["step_time_s"] for r in warm) / seconds
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "atoms_per_s": rate,
        "median_step_s": statistics.median(r["step_time_s"] for r in warm),
        "data_wait_fraction": sum(r["data_wait_fraction"] * r["step_time_s"] for r in warm)
        / seconds,
        "peak_memory_mb": max(r["peak_memory_mb"] for r in rows),
        "num_params": summary["num_params"],
        "flops_per_atom": summary["flops_per_atom"],
        "achieved_tflop_per_s": rate * summary["flops_per_atom"] / 1e12,
        "final_train_loss": rows[-1]["train/loss"],
        "startup_s": summary.get("startup_s"),
        "compile": summary.get("compile"),
        "wall_s": wall,
    }


def inference(device: torch.device, sizes: list[int], size: str, repeats: int = 3) -> list[dict]:
    """us/atom of energy + forces for pet direct and conservative (same weights)."""
    from analysis.bench.models import cu_au_cell, time_call
    from data_pipelines.batching import batch_structures
    from train.models import build_model

    rows = []
    direct = build_model("pet", size, forces="direct").to(device).eval()
    conservative = build_model("pet", size, forces="conservative").to(device).eval()
    conservative.load_state_dict(direct.state_dict(), strict=False)
    for target in sizes:
        k = max(1, round((target / 4) ** (1 / 3)))  # fcc cubic cell: 4 atoms
        cell = cu_au_cell((k, k, k))
        batch = batch_structures([cell], cutoff=direct.cutoff, dtype=torch.float32)
        batch = {key: v.to(device) if isinstance(v, torch.Tensor) else v
                 for key, v in batch.items()}
        n = len(cell.numbers)
        for label, model in (("direct", direct), ("conservative", conservative)):
            row = {"model": f"pet-{size}-{label}", "num_atoms": n}
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)

                def call(model=model, label=label, batch=batch):
                    if label == "direct":
                        with torch.no_grad():
                            return model(batch)
                    return model(batch)

                call()  # warm-up
                best = min(time_call(call, device)[0] for _ in range(repeats))
                row["us_per_atom"] = best / n * 1e6
                if device.type == "cuda":
                    row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                torch.cuda.empty_cache()
            rows.append(row)
    return rows


def run(out: Path, device: str, steps: int, quick: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "manifest.json").exists():
        subprocess.run(
            [sys.executable, "-m", "data_pipelines.generate", "--calculator", "emt",
             "--num-structures", "200" if quick else "4000", "--seed", "0",
             "--out", str(data), "--no-progress"],
            cwd=REPO, check=True, capture_output=True,
        )
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peaks = card_peaks(name)
    result: dict = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peaks_tflops": peaks,
        "training": {},
    }
    max_atoms = 256 if quick else 4096
    for label, overrides in runs_for(quick):
        row = train_run(data, out / "runs" / label, overrides, device, steps, max_atoms)
        if peaks and "achieved_tflop_per_s" in row:
            row["fraction_of_bf16_peak"] = row["achieved_tflop_per_s"] / peaks["bf16"]
            row["fraction_of_fp32_peak"] = row["achieved_tflop_per_s"] / peaks["fp32"]
        result["training"][label] = row
        print(f"[gpu] {label}: {json.dumps(row)[:400]}", flush=True)
    eager = result["training"]["pet-direct"].get("atoms_per_s")
    compiled = result["training"]["pet-direct-compiled"].get("atoms_per_s")
    if eager and compiled:
        result["compiled_over_eager"] = compiled / eager
    sizes = [64, 128] if quick else [1000, 4000, 16000, 64000, 100000]
    result["inference"] = inference(dev, sizes, "tiny" if quick else "xs")
    (out / "gpu.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gpu"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, data and cells (the CPU test of this path)")
    args = parser.parse_args(argv)
    return run(args.out, args.device, args.steps, args.quick)


if __name__ == "__main__":
    main()
