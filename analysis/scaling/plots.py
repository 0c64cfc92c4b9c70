"""Figures of a scaling analysis, as PNG and PDF (matplotlib, Agg backend).

Per metric: loss against N, against D and against compute (log-log, one colour
per family, fitted curves with bootstrap bands), residuals of every fit
against each of its axes, and (:mod:`analysis.scaling.sideplots`) the error
ratio of each pair of families, the metric against the tuned value of a tuned
study, and validation curves over training.

Markers: filled, a run in the fit; hollow, a run still improving at the end
of training; a cross, a run not in the fit (another slice, a ladder main, a
tuned value not chosen); each point is labelled with its size and data
fraction. Under each fit figure, one line per fit gives its formula, the
exponents with their intervals, its verdict and why a band is missing; a weak
fit's warning sits in red on the axes. A dotted black line marks the trivial
predictor where the runs record it. The `*_figure` functions return the
figure (tests read it); the others save it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.scaling.figparts import (
    AXIS_LABEL,
    DATA_LABEL,
    EXPONENT,
    colours,
    declutter_labels,
    draw_fit,
    draw_points,
    fit_notes,
    legend_outside,
    marker_handles,
    metric_label,
    metric_unit,
    plain_number,
    plain_ticks,
    save,
    set_ylim,
    slug,
    trivial_line,
)
from analysis.scaling.laws import LAW_NAMES, Law, num_distinct
from analysis.scaling.sideplots import ratios_figure, training_figure, tuned_figure
from analysis.scaling.types import Analysis, FitEntry

__all__ = ["make_figures", "metric_label", "metric_unit", "slug"]


def _grid(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    return np.geomspace(lo / 1.3, hi * 1.3, 80) if hi > lo else np.array([lo])


def _band_handle(an: Analysis) -> Patch:
    pct = f"{100 * an.settings.ci_level:g}%"
    return Patch(color="0.5", alpha=0.3, lw=0, label=f"{pct} band (bootstrap over runs)")


def _draw_joint(ax, entry: FitEntry, axis: str, colour: str) -> list[np.ndarray]:
    """The L(N, D) fit as one dashed curve (and band) per level of the other axis."""
    res = entry.result
    other = "D" if axis == "N" else "N"
    levels = np.unique(np.round(np.log(res.x[other]), 2))
    x = _grid(res.x[axis])
    curves = []
    for i, lv in enumerate(levels):
        label = f"{entry.family}: L(N, D), one curve per {other}" if i == 0 else None
        curves.append(
            draw_fit(
                ax,
                entry,
                {axis: x, other: np.full_like(x, np.exp(lv))},
                axis,
                colour,
                lw=1,
                ls="--",
                alpha=0.8,
                label=label,
            )
        )
    return curves


def loss_vs_axis_figure(an: Analysis, metric: str, axis: str):
    """Loss against N or D, fitted curves and bands; None if nothing to draw."""
    cols = colours(an.families)
    fig, ax = plt.subplots(figsize=(9, 5.4), layout="constrained")
    drawn, used, ys_all, notes, banded, missing = False, set(), [], [], False, []
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
        ys_all.append(ys)
        shown = axis if axis in laws else ("ND" if "ND" in laws else None)
        in_fit = {r.name for r in laws[shown].runs} if shown else set()
        used |= draw_points(ax, runs, xs, ys, in_fit, cols[fam], fam != an.families[0])
        if axis in laws:
            e = laws[axis]
            name = e.result.law.exponent_names[0]
            v = e.result.params[name]
            verdict = e.result.quality.get("verdict", "?")
            label = f"{fam}: L({axis}) fit, {EXPONENT[name]} = {v:.2f} ({verdict})"
            ys_all.append(
                draw_fit(ax, e, {axis: _grid(e.result.x[axis])}, axis, cols[fam], label=label)
            )
            notes.append((e, cols[fam]))
        elif "ND" in laws:
            ys_all += _draw_joint(ax, laws["ND"], axis, cols[fam])
            notes.append((laws["ND"], cols[fam]))
        else:
            ax.plot([], [], "o", color=cols[fam], label=f"{fam} (no fit)")
            missing.append((_no_fit_note(fam, axis, xs), cols[fam]))
        banded |= bool(shown) and laws[shown].result.has_ci
    if not drawn:
        plt.close(fig)
        return None
    if (b := trivial_line(ax, an.runs, metric)) is not None:
        ys_all.append(np.array([b]))
    ax.set_xscale("log")
    ax.set_yscale("log")
    set_ylim(ax, ys_all)
    ax.set_xlabel(AXIS_LABEL[pm] if axis == "N" else DATA_LABEL.get(measure, measure))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric} against {'model size N' if axis == 'N' else 'data D'}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    plain_ticks(ax)
    legend_outside(ax, marker_handles(used) + ([_band_handle(an)] if banded else []))
    fit_notes(ax, notes, missing=missing)
    return fig


def _no_fit_note(family: str, axis: str, xs: np.ndarray) -> str:
    """Why a family's points stand without a curve, for the line under the axes."""
    x = xs[np.isfinite(xs)]
    if num_distinct(x) < 2:
        return (
            f"{family}: no L({axis}) fit: its {len(x)} run(s) share one {axis} = "
            f"{plain_number(float(x[0]))}, nothing varies along {axis}"
        )
    return f"{family}: no L({axis}) fit: too few runs ({len(x)}); report.md lists why"


def loss_vs_compute_figure(an: Analysis, metric: str):
    """Loss against measured compute: runs, empirical frontier, fitted frontier."""
    cols = colours(an.families)
    fig, ax = plt.subplots(figsize=(9, 5.4), layout="constrained")
    drawn, used, ys_all, notes, styles = False, set(), [], [], set()
    banded = False
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
        ys_all.append(np.array(ys))
        used |= draw_points(ax, runs, xs, ys, on_env, cols[fam], fam != an.families[0])
        if law_c is not None:
            kappa = law_c.result.params["kappa"]
            verdict = law_c.result.quality.get("verdict", "?")
            ys_all.append(
                draw_fit(
                    ax,
                    law_c,
                    {"C": _grid(law_c.result.x["C"])},
                    "C",
                    cols[fam],
                    label=f"{fam}: L(C) fit to the envelope, κ = {kappa:.2f} ({verdict})",
                )
            )
            notes.append((law_c, cols[fam]))
            banded |= law_c.result.has_ci
        if len(front) > 1:
            styles.add("steps")
            ax.step(
                [p["C"] for p in front],
                [p["L"] for p in front],
                where="post",
                color=cols[fam],
                lw=0.8,
                alpha=0.6,
            )
        fr = an.frontiers.get(fam, {}).get(metric, {})
        if fr.get("status") == "ok":
            c, cur = np.array(fr["curve"]["C"]), fr["curve"]
            inside = np.array(cur["in_range"], bool)
            a = fr["N_opt_exponent"]["value"]
            # dash-dot where the optimal N and D were sampled, dotted where extrapolated
            ax.plot(
                c,
                np.where(inside, cur["L"], np.nan),
                color=cols[fam],
                lw=1.2,
                ls="-.",
                label=f"{fam}: compute-optimal L(N, D), N_opt ~ C^{a:.2f}",
            )
            if not inside.all():
                styles.add("extrapolated")
                ax.plot(c, cur["L"], color=cols[fam], lw=0.8, ls=":", alpha=0.6)
            ys_all.append(np.asarray(cur["L"])[inside])
        else:
            ax.plot([], [], "o", color=cols[fam], label=f"{fam} (no L(N, D) frontier)")
    if not drawn:
        plt.close(fig)
        return None
    if (b := trivial_line(ax, an.runs, metric)) is not None:
        ys_all.append(np.array([b]))
    ax.set(xscale="log", yscale="log", xlabel=AXIS_LABEL["C"], ylabel=metric_label(metric))
    set_ylim(ax, ys_all)
    ax.set_title(f"{metric} against training compute C", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    plain_ticks(ax)
    extra = marker_handles(used, {"fit": "on the envelope", "out": "not on the envelope"})
    if "steps" in styles:
        extra.append(
            Line2D(
                [],
                [],
                color="0.4",
                lw=0.8,
                drawstyle="steps-post",
                label="empirical lower envelope (thin steps)",
            )
        )
    if "extrapolated" in styles:
        extra.append(
            Line2D(
                [], [], color="0.4", lw=0.8, ls=":", label="compute-optimal L(N, D), extrapolated"
            )
        )
    if banded:
        extra.append(_band_handle(an))
    legend_outside(ax, extra)
    fit_notes(ax, notes)
    return fig


def residuals_figure(an: Analysis, metric: str):
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
    cols = colours(an.families)
    ncols = min(3, len(panels))
    rows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        rows, ncols, figsize=(4.4 * ncols, 3.6 * rows), squeeze=False, layout="constrained"
    )
    label = {"N": AXIS_LABEL[an.settings.param_measure], "C": AXIS_LABEL["C"]}
    used = set()
    for i, (ax, (law, axis)) in enumerate(zip(axes.flat, panels)):
        top = 1.0  # at least +-1%: an exact fit's 1e-7% residuals are not a pattern
        for fam in an.families:
            e = an.fits.get(fam, {}).get(metric, {}).get(law)
            if e is None:
                continue
            res = e.result
            ys = 100 * (np.exp(-res.residuals_log) - 1)
            top = max(top, 1.15 * float(np.abs(ys).max()))
            used |= draw_points(
                ax,
                e.runs,
                res.x[axis],
                ys,
                {r.name for r in e.runs},
                cols[fam],
                fam != an.families[0],
            )
            ax.plot([], [], "o", color=cols[fam], label=f"{fam} ({res.quality['verdict']})")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-top, top)
        ax.set_xlabel(label.get(axis, DATA_LABEL.get(an.settings.data_measure, "D")), fontsize=8)
        if i % ncols == 0:
            ax.set_ylabel("observed / fitted - 1 (%)", fontsize=8)
        ax.set_title(f"L({', '.join(law)}) against {axis}", fontsize=9)
        ax.grid(True, alpha=0.3)
        plain_ticks(ax)
        ax.legend(fontsize=7, title="family (verdict)", title_fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if hollow := marker_handles(used & {"still"}):
        fig.legend(handles=hollow, loc="outside lower center", fontsize=7, frameon=False)
    fig.suptitle(
        f"{metric}: residuals of each fit (points labelled size, data fraction)", fontsize=9
    )
    return fig


FIGURES = {
    "vs_N": lambda an, m: loss_vs_axis_figure(an, m, "N"),
    "vs_D": lambda an, m: loss_vs_axis_figure(an, m, "D"),
    "vs_compute": loss_vs_compute_figure,
    "residuals": residuals_figure,
    "tuned": tuned_figure,
    "ratio": ratios_figure,
    "training": training_figure,
}


def figures(an: Analysis, metric: str) -> dict:
    """Every figure of a metric, kind -> matplotlib Figure (the caller closes them)."""
    out = {}
    for kind, draw in FIGURES.items():
        if kind == "vs_D" and not _has_d(an, metric):
            continue
        if (fig := draw(an, metric)) is not None:
            declutter_labels(fig)
            out[kind] = fig
    return out


def make_figures(an: Analysis, fig_dir: Path) -> dict[str, dict[str, list[str]]]:
    """Every figure of every metric: metric -> kind -> file names (PNG first)."""
    out: dict[str, dict[str, list[str]]] = {}
    for metric in an.metrics:
        for kind, fig in figures(an, metric).items():
            out.setdefault(metric, {})[kind] = save(fig, fig_dir / f"{slug(metric)}_{kind}")
    return out


def _has_d(an: Analysis, metric: str) -> bool:
    vals = [r.data(an.settings.data_measure) for r in an.runs if r.finished and metric in r.metrics]
    return num_distinct([v for v in vals if v]) >= 2 or any(
        "D" in laws.get(metric, {}) or "ND" in laws.get(metric, {}) for laws in an.fits.values()
    )
