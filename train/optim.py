"""Optimiser and learning-rate schedules (the schedule length is its own knob)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from train.config import OptimConfig, ScheduleConfig


def build_optimizer(
    params: nn.Module | Iterable[torch.Tensor] | Iterable[dict], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The configured Adam(W) over a model's parameter groups or given parameters.

    Args:
        params: a model (its `parameter_groups(lr)` when it has one, e.g. PET's
            per-role muP learning rates, else all its parameters), or an
            iterable of parameters or of parameter-group dicts.
        cfg: optimiser settings; `cfg.lr` is the base learning rate, which each
            group may scale (the schedule's LambdaLR then multiplies each group's
            own learning rate, so the multipliers hold at every step).
    """
    if isinstance(params, nn.Module):
        groups = getattr(params, "parameter_groups", None)
        params = groups(cfg.lr) if groups is not None else params.parameters()
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.name]
    return cls(
        params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def decay_start(cfg: ScheduleConfig, max_steps: int) -> int | None:
    """The first step of the schedule's decay phase: a wsd schedule's linear
    decay, the last ``decay_fraction`` of a cosine one; None for constant."""
    if cfg.kind == "constant":
        return None
    total = cfg.total_steps or max_steps
    return total - round(cfg.decay_fraction * total)


def lr_factor(cfg: ScheduleConfig, max_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based).

    The schedule runs over `cfg.total_steps` (default: max_steps), so a run
    stopped early by a smaller budget sees the same curve as a longer one.
    """
    total = cfg.total_steps or max_steps
    warmup = (
        cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_fraction * total)
    )
    floor = cfg.min_lr_ratio

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if cfg.kind == "constant":
            return 1.0
        if cfg.kind == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        start = decay_start(cfg, max_steps)
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, total - start))
        return floor + (1 - floor) * (1 - progress)

    return factor
