"""`run(cfg)`: one training run, top to bottom."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from data_pipelines.loader import LoaderConfig, StreamingLoader, load_manifest, open_stream, resolve
from train import checkpoint
from train.config import ConfigError, TrainConfig, check
from train.dist import DistInfo, barrier, init_distributed
from train.ema import EMA
from train.engine import build_engine
from train.metrics import MetricLogger
from train.models import build_model
from train.optim import build_optimizer, lr_factor
from train.trainer import Progress, Trainer

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


def load_stats(root: str) -> dict:
    with open_stream(resolve(root, "stats.json")) as fh:
        return json.loads(fh.read())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_loaders(cfg: TrainConfig, cutoff: float, info: DistInfo) -> tuple:
    subset = None
    if cfg.data.fraction < 1.0:
        from data_pipelines.subsets import subset_threshold

        subset = subset_threshold(
            cfg.data.root, cfg.data.train_split, cfg.data.fraction, cfg.data.fraction_unit
        )
    common = dict(
        root=cfg.data.root,
        cutoff=cutoff,
        max_atoms=cfg.data.max_atoms,
        max_edges=cfg.data.max_edges,
        max_structures=cfg.data.max_structures,
        dtype="float64",
    )
    train = StreamingLoader(
        LoaderConfig(
            split=cfg.data.train_split,
            seed=cfg.seed,
            buffer_size=cfg.data.buffer_size,
            num_workers=cfg.data.num_workers,
            subset_threshold=subset["threshold"] if subset else None,
            **common,
        ),
        rank=info.rank,
        world_size=info.world_size,
    )
    val = None
    if (
        cfg.data.val_split in train.manifest["splits"]
        and train.manifest["splits"][cfg.data.val_split]["num_structures"] > 0
    ):
        val_subset = None
        if cfg.data.val_max_structures:
            from data_pipelines.subsets import subset_threshold

            n = train.manifest["splits"][cfg.data.val_split]["num_structures"]
            val_subset = subset_threshold(
                cfg.data.root, cfg.data.val_split, min(1.0, cfg.data.val_max_structures / n)
            )["threshold"]
        val = StreamingLoader(
            LoaderConfig(
                split=cfg.data.val_split, shuffle=False, subset_threshold=val_subset, **common
            ),
            rank=info.rank,
            world_size=info.world_size,
        )
    return train, val, subset


def make_model(cfg: TrainConfig, stats: dict):
    baseline = {int(z): e for z, e in stats.get("element_reference_energies_by_z", {}).items()}
    scale = stats.get("force_rms") or stats.get("residual_energy_per_atom_rms") or 1.0
    try:
        model = build_model(
            cfg.model.family,
            cfg.model.size,
            cfg.model.forces,
            composition_baseline=baseline,
            energy_scale=scale,
            **dict(cfg.model.knobs),
        )
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err).strip("'\"")) from None
    return model


def run(cfg: TrainConfig) -> dict:
    """Trains one model as configured; returns the summary (also RUN/summary.json)."""
    check(cfg)
    t_start = time.time()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    info = init_distributed(
        cfg.trainer.device,
        cfg.engine.backend,
        need_group=cfg.engine.kind == "deepspeed" or int(os.environ.get("WORLD_SIZE", "1")) > 1,
    )
    run_dir = Path(cfg.run_dir or default_run_dir(cfg))
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").unlink(missing_ok=True)
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        write_atomic(run_dir / "git.json", json.dumps(git_state(), indent=1))
    barrier()

    manifest = load_manifest(cfg.data.root)
    stats = load_stats(cfg.data.root)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = make_model(cfg, stats)
    cutoff = cfg.data.cutoff_A or model.cutoff
    if cutoff < model.cutoff:
        raise ConfigError(f"data.cutoff_A={cutoff} is below the model's cutoff {model.cutoff}")
    if cfg.trainer.init_from:
        weights = checkpoint.load_weights(cfg.trainer.init_from)
        missing = model.load_state_dict(weights, strict=False)
        if missing.unexpected_keys:
            raise ConfigError(
                f"trainer.init_from={cfg.trainer.init_from}: weights do not fit "
                f"this model (unexpected {missing.unexpected_keys[:5]})"
            )
    dtype = getattr(torch, cfg.trainer.dtype)
    model = model.to(info.device, dtype)
    allowed = torch.zeros(119, dtype=torch.bool)
    from ase.data import atomic_numbers

    for el in manifest["elements"]:
        allowed[atomic_numbers[el]] = True

    train_loader, val_loader, subset = build_loaders(cfg, cutoff, info)
    reference = next(
        iter(
            StreamingLoader(
                LoaderConfig(
                    root=cfg.data.root,
                    split=cfg.data.train_split,
                    cutoff=cutoff,
                    max_atoms=cfg.data.max_atoms,
                    shuffle=False,
                )
            )
        )
    )
    from train.trainer import to_device

    flops = model.flops_per_atom(to_device(reference, info.device, dtype))

    optimizer = build_optimizer(model.parameters(), cfg.optim)
    engine = build_engine(
        model, optimizer, lr_factor(cfg.schedule, cfg.trainer.max_steps), cfg.optim, cfg.engine
    )
    ema = EMA(engine.module, cfg.trainer.ema_decay)
    progress = Progress()
    state = checkpoint.load_latest(run_dir, engine, info.rank, info.world_size)
    if state is not None:
        progress = Progress(**state["progress"])
        train_loader.load_state_dict(state["loader"])
        ema.load_state_dict(state["ema"])
        if info.is_main:
            print(f"resumed {run_dir} from step {progress.step}", flush=True)
    run_config = OmegaConf.to_container(OmegaConf.structured(cfg))
    name = cfg.name or run_dir.name
    logger = MetricLogger(
        run_dir,
        cfg.logger,
        info.is_main,
        progress.step if state is not None else None,
        run_config,
        name,
    )
    augment_on = (
        cfg.trainer.augment if cfg.trainer.augment is not None else (cfg.model.family == "pet")
    )
    trainer = Trainer(
        cfg,
        engine,
        ema,
        train_loader,
        val_loader,
        logger,
        info,
        run_dir,
        allowed,
        progress,
        augment_on,
    )
    trainer.install_signal_handlers()
    try:
        status = trainer.fit()
    finally:
        trainer.restore_signal_handlers()
    if status != "finished":
        logger.close()
        return {
            "status": status,
            "steps": progress.step,
            "signal": trainer.stop_signal,
            "run_dir": str(run_dir),
        }
    final_val = trainer.validate()
    trainer.save(0.0)
    summary = {
        "run_name": name,
        "status": "finished",
        "family": family_label(cfg),
        "model": cfg.model.family,
        "forces": cfg.model.forces,
        "size": cfg.model.size,
        "knobs": dict(cfg.model.knobs),
        "num_params": engine.module.num_parameters(),
        "flops_per_atom": flops["forward_backward"],
        "flops_per_atom_forward": flops["forward"],
        "total_flops": flops["forward_backward"] * progress.atoms_seen,
        "structures_seen": progress.structures_seen,
        "atoms_seen": progress.atoms_seen,
        "wall_time_s": progress.wall_time_s,
        "steps": progress.step,
        "epochs": train_loader.state.epoch,
        "bad_steps": progress.bad_steps,
        "padded_steps": progress.padded_steps,
        "world_size": info.world_size,
        "axes": dict(cfg.axes),
        "budget": dict(cfg.budget),
        "study": cfg.study,
        "seed": cfg.seed,
        "data": {
            "root": cfg.data.root,
            "name": manifest.get("name"),
            "num_train_structures": subset["num_structures"]
            if subset
            else manifest["splits"][cfg.data.train_split]["num_structures"],
            "num_train_atoms": subset["num_atoms"]
            if subset
            else manifest["splits"][cfg.data.train_split]["num_atoms"],
            "data_fraction": cfg.data.fraction,
            "fraction_unit": cfg.data.fraction_unit,
        },
        "model_config": engine.module.describe(),
        "total_time_s": time.time() - t_start,
        **final_val,
    }
    if info.is_main:
        from train.export import export_model

        export_model(engine.module, ema, cfg, stats, run_dir / "model.pt")
        logger.log({"step": progress.step, **final_val})
        logger.summary(summary)
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    logger.close()
    barrier()
    return summary

