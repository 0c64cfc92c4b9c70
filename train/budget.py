"""How long a run is: step, epoch, atom and time budgets that compose.

The first budget reached ends the run. The learning-rate schedule follows
the budget that will end it (unless ``schedule.total_steps`` fixes it), so
``trainer.max_epochs=1`` alone runs one epoch with the schedule sized to
it, instead of stopping at a default step count. Epoch and atom budgets are
turned into steps with the same estimate the sweep's budget rules use;
``trainer.max_time`` cannot be estimated and never sizes the schedule.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from train.config import ConfigError, TrainConfig

DEFAULT_MAX_STEPS = 100  # when no budget at all is given
UNLIMITED_STEPS = 10**12


def steps_for_atoms(atoms: float, max_atoms: int, mean_atoms: float) -> int:
    """Optimiser steps to see ``atoms`` atoms with an atom budget per batch; greedy
    packing leaves on average half a structure of the budget unused."""
    fill = max(0.3, 1.0 - 0.5 * mean_atoms / max_atoms)
    return max(1, math.ceil(atoms / (fill * max_atoms)))


def parse_seconds(value: str | float | int | None) -> float | None:
    """``trainer.max_time`` in seconds: a number, or ``[D-]HH:MM:SS`` / ``MM:SS``.

    Raises:
        ConfigError: anything else.
    """
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d*)?", text):
        return float(text)
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if not match:
        raise ConfigError(
            f"trainer.max_time={value!r}: give seconds (3600) or [D-]HH:MM:SS (01:00:00)"
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


@dataclass(frozen=True)
class Budget:
    """The loop's limits and the schedule's length, with the reason in words.

    Attributes:
        max_steps: the step limit (very large when epochs or atoms end the run).
        schedule_steps: steps the learning-rate schedule spans.
        max_time_s: wall-clock budget in seconds, or None.
        reason: one line saying how long the run will be and why.
    """

    max_steps: int
    schedule_steps: int
    max_time_s: float | None
    reason: str


def resolve(cfg: TrainConfig, num_structures: int, num_atoms: int) -> Budget:
    """The run's budget over a training split of this size.

    Args:
        num_structures: structures of the training split (or subset).
        num_atoms: their atoms.
    """
    t = cfg.trainer
    mean_atoms = num_atoms / max(1, num_structures)
    estimates: dict[str, int] = {}
    if t.max_steps is not None:
        estimates["trainer.max_steps"] = t.max_steps
    if t.max_epochs is not None:
        estimates[f"trainer.max_epochs={t.max_epochs}"] = steps_for_atoms(
            t.max_epochs * num_atoms, cfg.data.max_atoms, mean_atoms
        )
    if t.max_atoms_seen is not None:
        estimates[f"trainer.max_atoms_seen={t.max_atoms_seen}"] = steps_for_atoms(
            t.max_atoms_seen, cfg.data.max_atoms, mean_atoms
        )
    max_time = parse_seconds(t.max_time)
    if not estimates:
        estimates[f"no budget given: {DEFAULT_MAX_STEPS} steps"] = DEFAULT_MAX_STEPS
    limit = t.max_steps if t.max_steps is not None else UNLIMITED_STEPS
    if t.max_steps is None and "no budget given" in next(iter(estimates)):
        limit = DEFAULT_MAX_STEPS
    ends, steps = min(estimates.items(), key=lambda item: item[1])
    schedule = cfg.schedule.total_steps or steps
    exact = ends.startswith("trainer.max_steps") or ends.startswith("no budget")
    why = (
        f"{steps} steps ({ends})"
        if exact
        else f"about {steps} steps ({ends}, at {cfg.data.max_atoms} atoms per batch)"
    )
    if max_time is not None:
        why += f", or {max_time:.0f} s of wall time if that comes first"
    source = "schedule.total_steps" if cfg.schedule.total_steps else "the budget that ends the run"
    reason = f"run: up to {why}; learning-rate schedule over {schedule} steps ({source})"
    return Budget(limit, schedule, max_time, reason)
