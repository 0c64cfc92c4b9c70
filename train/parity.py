"""Parity plots (predicted against reference) of an evaluation, as PNG files.

One figure per quantity: energy per atom (eV/atom), force components (eV/A)
and stress components (eV/A^3, ASE sign), each with the y = x line and its MAE
and RMSE written on it. Where the data carries configuration types (mlearn
groups, extended XYZ ``config_type``), each type has its own colour and legend
entry, with its MAE, so the points behind evaluate's per-type table can be
told apart. Written by ``python -m train.evaluate ... --parity DIR``.
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
# Beyond this many configuration types a legend is a list nobody reads: one colour.
MAX_GROUPS = 10
NO_GROUP = "(none)"

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
    group: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, quantity: str, pred: np.ndarray, ref: np.ndarray,
            groups: list | np.ndarray | None = None) -> None:
        """Values of one batch; `groups` names the configuration type of each
        leading row of `pred` (a structure, or an atom for forces), or None."""
        pred = np.asarray(pred, np.float64)
        if not pred.size:
            return
        per_row = pred.size // max(len(pred), 1)
        names = [NO_GROUP] * len(pred) if groups is None else [g or NO_GROUP for g in groups]
        if len(names) != len(pred):
            raise ValueError(f"{quantity}: {len(names)} configuration types for {len(pred)} rows")
        self.pred.setdefault(quantity, []).append(pred.ravel())
        self.ref.setdefault(quantity, []).append(np.asarray(ref, np.float64).ravel())
        self.group.setdefault(quantity, []).append(np.repeat(np.array(names, object), per_row))

    def arrays(self, quantity: str) -> tuple[np.ndarray, np.ndarray] | None:
        if quantity not in self.pred:
            return None
        return np.concatenate(self.pred[quantity]), np.concatenate(self.ref[quantity])

    def groups(self, quantity: str) -> np.ndarray | None:
        """The configuration type of every value of `quantity`, or None."""
        if quantity not in self.group:
            return None
        return np.concatenate(self.group[quantity])


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
        fig = parity_figure(*got, what, unit, f"{title}\n{what} ({detail})",
                            points.groups(quantity))
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def parity_figure(pred: np.ndarray, ref: np.ndarray, what: str, unit: str, title: str,
                  groups: np.ndarray | None = None):
    """The parity figure of one quantity (not saved; the caller closes it).

    Args:
        pred, ref: predicted and reference values, flat and aligned.
        what, unit: the quantity's name and unit for the axis labels.
        title: the figure title.
        groups: the configuration type of each value, or None. With 2 to
            MAX_GROUPS types, each is drawn in its own colour with its MAE in
            the legend.
    """
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
    names = [] if groups is None else sorted(set(groups), key=lambda g: (g == NO_GROUP, g))
    if 2 <= len(names) <= MAX_GROUPS:
        for k, name in enumerate(names):
            sel = shown[groups[shown] == name]
            mae_g = float(np.abs(err[groups == name]).mean())
            ax.scatter(ref[sel], pred[sel], s=size, alpha=0.5, color=f"C{k}", linewidths=0,
                       label=f"{name}: MAE {mae_g:.3g}")
    else:
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
    legend = ax.legend(loc="lower right", fontsize=7, markerscale=1.5,
                       title=f"configuration type (MAE, {unit})" if len(names) >= 2 else None,
                       title_fontsize=7)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    fig.tight_layout()
    return fig
