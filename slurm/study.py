"""A study: axes expanded into named runs, a data source and a budget rule.

Studies live in configs/study/<name>.yaml under a top-level `study:` key, chosen
with `study=<name>`; configs/experiment/ holds training recipes.
Each run becomes a list of `python -m train` overrides, so a run launched by a
sweep is exactly a run a user could type.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# model axis values -> (model group, forces group)
MODEL_CHOICES = {
    "pet-direct": ("pet", "direct"),
    "pet-conservative": ("pet", "conservative"),
    "pet-both": ("pet", "both"),
    "mace": ("mace", "conservative"),
}


@dataclass
class BudgetConfig:
    """rule: steps (fixed optimiser steps) | epochs | atoms_per_param (atoms seen =
    ratio x parameters, tokens-per-parameter style)."""

    rule: str = "steps"
    steps: int = 100
    epochs: int | None = None
    atoms_per_param: float | None = None
    min_steps: int = 10
    max_steps: int = 100_000


@dataclass
class StudyDataConfig:
    """root: an existing shard directory; or generate: {calculator, num_structures,
    seed} to build one under STUDY_DIR/data with the built-in generator."""

    root: str | None = None
    generate: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyConfig:
    name: str = "study"
    axes: dict[str, Any] = field(default_factory=dict)
    data: StudyDataConfig = field(default_factory=StudyDataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: list[str] = field(default_factory=list)  # fixed overrides for every run
    # evaluation stages on each trained model (slurm/stages.py): {name, workflow, args}
    evaluate: list[Any] = field(default_factory=list)


@dataclass
class RunSpec:
    name: str
    axes: dict[str, Any]
    overrides: list[str]
    run_dir: Path
    stages: list = field(default_factory=list)  # slurm.stages.Stage, run after training


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _slug(value: Any) -> str:
    """A value as a safe part of a file name: no separators, no leading dots."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).lstrip(".") or "_"


def check_study_name(name: str) -> str:
    """The study name, which becomes a folder (runs/<name>) and a W&B group.

    Raises:
        ValueError: a name that is not one plain path component.
    """
    if not _PLAIN_NAME.match(name) or len(name) > 100:
        raise ValueError(
            f"study.name={name!r} must be a plain folder name: letters, digits and . _ + -, "
            "starting with a letter or digit (it becomes runs/<name>)"
        )
    return name


def run_name(axes: dict[str, Any]) -> str:
    """Stable name from the axis values, e.g. 'pet-direct_tiny_f0.5_s0'."""
    parts = []
    for key, value in axes.items():
        if key == "model" or key == "size":
            parts.append(_slug(value))
        elif key == "data_fraction":
            parts.append(f"f{_slug(value)}")
        elif key == "seed":
            parts.append(f"s{_slug(value)}")
        else:
            parts.append(f"{key.split('.')[-1]}{_slug(value)}")
    return "_".join(parts) or "run"


def steps_for_atoms(atoms: float, max_atoms: int, mean_atoms: float) -> int:
    """Optimiser steps to see `atoms` atoms with an atom budget per batch; greedy
    packing leaves on average half a structure of the budget unused."""
    fill = max(0.3, 1.0 - 0.5 * mean_atoms / max_atoms)
    return max(1, math.ceil(atoms / (fill * max_atoms)))


def budget_overrides(
    budget: BudgetConfig,
    family: str,
    size: str,
    knobs: dict,
    max_atoms: int,
    train_atoms: float = 0.0,
    mean_atoms: float = 16.0,
) -> tuple[list[str], dict]:
    """Overrides that enforce the budget rule, and its record for the summary.

    Rules that do not fix the step count also set schedule.total_steps to the
    expected number of steps, so the learning-rate schedule fits the run.
    """
    if budget.rule == "steps":
        return [f"trainer.max_steps={budget.steps}"], {"rule": "steps", "steps": budget.steps}
    if budget.rule == "epochs":
        if not budget.epochs:
            raise ValueError("budget.rule=epochs needs budget.epochs")
        steps = max(
            budget.min_steps, steps_for_atoms(budget.epochs * train_atoms, max_atoms, mean_atoms)
        )
        return (
            [
                f"trainer.max_epochs={budget.epochs}",
                f"trainer.max_steps={budget.max_steps}",
                f"schedule.total_steps={steps}",
            ],
            {"rule": "epochs", "epochs": budget.epochs, "schedule_steps": steps},
        )
    if budget.rule == "atoms_per_param":
        from train.models import count_parameters

        if not budget.atoms_per_param:
            raise ValueError("budget.rule=atoms_per_param needs budget.atoms_per_param")
        params = count_parameters(family, size, **knobs)
        atoms = int(budget.atoms_per_param * params)
        steps = max(budget.min_steps, steps_for_atoms(atoms, max_atoms, mean_atoms))
        return (
            [
                f"trainer.max_atoms_seen={atoms}",
                f"trainer.max_steps={budget.max_steps}",
                f"schedule.total_steps={steps}",
            ],
            {
                "rule": "atoms_per_param",
                "atoms_per_param": budget.atoms_per_param,
                "num_params": params,
                "max_atoms_seen": atoms,
                "schedule_steps": steps,
            },
        )
    raise ValueError(f"unknown budget rule '{budget.rule}' (steps, epochs, atoms_per_param)")


def _override_value(overrides: list[str], key: str) -> str | None:
    for item in overrides:
        if item.startswith(f"{key}="):
            return item.split("=", 1)[1]
    return None


def expand(study: StudyConfig, study_dir: Path, data_root: str, extra: list[str]) -> list[RunSpec]:
    """The grid: one RunSpec per combination of axis values, in a stable order."""
    from data_pipelines.dataset import load_manifest
    from slurm.stages import parse_stages

    stages = parse_stages(study.evaluate)

    axes = {k: list(v) if isinstance(v, list | tuple) else [v] for k, v in study.axes.items()}
    train = load_manifest(data_root)["splits"].get("train", {})
    train_atoms = float(train.get("num_atoms", 0))
    mean_atoms = train_atoms / max(1, train.get("num_structures", 1))
    runs = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        name = run_name(point)
        over = [f"data.root={data_root}", *study.train]
        family, size, knobs = "pet", _override_value(study.train, "size") or "tiny", {}
        for key, value in point.items():
            if key == "model":
                if value not in MODEL_CHOICES:
                    raise ValueError(
                        f"model axis value '{value}': choose from {', '.join(MODEL_CHOICES)}"
                    )
                family, forces = MODEL_CHOICES[value]
                over += [f"model={family}", f"forces={forces}"]
            elif key == "size":
                size = str(value)
                over.append(f"size={value}")
            elif key == "data_fraction":
                over.append(f"data.fraction={value}")
            elif key == "seed":
                over.append(f"seed={value}")
            else:
                over.append(f"{key}={value}")
                if key.startswith("model.knobs."):
                    knobs[key.split(".")[-1]] = value
        over += extra
        max_atoms = int(_override_value(over[::-1], "data.max_atoms") or 256)
        fraction = float(point.get("data_fraction", 1.0))
        budget_over, budget_record = budget_overrides(
            study.budget, family, size, knobs, max_atoms, fraction * train_atoms, mean_atoms
        )
        run_dir = study_dir / "runs" / name
        over += budget_over
        over += [
            f"run_dir={run_dir}",
            f"study_name={study.name}",
            f"name={name}",
            f"logger.group={study.name}",
        ]
        over += [f"+axes.{k}={v}" for k, v in point.items()]
        over += [f"+budget.{k}={v}" for k, v in budget_record.items()]
        runs.append(RunSpec(name, point, over, run_dir, stages))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError("two runs of the grid got the same name; make axis values distinct")
    return runs


def run_state(run_dir: Path) -> str:
    """finished | failed | stopped (has progress, resumable) | new."""
    import json

    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            if json.loads(summary.read_text()).get("status") == "finished":
                return "finished"
        except (OSError, ValueError):
            pass
    if (run_dir / "error.txt").exists():
        return "failed"
    if (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").exists():
        return "stopped"
    return "new"
