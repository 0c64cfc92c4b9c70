"""The training loop: flat and ours. batch, forward, loss, backward, clip, step,
log, validate, checkpoint; a preemption signal saves and exits cleanly."""

from __future__ import annotations

import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ase.data import chemical_symbols

from data_pipelines import schema as K
from data_pipelines.loader import StreamingLoader, equal_steps
from train import checkpoint
from train.augment import augment
from train.budget import Budget
from train.config import TrainConfig
from train.dist import DistInfo, all_reduce_
from train.ema import EMA
from train.losses import ErrorSums, compute_loss, decay_loss, trivial_sums
from train.metrics import MetricLogger
from train.progress import ProgressReport, resolve_mode
from train.resume import identity


class BadBatchError(RuntimeError):
    """Too many consecutive non-finite losses."""


@dataclass
class Progress:
    """Counters that a checkpoint carries (global over ranks)."""

    step: int = 0
    structures_seen: int = 0
    atoms_seen: int = 0
    wall_time_s: float = 0.0
    bad_steps: int = 0
    padded_steps: int = 0
    last_val: dict = field(default_factory=dict)


@dataclass
class StepTotals:
    """What one optimiser step trained on, summed over micro-batches (and ranks
    after ``all_reduce``): the loss of real batches, their structures and atoms,
    and the zero-weight padding batches that kept ranks in step."""

    loss: float = 0.0
    structures: int = 0
    atoms: int = 0
    padded_batches: int = 0

    def all_reduce(self, device: torch.device) -> None:
        """Sums every field over ranks, in place (one collective on ``device``)."""
        t = torch.tensor(
            [self.loss, self.structures, self.atoms, self.padded_batches],
            dtype=torch.float64,
            device=device,
        )
        all_reduce_(t)
        self.loss = float(t[0])
        self.structures, self.atoms, self.padded_batches = (int(v) for v in t[1:])


@dataclass
class TrainParts:
    """Everything the loop drives, built by ``train.run.run``.

    Attributes:
        engine: the optimiser engine (``train.engine``) around the model.
        ema: exponential moving average of the weights, used for validation.
        train_loader: the resumable training stream.
        val_loader: the validation stream, None when the data has no val split.
        logger: metrics.jsonl (and W&B) writer.
        info: this process's rank, world size and device.
        run_dir: the run directory (checkpoints go under it).
        allowed_elements: (119,) bool mask of atomic numbers the model was built for.
        progress: counters, restored from a checkpoint on resume.
        augment: apply random O(3) rotations to training batches.
        budget: the step limit, schedule length and time budget (train.budget).
        val_sources: for a mixture, one validation stream per source (name ->
            loader); validation then reports each source and their pool.
    """

    engine: object
    ema: EMA
    train_loader: StreamingLoader
    val_loader: StreamingLoader | None
    logger: MetricLogger
    info: DistInfo
    run_dir: Path
    allowed_elements: torch.Tensor
    progress: Progress
    augment: bool
    budget: Budget
    val_sources: dict = field(default_factory=dict)


def element_mask(symbols) -> torch.Tensor:
    """(119,) bool mask with True at the atomic numbers of ``symbols``."""
    from ase.data import atomic_numbers

    allowed = torch.zeros(119, dtype=torch.bool)
    for el in symbols:
        allowed[atomic_numbers[el]] = True
    return allowed


def to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """The batch's tensors on ``device`` in ``dtype`` (floating ones). Host-to-GPU
    copies are asynchronous: the loader pins its batches when CUDA is present."""
    out = {}
    asynchronous = device.type == "cuda"
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=asynchronous and v.is_pinned())
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far in MiB: what the CUDA allocator handed out on a GPU,
    the process's resident set on the host."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_elements(batch: dict, allowed: torch.Tensor) -> None:
    """Fails on an element the model was not built for, naming it and the structure."""
    species = batch[K.SPECIES]
    bad = ~allowed[species.clamp(0, allowed.numel() - 1)]
    if bool(bad.any()):
        atom = int(torch.nonzero(bad)[0])
        z = int(species[atom])
        sid = batch[K.IDS][int(batch[K.BATCH][atom])]
        known = " ".join(chemical_symbols[int(i)] for i in torch.nonzero(allowed).flatten())
        raise ValueError(
            f"structure {sid} contains {chemical_symbols[z]} (Z={z}), which the "
            f"model was not built for (its elements: {known})"
        )


def evaluate_batches(model, batches, device, dtype) -> ErrorSums:
    """Error sums over batches; no parameter gradients."""
    sums = ErrorSums()
    model.eval()
    for batch in batches:
        batch = to_device(batch, device, dtype)
        with torch.no_grad():
            out = model(batch)
        sums = sums + ErrorSums.of_batch(batch, out)
    return sums


def schedule_record(cfg: TrainConfig, budget: Budget) -> dict:
    """What shapes the learning-rate curve; a resume that changes it is named."""
    return {
        "schedule.kind": cfg.schedule.kind,
        "schedule steps": budget.schedule_steps,
        "schedule.warmup_steps": cfg.schedule.warmup_steps,
        "schedule.warmup_fraction": cfg.schedule.warmup_fraction,
        "schedule.decay_fraction": cfg.schedule.decay_fraction,
        "optim.lr": cfg.optim.lr,
    }


class Trainer:
    """The loop over ``parts`` as ``cfg`` says (see ``fit``)."""

    def __init__(self, cfg: TrainConfig, parts: TrainParts):
        self.cfg = cfg
        self.engine = parts.engine
        self.model = parts.engine.module
        self.ema = parts.ema
        self.train_loader = parts.train_loader
        self.val_loader = parts.val_loader
        self.logger = parts.logger
        self.info = parts.info
        self.run_dir = parts.run_dir
        self.allowed = parts.allowed_elements
        self.progress = parts.progress
        self.augment_on = parts.augment
        self.budget = parts.budget
        self.val_sources = parts.val_sources
        self.mixture = hasattr(parts.train_loader, "names")  # data_pipelines.mixture
        self.best: dict = {}  # best validation value so far and its step (early stopping)
        self.on_best = lambda trainer: None  # called on the main rank at a new best
        # trainer.max_time counts from here; train.run.run sets it to its own
        # start, so start-up counts against the budget too (a SLURM job's end)
        self._t_start = time.time()
        self.dtype = getattr(torch, cfg.trainer.dtype)
        self._stop_signal: int | None = None
        self._last_batch: dict | None = None
        self._decay_loss, self._decay_from = decay_loss(cfg, self.budget)

    # ---- signals --------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGUSR1/SIGUSR2 ask for a checkpoint at the next step boundary.

        Handlers that were installed before (submitit's requeue handler under
        SLURM) are kept in `previous_handlers` so the caller can chain to them
        once the checkpoint is safely on disk.
        """

        def handler(signum, frame):
            self._stop_signal = signum

        self.previous_handlers = {}
        for name in self.cfg.trainer.stop_signals:
            sig = getattr(signal, name)
            self.previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)

    def restore_signal_handlers(self) -> None:
        for sig, previous in getattr(self, "previous_handlers", {}).items():
            signal.signal(sig, previous)

    @property
    def stop_signal(self) -> int | None:
        return self._stop_signal

    # ---- data -----------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The training stream's epoch (for a mixture: the first source's)."""
        if self.mixture:
            return min(self.train_loader.epochs)
        return self.train_loader.state.epoch

    def _batches(self) -> Iterator[tuple[dict, bool]]:
        if self.mixture:  # sources restart their own epochs: the stream never ends
            yield from equal_steps(iter(self.train_loader))
            return
        while True:
            epoch = self.train_loader.state.epoch
            max_epochs = self.cfg.trainer.max_epochs
            if max_epochs is not None and epoch >= max_epochs:
                return
            yield from equal_steps(iter(self.train_loader))
            self.train_loader.set_epoch(epoch + 1)

    def source_counts(self) -> dict:
        """Per mixture source: weight, structures and atoms seen (all ranks), epoch."""
        if not self.mixture:
            return {}
        loader = self.train_loader
        table = torch.tensor(
            [[s["batches"], s["structures"], s["atoms"]] for s in loader.seen], dtype=torch.float64
        )
        all_reduce_(table)
        total = sum(loader.weights) or 1.0
        return {
            "seen_by_source": {
                name: {
                    "weight": w / total,
                    "batches": int(row[0]),
                    "structures_seen": int(row[1]),
                    "atoms_seen": int(row[2]),
                    "epoch": epoch,
                }
                for name, w, row, epoch in zip(loader.names, loader.weights, table, loader.epochs)
            }
        }

    # ---- validation -----------------------------------------------------------------

    def _sums(self, loader) -> ErrorSums:
        loader.reset()
        with self.ema.applied(self.model):
            sums = evaluate_batches(self.model, iter(loader), self.info.device, self.dtype)
        all_reduce_(sums.table)
        return sums

    def validate(self) -> dict:
        """Validation metrics with the EMA weights; for a mixture, per source
        (``val/<source>/...``) and over all sources pooled (``val/...``)."""
        if self.val_sources:
            pooled, out = ErrorSums(), {}
            for name, loader in self.val_sources.items():
                sums = self._sums(loader)
                pooled = pooled + sums
                out.update(
                    {k.replace("val/", f"val/{name}/", 1): v for k, v in sums.metrics().items()}
                )
            self.model.train()
            return {**pooled.metrics(), **out}
        if self.val_loader is None:
            return {}
        sums = self._sums(self.val_loader)
        self.model.train()
        return sums.metrics()

    def trivial_metrics(self) -> dict:
        """Validation errors of the trivial predictors (train.losses.trivial_sums)."""
        loaders = list(self.val_sources.values()) or [self.val_loader]
        loaders = [loader for loader in loaders if loader is not None]
        if not loaders:
            return {}
        sums = ErrorSums()
        for loader in loaders:
            loader.reset()
            sums = sums + trivial_sums(loader, self.model.composition_baseline)
        all_reduce_(sums.table)
        return {k.split("/", 1)[1]: v for k, v in sums.metrics("trivial").items()}

    # ---- the loop -------------------------------------------------------------------

    def fit(self) -> str:
        """Runs to trainer.max_steps (or max_epochs); returns 'finished' or 'preempted'."""
        cfg, p = self.cfg, self.progress
        self.model.train()
        batches = self._batches()
        accum = cfg.optim.grad_accum
        consecutive_bad = 0
        status = "finished"
        t_wall = time.time()
        report = None
        if self.info.is_main:
            total = self.budget.max_steps if self.budget.max_steps < 10**9 else None
            total = total or self.budget.schedule_steps
            limit = self.budget.max_time_s
            report = ProgressReport(
                resolve_mode(cfg.trainer.progress), total, p.step, cfg.name or "train",
                deadline=self._t_start + limit if limit is not None else None,
            )
        max_atoms = cfg.trainer.max_atoms_seen
        max_steps = self.budget.max_steps
        while p.step < max_steps and (max_atoms is None or p.atoms_seen < max_atoms):
            t0 = time.perf_counter()
            wait = 0.0
            micro = 0
            local = StepTotals()
            parts_sum: dict[str, float] = {}
            lr = self.engine.lr
            grad_norm = None
            exhausted = False
            while micro < accum:
                tw = time.perf_counter()
                item = next(batches, None)
                wait += time.perf_counter() - tw
                if item is None:
                    exhausted = True
                    break
                batch, pad = item
                check_elements(batch, self.allowed)
                ids = batch[K.IDS]
                batch = to_device(batch, self.info.device, self.dtype)
                if self.augment_on:
                    batch = augment(batch, self.cfg.seed, self.info.rank, p.step * accum + micro)
                out = self.engine.forward(batch)
                decaying = self._decay_from is not None and p.step >= self._decay_from
                loss, parts = compute_loss(batch, out, self._decay_loss if decaying else cfg.loss)
                if pad:
                    loss = loss * 0.0
                stopping = self._stop_signal is not None or self._out_of_time()
                flags = torch.stack(
                    [
                        (~torch.isfinite(loss.detach())).to(torch.float32),
                        torch.tensor(float(stopping), device=loss.device),
                    ]
                )
                all_reduce_(flags)
                if flags[0] > 0:
                    consecutive_bad += 1
                    p.bad_steps += 1
                    self.engine.zero_grad()
                    self.logger.log(
                        {"step": p.step, "event": "non-finite loss, step skipped", "ids": ids[:20]}
                    )
                    if consecutive_bad >= cfg.trainer.max_bad_steps:
                        raise BadBatchError(
                            f"{consecutive_bad} non-finite losses in a row at step {p.step}; "
                            f"last batch held structures {', '.join(ids[:20])}"
                            f"{' ...' if len(ids) > 20 else ''}"
                        )
                    continue
                consecutive_bad = 0
                self.engine.backward(loss)
                norm = self.engine.step()
                grad_norm = norm if norm is not None else grad_norm
                micro += 1
                if not pad:
                    local.loss += float(loss.detach())
                    local.structures += len(ids)
                    local.atoms += int(batch[K.NUM_ATOMS].sum())
                else:
                    local.padded_batches += 1
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
                if flags[1] > 0:
                    break
            if exhausted and micro == 0:
                break
            p.step += 1
            self.ema.update(self.model)
            local.all_reduce(self.info.device)
            p.structures_seen += local.structures
            p.atoms_seen += local.atoms
            p.padded_steps += local.padded_batches
            dt = time.perf_counter() - t0
            if report is not None:
                report.update(p.step, local.loss / max(1, micro), local.atoms / dt, p.last_val)
            if p.step % cfg.trainer.log_every == 0 or p.step == max_steps:
                real = max(1.0, self.info.world_size * accum - local.padded_batches)
                row = {
                    "step": p.step,
                    "epoch": self.epoch,
                    "train/loss": local.loss / real,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "atoms_per_s": local.atoms / dt,
                    "structures_per_s": local.structures / dt,
                    "data_wait_fraction": wait / dt,
                    "step_time_s": dt,
                    "peak_memory_mb": peak_memory_mb(self.info.device),
                    **{k: v / max(1, micro) for k, v in parts_sum.items()},
                }
                self.logger.log(row)
            early_stop = False
            if cfg.trainer.val_every and (p.step % cfg.trainer.val_every == 0):
                p.last_val = self.validate()
                self.logger.log({"step": p.step, **p.last_val})
                early_stop = self._track_best(p.last_val)
            stop = self._stop_signal is not None or bool(flags[1] > 0)
            if (
                stop
                or (cfg.trainer.checkpoint_every and p.step % cfg.trainer.checkpoint_every == 0)
                or p.step in cfg.trainer.pin_steps
            ):
                self.save(time.time() - t_wall)
            if stop:
                status = "preempted" if self._stop_signal is not None else "timed-out"
                break
            if early_stop:
                self.save(time.time() - t_wall)
                self.logger.log({"step": p.step, "event": "early stop", **self.best})
                break
            if exhausted:
                break
        p.wall_time_s += time.time() - t_wall
        if report is not None:
            report.close()
        return status

    def _out_of_time(self) -> bool:
        limit = self.budget.max_time_s
        return limit is not None and time.time() - self._t_start > limit

    def _track_best(self, metrics: dict) -> bool:
        """Keeps model_best.pt (EMA weights) at the best validation value; True
        when early stopping's patience ran out."""
        es = self.cfg.trainer.early_stopping
        value = metrics.get(es.metric)
        if value is None:
            return False
        p = self.progress
        if not self.best or value < self.best["best_value"]:
            self.best = {"best_metric": es.metric, "best_value": value, "best_step": p.step}
            if self.info.is_main and self.cfg.trainer.keep_best:
                self.on_best(self)
            return False
        return es.patience is not None and (p.step - self.best["best_step"]) >= es.patience

    def state(self, elapsed: float) -> dict:
        p = self.progress
        return {
            "progress": {**p.__dict__, "wall_time_s": p.wall_time_s + elapsed},
            "best": dict(self.best),
            "schedule": schedule_record(self.cfg, self.budget),
            "loader": self.train_loader.state_dict(),
            "ema": self.ema.state_dict(),
        }

    def save(self, elapsed: float) -> Path:
        return checkpoint.save(
            self.run_dir,
            self.progress.step,
            self.engine,
            self.state(elapsed),
            self.info.rank,
            self.info.world_size,
            self.cfg.trainer.keep_checkpoints,
            identity=identity(self.cfg),
            pinned=tuple(self.cfg.trainer.pin_steps),
        )
