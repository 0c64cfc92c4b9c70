"""Synthetic run directories and tables generated from known scaling laws.

By default runs look like those written before summary.json gained
`num_params_non_embedding`, `train_flops`, `convergence`, `tune`, `ladder` and
`baseline`; `extra` (and make_study's `embedding` and `extra_for`) add them.
"""

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
    embedding: float | None = None,
    extra: dict | None = None,
) -> Path:
    """One run directory following the training loop's contract.

    Args:
        embedding: Embedding parameters on top of n: the run then records
            num_params = n + embedding, num_params_non_embedding = n and
            train_flops (the newer summary fields).
        extra: Further summary.json keys (convergence, tune, ladder, baseline, ...).
    """
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
        "num_params": int(n + (embedding or 0)),
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
    if embedding is not None:
        summary.update(num_params_non_embedding=int(n), train_flops=fpa * d)
    summary.update(extra or {})
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
    embedding: float | None = None,
    extra_for=None,
) -> Path:
    """A grid of runs per family with metric = law * lognormal noise.

    Args:
        embedding: Passed to every run (see `write_run`).
        extra_for: `(family, i, j, value) -> dict` of extra summary keys per run
            (size index i, data index j, the metric's value).
    """
    rng = np.random.default_rng(rng_seed)
    base = Path(root) / "runs" if nested else Path(root)
    for family, params in laws.items():
        for i, n in enumerate(sizes):
            for j, d in enumerate(data):
                for seed in seeds:
                    value = float(law(n, d, **params) * np.exp(rng.normal(0, noise)))
                    extra = extra_for(family, i, j, value) if extra_for else None
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
                        embedding=embedding,
                        extra=extra,
                    )
    return Path(root)


def make_tuned_study(
    root: Path,
    params: dict,
    sizes,
    data,
    values,
    best,
    *,
    family: str = "pet-direct",
    key: str = "optim.lr",
    width: float = 0.3,
    noise: float = 0.003,
    diverged=(),
    rng_seed: int = 0,
) -> Path:
    """A tuned study: every value of `key` at each grid point, as `study.tune` runs it.

    The metric is law(n, d) * (1 + width * ln(value / best(i, j))^2) * noise, so
    the best value at size i and data j is `best(i, j)` (or the nearest one
    tried). Runs named in `diverged` as (i, j, value) end with a NaN metric.
    """
    rng = np.random.default_rng(rng_seed)
    for i, n in enumerate(sizes):
        for j, d in enumerate(data):
            for v in values:
                penalty = 1 + width * np.log(v / best(i, j)) ** 2
                value = float(law(n, d, **params) * penalty * np.exp(rng.normal(0, noise)))
                if (i, j, v) in diverged:
                    value = float("nan")
                write_run(
                    Path(root) / "runs",
                    f"{family}_n{i}_d{j}_lr{v:g}",
                    family=family,
                    n=n,
                    d=d,
                    metrics={"val/forces_mae": value},
                    size=f"n{i}",
                    data_fraction=round(d / max(data), 4),
                    embedding=1e3,
                    extra={"tune": {key: v}},
                )
    return Path(root)
