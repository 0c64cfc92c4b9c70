"""Learning-rate transfer across width: standard parametrisation against muP.

    python -m analysis.bench.mup --out runs/bench/mup.json [--width 16] [--steps 100]

Trains the pet width ladder (presets.pet_width_shape: same depth and cutoff)
at edge width w and 4w, under both parametrisations, for a fixed number of
AdamW steps (warm-up + cosine, gradient clipping 1.0, the training defaults)
on generated EMT data, over a grid of learning rates a factor 2 apart, and
reports the validation loss of every run and the best learning rate per
width and parametrisation. muP's base width is w, so at w both
parametrisations are the same model (trained once). Target: under muP the
optimum moves by at most one grid step from w to 4w; under the standard
parametrisation it is expected to move to smaller rates.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR

from data_pipelines.batching import AtomBudgetBatcher, collate, make_graph
from data_pipelines.generate import generate_structures
from data_pipelines.stats import StatsAccumulator
from train.config import LossConfig, OptimConfig, ScheduleConfig
from train.losses import compute_loss
from train.models import build_model
from train.models.presets import pet_width_shape
from train.optim import build_optimizer, lr_factor

CUTOFF = 5.0  # Angstrom, the width ladder's cutoff


def make_batches(num_train: int, num_val: int, max_atoms: int, seed: int
                 ) -> tuple[list[dict], list[dict], dict]:
    """Training and validation batches (float32, neighbour lists built) and the
    training split's statistics (composition baseline, force RMS)."""
    structures = list(generate_structures(num_train + num_val, seed=seed))
    train, val = structures[:num_train], structures[num_train:]
    stats = StatsAccumulator(cutoff=None)
    for s in train:
        stats.add(s)
    packer = AtomBudgetBatcher(max_atoms)

    def pack(items):
        return [collate(group, dtype=torch.float32)
                for group in packer(make_graph(s, CUTOFF) for s in items)]

    return pack(train), pack(val), stats.result()


def train_once(width: int, parametrization: str, base_width: int, lr: float, steps: int,
               data: tuple[list[dict], list[dict], dict], seed: int) -> dict:
    """Trains one model `steps` steps; returns its final train and validation loss."""
    train, val, stats = data
    torch.manual_seed(seed)
    model = build_model(
        "pet", "w16", forces="direct",
        composition_baseline=stats["element_reference_energies_by_z"],
        energy_scale=stats["force_rms"], parametrization=parametrization,
        mup_base_width=base_width, **pet_width_shape(width),
    )
    optimizer = build_optimizer(model, OptimConfig(lr=lr))
    schedule = LambdaLR(optimizer, lr_factor(ScheduleConfig(kind="cosine"), steps))
    loss_cfg = LossConfig()
    recent: list[float] = []
    for step in range(steps):
        batch = train[step % len(train)]
        loss, _ = compute_loss(batch, model(batch), loss_cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        recent = [*recent[-9:], loss.item()]
    with torch.no_grad():
        val_losses = [float(compute_loss(b, model(b), loss_cfg)[0]) for b in val]
    val_loss = sum(val_losses) / len(val_losses)
    return {
        "val_loss": val_loss if math.isfinite(val_loss) else float("inf"),
        "train_loss_last10": sum(recent) / len(recent),
        "num_params": model.num_parameters(),
    }


_WORKER_DATA: tuple | None = None  # the batches, built once per worker process


def _init_worker(num_train: int, max_atoms: int) -> None:
    global _WORKER_DATA
    # One thread per process: at these sizes a second thread gains little, and
    # on a shared machine an oversubscribed core made steps 8x slower.
    torch.set_num_threads(1)
    _WORKER_DATA = make_batches(num_train, 60, max_atoms, seed=1)


def _train_case(case: tuple) -> dict:
    assert _WORKER_DATA is not None
    width, param, base, lr, steps, seed = case
    return train_once(width, param, base, lr, steps, _WORKER_DATA, seed)


def best(table: dict[str, dict]) -> tuple[float, int]:
    """(best learning rate, its grid index) of {lr: result}."""
    lrs = sorted(table, key=float)
    index = min(range(len(lrs)), key=lambda i: table[lrs[i]]["val_loss"])
    return float(lrs[index]), index


def run(width: int = 16, factor: int = 4, steps: int = 100, lr_min: float = 5e-4,
        num_lrs: int = 8, seeds: int = 1, num_train: int = 240, max_atoms: int = 64,
        workers: int = 2) -> dict:
    """The benchmark; see the module docstring. Losses are means over `seeds`;
    runs are spread over `workers` single-threaded processes."""
    grid = [lr_min * 2**k for k in range(num_lrs)]
    wide = factor * width
    t0 = time.time()
    # at the base width muP is the standard model (tested bit for bit): trained once
    keys = [("standard", width), ("standard", wide), ("mup", wide)]
    cases = [(w, p, width, lr, steps, s) for p, w in keys for lr in grid for s in range(seeds)]
    with ProcessPoolExecutor(workers, mp.get_context("spawn"), _init_worker,
                             (num_train, max_atoms)) as pool:
        results = []
        for case, result in zip(cases, pool.map(_train_case, cases)):
            results.append(result)
            w, p, _, lr, _, s = case
            print(f"{p:8s} w{w:<4d} lr {lr:<8.3g} seed {s}  val loss {result['val_loss']:.5f}"
                  f"  ({time.time() - t0:.0f} s)", flush=True)
    res: dict = {"widths": [width, wide], "mup_base_width": width, "steps": steps,
                 "lr_grid": grid, "seeds": seeds, "workers": workers,
                 "threads_per_worker": 1, "num_train_structures": num_train,
                 "max_atoms_per_batch": max_atoms, "losses": {}}
    by_case = dict(zip(cases, results))
    for p, w in keys:
        rows = {}
        for lr in grid:
            runs = [by_case[(w, p, width, lr, steps, s)] for s in range(seeds)]
            rows[f"{lr:g}"] = {
                "val_loss": sum(r["val_loss"] for r in runs) / seeds,
                "train_loss_last10": sum(r["train_loss_last10"] for r in runs) / seeds,
                "num_params": runs[0]["num_params"],
            }
        res["losses"][f"{p}/{w}"] = rows
    res["losses"][f"mup/{width}"] = res["losses"][f"standard/{width}"]
    optimum = {key: best(rows) for key, rows in res["losses"].items()}
    res["best_lr"] = {key: lr for key, (lr, _) in optimum.items()}
    shift = {p: optimum[f"{p}/{wide}"][1] - optimum[f"{p}/{width}"][1] for p in ("standard", "mup")}
    res["optimum_shift_grid_steps"] = shift
    res["targets"] = {"muP optimum moves by at most one grid step from w to 4w":
                      abs(shift["mup"]) <= 1}
    res["bench_train_seconds"] = time.time() - t0
    return res


def table(res: dict) -> str:
    """The validation-loss table as text (rows: learning rates; * marks optima)."""
    keys = [f"{p}/{w}" for p in ("standard", "mup") for w in res["widths"]]
    lines = ["lr        " + "".join(f"{k:>14s}" for k in keys)]
    for lr in res["lr_grid"]:
        cells = []
        for k in keys:
            value = res["losses"][k][f"{lr:g}"]["val_loss"]
            mark = "*" if math.isclose(res["best_lr"][k], lr) else " "
            cells.append(f"{value:13.5f}{mark}")
        lines.append(f"{lr:<10.3g}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.mup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/mup.json")
    p.add_argument("--width", type=int, default=16, help="narrow width w (muP base width)")
    p.add_argument("--factor", type=int, default=4, help="the wide model is factor * w")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr-min", type=float, default=5e-4, help="smallest rate of the grid")
    p.add_argument("--num-lrs", type=int, default=8, help="grid points, a factor 2 apart")
    p.add_argument("--seeds", type=int, default=1, help="weight seeds averaged per point")
    p.add_argument("--workers", type=int, default=2, help="single-threaded processes")
    args = p.parse_args(argv)
    res = run(args.width, args.factor, args.steps, args.lr_min, args.num_lrs, args.seeds,
              workers=args.workers)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(table(res))
    print("best lr:", ", ".join(f"{k} {v:g}" for k, v in res["best_lr"].items()))
    print("optimum shift w -> 4w (grid steps):", res["optimum_shift_grid_steps"])
    for k, v in res["targets"].items():
        print(f"{'PASS' if v else 'MISS'}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
