"""Figures of a scaling analysis, as PNG and PDF (matplotlib, Agg backend).

Per metric: loss against N, against D and against compute (log-log, one colour
per family, fitted curves with bootstrap bands), residuals of every fit
against each of its axes, the error ratio of each pair of families, the metric
against the tuned value of a tuned study, and validation curves over training.
Markers: filled, a run in the fit; hollow, a run still improving at the end
of training; a cross, a run not in the fit (another slice, a ladder main, a
tuned value not chosen).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.scaling.laws import LAW_NAMES, Law, num_distinct  # noqa: E402
from analysis.scaling.types import Analysis, FitEntry, Run  # noqa: E402

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


def _colours(families: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {f: cycle[i % len(cycle)] for i, f in enumerate(families)}


def _save(fig, stem: Path) -> list[str]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
        out.append(path.name)
    plt.close(fig)
    return out


def _grid(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    return np.geomspace(lo / 1.3, hi * 1.3, 80) if hi > lo else np.array([lo])


def _points(ax, runs: list[Run], xs, ys, in_fit: set[str], colour: str) -> None:
    """Runs as markers: filled in the fit, hollow still improving, a cross not in the fit."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    fit = np.array([r.name in in_fit for r in runs], bool)
    still = np.array([r.still_improving for r in runs], bool)
    for mask, style in (
        (fit & ~still, {"color": colour}),
        (fit & still, {"facecolors": "none", "edgecolors": colour, "linewidths": 1.2}),
        (~fit & ~still, {"color": colour, "marker": "x", "alpha": 0.5}),
        (~fit & still, {"facecolors": "none", "edgecolors": colour, "alpha": 0.5}),
    ):
        if (ok & mask).any():
            ax.scatter(xs[ok & mask], ys[ok & mask], s=28, zorder=3, **style)


_MARKERS = "filled: in the fit; hollow: still improving; x: not in the fit"


def _draw_fit(ax, entry: FitEntry, axis: str, colour: str, label: str) -> None:
    res = entry.result
    x = _grid(res.x[axis])
    ax.plot(x, res.predict({axis: x}), color=colour, lw=1.8, label=label)
    band = res.band({axis: x})
    if band is not None:
        ax.fill_between(x, band[0], band[1], color=colour, alpha=0.2, lw=0)


def _draw_joint(ax, entry: FitEntry, axis: str, colour: str) -> None:
    """The L(N, D) fit as one dashed curve per level of the other axis."""
    res = entry.result
    other = "D" if axis == "N" else "N"
    levels = np.unique(np.round(np.log(res.x[other]), 2))
    x = _grid(res.x[axis])
    for i, lv in enumerate(levels):
        ax.plot(
            x,
            res.predict({axis: x, other: np.full_like(x, np.exp(lv))}),
            color=colour,
            lw=1,
            ls="--",
            alpha=0.8,
            label=f"{entry.family}: L(N, D)" if i == 0 else None,
        )


def loss_vs_axis(an: Analysis, metric: str, axis: str, stem: Path) -> list[str] | None:
    """Loss against N or D, fitted curves and bands; None if nothing to draw."""
    colours = _colours(an.families)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    drawn = False
    measure, pm = an.settings.data_measure, an.settings.param_measure
    for fam in an.families:
        laws = an.fits.get(fam, {}).get(metric, {})
        runs = [
            r for r in an.runs if r.finished and r.family == fam and r.metrics.get(metric, 0) > 0
        ]
        if laws:
            measure = next(iter(laws.values())).data_measure
        xs = np.array([(r.params(pm) if axis == "N" else r.data(measure)) or np.nan for r in runs])
        ys = np.array([r.metrics[metric] for r in runs])
        if not np.isfinite(xs).any():
            continue
        drawn = True
        shown = axis if axis in laws else ("ND" if "ND" in laws else None)
        in_fit = {r.name for r in laws[shown].runs} if shown else set()
        _points(ax, runs, xs, ys, in_fit, colours[fam])
        if axis in laws:
            p = laws[axis].result.params
            e = p[laws[axis].result.law.exponent_names[0]]
            name = "alpha" if axis == "N" else "beta"
            _draw_fit(ax, laws[axis], axis, colours[fam], f"{fam}: {name} = {e:.2f}")
        elif "ND" in laws:
            _draw_joint(ax, laws["ND"], axis, colours[fam])
        else:
            ax.plot([], [], "o", color=colours[fam], label=f"{fam} (no fit)")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(AXIS_LABEL[pm] if axis == "N" else DATA_LABEL.get(measure, measure))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric} vs {'model size' if axis == 'N' else 'data'}\n({_MARKERS})", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, stem)


def loss_vs_compute(an: Analysis, metric: str, stem: Path) -> list[str] | None:
    """Loss against measured compute: runs, empirical frontier, fitted frontier."""
    colours = _colours(an.families)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    drawn = False
    for fam in an.families:
        runs = [
            r
            for r in an.runs
            if r.finished and r.family == fam and r.flops and r.metrics.get(metric, 0) > 0
        ]
        if not runs:
            continue
        drawn = True
        law_c = an.fits.get(fam, {}).get(metric, {}).get("C")
        front = an.pareto.get(fam, {}).get(metric, [])
        on_env = {p["run"] for p in front} if law_c is None else {r.name for r in law_c.runs}
        xs, ys = [r.flops for r in runs], [r.metrics[metric] for r in runs]
        _points(ax, runs, xs, ys, on_env, colours[fam])
        if law_c is not None:
            kappa = law_c.result.params["kappa"]
            _draw_fit(ax, law_c, "C", colours[fam], f"{fam}: L(C) envelope, kappa = {kappa:.2f}")
        if len(front) > 1:
            ax.step(
                [p["C"] for p in front],
                [p["L"] for p in front],
                where="post",
                color=colours[fam],
                lw=0.8,
                alpha=0.6,
            )
        fr = an.frontiers.get(fam, {}).get(metric, {})
        if fr.get("status") == "ok":
            c, cur = np.array(fr["curve"]["C"]), fr["curve"]
            inside = np.array(cur["in_range"], bool)
            a = fr["N_opt_exponent"]["value"]
            lab = f"{fam}: L(N, D) optimum, N_opt ~ C^{a:.2f}"
            # dash-dot where the optimal N and D were sampled, dotted where extrapolated
            ax.plot(
                c,
                np.where(inside, cur["L"], np.nan),
                color=colours[fam],
                lw=1.2,
                ls="-.",
                label=lab,
            )
            ax.plot(c, cur["L"], color=colours[fam], lw=0.8, ls=":", alpha=0.6)
        else:
            ax.plot([], [], "o", color=colours[fam], label=f"{fam} (no L(N, D) frontier)")
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xscale="log", yscale="log", xlabel=AXIS_LABEL["C"], ylabel=metric_label(metric))
    ax.set_title(
        f"{metric} vs compute (thin steps: lower envelope)\n(filled: on the envelope; hollow: "
        "still improving; x: not on it)",
        fontsize=8,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, stem)


def residuals(an: Analysis, metric: str, stem: Path) -> list[str] | None:
    """observed / fitted - 1 of every fit of a metric, one panel per law and axis
    (L(N, D) against log N and against log D)."""
    panels = [
        (law, axis)
        for law in LAW_NAMES
        if any(law in an.fits.get(f, {}).get(metric, {}) for f in an.families)
        for axis in Law.parse(law).axes
    ]
    if not panels:
        return None
    colours = _colours(an.families)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.0 * cols, 3.2 * rows), squeeze=False, layout="constrained"
    )
    label = {"N": AXIS_LABEL[an.settings.param_measure], "C": AXIS_LABEL["C"]}
    for i, (ax, (law, axis)) in enumerate(zip(axes.flat, panels)):
        top = 1.0  # at least +-1%: an exact fit's 1e-7% residuals are not a pattern
        for fam in an.families:
            e = an.fits.get(fam, {}).get(metric, {}).get(law)
            if e is None:
                continue
            res = e.result
            ys = 100 * (np.exp(-res.residuals_log) - 1)
            top = max(top, 1.15 * float(np.abs(ys).max()))
            _points(ax, e.runs, res.x[axis], ys, {r.name for r in e.runs}, colours[fam])
            ax.plot([], [], "o", color=colours[fam], label=f"{fam} ({res.quality['verdict']})")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-top, top)
        ax.set_xlabel(label.get(axis, DATA_LABEL.get(an.settings.data_measure, "D")), fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("observed / fitted - 1 (%)", fontsize=8)
        ax.set_title(f"L({', '.join(law)}) against {axis}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{metric}: residuals (hollow: still improving)", fontsize=9)
    return _save(fig, stem)


def tuned(an: Analysis, metric: str, stem: Path) -> list[str] | None:
    """The metric against the tuned value, one line per grid point (size), one panel
    per family; a star marks the value chosen, log x."""
    fams = [f for f in an.families if an.tuned.get(f, {}).get(metric)]
    keys = {k for f in fams for s in an.tuned[f][metric] for k in s["value"]}
    if not fams or len(keys) != 1:  # several tuned keys have no single x axis
        return None
    (key,) = keys
    fig, axes = plt.subplots(
        1, len(fams), figsize=(4.6 * len(fams), 3.6), squeeze=False, layout="constrained"
    )
    for ax, fam in zip(axes[0], fams):
        sels = an.tuned[fam][metric]
        varying = [
            k
            for k in sorted({k for s in sels for k in s["point"]})
            if len({str(s["point"].get(k)) for s in sels}) > 1
        ]
        for i, s in enumerate(sels):
            pts = sorted(
                (t["value"][key], t["metric"]) for t in s["tried"] if t["metric"] is not None
            )
            if not pts:
                continue
            x, y = zip(*pts)
            label = ", ".join(f"{k}={s['point'][k]}" for k in varying) or s["size"] or s["chosen"]
            colour = f"C{i % 10}"
            ax.plot(x, y, "o-", color=colour, lw=1.2, ms=4, label=label)
            ax.plot(s["value"][key], s["metric"], "*", color=colour, ms=11, mec="k", mew=0.5)
        ax.set(xscale="log", yscale="log", xlabel=key, ylabel=metric_label(metric))
        title = f"{fam} (star: chosen)"
        ax.set_title(title if len(fams) > 1 else f"{metric} against {key}: {title}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if len(fams) > 1:
        fig.suptitle(f"{metric} against the tuned {key}", fontsize=9)
    return _save(fig, stem)


def ratios(an: Analysis, metric: str, stem: Path) -> list[str] | None:
    """Error ratio of each pair of families, with the crossover and its interval."""
    cmps = [c for c in an.comparisons if c["metric"] == metric and c.get("status") == "ok"]
    if not cmps:
        return None
    fig, axes = plt.subplots(1, len(cmps), figsize=(4.5 * len(cmps), 3.4), squeeze=False)
    for ax, c in zip(axes[0], cmps):
        x = np.array(c["x"])
        ax.plot(x, c["ratio"], color="C0", lw=1.8)
        if c["ratio_band"]:
            ax.fill_between(x, *c["ratio_band"], color="C0", alpha=0.2, lw=0)
        ax.axhline(1, color="k", lw=0.8)
        cr = c["crossover"]
        if cr["value"] is not None:
            ax.axvline(cr["value"], color="C3", lw=1)
            if cr["ci"]:
                ax.axvspan(*cr["ci"], color="C3", alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel(AXIS_LABEL.get(c["axis"], c["axis"]))
        ax.set_ylabel(f"{c['families'][0]} / {c['families'][1]}")
        ax.set_title(f"error ratio, L({', '.join(c['law'])})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(metric, fontsize=9)
    return _save(fig, stem)


def training_curves(an: Analysis, metric: str, stem: Path) -> list[str] | None:
    """Validation metric against step for every run that logged it."""
    colours = _colours(sorted({r.family for r in an.runs}))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    drawn, seen = False, set()
    for r in an.runs:
        pts = [(h["step"], h[metric]) for h in r.history if metric in h and h[metric] > 0]
        if len(pts) < 2:
            continue
        drawn = True
        s, v = zip(*pts)
        label = r.family if r.family not in seen else None
        seen.add(r.family)
        ax.plot(
            s,
            v,
            color=colours[r.family],
            lw=1,
            alpha=0.7 if r.finished else 0.35,
            ls="-" if r.finished else "--",
            label=label,
        )
    if not drawn:
        plt.close(fig)
        return None
    ax.set(yscale="log", xlabel="step", ylabel=metric_label(metric))
    ax.set_title(f"{metric} during training (dashed: unfinished)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, stem)


def make_figures(an: Analysis, fig_dir: Path) -> dict[str, dict[str, list[str]]]:
    """Every figure of every metric: metric -> kind -> file names (PNG first)."""
    out: dict[str, dict[str, list[str]]] = {}
    for metric in an.metrics:
        s = slug(metric)
        kinds = {
            "vs_N": lambda m, p: loss_vs_axis(an, m, "N", p),
            "vs_D": lambda m, p: loss_vs_axis(an, m, "D", p),
            "vs_compute": lambda m, p: loss_vs_compute(an, m, p),
            "residuals": lambda m, p: residuals(an, m, p),
            "tuned": lambda m, p: tuned(an, m, p),
            "ratio": lambda m, p: ratios(an, m, p),
            "training": lambda m, p: training_curves(an, m, p),
        }
        for kind, draw in kinds.items():
            if kind == "vs_D" and not _has_d(an, metric):
                continue
            files = draw(metric, fig_dir / f"{s}_{kind}")
            if files:
                out.setdefault(metric, {})[kind] = files
    return out


def _has_d(an: Analysis, metric: str) -> bool:
    vals = [r.data(an.settings.data_measure) for r in an.runs if r.finished and metric in r.metrics]
    return num_distinct([v for v in vals if v]) >= 2 or any(
        "D" in laws.get(metric, {}) or "ND" in laws.get(metric, {}) for laws in an.fits.values()
    )
