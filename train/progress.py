"""What a person watching a run sees: a progress bar on a terminal, plain
periodic lines elsewhere (SLURM logs, CI), nothing when asked.

``trainer.progress``: ``auto`` (bar on a terminal, lines otherwise), ``bar``,
``lines`` or ``none`` (``true``/``false`` mean bar/none).
"""

from __future__ import annotations

import sys
import time

LINE_EVERY_S = 30.0
MODES = ("auto", "bar", "lines", "none", "true", "false")


def resolve_mode(mode: str | bool | None) -> str:
    """``bar``, ``lines`` or ``none`` for a configured mode on this stream."""
    text = str(mode).lower() if mode is not None else "auto"
    if text in ("true", "bar"):
        return "bar"
    if text in ("false", "none"):
        return "none"
    if text == "lines":
        return "lines"
    return "bar" if sys.stderr.isatty() else "lines"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressReport:
    """Step-by-step progress of the training loop on the main rank."""

    def __init__(self, mode: str, total: int | None, initial: int, name: str,
                 deadline: float | None = None):
        """``deadline``: the wall-clock time (time.time()) at which the run's
        time budget ends it, if it has one; the ETA is never later."""
        self.mode = mode
        self.total = total
        self.deadline = deadline
        self.name = name
        self.start_step = initial
        self.t0 = time.time()
        self.last_line = 0.0
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=name,
                unit="step",
                leave=False,
                dynamic_ncols=True,
            )

    def update(self, step: int, loss: float, atoms_per_s: float, last_val: dict) -> None:
        """After every optimiser step."""
        val = last_val.get("val/forces_mae")
        if self.bar is not None:
            post = {"loss": f"{loss:.4g}", "atoms/s": f"{atoms_per_s:.0f}"}
            if val is not None:
                post["val F MAE (eV/A)"] = f"{val:.4g}"
            self.bar.update(1)
            self.bar.set_postfix(post, refresh=False)
            return
        now = time.time()
        if self.mode != "lines" or (now - self.last_line < LINE_EVERY_S and step > 1):
            return
        self.last_line = now
        done = step - self.start_step
        parts = [f"{self.name}: step {step}" + (f"/{self.total}" if self.total else "")]
        parts.append(f"loss {loss:.4g}")
        if val is not None:
            parts.append(f"val forces MAE {val:.4g} eV/A")
        parts.append(f"{atoms_per_s:.0f} atoms/s")
        if self.total and done > 0:
            rate = (now - self.t0) / done
            eta = rate * (self.total - step)
            if self.deadline is not None and now + eta > self.deadline:
                parts.append(f"eta {_duration(max(0.0, self.deadline - now))} (time budget)")
            else:
                parts.append(f"eta {_duration(eta)}")
        print(" | ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
