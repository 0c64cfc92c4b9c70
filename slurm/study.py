"""A study: axes expanded into named runs, a data source and a budget rule.

Studies live in configs/study/<name>.yaml under a top-level `study:` key, chosen
with `study=<name>`; configs/experiment/ holds training recipes.
Each run becomes a list of `python -m train` overrides, so a run launched by a
sweep is exactly a run a user could type.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurm import ladder, tuning
from train.budget import steps_for_atoms
from train.config import TrainerConfig

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
    ratio x parameters, tokens-per-parameter style) | wsd-ladder (a constant-rate
    main run of `steps` steps with cooldown branches, slurm/ladder.py)."""

    rule: str = "steps"
    steps: int = 100
    epochs: int | None = None
    atoms_per_param: float | None = None
    min_steps: int = 10
    max_steps: int = 100_000
    # wsd-ladder (slurm/ladder.py): cooldown branches at these fractions of
    # `steps`, each decaying over decay_fraction x its branch step
    decay_at: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    decay_fraction: float = 0.2
    warmup_fraction: float = 0.05


@dataclass
class StudyDataConfig:
    """root: an existing shard directory; or generate: {calculator, num_structures,
    seed} to build one under STUDY_DIR/data with the built-in generator."""

    root: str | None = None
    generate: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneConfig:
    """The two-stage recipe as a study (pretrain on A, fine-tune on B).

    Every grid point is pretrained on the study's data (source A; its
    ``data_fraction`` axis is the pretraining data size) and then fine-tuned on
    ``root`` (source B) with ``trainer.init_from`` its pretrained run:
    ``<point>_ft``. Beside it, the baselines: ``<point>_zs``, the pretrained
    model on B as it is (stage 1 only: one step at learning rate 0, which
    keeps weights, EMA and baselines exactly, so its validation on B is the
    parent's), and ``<model>_<size>_bonly``, a model trained on B alone from
    scratch for the same ``steps``.

    Attributes:
        root: B's shard directory; None: no fine-tuning (a plain study).
        steps: optimiser steps of each fine-tune (and of each B-only run).
        train: overrides of the fine-tune and B-only runs (e.g. optim.lr=1e-3).
        baselines: add the stage-1-only and B-only runs.
    """

    root: str | None = None
    steps: int = 100
    train: list[str] = field(default_factory=list)
    baselines: bool = True


@dataclass
class StudyConfig:
    name: str = "study"
    axes: dict[str, Any] = field(default_factory=dict)
    # several grids, each a cartesian product (its axes over the shared `axes`),
    # with optional overrides of its own under `train`: e.g. pet at widths
    # w8..w32 under muP and mace at its own sizes, in one study; a grid's own
    # `tune` and `tune_at` replace the study's for its points
    grids: list[dict[str, Any]] = field(default_factory=list)
    data: StudyDataConfig = field(default_factory=StudyDataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: list[str] = field(default_factory=list)  # fixed overrides for every run
    # evaluation stages on each trained model (slurm/stages.py): {name, workflow, settings}
    evaluate: list[Any] = field(default_factory=list)
    # tuned hyper-parameters (slurm/tuning.py): {override key: [values]}
    tune: dict[str, Any] = field(default_factory=dict)
    tune_at: dict[str, Any] = field(default_factory=dict)  # tune only at these axis values
    tune_metric: str = "val/forces_mae"  # lower is better
    # pretrain on study.data, fine-tune on finetune.root (FinetuneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class RunSpec:
    """One run of a study, as the sweep schedules it.

    Attributes:
        branches: cooldown branches of a WSD-ladder main run, trained after it
            in the same job (each starts from the main run's checkpoint at
            ``start_step``).
        start_step: for a branch, the main run's step it starts from.
        waiting: why the run cannot start yet (a transferred tuned value whose
            tuning runs have not finished), or None.
    """

    name: str
    axes: dict[str, Any]
    overrides: list[str]
    run_dir: Path
    stages: list = field(default_factory=list)  # slurm.stages.Stage, run after training
    branches: list[RunSpec] = field(default_factory=list)
    start_step: int | None = None
    waiting: str | None = None

    def all_runs(self) -> list[RunSpec]:
        """This run and its branches."""
        return [self, *self.branches]


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


def _point_overrides(point: dict[str, Any], base: list[str]) -> tuple[list[str], str, str, dict]:
    """Training overrides of one grid point; its family, size and knobs."""
    over = list(base)
    family, size, knobs = "pet", _override_value(base, "size") or "tiny", {}
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
    return over, family, size, knobs


def _identity_overrides(study: StudyConfig, name: str, run_dir: Path, point: dict) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"study_name={study.name}",
        f"name={name}",
        f"logger.group={study.name}",
        *[f"+axes.{k}={v}" for k, v in point.items()],
    ]


def _tuned_values(
    study: StudyConfig, point: dict, study_dir: Path, tune: dict, tune_at: dict
) -> tuple[list[dict], str | None]:
    """The tuned combinations to run at ``point``, or why the point waits.

    ``tune`` and ``tune_at`` are the point's grid's own, or the study's. A WSD
    ladder is judged by its last cooldown branch: its main run never decays,
    so its constant-rate error would favour a low rate.
    """
    combos = tuning.combinations(tune)
    if not tune or not tune_at or tuning.at_tuning_point(point, tune_at):
        return combos, None
    source = tuning.tuning_point(point, tune_at)
    base = run_name(source)
    last, b = "", study.budget
    if b.rule == "wsd-ladder":
        last = f"_cd{len(ladder.plan(b.steps, list(b.decay_at), b.decay_fraction)) - 1}"
    dirs = [study_dir / "runs" / (base + tuning.suffix(c) + last) for c in combos]
    chosen = tuning.best(dirs, combos, study.tune_metric)
    if chosen is None:
        return [combos[0]], f"waits for the tuning runs of {base} to finish"
    return [chosen], None


def expand(study: StudyConfig, study_dir: Path, data_root: str, extra: list[str]) -> list[RunSpec]:
    """The grid: one RunSpec per combination of axis values (and tuned values),
    in a stable order; a WSD ladder's branches hang off their main run."""
    from data_pipelines.dataset import load_manifest
    from slurm.stages import parse_stages

    stages = parse_stages(study.evaluate)
    own_keys = ("train", "tune", "tune_at")
    grids = [
        (_grid_axes({
            **{k: v for k, v in g.items() if k not in own_keys},
            **{k: v for k, v in study.axes.items() if k not in g},
        }), list(g.get("train") or []),
         dict(g.get("tune", study.tune)),
         dict(g.get("tune_at", study.tune_at)))
        for g in study.grids
    ] or [(_grid_axes(study.axes), [], dict(study.tune), dict(study.tune_at))]
    for g, _, _, tune_at in grids:
        bad_at = sorted(set(tune_at) - set(g))
        if bad_at:
            raise ValueError(f"study.tune_at names {bad_at}, which are not axes ({', '.join(g)})")
    train = load_manifest(data_root)["splits"].get("train", {})
    train_atoms = float(train.get("num_atoms", 0))
    mean_atoms = train_atoms / max(1, train.get("num_structures", 1))
    runs = []
    points = [
        (dict(zip(g, values)), own, tune, tune_at)
        for g, own, tune, tune_at in grids
        for values in itertools.product(*g.values())
    ]
    for point, own, tune, tune_at in points:
        over, family, size, knobs = _point_overrides(
            point, [f"data.root={data_root}", *study.train, *own]
        )
        combos, waiting = _tuned_values(study, point, study_dir, tune, tune_at)
        for combo in combos:
            name = run_name(point) + tuning.suffix(combo)
            run_dir = study_dir / "runs" / name
            base = [*over, *extra, *tuning.overrides(combo)]
            max_atoms = int(_override_value(base[::-1], "data.max_atoms") or 256)
            if study.budget.rule == "wsd-ladder":
                if study.finetune.root:
                    raise ValueError("study.finetune works with the steps, epochs and "
                                     "atoms_per_param budget rules, not wsd-ladder")
                runs.append(_ladder(study, point, name, run_dir, base, stages, waiting))
                continue
            fraction = float(point.get("data_fraction", 1.0))
            budget_over, budget_record = budget_overrides(
                study.budget, family, size, knobs, max_atoms, fraction * train_atoms, mean_atoms
            )
            spec_over = [*base, *budget_over, *_identity_overrides(study, name, run_dir, point)]
            spec_over += [f"+budget.{k}={v}" for k, v in budget_record.items()]
            if study.finetune.root:
                spec_over.append("+budget.role=pretrain")
            spec = RunSpec(name, point, spec_over, run_dir, stages, waiting=waiting)
            runs.append(spec)
            if study.finetune.root:
                runs += _finetune(study, spec, base, stages, runs)
    names = [r.name for spec in runs for r in spec.all_runs()]
    if len(set(names)) != len(names):
        raise ValueError("two runs of the grid got the same name; make axis values distinct")
    return runs


def _without(overrides: list[str], *keys: str) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in keys]


def _finetune(study: StudyConfig, pretrain: RunSpec, base: list[str], stages: list,
              runs: list[RunSpec]) -> list[RunSpec]:
    """A pretrained point's fine-tune and stage-1-only runs (branches of it, so
    they run after it in its job) and, once per model and size, the B-only run.
    Returns the new top-level runs (the B-only run, if not yet planned)."""
    ft = study.finetune
    on_b = [*_without(base, "data.root", "data.fraction"), f"data.root={ft.root}"]
    roles = [("ft", "finetune", [f"trainer.max_steps={ft.steps}", *ft.train])]
    if ft.baselines:
        roles.append(("zs", "stage1-only", [*ft.train, "optim.lr=0", "trainer.max_steps=1"]))
    for suffix, role, extra in roles:
        name = f"{pretrain.name}_{suffix}"
        run_dir = pretrain.run_dir.parent / name
        over = [*on_b, *extra, f"trainer.init_from={pretrain.run_dir}"]
        over += _identity_overrides(study, name, run_dir, pretrain.axes)
        over += ["+budget.rule=steps", f"+budget.role={role}", f"+budget.pretrain={pretrain.name}"]
        pretrain.branches.append(RunSpec(name, pretrain.axes, over, run_dir, stages))
    if not ft.baselines:
        return []
    point = {k: v for k, v in pretrain.axes.items() if k != "data_fraction"}
    name = f"{run_name(point)}_bonly"
    if any(r.name == name for r in runs):
        return []
    run_dir = pretrain.run_dir.parent / name
    over = [*on_b, f"trainer.max_steps={ft.steps}", *ft.train]
    over += _identity_overrides(study, name, run_dir, point)
    over += ["+budget.rule=steps", "+budget.role=b-only"]
    return [RunSpec(name, point, over, run_dir, stages)]


def _grid_axes(axes: dict[str, Any]) -> dict[str, list]:
    return {k: list(v) if isinstance(v, list | tuple) else [v] for k, v in axes.items()}


def _ema_decay(overrides: list[str]) -> float:
    """The EMA decay a run's overrides set, else the trainer's default."""
    value = _override_value(overrides, "trainer.ema_decay")
    return float(value) if value is not None else TrainerConfig.ema_decay


def _ladder(study, point, name, run_dir, base, stages, waiting) -> RunSpec:
    """A WSD ladder's main run (no evaluation: it never cooled down) and branches."""
    b = study.budget
    branches = ladder.plan(b.steps, list(b.decay_at), b.decay_fraction)
    warm = ladder.warmup_steps(b.steps, b.warmup_fraction)
    record = {"rule": "wsd-ladder", "steps": b.steps, "decay_fraction": b.decay_fraction}
    main_over = [*base, *ladder.main_overrides(b.steps, warm, branches)]
    main_over += _identity_overrides(study, name, run_dir, point)
    main_over += [f"+budget.{k}={v}" for k, v in {**record, "role": "main"}.items()]
    main = RunSpec(name, point, main_over, run_dir, [], waiting=waiting)
    for br in branches:
        br_name = f"{name}_cd{br.index}"
        br_dir = run_dir.parent / br_name
        br_over = [*base, *ladder.branch_overrides(br, warm, _ema_decay(base))]
        br_over += _identity_overrides(study, br_name, br_dir, point)
        info = {
            **record,
            "role": "cooldown",
            "main": name,
            "decay_at": br.decay_at,
            "branch_step": br.branch_step,
            "cooldown_steps": br.cooldown_steps,
        }
        br_over += [f"+budget.{k}={v}" for k, v in info.items()]
        main.branches.append(
            RunSpec(br_name, point, br_over, br_dir, stages, start_step=br.branch_step)
        )
    return main


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
