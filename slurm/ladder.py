"""WSD ladders: several data sizes from one run per grid point.

The budget rule ``wsd-ladder`` trains one *main* run per (family, size, data)
at a constant learning rate after warm-up, for ``budget.steps`` steps, and
pins a checkpoint at each ``decay_at`` fraction of it. From each pinned
checkpoint a *cooldown branch* (``<run>_cd<k>``, its own run directory and
summary.json) decays the learning rate linearly to zero over
``decay_fraction`` times its branch step. A branch is, bit for bit, the
warm-up-stable-decay run of the same length (the schedule up to the branch
point is the same constant), so one main run yields ``len(decay_at)``
points of the data axis for ``1 + decay_fraction * sum(decay_at)`` times its
cost. The main run itself is not a point (it never cooled down).

Both kinds of run train in one job, main first: a requeued job skips what
finished and resumes the run it was in.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from train.checkpoint import tag_of


@dataclass(frozen=True)
class Branch:
    """One cooldown: from the main run's checkpoint at ``branch_step``, decay over
    ``cooldown_steps`` steps. ``index`` is k of the run name ``<run>_cd<k>``."""

    index: int
    decay_at: float
    branch_step: int
    cooldown_steps: int

    @property
    def total_steps(self) -> int:
        return self.branch_step + self.cooldown_steps


def plan(steps: int, decay_at: list[float], decay_fraction: float) -> list[Branch]:
    """The branches of a main run of ``steps`` steps.

    Raises:
        ValueError: fractions outside (0, 1], repeated branch steps, or a
            cooldown fraction outside (0, 1].
    """
    if not decay_at:
        raise ValueError("budget.rule=wsd-ladder needs budget.decay_at (fractions of the steps)")
    if not 0 < decay_fraction <= 1:
        raise ValueError(f"budget.decay_fraction={decay_fraction} must lie in (0, 1]")
    branches = []
    for k, f in enumerate(sorted(float(x) for x in decay_at)):
        if not 0 < f <= 1:
            raise ValueError(f"budget.decay_at value {f} must lie in (0, 1]")
        step = max(1, round(f * steps))
        branches.append(Branch(k, f, step, max(1, round(decay_fraction * step))))
    steps_at = [b.branch_step for b in branches]
    if len(set(steps_at)) != len(steps_at):
        raise ValueError(f"budget.decay_at gives repeated branch steps {steps_at}; use fewer")
    return branches


def warmup_steps(steps: int, warmup_fraction: float) -> int:
    """Warm-up in steps of the main run, the same for every branch."""
    return max(0, round(warmup_fraction * steps))


def main_overrides(steps: int, warmup: int, branches: list[Branch]) -> list[str]:
    pins = ",".join(str(b.branch_step) for b in branches)
    return [
        f"trainer.max_steps={steps}",
        "schedule.kind=constant",
        f"schedule.warmup_steps={warmup}",
        f"trainer.pin_steps=[{pins}]",
    ]


# A branch validates and exports EMA weights. With the trainer's usual decay
# (0.99, a ~100-step memory) a cooldown of 16-128 steps would report weights
# averaged mostly from before it began. A branch's EMA instead remembers about
# this fraction of its cooldown (and never longer than the configured decay).
EMA_FRACTION_OF_COOLDOWN = 0.25


def branch_ema_decay(cooldown_steps: int, decay: float) -> float:
    """EMA decay of a branch: memory 1 / (1 - d) of at most a quarter of its
    cooldown, and at most ``decay`` (the run's own)."""
    memory = max(1.0, EMA_FRACTION_OF_COOLDOWN * cooldown_steps)
    return min(float(decay), 1.0 - 1.0 / memory)


def branch_overrides(branch: Branch, warmup: int, ema_decay: float) -> list[str]:
    """A branch's schedule: warm-up and constant as the main run, then a linear
    decay from ``branch_step`` to ``total_steps``; six validations over the
    cooldown, so its second half (the convergence window) holds three; an EMA
    whose memory fits the cooldown (``branch_ema_decay`` of ``ema_decay``, the
    run's configured decay)."""
    return [
        f"trainer.ema_decay={branch_ema_decay(branch.cooldown_steps, ema_decay)!r}",
        f"trainer.val_every={max(1, branch.cooldown_steps // 6)}",
        f"trainer.max_steps={branch.total_steps}",
        "schedule.kind=wsd",
        f"schedule.warmup_steps={warmup}",
        f"schedule.total_steps={branch.total_steps}",
        f"schedule.decay_fraction={branch.cooldown_steps / branch.total_steps!r}",
        "schedule.min_lr_ratio=0.0",
        "trainer.pin_steps=[]",
    ]


def seed_branch(main_dir: Path, branch_dir: Path, step: int) -> None:
    """Gives a new branch the main run's checkpoint at its branch step, so the
    branch resumes from it (the run identity is the same; only the schedule and
    length differ, which a resume allows). A branch with checkpoints of its own
    is left alone: it resumes from them.

    Raises:
        FileNotFoundError: the main run has no checkpoint at that step.
    """
    own = Path(branch_dir) / "checkpoints"
    if own.is_dir() and any(own.glob("step-*")):
        return
    if int(os.environ.get("RANK", "0")) != 0:  # one copy per job: rank 0 makes it
        deadline = time.time() + 600
        while not (own / tag_of(step) / "meta.json").is_file():
            if time.time() > deadline:
                raise FileNotFoundError(f"rank 0 did not seed {branch_dir} within 600 s")
            time.sleep(0.5)
        return
    source = Path(main_dir) / "checkpoints" / tag_of(step)
    if not (source / "meta.json").is_file():
        raise FileNotFoundError(
            f"{main_dir} has no checkpoint at step {step} for its cooldown branch {branch_dir}"
        )
    own.mkdir(parents=True, exist_ok=True)
    tmp = own / f".{tag_of(step)}.copy"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tmp.rename(own / tag_of(step))  # appears whole or not at all
