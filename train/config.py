"""Typed schemas behind configs/ and the checks that run before any work.

Hydra composes the YAML groups on top of `TrainConfig` (registered in its
ConfigStore as `train_schema`), so a misspelled key or a wrong type fails at
composition; `compose` turns that failure into a message that names the key
and the closest valid one, and `check` rejects impossible combinations.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ModelConfig:
    """family: registry name; size: preset name; forces: direct|conservative|both;
    knobs: any preset knob overridden on its own (e.g. {d_pet: 64, num_gnn_layers: 3})."""

    family: str = "pet"
    size: str = "tiny"
    forces: str = "direct"
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Shards and batching. cutoff_A None: the model's own cutoff."""

    root: str | None = None
    cutoff_A: float | None = None
    max_atoms: int = 256
    max_edges: int | None = None
    max_structures: int | None = None
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 0
    buffer_size: int = 1024
    # nested deterministic subset of the training split (see data_pipelines.subsets)
    fraction: float = 1.0
    fraction_unit: str = "structures"  # structures | atoms
    val_max_structures: int | None = None
    # check each shard's sha256 from the manifest as it streams (about 3% of decode)
    verify_checksums: bool = True
    # a mixture instead of one root: [{root, weight, name?}], each batch from one
    # source, the weights held over any window of steps (data_pipelines.mixture)
    sources: list[dict[str, Any]] = field(default_factory=list)
    # sources of different levels of theory train one energy head only on purpose
    mix_levels_of_theory: bool = False


@dataclass
class LossTerm:
    """weight; kind mse|huber; delta in the target's unit (eV/atom, eV/A, eV/A^3)."""

    weight: float = 1.0
    kind: str = "huber"
    delta: float = 0.01


@dataclass
class LossConfig:
    """energy is per atom; forces/stress are the main outputs (the conservative
    ones for `both`); direct_* only exist for `forces=both`."""

    energy: LossTerm = field(default_factory=lambda: LossTerm(1.0, "huber", 0.01))
    forces: LossTerm = field(default_factory=lambda: LossTerm(1.0, "huber", 0.05))
    stress: LossTerm = field(default_factory=lambda: LossTerm(1.0, "huber", 0.005))
    direct_forces: LossTerm = field(default_factory=lambda: LossTerm(0.0, "huber", 0.05))
    direct_stress: LossTerm = field(default_factory=lambda: LossTerm(0.0, "huber", 0.005))
    # Term weights while the learning rate decays (train.optim.decay_start: a wsd
    # schedule's decay phase, a cosine's last schedule.decay_fraction), replacing
    # the weights above for the terms named: MACE's second stage, which raises the
    # energy weight late, when a low rate lets the energy settle. {} = off.
    decay_weights: dict[str, float] = field(default_factory=dict)


LOSS_TERMS = ("energy", "forces", "stress", "direct_forces", "direct_stress")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    grad_accum: int = 1


@dataclass
class ScheduleConfig:
    """kind cosine (warm-up + cosine to min_lr_ratio), wsd (warm-up, stable,
    linear decay over decay_fraction) or constant. total_steps is the length of
    the schedule, independent of trainer.max_steps (None: equal to it)."""

    kind: str = "cosine"
    warmup_fraction: float = 0.1
    warmup_steps: int | None = None
    total_steps: int | None = None
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.0


@dataclass
class EngineConfig:
    """kind deepspeed | torch (a plain loop doing the same steps, for comparison);
    precision fp32 | bf16 (bf16 autocast of the forward, fp32 master weights)."""

    kind: str = "deepspeed"
    zero_stage: int = 0
    precision: str = "fp32"
    backend: str | None = None  # None: gloo on CPU, nccl on CUDA
    # on CUDA, float32 matrix products and convolutions in TF32 (10-bit mantissa)
    tf32: bool = False
    # torch.compile of the model: none | inductor (default backend) | eager
    # (dynamo tracing only, to check graphs and recompiles); dynamic shapes, since
    # atom and edge counts change every batch
    compile: str = "none"


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline | online
    project: str = "mlip-scaling"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class EarlyStoppingConfig:
    """metric: a validation metric, lower is better (its best weights go to
    RUN/model_best.pt); patience: stop after this many steps without a new best
    (None: never stop early)."""

    metric: str = "val/forces_mae"
    patience: int | None = None


@dataclass
class TrainerConfig:
    # budgets (train/budget.py): the first reached ends the run; with none, 100 steps
    max_steps: int | None = None
    max_epochs: int | None = None
    max_atoms_seen: int | None = None  # stop once this many training atoms were seen
    max_time: str | None = None  # wall clock: seconds or [D-]HH:MM:SS; checkpoint and stop
    log_every: int = 1
    val_every: int = 50
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    # steps that always get a checkpoint, never removed by keep_checkpoints
    # (branch points of a WSD ladder's cooldowns)
    pin_steps: list[int] = field(default_factory=list)
    ema_decay: float = 0.99
    augment: bool | None = None  # random O(3) rotations; None: on for pet, off otherwise
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    init_from: str | None = None  # run dir or checkpoint whose weights start this run
    resume: str = "auto"  # auto | never | require (train/resume.py)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | float64 (model and batch)
    threads: int | None = None
    # auto (a bar on a terminal, periodic lines otherwise) | bar | lines | none
    progress: str = "auto"
    keep_best: bool = True  # RUN/model_best.pt: EMA weights at the best validation value
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # signals that checkpoint and stop the run (under submitit: USR1/USR2 only,
    # since submitit ignores SIGTERM and requeues on USR2)
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGUSR2"])


@dataclass
class TrainConfig:
    run_dir: str | None = None
    seed: int = 0
    name: str | None = None
    study_name: str | None = None  # the study a sweep run belongs to (W&B group)
    axes: dict[str, Any] = field(default_factory=dict)  # a sweep's axis values
    budget: dict[str, Any] = field(default_factory=dict)  # a sweep's budget rule
    tune: dict[str, Any] = field(default_factory=dict)  # a tuned study's values for this run
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


class ConfigError(ValueError):
    """A configuration that cannot run, with what to change."""


def _valid_keys(schema: Any, path: list[str]) -> list[str]:
    node = schema
    for part in path:
        if not is_dataclass(node):
            return []
        match = {f.name: f for f in fields(node)}.get(part)
        if match is None:
            return []
        node = getattr(node, part) if not isinstance(node, type) else match.default_factory()
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def suggest(full_key: str) -> str:
    """' (did you mean 'trainer.max_steps'?)' for a misspelled dotted key."""
    parts = full_key.split(".")
    valid = _valid_keys(TrainConfig(), parts[:-1])
    close = difflib.get_close_matches(parts[-1], valid, n=1, cutoff=0.5)
    if close and close[0] != parts[-1]:
        return f" (did you mean '{'.'.join([*parts[:-1], close[0]])}'?)"
    if close:
        return ""
    return f" (valid keys here: {', '.join(valid)})" if valid else ""


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Composes configs/ with command-line overrides; errors name the bad key."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register()
    # free-form maps: a knob or axis may be new to them, so add-or-replace
    free = ("model.knobs.", "axes.", "budget.", "tune.", "loss.decay_weights.")
    overrides = [f"++{o}" if o.startswith(free) else o for o in overrides]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        text = str(err)
        key = getattr(err, "full_key", None) or getattr(
            getattr(err, "__cause__", None), "full_key", None
        )
        if not key:
            m = re.search(r"Could not override '([^']+)'", text) or re.search(
                r"Key '([^']+)' (?:is )?not in", text
            )
            key = m.group(1) if m else None
        hint = suggest(key) if key else ""
        raise ConfigError(f"{text.splitlines()[0]}{hint}\n{text}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_object(cfg: DictConfig) -> TrainConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg))


_CHOICES = {
    "model.forces": ("direct", "conservative", "both"),
    "engine.kind": ("deepspeed", "torch"),
    "engine.precision": ("fp32", "bf16"),
    "engine.compile": ("none", "inductor", "eager"),
    "logger.kind": ("wandb", "none"),
    "logger.mode": ("offline", "online"),
    "schedule.kind": ("cosine", "wsd", "constant"),
    "optim.name": ("adamw", "adam"),
    "data.fraction_unit": ("structures", "atoms"),
    "trainer.dtype": ("float32", "float64"),
    "trainer.resume": ("auto", "never", "require"),
    "trainer.progress": ("auto", "bar", "lines", "none", "true", "false"),
}


def check(cfg: TrainConfig) -> None:
    """Rejects impossible combinations before any work starts."""
    cfg.trainer.progress = str(cfg.trainer.progress).lower()
    for dotted, allowed in _CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r} is not one of {', '.join(allowed)}")
    for term in LOSS_TERMS:
        t = getattr(cfg.loss, term)
        if t.kind not in ("mse", "huber"):
            raise ConfigError(f"loss.{term}.kind={t.kind!r} is not one of mse, huber")
        if t.weight < 0 or t.delta <= 0:
            raise ConfigError(f"loss.{term}: weight must be >= 0 and delta > 0")
    for term, weight in dict(cfg.loss.decay_weights).items():
        if term not in LOSS_TERMS:
            raise ConfigError(
                f"loss.decay_weights.{term}: not a loss term ({', '.join(LOSS_TERMS)})")
        if float(weight) < 0:
            raise ConfigError(f"loss.decay_weights.{term}={weight}: a weight must be >= 0")
    if cfg.loss.decay_weights and cfg.schedule.kind == "constant":
        raise ConfigError("loss.decay_weights needs a schedule that decays (cosine or wsd), "
                          "not schedule=constant")
    if cfg.model.forces != "both":
        for term in ("direct_forces", "direct_stress"):
            if getattr(cfg.loss, term).weight > 0:
                raise ConfigError(
                    f"loss.{term}.weight={getattr(cfg.loss, term).weight} needs the direct "
                    f"heads of forces=both, but forces={cfg.model.forces}; set forces=both or "
                    f"loss.{term}.weight=0"
                )
    if cfg.data.sources:
        check_sources(cfg)
    elif cfg.data.root is None:
        raise ConfigError(
            "data.root is not set: pass data.root=SHARD_DIR (a directory "
            "written by python -m data_pipelines.convert or .generate)"
        )
    if not 0 < cfg.data.fraction <= 1:
        raise ConfigError(f"data.fraction={cfg.data.fraction} must lie in (0, 1]")
    if cfg.engine.kind == "torch" and cfg.engine.zero_stage != 0:
        raise ConfigError("engine.kind=torch has no ZeRO; use engine.kind=deepspeed")
    if cfg.engine.zero_stage not in (0, 1, 2):
        raise ConfigError(f"engine.zero_stage={cfg.engine.zero_stage}: supported 0, 1, 2")
    if cfg.trainer.max_steps is not None and cfg.trainer.max_steps < 1:
        raise ConfigError("trainer.max_steps must be >= 1")
    if cfg.schedule.total_steps is not None and cfg.schedule.total_steps < 1:
        raise ConfigError("schedule.total_steps must be >= 1 (or null: trainer.max_steps)")
    if cfg.optim.grad_accum < 1:
        raise ConfigError("optim.grad_accum must be >= 1")
    check_model(cfg.model)


def check_sources(cfg: TrainConfig) -> None:
    """A mixture's entries: a root and a positive weight each, unique names, and
    no setting that only a single root supports."""
    if cfg.data.root is not None:
        raise ConfigError("give data.root or data.sources, not both")
    names = []
    for i, src in enumerate(cfg.data.sources):
        where = f"data.sources[{i}]"
        if not isinstance(src, dict) or not src.get("root"):
            raise ConfigError(f"{where}: expected {{root: DIR, weight: W}}, got {src!r}")
        unknown = sorted(set(src) - {"root", "weight", "name", "head"})
        if unknown:
            close = difflib.get_close_matches(unknown[0], ["root", "weight", "name", "head"], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'{hint}")
        if float(src.get("weight", 1.0)) < 0:
            raise ConfigError(f"{where}.weight must be >= 0")
        names.append(str(src.get("name") or src["root"]))
    if len(set(names)) != len(names):
        raise ConfigError(f"data.sources: names must be unique, got {names}")
    if sum(float(s.get("weight", 1.0)) for s in cfg.data.sources) <= 0:
        raise ConfigError("data.sources: at least one weight must be positive")
    if cfg.data.fraction < 1.0:
        raise ConfigError("data.fraction applies to one root; subset each source when converting")
    if cfg.trainer.max_epochs is not None:
        raise ConfigError(
            "trainer.max_epochs: sources of a mixture restart their epochs on their own; "
            "give trainer.max_steps or trainer.max_atoms_seen"
        )


def check_model(model: ModelConfig) -> None:
    """The family, size and every knob, checked against the family's knob
    dataclass (``PETConfig``, ``MACEConfig``) before any work starts.

    Raises:
        ConfigError: one line naming the bad value and the closest valid one.
    """
    from train.models import model_config

    try:
        model_config(model.family, model.size, **dict(model.knobs))
    except KeyError as err:
        raise ConfigError(f"model: {err.args[0]}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.knobs: {err}") from None
