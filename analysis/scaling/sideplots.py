"""The figures of a scaling analysis besides the fits: the metric against a tuned
value, the error ratio of two families, validation curves over training.

Each `*_figure` returns a matplotlib Figure, or None when there is nothing to
draw; :func:`analysis.scaling.plots.make_figures` saves them.
"""

from __future__ import annotations

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.scaling.figparts import (
    AXIS_LABEL,
    DATA_LABEL,
    colours,
    legend_outside,
    metric_label,
    plain_ticks,
    trivial_line,
)
from analysis.scaling.types import Analysis


def tuned_figure(an: Analysis, metric: str):
    """The metric against the tuned value, one line per grid point (size), one panel
    per family; a star marks the value chosen, log x."""
    fams = [f for f in an.families if an.tuned.get(f, {}).get(metric)]
    keys = {k for f in fams for s in an.tuned[f][metric] for k in s["value"]}
    if not fams or len(keys) != 1:  # several tuned keys have no single x axis
        return None
    (key,) = keys
    fig, axes = plt.subplots(
        1, len(fams), figsize=(6.2 * len(fams), 4.0), squeeze=False, layout="constrained"
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
        trivial_line(ax, [r for r in an.runs if r.family == fam], metric)
        ax.set(xscale="log", yscale="log", xlabel=key, ylabel=metric_label(metric))
        title = f"{fam}: {metric} against {key}"
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        plain_ticks(ax)
        star = Line2D(
            [], [], ls="", marker="*", ms=9, color="0.5", mec="k", mew=0.5, label="value chosen"
        )
        legend_outside(ax, [star])
    if len(fams) > 1:
        fig.suptitle(f"{metric} against the tuned {key}", fontsize=9)
    return fig


def _axis_label(an: Analysis, axis: str) -> str:
    if axis == "N":
        return AXIS_LABEL[an.settings.param_measure]
    if axis == "D":
        return DATA_LABEL.get(an.settings.data_measure, "data D")
    return AXIS_LABEL.get(axis, axis)


def ratios_figure(an: Analysis, metric: str):
    """Error ratio of each pair of families, with the crossover and its interval."""
    cmps = [c for c in an.comparisons if c["metric"] == metric and c.get("status") == "ok"]
    if not cmps:
        return None
    fig, axes = plt.subplots(
        1, len(cmps), figsize=(4.6 * len(cmps), 4.2), squeeze=False, layout="constrained"
    )
    pct = f"{100 * an.settings.ci_level:g}%"
    for ax, c in zip(axes[0], cmps):
        x = np.array(c["x"])
        a, b = c["families"][0], c["families"][1]
        ax.plot(x, c["ratio"], color="C0", lw=1.8, label=f"fitted {a} / {b}")
        if c["ratio_band"]:
            ax.fill_between(
                x,
                *c["ratio_band"],
                color="C0",
                alpha=0.2,
                lw=0,
                label=f"{pct} band (bootstrap)",
                gid="band",
            )
        ax.axhline(1, color="k", lw=0.8, label="equal error")
        cr = c["crossover"]
        if cr["value"] is not None:
            ax.axvline(cr["value"], color="C3", lw=1, label="crossover")
            if cr["ci"]:
                ax.axvspan(*cr["ci"], color="C3", alpha=0.15, label=f"crossover, {pct} interval")
        ax.set_xscale("log")
        ax.set_xlabel(_axis_label(an, c["axis"]))
        ax.set_ylabel(f"error ratio {a} / {b}")
        ax.set_title(f"L({', '.join(c['law'])})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        plain_ticks(ax)
        handles = ax.get_legend_handles_labels()[0]
        if not c["ratio_band"]:
            handles.append(Patch(color="none", label="no band: a fit has no bootstrap"))
        ax.legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"{metric}: error ratio of the families", fontsize=9)
    return fig


def training_figure(an: Analysis, metric: str):
    """Validation metric against step for every run that logged it."""
    cols = colours(sorted({r.family for r in an.runs}))
    fig, ax = plt.subplots(figsize=(7.5, 4.4), layout="constrained")
    drawn, seen, unfinished = False, set(), False
    for r in an.runs:
        pts = [(h["step"], h[metric]) for h in r.history if metric in h and h[metric] > 0]
        if len(pts) < 2:
            continue
        drawn = True
        s, v = zip(*pts)
        label = r.family if r.family not in seen else None
        seen.add(r.family)
        unfinished |= not r.finished
        ax.plot(
            s,
            v,
            color=cols[r.family],
            lw=1,
            alpha=0.7 if r.finished else 0.35,
            ls="-" if r.finished else "--",
            label=label,
        )
    if not drawn:
        plt.close(fig)
        return None
    trivial_line(ax, an.runs, metric)
    ax.set(yscale="log", xlabel="training step", ylabel=metric_label(metric))
    ax.set_title(f"{metric} during training, one line per run", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    plain_ticks(ax)
    styles = [Line2D([], [], color="0.4", lw=1, label="finished run")]
    if unfinished:
        styles.append(Line2D([], [], color="0.4", lw=1, ls="--", label="unfinished run"))
    legend_outside(ax, styles)
    return fig
