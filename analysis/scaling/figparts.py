"""The parts every scaling figure shares: units and axis labels, plain tick labels,
point labels, the trivial predictor's line, the fitted formula, the fit's verdict,
the band (or why there is none) and legend entries for every marker and line style.

The figures themselves are :mod:`analysis.scaling.plots` (the fits) and
:mod:`analysis.scaling.sideplots` (tuned values, ratios, training curves).
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from analysis.scaling.fitsjson import baseline_of  # noqa: E402
from analysis.scaling.laws import AXIS_PARAMS, FitResult  # noqa: E402
from analysis.scaling.types import FitEntry, Run  # noqa: E402

UNITS = {
    "energy_per_atom": "eV/atom",
    "energy": "eV",
    "forces": "eV/Å",
    "force": "eV/Å",
    "stress": "eV/Å³",
    "virial": "eV",
    "rmsd": "Å",
    "freq": "THz",
    "rot_error_forces": "eV/Å",
}
AXIS_LABEL = {
    "N": "parameters N",
    "non-embedding": "non-embedding parameters N",
    "total": "parameters N",
    "C": "training compute C (FLOPs)",
}
DATA_LABEL = {
    "atoms_seen": "atoms seen D",
    "structures_seen": "structures seen D",
    "train_atoms": "training-set atoms D",
    "train_structures": "training-set structures D",
}
EXPONENT = {"alpha": "α", "beta": "β", "kappa": "κ"}
TRIVIAL = {"energy": "composition baseline", "forces": "zero forces", "stress": "zero stress"}
WARN_COLOUR = "#b00000"
TICK_SIZE = 8  # points, major and minor tick labels alike


def metric_unit(metric: str) -> str:
    """The unit of a metric from its name ("" when unknown)."""
    base = metric.split("/")[-1]
    for key, unit in UNITS.items():
        if base.startswith(key + "_") or base == key:
            # "energy_mae_per_atom" (relax) as well as "energy_per_atom_mae" (val)
            return "eV/atom" if unit == "eV" and "per_atom" in base else unit
    return ""


def metric_label(metric: str) -> str:
    unit = metric_unit(metric)
    return f"{metric} ({unit})" if unit else metric


def slug(metric: str) -> str:
    """File-name form of a metric name."""
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in metric).strip("-")


def colours(families: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {f: cycle[i % len(cycle)] for i, f in enumerate(families)}


def save(fig, stem: Path) -> list[str]:
    """The figure as STEM.png and STEM.pdf; closes it and returns the file names."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
        out.append(path.name)
    plt.close(fig)
    return out


# ------------------------------------------------------------------ ticks


def plain_number(x: float) -> str:
    """0.6, 20, 3000 as they are; 1e6 and 3e-5 outside [1e-4, 1e5)."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    if 1e-4 <= abs(x) < 1e5:
        return f"{x:.6g}"  # .4g would turn 10000 into 1e+04
    mantissa, exp = f"{x:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


class PlainLogFormatter(ticker.LogFormatter):
    """Log-axis labels as plain numbers ("0.6", not 6x10^-1); as a minor formatter
    (labelOnlyBase=False) it labels a few minor ticks when the axis spans little."""

    def _num_to_string(self, x, vmin, vmax):
        return plain_number(x)


def plain_ticks(ax) -> None:
    """Plain-number tick labels on both axes of `ax`, log or linear."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=True))
            # label some minor ticks (2, 5 ...) up to two decades, all of them under half
            axis.set_minor_formatter(
                PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
            )
        elif axis.get_scale() == "linear":
            fmt = ticker.ScalarFormatter(useOffset=False)
            fmt.set_scientific(False)
            axis.set_major_formatter(fmt)
    # one size for every label: a log axis labels decades as major ticks and 2, 5...
    # as minor ones, and "1000" printed larger than its neighbour "2000" reads as
    # a different kind of number
    ax.tick_params(which="both", labelsize=TICK_SIZE)


# ------------------------------------------------------------------ points


def point_label(r: Run) -> str:
    """Short label of a run's point: its size and data fraction ("n2, 10%"), and
    for a WSD cooldown branch the fraction of the main run it branched at."""
    size = r.size or r.axes.get("size")
    frac = r.data_fraction if r.data_fraction is not None else r.axes.get("data_fraction")
    parts = [str(size)] if size else []
    with contextlib.suppress(TypeError, ValueError):
        parts.append(f"{100 * float(frac):.3g}%")
    ladder = r.ladder or {}
    if ladder.get("role") == "cooldown" and ladder.get("decay_at") is not None:
        # the branches of one WSD ladder share size and fraction: tell them apart
        with contextlib.suppress(TypeError, ValueError):
            parts.append(f"cd@{float(ladder['decay_at']):g}")
    return ", ".join(parts)


def label_points(ax, runs: list[Run], xs, ys, colour: str, below: bool = False) -> None:
    """Each point's label next to it (above right, or below right for a second
    family), once per label: seeds of one point share it."""
    seen: set[str] = set()
    for r, x, y in zip(runs, np.asarray(xs, float), np.asarray(ys, float)):
        lab = point_label(r)
        if not lab or lab in seen or not (np.isfinite(x) and np.isfinite(y)):
            continue
        seen.add(lab)
        ax.annotate(
            lab,
            (x, y),
            xytext=(3, -7 if below else 3),
            textcoords="offset points",
            fontsize=5.5,
            color=colour,
            alpha=0.85,
            gid="point-label",
        )


def declutter_labels(fig, max_moves: int = 6) -> None:
    """Moves point labels that would print over one another: each label, in drawing
    order, steps away from its point (up when it sits above it, down when below)
    by its own height until it overlaps no label placed before it. Runs that share
    a size and a nearly equal error (one size, two data fractions) otherwise print
    their labels on top of each other."""
    fig.canvas.draw()  # positions after the (constrained) layout
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        placed = []
        for t in [t for t in ax.texts if t.get_gid() == "point-label"]:
            box = t.get_window_extent(renderer)
            for _ in range(max_moves):
                if not any(box.overlaps(p) for p in placed):
                    break
                dx, dy = t.xyann
                step = box.height * 72.0 / fig.dpi + 0.5  # display pixels -> points
                t.xyann = (dx, dy + (step if dy >= 0 else -step))
                box = t.get_window_extent(renderer)
            placed.append(box)


def draw_points(
    ax, runs: list[Run], xs, ys, in_fit: set[str], colour: str, below: bool = False
) -> set[str]:
    """Runs as markers: filled in the fit, hollow still improving, a cross not in the
    fit; each labelled with its size and data fraction. Returns the styles used."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    fit = np.array([r.name in in_fit for r in runs], bool)
    still = np.array([r.still_improving for r in runs], bool)
    used = set()
    for kind, mask, style in (
        ("fit", fit & ~still, {"color": colour}),
        ("still", fit & still, {"facecolors": "none", "edgecolors": colour, "linewidths": 1.2}),
        ("out", ~fit & ~still, {"color": colour, "marker": "x", "alpha": 0.5}),
        ("still", ~fit & still, {"facecolors": "none", "edgecolors": colour, "alpha": 0.5}),
    ):
        if (ok & mask).any():
            ax.scatter(xs[ok & mask], ys[ok & mask], s=28, zorder=3, **style)
            used.add(kind)
    label_points(ax, runs, xs, ys, colour, below)
    return used


MARKER_LABELS = {"fit": "in the fit", "still": "still improving", "out": "not in the fit"}


def marker_handles(used: set[str], labels: dict[str, str] | None = None) -> list[Line2D]:
    """Grey legend entries for the marker kinds drawn."""
    labels = {**MARKER_LABELS, **(labels or {})}
    style = {
        "fit": {"marker": "o", "color": "0.35"},
        "still": {"marker": "o", "color": "0.35", "markerfacecolor": "none"},
        "out": {"marker": "x", "color": "0.35", "alpha": 0.6},
    }
    return [
        Line2D([], [], ls="", ms=5, label=labels[k], **style[k])
        for k in ("fit", "still", "out")
        if k in used
    ]


# ------------------------------------------------------------------ trivial predictor


def trivial_line(ax, runs: list[Run], metric: str) -> float | None:
    """A dotted line at the trivial predictor's value of the metric, where runs record
    one (summary.json `baseline`); its value or None (then nothing is drawn)."""
    b = baseline_of([r for r in runs if r.finished], metric)
    if b is None:
        return None
    base = metric.split("/")[-1]
    what = next((v for k, v in TRIVIAL.items() if base.startswith(k)), "")
    unit = metric_unit(metric)
    ax.axhline(
        b,
        color="k",
        ls=(0, (1, 1.5)),
        lw=1.3,
        zorder=2,
        label=f"trivial predictor{f' ({what})' if what else ''}: {b:.3g} {unit}".rstrip(),
    )
    return b


# ------------------------------------------------------------------ fits


def _tex_num(x: float) -> str:
    s = f"{x:.3g}"
    if "e" in s:
        m, e = s.split("e")
        return rf"{m}\times10^{{{int(e)}}}"
    return s


def formula(res: FitResult) -> str:
    """The fitted law with its values, e.g. "$L = 30\\,N^{-0.35} + 0.02$"."""
    p = res.params
    terms = [
        rf"{_tex_num(p[c])}\,{a}^{{-{p[e]:.2f}}}" for a in res.law.axes for c, e in [AXIS_PARAMS[a]]
    ]
    if res.law.offset:
        terms.append(_tex_num(p["E"]))
    return "$L = " + " + ".join(terms) + "$"


def exponent_text(res: FitResult) -> str:
    """ "α = 0.35 [0.30, 0.41]" for each exponent (no interval without a bootstrap)."""
    p, ci = res.params, res.ci
    out = []
    for e in res.law.exponent_names:
        iv = ci.get(e)
        out.append(f"{EXPONENT[e]} = {p[e]:.2f}" + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else ""))
    return ", ".join(out)


def band_note(res: FitResult) -> str | None:
    """Why a fit has no confidence band, or None when it has one."""
    if res.has_ci:
        return None
    n, p = len(res.y), res.law.num_params
    if n <= p:
        return f"no band: {n} runs for {p} parameters"
    if res.num_bootstrap == 0:
        return "no band: no bootstrap (--bootstrap 0)"
    return f"no band: {len(res.theta_boot)} of {res.num_bootstrap} bootstrap fits usable"


def warning(entry: FitEntry) -> str | None:
    """What a reader must not miss about a fit: a verdict other than good, or an
    exponent whose interval reaches 0 (no evidence the metric falls along that axis)."""
    res = entry.result
    q, p, ci = res.quality, res.params, res.ci
    verdict = q.get("verdict", "?")
    flat = [
        EXPONENT[e]
        for e in res.law.exponent_names
        if p[e] < 1e-3 or (ci.get(e) is not None and ci[e][0] < 0.01)
    ]
    if verdict == "good" and not flat:
        return None
    why = [f"{', '.join(flat)} interval reaches 0: no evidence of scaling"] if flat else []
    why += [r for r in q.get("reasons", [])[:1] if not flat or "interval" not in r]
    text = f"{entry.family}: {verdict.upper()} fit - " + "; ".join(why)
    return "\n".join(textwrap.wrap(text, 90, subsequent_indent="    "))


def draw_fit(ax, entry: FitEntry, x: dict, axis: str, colour: str, **line) -> np.ndarray:
    """The fitted curve over `x` (axis -> values) and its bootstrap band; the curve."""
    res = entry.result
    y = res.predict(x)
    ax.plot(x[axis], y, color=colour, **{"lw": 1.8, **line})
    band = res.band(x)
    if band is not None:
        ax.fill_between(x[axis], band[0], band[1], color=colour, alpha=0.2, lw=0, gid="band")
    return y


def fit_notes(
    ax,
    entries: list[tuple[FitEntry, str]],
    warnings_in_axes: bool = True,
    missing: list[tuple[str, str]] | None = None,
) -> None:
    """Under the axes, one line per fit: family, formula, exponents with intervals,
    verdict and why there is no band; then one line per family drawn without a fit
    saying why (`missing`: text and colour); inside the axes, in red, the warnings."""
    anchor = ax.xaxis.label
    lines = []
    for e, colour in entries:
        res = e.result
        text = f"{e.family}, L({', '.join(res.law.axes)}): {formula(res)}   {exponent_text(res)}"
        text += f";  {res.quality.get('verdict', '?')} fit"
        if note := band_note(res):
            text += f";  {note}"
        lines.append((text, colour))
    for text, colour in lines + list(missing or []):
        anchor = ax.annotate(
            text,
            (0.5, 0),
            xycoords=anchor,
            xytext=(0, -3),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=7.5,
            color=colour,
            gid="fit-note",
        )
    warns = [w for e, _ in entries if (w := warning(e))]
    if warns and warnings_in_axes:
        ax.text(
            0.02,
            0.03,
            "\n".join(warns),
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize=7.5,
            fontweight="bold",
            color=WARN_COLOUR,
            zorder=10,
            bbox={"facecolor": "white", "edgecolor": WARN_COLOUR, "alpha": 0.85, "lw": 0.8},
            gid="fit-warning",
        )


def set_ylim(ax, values: list[np.ndarray]) -> None:
    """Log y limits around the points, curves and lines drawn (not an extrapolated band)."""
    v = np.concatenate([np.ravel(np.asarray(a, float)) for a in values]) if values else []
    v = v[np.isfinite(v) & (v > 0)] if len(v) else v
    if len(v):
        lo, hi = float(v.min()), float(v.max())
        ax.set_ylim(lo / 1.25, hi * 1.25 if hi > lo else hi * 1.5)


def legend_outside(ax, handles=None, **kw) -> None:
    """The legend right of the axes, so that it hides no point."""
    h, lab = ax.get_legend_handles_labels()
    h, lab = h + list(handles or []), lab + [x.get_label() for x in handles or []]
    ax.legend(h, lab, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5, **kw)
