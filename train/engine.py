"""The small engine interface the loop talks to: DeepSpeed, or plain torch.

Both do the same steps (forward under optional bf16 autocast with fp32 master
weights, backward, clip, optimiser step at the accumulation boundary, LR
schedule) so their throughput can be compared directly.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from train.config import EngineConfig, OptimConfig
from train.serialization import deepspeed_globals, safe_load

if not torch.cuda.is_available():
    # named before DeepSpeed is imported, it does not warn on every run that it
    # found no GPU
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


class Engine:
    """Base: owns model, optimiser and schedule; subclasses do the stepping."""

    module: nn.Module

    def autocast(self):
        if self.precision == "bf16":
            device = next(self.module.parameters()).device.type
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, batch: dict) -> dict:
        with self.autocast():
            return self.module(batch)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


class TorchEngine(Engine):
    def __init__(self, model, optimizer, lr_lambda, optim: OptimConfig, engine: EngineConfig):
        self.module = model
        self.optimizer = optimizer
        self.scheduler = LambdaLR(optimizer, lr_lambda)
        self.grad_clip = optim.grad_clip
        self.accum = optim.grad_accum
        self.precision = engine.precision
        self._micro = 0
        self.ddp = None
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            self.ddp = nn.parallel.DistributedDataParallel(model)

    def forward(self, batch: dict) -> dict:
        with self.autocast():
            return (self.ddp or self.module)(batch)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def step(self) -> float | None:
        """Counts a micro-step; at the boundary clips, steps and returns the grad norm."""
        self._micro += 1
        if self._micro % self.accum:
            return None
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, folder: Path, tag: str) -> None:
        if int(os.environ.get("RANK", 0)) == 0:
            torch.save(
                {
                    "model": self.module.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "micro": self._micro,
                },
                folder / tag / "engine.pt",
            )

    def load(self, folder: Path, tag: str) -> None:
        sd = safe_load(folder / tag / "engine.pt", "checkpoint (engine state)")
        self.module.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        self._micro = sd["micro"]


def skip_shared_memory_kernel() -> bool:
    """A lone CPU process does not build DeepSpeed's shared-memory all-reduce op.

    On the CPU accelerator DeepSpeed compiles that C++ op at its first
    initialisation (30-85 s on a fresh machine, a few seconds to load once
    cached); it speeds up all-reduces between processes on one host, so a
    process alone in its group has no use for it. Returns True when skipped.
    """
    import importlib

    # the submodule itself: `import deepspeed.comm.torch` names torch, which
    # deepspeed.comm re-exports under the same attribute
    ds_comm = importlib.import_module("deepspeed.comm.torch")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or torch.cuda.is_available():
        return False
    ds_comm.build_shm_op = lambda: None
    return True


class DeepSpeedEngine(Engine):
    def __init__(self, model, optimizer, lr_lambda, optim: OptimConfig, engine: EngineConfig):
        import deepspeed

        skip_shared_memory_kernel()
        self.precision = engine.precision
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": optim.grad_accum,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": {"stage": engine.zero_stage},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            config=config,
            lr_scheduler=lambda opt: LambdaLR(opt, lr_lambda),
            dist_init_required=False,
        )
        self.module = self.ds.module
        # DeepSpeed reads its checkpoint files with weights_only=False; route
        # every read of this engine through the safe loader instead.
        self.ds.checkpoint_engine.load = _safe_deepspeed_load

    def forward(self, batch: dict) -> dict:
        with self.autocast():
            return self.ds(batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> float | None:
        boundary = self.ds.is_gradient_accumulation_boundary()
        norm = None
        if boundary and self.ds.zero_optimization_stage() == 0:
            # ZeRO 0 does not report the norm: gradients are already averaged here
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            norm = (
                float(
                    torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g) for g in grads])
                    )
                )
                if grads
                else 0.0
            )
        self.ds.step()
        if not boundary:
            return None
        if norm is None:
            reported = self.ds.get_global_grad_norm()
            norm = float(reported) if reported is not None else float("nan")
        return norm

    def zero_grad(self) -> None:
        self.ds.zero_grad()

    def save(self, folder: Path, tag: str) -> None:
        self.ds.save_checkpoint(str(folder), tag=tag, save_latest=False)

    def load(self, folder: Path, tag: str) -> None:
        path, _ = self.ds.load_checkpoint(
            str(folder), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {folder / tag}")


def _safe_deepspeed_load(path, map_location=None):
    return safe_load(path, "DeepSpeed checkpoint file", map_location, allow=deepspeed_globals())


def build_engine(model, optimizer, lr_lambda, optim: OptimConfig, engine: EngineConfig) -> Engine:
    cls = DeepSpeedEngine if engine.kind == "deepspeed" else TorchEngine
    return cls(model, optimizer, lr_lambda, optim, engine)
