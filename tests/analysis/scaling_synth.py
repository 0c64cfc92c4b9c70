"""Synthetic run directories and tables generated from known scaling laws."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ATOMS_PER_STRUCTURE = 20.0


def law(n, d, E=0.0, A=0.0, alpha=0.0, B=0.0, beta=0.0):  # noqa: N803 - the law's own names
    """E + A N^-alpha + B D^-beta."""
    return E + A * np.asarray(n, float) ** -alpha + B * np.asarray(d, float) ** -beta


def flops_per_atom(n: float) -> float:
    """A made-up cost: about 6 FLOPs per parameter per atom, slightly sublinear."""
    return 8.0 * n**0.95


def write_run(
    root: Path,
    name: str,
    *,
    family: str,
    n: float,
    d: float,
    metrics: dict[str, float],
    size: str = "s",
    data_fraction: float = 1.0,
    seed: int = 0,
    finished: bool = True,
    error: str | None = None,
    eval_metrics: dict[str, dict] | None = None,
    steps: int = 100,
) -> Path:
    """One run directory following the training loop's contract."""
    run = Path(root) / name
    run.mkdir(parents=True, exist_ok=True)
    model, _, forces = family.partition("-")
    axes = {"size": size, "data_fraction": data_fraction, "model": family, "seed": seed}
    (run / "config.yaml").write_text(
        f"run_dir: {run}\nseed: {seed}\nstudy: synth\n"
        f"model:\n  family: {model}\n  size: {size}\n  forces: {forces or 'conservative'}\n"
        f"axes:\n" + "".join(f"  {k}: {v}\n" for k, v in axes.items()) + "logger:\n  kind: none\n"
    )
    with open(run / "metrics.jsonl", "w") as fh:
        for step in range(0, steps + 1, steps // 4):
            row = {"step": step, "train/loss": 1.0 / (1 + step), "lr": 1e-3, "atoms_per_s": 1e3}
            if step and step % (steps // 2) == 0:
                decay = 1 + 3.0 * (1 - step / steps)
                row.update({k: v * decay for k, v in metrics.items()})
            fh.write(json.dumps(row) + "\n")
    if error:
        (run / "error.txt").write_text(f"Traceback (most recent call last):\n{error}\n")
    if not finished:
        return run
    fpa = flops_per_atom(n)
    summary = {
        "run_name": name,
        "status": "finished",
        "family": family,
        "model": model,
        "forces": forces,
        "size": size,
        "num_params": int(n),
        "flops_per_atom": fpa,
        "flops_per_atom_forward": fpa / 3,
        "total_flops": fpa * d,
        "structures_seen": d / ATOMS_PER_STRUCTURE,
        "atoms_seen": d,
        "wall_time_s": 1e-6 * n,
        "steps": steps,
        "axes": axes,
        "data": {
            "num_train_structures": int(d / ATOMS_PER_STRUCTURE / 4),
            "num_train_atoms": int(d / 4),
            "data_fraction": data_fraction,
        },
        **metrics,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    for stem, values in (eval_metrics or {}).items():
        (run / "eval").mkdir(exist_ok=True)
        (run / "eval" / f"{stem}.json").write_text(json.dumps(values))
    return run


def make_study(
    root: Path,
    laws: dict[str, dict],
    sizes,
    data,
    *,
    seeds=(0,),
    noise=0.02,
    rng_seed=0,
    metric="val/forces_mae",
    nested=True,
) -> Path:
    """A grid of runs per family with metric = law * lognormal noise."""
    rng = np.random.default_rng(rng_seed)
    base = Path(root) / "runs" if nested else Path(root)
    for family, params in laws.items():
        for i, n in enumerate(sizes):
            for j, d in enumerate(data):
                for seed in seeds:
                    value = float(law(n, d, **params) * np.exp(rng.normal(0, noise)))
                    write_run(
                        base,
                        f"{family}_n{i}_d{j}_s{seed}",
                        family=family,
                        n=n,
                        d=d,
                        metrics={metric: value, "val/energy_per_atom_mae": value / 30},
                        size=f"n{i}",
                        data_fraction=round(d / max(data), 4),
                        seed=seed,
                    )
    return Path(root)
