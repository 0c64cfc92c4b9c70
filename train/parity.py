"""Parity plots (predicted against reference) of an evaluation, as PNG files.

One figure per quantity: energy per atom (eV/atom), force components (eV/A)
and stress components (eV/A^3, ASE sign), each with the y = x line and its MAE
and RMSE written on it. Written by ``python -m train.evaluate ... --parity DIR``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data_pipelines.atomic import write_bytes  # noqa: E402

# Beyond this many points a scatter is one blot and slow to draw: a seeded
# random subset is plotted (the MAE on the figure is still over every point).
MAX_POINTS = 100_000

QUANTITIES = {
    "energy_per_atom": ("energy per atom", "eV/atom", "total energy / atoms"),
    "forces": ("force components", "eV/Å", "x, y, z of every atom"),
    "stress": ("stress components", "eV/Å³", "9 per structure, ASE sign: tension positive"),
}


@dataclass
class ParityPoints:
    """Predicted and reference values gathered batch by batch, per quantity."""

    pred: dict[str, list[np.ndarray]] = field(default_factory=dict)
    ref: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, quantity: str, pred: np.ndarray, ref: np.ndarray) -> None:
        if pred.size:
            self.pred.setdefault(quantity, []).append(np.asarray(pred, np.float64).ravel())
            self.ref.setdefault(quantity, []).append(np.asarray(ref, np.float64).ravel())

    def arrays(self, quantity: str) -> tuple[np.ndarray, np.ndarray] | None:
        if quantity not in self.pred:
            return None
        return np.concatenate(self.pred[quantity]), np.concatenate(self.ref[quantity])


def write_parity_plots(points: ParityPoints, out_dir: str | Path, title: str) -> list[Path]:
    """Writes parity_<quantity>.png for each quantity that has labels.

    Args:
        points: the gathered predictions and labels.
        out_dir: folder for the figures (created).
        title: first line of every figure's title (model, split).

    Returns:
        The files written, in QUANTITIES order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for quantity, (what, unit, detail) in QUANTITIES.items():
        got = points.arrays(quantity)
        if got is None:
            continue
        path = out / f"parity_{quantity}.png"
        _figure(*got, what, unit, f"{title}\n{what} ({detail})", path)
        written.append(path)
    return written


def _figure(pred: np.ndarray, ref: np.ndarray, what: str, unit: str, title: str,
            path: Path) -> None:
    err = pred - ref
    mae, rmse = float(np.abs(err).mean()), float(np.sqrt(np.square(err).mean()))
    shown = np.arange(pred.size)
    note = f"{pred.size:,} values"
    if pred.size > MAX_POINTS:
        shown = np.sort(np.random.default_rng(0).choice(pred.size, MAX_POINTS, replace=False))
        note += f" ({MAX_POINTS:,} drawn at random)"
    lo = float(min(pred.min(), ref.min()))
    hi = float(max(pred.max(), ref.max()))
    pad = 0.03 * (hi - lo) if hi > lo else 1e-3
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=0.8, label="y = x")
    size = 12 if shown.size < 2000 else 4  # a few points must still be seen
    ax.scatter(ref[shown], pred[shown], s=size, alpha=0.35, color="tab:blue", linewidths=0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {what} ({unit})")
    ax.set_ylabel(f"predicted {what} ({unit})")
    ax.set_title(title, fontsize=9)
    ax.text(0.03, 0.97, f"MAE {mae:.4g} {unit}\nRMSE {rmse:.4g} {unit}\n{note}",
            transform=ax.transAxes, va="top", fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9})
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
