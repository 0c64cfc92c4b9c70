"""The run directory: where a run lives, what it records at start and at the end.

RUN/config.yaml    resolved config, written before anything else
RUN/git.json       commit and dirty flag of the checkout
RUN/metrics.jsonl  one row per logged step (train.metrics)
RUN/checkpoints/   train.checkpoint
RUN/summary.json   written last, by a finished run only
RUN/model.pt       exported EMA weights (train.export)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from data_pipelines.atomic import write_text
from train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def family_label(cfg: TrainConfig) -> str:
    """'pet-direct', 'pet-conservative', 'pet-both' or 'mace' (conservative by design)."""
    if cfg.model.family == "mace":
        return "mace"
    return f"{cfg.model.family}-{cfg.model.forces}"


def default_run_dir(cfg: TrainConfig) -> str:
    return str(REPO / "runs" / f"{family_label(cfg)}-{cfg.model.size}-s{cfg.seed}")


def git_state() -> dict:
    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "HEAD")
    return {
        "commit": commit or None,
        "dirty": bool(git("status", "--porcelain")) if commit else None,
    }


def prepare(run_dir: Path, cfg: TrainConfig) -> None:
    """Creates the run directory and records the config and the checkout.

    A summary left by an earlier finish is removed first: it must only ever
    describe the weights that the last finished run left behind.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").unlink(missing_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    write_text(run_dir / "git.json", json.dumps(git_state(), indent=1))


def summary(
    cfg: TrainConfig,
    name: str,
    model,
    progress,
    flops: dict[str, float],
    data: dict[str, Any],
    world_size: int,
    epochs: int,
    final_val: dict[str, float],
) -> dict[str, Any]:
    """summary.json of a finished run: what was trained, on what, at what cost.

    Args:
        model: the trained model (parameter count and description).
        progress: the loop's counters (``train.trainer.Progress``).
        flops: ``{"forward", "forward_backward"}`` FLOPs per atom.
        data: the ``data`` block (root, name, training structures and atoms).
        final_val: validation metrics with the EMA weights.
    """
    return {
        "run_name": name,
        "status": "finished",
        "family": family_label(cfg),
        "model": cfg.model.family,
        "forces": cfg.model.forces,
        "size": cfg.model.size,
        "knobs": dict(cfg.model.knobs),
        "num_params": model.num_parameters(),
        "num_params_non_embedding": model.num_parameters_non_embedding(),
        "flops_per_atom": flops["forward_backward"],
        "flops_per_atom_forward": flops["forward"],
        "total_flops": flops["forward_backward"] * progress.atoms_seen,
        # training compute: forward+backward FLOPs per atom, measured on a
        # reference batch (matrix products and attention), times atoms seen
        "train_flops": flops["forward_backward"] * progress.atoms_seen,
        "structures_seen": progress.structures_seen,
        "atoms_seen": progress.atoms_seen,
        "wall_time_s": progress.wall_time_s,
        "steps": progress.step,
        "epochs": epochs,
        "bad_steps": progress.bad_steps,
        "padded_steps": progress.padded_steps,
        "world_size": world_size,
        "axes": dict(cfg.axes),
        "budget": dict(cfg.budget),
        "tune": _flat(cfg.tune),
        **(
            {"ladder": {k: v for k, v in cfg.budget.items() if k != "rule"}}
            if cfg.budget.get("rule") == "wsd-ladder"
            else {}
        ),
        "study": cfg.study_name,
        "seed": cfg.seed,
        "data": data,
        "model_config": model.describe(),
        **final_val,
    }


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.003}} -> {"optim.lr": 0.003}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# A run whose metric improved by less than this over its last fifth is converged.
CONVERGED_REL_CHANGE = 0.02
# A metric within this fraction of the trivial predictor's was not learned.
NOT_LEARNED_FRACTION = 0.95


def convergence(
    rows: list[dict],
    metric: str,
    final: float | None,
    steps: int,
    budget: dict | None = None,
) -> dict:
    """Whether the validation ``metric`` still improved over the last fifth of the run.

    A WSD-ladder cooldown branch (``budget`` role ``cooldown``) falls by design
    while its rate decays; its point is the annealed error at its data budget.
    So its window is the second half of its cooldown instead (rate at or under
    half its peak): a branch still falling there had too short a cooldown.

    ``rel_slope`` is the least-squares slope of the metric against the step over
    that window, times the window's length, over the metric's mean there: the
    relative change across the window (negative: still falling).

    Args:
        rows: metrics.jsonl rows (validation rows carry ``metric``).
        final: the final validation value (EMA weights), at ``steps``.
        steps: the run's last step.
        budget: the run's budget record (summary.json ``budget``), if any.
    """
    start, window = 0.8 * steps, "last fifth"
    if budget and budget.get("role") == "cooldown" and budget.get("cooldown_steps"):
        cooldown = float(budget["cooldown_steps"])
        start, window = steps - 0.5 * cooldown, "second half of the cooldown"
    points = [(r["step"], r[metric]) for r in rows if metric in r and r["step"] >= start]
    if final is not None:
        points = [p for p in points if p[0] != steps] + [(steps, final)]
    out: dict[str, Any] = {"metric": metric, "window": window, "num_points": len(points)}
    if len(points) < 3:
        return {**out, "rel_slope": None, "verdict": "unknown (under 3 validation points)"}
    x = [float(p[0]) for p in points]
    y = [float(p[1]) for p in points]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx if sxx > 0 else 0.0
    rel = slope * (max(x) - min(x)) / my if my > 0 else 0.0
    verdict = "converged" if rel > -CONVERGED_REL_CHANGE else "still-improving"
    return {**out, "rel_slope": rel, "verdict": verdict}


def read_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl as rows (a torn last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def not_learned(final_val: dict[str, float], trivial: dict[str, float]) -> list[str]:
    """Validation metrics at (or above) the trivial predictor's level."""
    out = []
    for key in ("energy_per_atom_mae", "forces_mae", "stress_mae"):
        value, floor = final_val.get(f"val/{key}"), trivial.get(key)
        if value is not None and floor and value >= NOT_LEARNED_FRACTION * floor:
            out.append(f"val/{key}")
    return out


def write_summary(run_dir: Path, values: dict[str, Any]) -> None:
    """RUN/summary.json, the marker that the run finished: written whole, last."""
    write_text(run_dir / "summary.json", json.dumps(values, indent=1, default=str))
