"""report.md: the runs and their points, then per metric the figures, the laws,
the compute frontier, tuned grids and family comparisons.

The sentences come from :mod:`analysis.scaling.sentences`; this module lays
them out with the tables.
"""

from __future__ import annotations

from collections.abc import Mapping

from analysis.scaling.fitsjson import entry_json, equal_compute, trivial_predictors
from analysis.scaling.sentences import (
    compute_lines,
    frontier_lines,
    g,
    law_sentences,
    pv,
    tuned_lines,
)
from analysis.scaling.types import BASELINE_METRICS, Analysis, Run

_PARAM_COLUMNS = ("E", "A", "alpha", "B", "beta", "K", "kappa")


def _span(vals) -> str:
    vals = [v for v in vals if v]
    return f"{min(vals):.3g}-{max(vals):.3g}" if vals else "-"


def _header(an: Analysis, inputs: list[str]) -> list[str]:
    s = an.settings
    n_what = (
        "non-embedding parameters (without per-species embeddings and per-element baselines)"
        if s.param_measure == "non-embedding"
        else "all parameters"
    )
    return [
        "# Scaling-law report",
        "",
        f"Inputs: {', '.join(f'`{i}`' for i in inputs)}. "
        f"Laws fitted by minimising a Huber loss (delta {s.huber_delta:g}) on log-residuals "
        f"with L-BFGS-B from a grid of starts; intervals: {100 * s.ci_level:g}% bootstrap "
        f"percentiles over runs ({s.num_bootstrap} resamples, each refitted from the "
        f"full-data optima, jittered copies of the best and the grid starts that suit the "
        f"resample). N counts {n_what}; D counts {s.data_measure}; compute C is measured "
        "training FLOPs. L(C) is fitted to each family's lower envelope, the best run at or "
        "below each compute.",
    ]


def _runs(an: Analysis) -> list[str]:
    s = an.settings
    lines = [
        "",
        "## Runs",
        "",
        "| family | runs | finished | still improving | N range | D range | "
        "compute range (FLOPs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam in sorted({r.family for r in an.runs}):
        rs = [r for r in an.runs if r.family == fam]
        fin = [r for r in rs if r.finished]
        lines.append(
            f"| {fam} | {len(rs)} | {len(fin)} | {sum(r.still_improving for r in fin)} | "
            f"{_span(r.params(s.param_measure) for r in fin)} | "
            f"{_span(r.data(s.data_measure) for r in fin)} | "
            f"{_span(r.flops for r in fin)} |"
        )
    lines += ["", *_trivial(an)]
    unfinished = [r for r in an.runs if not r.finished]
    if unfinished:
        lines += ["", f"Left out of the fits, unfinished ({len(unfinished)}):", ""]
        lines += [f"- `{r.name}`: {r.reason}" for r in unfinished]
    warned = [r for r in an.runs if r.warnings]
    if warned:
        lines += ["", "Read with warnings:", ""]
        lines += [f"- `{r.name}`: {'; '.join(r.warnings)}" for r in warned]
    if an.notes:
        lines += ["", *[f"Note: {n}." for n in an.notes]]
    return lines


def _trivial(an: Analysis) -> list[str]:
    t = trivial_predictors(an)
    if t is None:
        return [
            "Trivial predictors: not recorded by any run (summary.json `baseline`), so "
            "errors are not compared with them."
        ]
    what = {
        "energy_per_atom_mae": ("composition-baseline energy MAE", "eV/atom"),
        "forces_mae": ("zero-force MAE", "eV/Å"),
        "stress_mae": ("zero-stress MAE", "eV/Å³"),
    }
    parts = []
    for key, (name, unit) in what.items():
        if key in t:
            lo, hi = t[key]
            parts.append(f"{name} {g(lo)}" + (f"-{g(hi)}" if hi > lo * 1.001 else "") + f" {unit}")
    return [
        f"Trivial predictors on the validation set ({t['num_runs']} runs record them): "
        + "; ".join(parts)
        + ". A run within 5% of one (or worse) is flagged NOT LEARNED."
    ]


def _flags(r: Run, metrics: list[str]) -> str:
    flags = []
    if r.still_improving:
        flags.append("still improving")
    if r.ladder_main:
        flags.append("ladder main (not fitted)")
    flags += [f"NOT LEARNED ({m})" for m in metrics if r.not_learned(m)]
    return ", ".join(flags) or "-"


def _points(an: Analysis) -> list[str]:
    """One row per finished run: its axes, convergence and errors against the
    trivial predictors."""
    s = an.settings
    fin = [r for r in an.runs if r.finished]
    if not fin:
        return []
    base = [m for m in BASELINE_METRICS if any(r.baseline_of(m) for r in fin)]
    tuned = any(r.tune for r in fin)
    head = ["run", "family", "N", "D", "C", "convergence"] + (["tuned"] if tuned else [])
    head += [f"{m} / trivial" for m in base] + ["flags"]
    lines = [
        "",
        "## Points",
        "",
        "Each finished run (hollow markers in the figures: still improving at the end of "
        "training).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in fin:
        conv = r.convergence or {}
        verdict = conv.get("verdict", "-")
        if "rel_slope" in conv:
            verdict += f" ({g(conv['rel_slope'])})"
        cells = [
            f"`{r.name}`",
            r.family,
            g(r.params(s.param_measure)),
            g(r.data(s.data_measure)),
            g(r.flops),
            verdict,
        ]
        if tuned:
            cells.append(", ".join(f"{k}={v}" for k, v in r.tune.items()) or "-")
        for m in base:
            b, v = r.baseline_of(m), r.metrics.get(m)
            cells.append(f"{100 * v / b:.1f}%" if b and v is not None else "-")
        cells.append(_flags(r, an.metrics))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _metric(an: Analysis, metric: str, unit: str, figures: Mapping[str, list[str]]) -> list[str]:
    lines = ["", f"## {metric}" + (f" ({unit})" if unit else ""), ""]
    for kind, files in figures.items():
        lines.append(f"![{metric} {kind}](figures/{files[0]})")
    lines += ["", "### Fitted laws", ""]
    entries = [e for e in an.entries() if e.metric == metric]
    for e in entries:
        lines.append("- " + " ".join(law_sentences(e, unit)))
    if entries:
        cols = [k for k in _PARAM_COLUMNS if any(k in e.result.params for e in entries)]
        lines += [
            "",
            f"| family | law | {' | '.join(cols)} | runs (still improving) | R^2 (log) | verdict |",
            "|---|---|" + "---|" * len(cols) + "---|---|---|",
        ]
        for e in entries:
            p = entry_json(e)["params"]
            cells = [pv(p, k) if k in p else "-" for k in cols]
            q = e.result.quality
            lines.append(
                f"| {e.family} | L({', '.join(e.result.law.axes)}) {e.result.law.form}"
                f" | {' | '.join(cells)} | {len(e.runs)} ({len(e.still_improving)}) | "
                f"{g(q['r2_log'])} | {q['verdict']} |"
            )
    else:
        lines.append("No law could be fitted for this metric (see below).")
    fr = [(f, by_m[metric]) for f, by_m in an.frontiers.items() if metric in by_m]
    if fr:
        lines += ["", "### Compute-optimal frontier", ""]
        for fam, f in fr:
            lines += frontier_lines(fam, f)
    pts = [(f, by_m[metric]) for f, by_m in an.pareto.items() if by_m.get(metric)]
    if pts:
        lines += [
            "",
            "Lower envelope (runs that no cheaper run beats; listed in fits.json): "
            + "; ".join(
                f"{f}: {len(v)} runs, best `{v[-1]['run']}` with {g(v[-1]['L'])} at "
                f"C = {g(v[-1]['C'])}"
                for f, v in pts
            )
            + ".",
        ]
    tuned = [s for by_m in an.tuned.values() for s in by_m.get(metric, [])]
    if tuned:
        lines += ["", "### Tuned envelope", "", *tuned_lines(tuned, metric)]
    cmps = [c for c in an.comparisons if c["metric"] == metric]
    if cmps:
        lines += ["", "### Family comparison", ""]
        for c in cmps:
            a, b = c["families"]
            head = f"- {a} vs {b}, L({', '.join(c['law'])})"
            if c.get("status") != "ok":
                lines.append(f"{head}: not compared: {c['reason']}.")
                continue
            r = c["ratio"]
            ends = (
                f"error ratio {a}/{b} = {r[0]:.3g} at {c['axis']} = {c['x'][0]:.3g}, "
                f"{r[-1]:.3g} at {c['x'][-1]:.3g}"
            )
            lines.append(f"{head}: {ends}; {c['crossover']['statement']}.")
    skipped = [k for k in an.skipped if k["metric"] == metric]
    excluded = [k for k in an.excluded if k["metric"] == metric]
    if skipped or excluded:
        lines += ["", "### Not fitted", ""]
        lines += [f"- {k['family']}, L({', '.join(k['law'])}): {k['reason']}" for k in skipped]
        lines += [f"- run `{k['run']}` ({k['family']}) left out: {k['reason']}" for k in excluded]
    return lines


def report_md(
    an: Analysis, figures: Mapping[str, Mapping[str, list[str]]], inputs: list[str]
) -> str:
    """report.md: runs and points, the equal-compute verdict, then per metric the
    figures, laws, frontier, tuned grid and comparisons."""
    from analysis.scaling.plots import metric_unit

    lines = _header(an, inputs) + _runs(an) + _points(an)
    if rows := equal_compute(an):
        lines += [
            "",
            "## Unconstrained against constrained at equal compute",
            "",
            "Does the family with direct forces overtake the conservative ones as "
            "compute grows? (ratio < 1: the unconstrained family is better)",
            "",
            *compute_lines(rows),
        ]
    for metric in an.metrics:
        lines += _metric(an, metric, metric_unit(metric), figures.get(metric, {}))
    return "\n".join(lines) + "\n"
