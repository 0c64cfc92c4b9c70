"""`run(cfg)`: one training run, top to bottom."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from train import build, checkpoint, rundir
from train.budget import resolve as resolve_budget
from train.config import ConfigError, EngineConfig, TrainConfig, check
from train.dist import barrier, init_distributed
from train.ema import EMA
from train.engine import build_engine
from train.export import export_model
from train.metrics import MetricLogger
from train.optim import build_optimizer, lr_factor
from train.resume import resume_point
from train.trainer import Progress, Trainer, TrainParts, element_mask, schedule_record


class Phases:
    """Seconds spent in each start-up phase, for the line a run prints first
    (and summary.json's ``startup_s``)."""

    def __init__(self):
        self.t = time.perf_counter()
        self.seconds: dict[str, float] = {}
        # from the process's start when it was started for this run (python -m
        # train): the interpreter, imports and the config
        if Path(sys.argv[0] if sys.argv else "").parts[-2:] != ("train", "__main__.py"):
            return
        try:
            import psutil

            since = time.time() - psutil.Process().create_time()
            self.seconds["imports and config"] = round(since, 3)
        except (ImportError, OSError):
            pass

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self.t, 3)
        self.t = now

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return f"start-up: {parts} (total {sum(self.seconds.values()):.1f} s)"


def warn_schedule_change(saved: dict | None, now: dict) -> None:
    """Names every setting of the learning-rate curve that changed on resume
    (a WSD cooldown branch changes it on purpose)."""
    if not saved:
        return
    changed = [f"{k}: {saved.get(k)} -> {now.get(k)}" for k in now if saved.get(k) != now.get(k)]
    if changed:
        print(
            f"note: resuming with another learning-rate schedule ({'; '.join(changed)})", flush=True
        )


def accelerate(model: torch.nn.Module, engine: EngineConfig, device: torch.device) -> None:
    """TF32 matrix products on CUDA and torch.compile, where the config asks.

    Compilation marks shapes dynamic (atom and edge counts change with every
    batch), so a new batch shape does not recompile; the data-dependent steps
    of the neighbour layout (nonzero, bincount) stay as graph breaks. The
    state dict keeps its keys (``nn.Module.compile`` compiles in place).
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = engine.tf32
        torch.backends.cudnn.allow_tf32 = engine.tf32
    if engine.compile != "none":
        model.compile(dynamic=True, backend=engine.compile)


def compile_counters() -> dict:
    """What torch.compile did in this process: graphs, graph breaks, recompiles."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "recompiles": int(sum(counters["recompiles"].values())),
    }


def run(cfg: TrainConfig) -> dict:
    """Trains one model as configured; returns the summary (also RUN/summary.json)."""
    check(cfg)
    clock = Phases()
    t_start = time.time()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    info = init_distributed(
        cfg.trainer.device,
        cfg.engine.backend,
        need_group=cfg.engine.kind == "deepspeed" or int(os.environ.get("WORLD_SIZE", "1")) > 1,
    )
    clock.mark("process group")
    run_dir = Path(cfg.run_dir or rundir.default_run_dir(cfg))
    name = cfg.name or run_dir.name
    # decided before anything is written: a start that must stop touches nothing
    resume_from = resume_point(run_dir, cfg, info.world_size)

    clock.mark("checkpoint check")
    # data: opened once (one root, or every source of a mixture)
    data = build.open_data(cfg)
    clock.mark("data open")
    stats = data.stats
    budget = resolve_budget(cfg, data.num_structures, data.num_atoms)
    if info.is_main:  # config and data checked: now the run directory is written
        rundir.prepare(run_dir, cfg)
    barrier()

    # model: identical initial weights on every rank
    clock.mark("statistics and run directory")
    torch.manual_seed(cfg.seed)
    model = build.make_model(cfg, stats)
    cutoff = cfg.data.cutoff_A or model.cutoff
    if cutoff < model.cutoff:
        raise ConfigError(f"data.cutoff_A={cutoff} is below the model's cutoff {model.cutoff}")
    if cfg.trainer.init_from:
        build.init_weights(model, cfg.trainer.init_from)
    dtype = getattr(torch, cfg.trainer.dtype)
    model = model.to(info.device, dtype)
    clock.mark("model build")
    flops = build.reference_flops(model, cfg, data.reference, cutoff, info.device, dtype)
    clock.mark("FLOPs reference batch")
    accelerate(model, cfg.engine, info.device)  # after counting: FLOPs of the eager model
    train_loader, val_loader, val_sources = build.loaders(cfg, data, cutoff, info)
    clock.mark("loaders")

    # engine, EMA, and the state of an interrupted run
    optimizer = build_optimizer(model, cfg.optim)
    schedule = lr_factor(replace(cfg.schedule, total_steps=budget.schedule_steps), budget.max_steps)
    engine = build_engine(model, optimizer, schedule, cfg.optim, cfg.engine)
    ema = EMA(engine.module, cfg.trainer.ema_decay)
    clock.mark("engine")
    progress = Progress()
    state = checkpoint.load(resume_from, engine, info.rank) if resume_from else None
    if state is not None:
        progress = Progress(**state["progress"])
        train_loader.load_state_dict(state["loader"])
        ema.load_state_dict(state["ema"])
        ema.decay = cfg.trainer.ema_decay  # the shadow resumes; its decay is the config's
        if info.is_main:
            print(f"resumed {run_dir} from step {progress.step}", flush=True)
            warn_schedule_change(state.get("schedule"), schedule_record(cfg, budget))
    clock.mark("resume")
    logger = MetricLogger(
        run_dir,
        cfg.logger,
        info.is_main,
        progress.step if state is not None else None,
        OmegaConf.to_container(OmegaConf.structured(cfg)),
        name,
    )

    trainer = Trainer(
        cfg,
        TrainParts(
            engine=engine,
            ema=ema,
            train_loader=train_loader,
            val_loader=val_loader,
            logger=logger,
            info=info,
            run_dir=run_dir,
            allowed_elements=element_mask(data.elements),
            progress=progress,
            augment=build.default_augment(cfg),
            budget=budget,
            val_sources=val_sources,
        ),
    )
    trainer._t_start = t_start  # trainer.max_time includes the start-up
    trainer.best = dict(state.get("best") or {}) if state else {}
    trainer.on_best = lambda t: export_model(t.model, t.ema, cfg, stats, run_dir / "model_best.pt")
    if info.is_main:
        print(budget.reason, flush=True)
        print(clock.line(), flush=True)
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

    # the end: final validation with the EMA weights, last checkpoint, summary
    final_val = trainer.validate()
    trainer.save(0.0)
    data_block = {**data.block, **trainer.source_counts()}
    summary = rundir.summary(
        cfg,
        name,
        engine.module,
        progress,
        flops,
        data_block,
        info.world_size,
        trainer.epoch,
        final_val,
    )
    trivial = trainer.trivial_metrics()
    summary["baseline"] = trivial
    summary["not_learned"] = rundir.not_learned(final_val, trivial)
    summary["convergence"] = rundir.convergence(
        rundir.read_rows(run_dir),
        "val/forces_mae",
        final_val.get("val/forces_mae"),
        progress.step,
        dict(cfg.budget or {}),
    )
    summary["budget_resolved"] = {
        "max_steps": budget.max_steps,
        "schedule_steps": budget.schedule_steps,
        "reason": budget.reason,
    }
    summary["best"] = trainer.best
    summary["startup_s"] = clock.seconds
    if cfg.engine.compile != "none":
        summary["compile"] = compile_counters()
    summary["total_time_s"] = time.time() - t_start
    if info.is_main:
        export_model(engine.module, ema, cfg, stats, run_dir / "model.pt", metrics=final_val)
        logger.log({"step": progress.step, **final_val})
        logger.summary(summary)
        rundir.write_summary(run_dir, summary)
    logger.close()
    barrier()
    return summary
