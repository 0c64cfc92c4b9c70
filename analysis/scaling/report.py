"""Outputs of a scaling analysis: fits.json, runs.csv, figures, report.md, W&B.

fits.json (schema_version 1) holds, under fits[family][metric][law], each fitted
parameter as {"value": x, "ci": [low, high]} (ci null where the bootstrap could
not give one) with the fit's quality, residuals and leave-one-out check.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

from analysis.scaling.load import write_csv
from analysis.scaling.types import Analysis, FitEntry
from data_pipelines.atomic import jsonable, write_json

SCHEMA_VERSION = 1


def entry_json(e: FitEntry) -> dict:
    """One fit as written to fits.json."""
    res = e.result
    ci = res.ci
    variables = {"N": "num_params", "D": e.data_measure}
    return {
        "law": e.law_name,
        "form": res.law.form,
        "formula": res.law.formula(),
        "variables": {a: variables[a] for a in res.law.axes},
        "params": {
            k: {"value": v, "ci": list(ci[k]) if ci[k] else None} for k, v in res.params.items()
        },
        "quality": res.quality,
        "num_runs": len(res.y),
        "runs": res.names,
        "range": {a: [float(v.min()), float(v.max())] for a, v in res.x.items()},
        "fixed": e.fixed,
        "residuals_log": dict(zip(res.names, res.residuals_log.tolist())),
        "loo_largest": e.loo,
        "loo_cv_rmse_log": e.loo_cv_rmse_log,
        "notes": e.notes,
    }


def fits_json(an: Analysis, inputs: list[str]) -> dict:
    """The whole analysis as a JSON-ready dict."""
    fits: dict = {}
    for e in an.entries():
        fits.setdefault(e.family, {}).setdefault(e.metric, {})[e.law_name] = entry_json(e)
    frontiers = {
        f: {m: {k: v for k, v in fr.items() if k != "boot_curves"} for m, fr in by_m.items()}
        for f, by_m in an.frontiers.items()
    }
    s = an.settings
    return jsonable(
        {
            "schema_version": SCHEMA_VERSION,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "inputs": inputs,
            "settings": {
                "laws": list(s.laws),
                "form": s.form,
                "data_measure": s.data_measure,
                "num_bootstrap": s.num_bootstrap,
                "ci_level": s.ci_level,
                "huber_delta": s.huber_delta,
                "seed": s.seed,
                "loss": "Huber on log(L_pred / L_obs), L-BFGS-B from a grid of starts",
            },
            "runs": {
                "total": len(an.runs),
                "finished": sum(r.finished for r in an.runs),
                "unfinished": [
                    {"name": r.name, "family": r.family, "source": r.source, "reason": r.reason}
                    for r in an.runs
                    if not r.finished
                ],
                "excluded": an.excluded,
                "warnings": [
                    {"name": r.name, "warnings": r.warnings} for r in an.runs if r.warnings
                ],
            },
            "metrics": an.metrics,
            "fits": fits,
            "skipped": an.skipped,
            "frontier": frontiers,
            "pareto": an.pareto,
            "comparisons": an.comparisons,
            "notes": an.notes,
        }
    )


# --- words --------------------------------------------------------------------------


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _pv(p: Mapping, name: str) -> str:
    v = p[name]
    return f"{_g(v['value'])} [{_g(v['ci'][0])}, {_g(v['ci'][1])}]" if v["ci"] else _g(v["value"])


def law_sentences(e: FitEntry, unit: str) -> list[str]:
    """The fitted law of one entry in words and numbers."""
    j = entry_json(e)
    p, q = j["params"], j["quality"]
    v = {k: x["value"] for k, x in p.items()}
    terms = [f"{_g(v['E'])}"] if "E" in v else []
    if "A" in v:
        terms.append(f"{_g(v['A'])} N^-{v['alpha']:.3f}")
    if "B" in v:
        terms.append(f"{_g(v['B'])} D^-{v['beta']:.3f}")
    args = ", ".join(e.result.law.axes)
    d_name = e.data_measure.replace("_", " ")
    out = [
        f"**{e.family}**, L({args}) = {' + '.join(terms)}{' ' + unit if unit else ''} "
        f"(N = parameters, D = {d_name}; {len(e.result.y)} runs)."
    ]
    for name, what in (("alpha", "parameters"), ("beta", d_name)):
        if name in p:
            ex = p[name]
            cut = 1 - 2 ** -ex["value"]
            rng = ""
            if ex["ci"]:
                rng = (
                    f" [{100 * (1 - 2 ** -ex['ci'][0]):.0f}%, {100 * (1 - 2 ** -ex['ci'][1]):.0f}%]"
                )
            out.append(
                f"{name} = {_pv(p, name)}: doubling the {what} removes "
                f"{100 * cut:.0f}%{rng} of the {'reducible ' if 'E' in p else ''}error."
            )
    if "E" in p:
        limit = {
            "N": "with unlimited parameters at this data budget",
            "D": "with unlimited data at this size",
            "ND": "with unlimited size and data",
        }
        u = f" {unit}" if unit else ""
        if p["E"]["value"] < 1e-6 * float(e.result.y.min()):
            # at its lower bound: the data show no floor, only an upper limit on one
            hi = p["E"]["ci"][1] if p["E"]["ci"] else None
            out.append(
                f"E = 0: no error floor is resolved {limit[e.law_name]}"
                + (f" (E < {_g(hi)}{u} at {100 * e.result.ci_level:g}%)" if hi else "")
                + "."
            )
        else:
            out.append(f"E = {_pv(p, 'E')}{u}: the error approached {limit[e.law_name]}.")
    if e.fixed:
        f = e.fixed
        out.append(
            f"Fitted at fixed {f['quantity']} = {_g(f['min'])}"
            + (f"-{_g(f['max'])}" if f["max"] > f["min"] * 1.001 else "")
            + (f" (one of {f['num_slices']} slices)" if f["num_slices"] > 1 else "")
            + "."
        )
    verdict = q["verdict"].upper() if q["verdict"] == "poor" else q["verdict"]
    r2 = f"R^2 = {q['r2_log']:.3f} in log space, " if q["r2_log"] is not None else ""
    out.append(
        f"Fit quality: {verdict} ({r2}RMS residual {100 * q['rmse_log']:.1f}%)"
        + (": " + "; ".join(q["reasons"]) if q["reasons"] else "")
        + "."
    )
    if q["verdict"] == "poor":
        out.append("Do not read these numbers as a scaling law.")
    loo = e.loo
    if loo.get("status") == "ok":
        inside = {True: ", inside the interval", False: ", OUTSIDE the interval", None: ""}[
            loo["inside_interval"]
        ]
        out.append(
            f"Leave-one-out: the largest run(s) predicted from the "
            f"{loo['num_smaller_runs']} smaller ones within "
            f"{100 * loo['relative_error']:.1f}%{inside}."
        )
    elif loo:
        out.append(f"Leave-one-out: {loo['reason']}.")
    out += [f"Note: {n}" for n in e.notes]
    return out


def _in_range(f: dict) -> str:
    c, inside = f["curve"]["C"], f["curve"]["in_range"]
    cs = [x for x, ok in zip(c, inside) if ok]
    if not cs:
        return "; the optimal sizes and data lie outside the sampled ranges: extrapolation"
    if len(cs) == len(c):
        return ""
    return f"; the optimum lies inside the sampled ranges for C = {_g(cs[0])}-{_g(cs[-1])} only"


def report_md(
    an: Analysis, figures: Mapping[str, Mapping[str, list[str]]], inputs: list[str]
) -> str:
    """report.md: runs, then per metric the figures, laws, frontier and comparisons."""
    from analysis.scaling.plots import metric_unit

    s = an.settings
    lines = [
        "# Scaling-law report",
        "",
        f"Inputs: {', '.join(f'`{i}`' for i in inputs)}. "
        f"Laws fitted by minimising a Huber loss (delta {s.huber_delta:g}) on log-residuals "
        f"with L-BFGS-B from a grid of starts; intervals: {100 * s.ci_level:g}% bootstrap "
        f"percentiles over runs ({s.num_bootstrap} resamples). D counts {s.data_measure}; "
        "compute C is measured training FLOPs.",
        "",
        "## Runs",
        "",
        "| family | runs | finished | N range | D range | compute range (FLOPs) |",
        "|---|---|---|---|---|---|",
    ]
    for fam in sorted({r.family for r in an.runs}):
        rs = [r for r in an.runs if r.family == fam]
        fin = [r for r in rs if r.finished]

        def span(vals):
            vals = [v for v in vals if v]
            return f"{min(vals):.3g}-{max(vals):.3g}" if vals else "-"

        lines.append(
            f"| {fam} | {len(rs)} | {len(fin)} | {span(r.num_params for r in fin)} | "
            f"{span(r.data(s.data_measure) for r in fin)} | "
            f"{span(r.flops for r in fin)} |"
        )
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
    for metric in an.metrics:
        unit = metric_unit(metric)
        lines += ["", f"## {metric}" + (f" ({unit})" if unit else ""), ""]
        for kind, files in figures.get(metric, {}).items():
            lines.append(f"![{metric} {kind}](figures/{files[0]})")
        lines += ["", "### Fitted laws", ""]
        entries = [e for e in an.entries() if e.metric == metric]
        for e in entries:
            lines.append("- " + " ".join(law_sentences(e, unit)))
        if entries:
            lines += [
                "",
                "| family | law | E | A | alpha | B | beta | R^2 (log) | verdict |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for e in entries:
                p = entry_json(e)["params"]
                cells = [_pv(p, k) if k in p else "-" for k in ("E", "A", "alpha", "B", "beta")]
                r2 = e.result.quality["r2_log"]
                lines.append(
                    f"| {e.family} | L({', '.join(e.result.law.axes)}) {e.result.law.form}"
                    f" | {' | '.join(cells)} | {_g(r2)} | "
                    f"{e.result.quality['verdict']} |"
                )
        elif not entries:
            lines.append("No law could be fitted for this metric (see below).")
        fr = [(f, by_m[metric]) for f, by_m in an.frontiers.items() if metric in by_m]
        if fr:
            lines += ["", "### Compute-optimal frontier", ""]
            for fam, f in fr:
                if f.get("status") != "ok":
                    lines.append(f"- {fam}: not available: {f['reason']}.")
                    continue
                cm = f["cost_model"]
                lines.append(
                    f"- {fam}: for a compute budget C, the best size grows as N_opt ~ "
                    f"C^{_pv(f, 'N_opt_exponent')} and the data as D_opt ~ "
                    f"C^{_pv(f, 'D_opt_exponent')} (cost model C = {cm['c']:.3g} "
                    f"N^{cm['gamma']:.3f} D, fitted to measured FLOPs)" + _in_range(f) + "."
                )
        pts = [(f, by_m[metric]) for f, by_m in an.pareto.items() if len(by_m.get(metric, [])) > 0]
        if pts:
            lines += [
                "",
                "Empirical frontier (runs that no cheaper run beats; listed in "
                "fits.json): "
                + "; ".join(
                    f"{f}: {len(v)} runs, best `{v[-1]['run']}` with {_g(v[-1]['L'])} at "
                    f"C = {_g(v[-1]['C'])}"
                    for f, v in pts
                )
                + ".",
            ]
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
            lines += [
                f"- run `{k['run']}` ({k['family']}) left out: {k['reason']}" for k in excluded
            ]
    return "\n".join(lines) + "\n"


def summary_lines(an: Analysis) -> list[str]:
    """One line per fit, for the terminal."""
    out = [f"{sum(r.finished for r in an.runs)}/{len(an.runs)} runs finished"]
    for e in an.entries():
        p, ci = e.result.params, e.result.ci
        parts = []
        for k in e.result.law.param_names:
            c = f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if ci[k] else ""
            parts.append(f"{k}={p[k]:.3g}{c}")
        out.append(
            f"{e.family:<18} {e.metric:<26} L({','.join(e.result.law.axes)}) "
            f"{e.result.law.form:<6} {' '.join(parts)} ({e.result.quality['verdict']})"
        )
    out += [
        f"skipped: {k['family']} {k['metric']} L({k['law']}): {k['reason']}" for k in an.skipped
    ]
    return out


def write_all(an: Analysis, out: Path, inputs: list[str], figures: bool = True) -> dict:
    """runs.csv, figures/, fits.json and report.md under `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(an.runs, out / "runs.csv")
    figs: dict = {}
    if figures:
        from analysis.scaling.plots import make_figures

        figs = make_figures(an, out / "figures")
    data = fits_json(an, inputs)
    data["figures"] = {
        m: {k: [f"figures/{f}" for f in v] for k, v in kinds.items()} for m, kinds in figs.items()
    }
    write_json(out / "fits.json", data, indent=1)
    (out / "report.md").write_text(report_md(an, figs, inputs))
    return {
        "fits": out / "fits.json",
        "report": out / "report.md",
        "runs": out / "runs.csv",
        "figures": figs,
    }


# --- W&B --------------------------------------------------------------------------


def wandb_target(
    an: Analysis,
    mode: str,
    project: str | None,
    entity: str | None,
    group: str | None,
    env: Mapping[str, str],
) -> dict | None:
    """Where to upload, or None. `auto` follows the runs' own logger settings; a
    WANDB_MODE of offline/disabled in the environment always wins, so an offline
    setup never touches the network."""
    env_mode = env.get("WANDB_MODE", "").lower()
    if mode == "off" or env_mode == "disabled":
        return None
    cfg = next((r.config for r in an.runs if r.finished and r.config), {})
    logger = cfg.get("logger") if isinstance(cfg.get("logger"), dict) else {}
    if mode == "auto":
        if logger.get("kind") != "wandb":
            return None
        mode = logger.get("mode") or "offline"
    if env_mode in ("offline", "dryrun"):
        mode = "offline"
    return {
        "mode": mode,
        "project": project or logger.get("project") or "mlip-scaling",
        "entity": entity or logger.get("entity"),
        "group": group or logger.get("group") or cfg.get("study"),
    }


def upload_wandb(
    an: Analysis, out: Path, mode: str, project: str, entity: str | None, group: str | None
) -> bool:
    """Log the fitted laws (table + summary), figures and fits.json to W&B.

    Never fails the analysis: the files on disk are the record, W&B a mirror.
    """
    try:
        import wandb
    except ImportError:
        print("W&B upload skipped: wandb is not installed")
        return False
    out = Path(out)
    try:
        run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            mode=mode,
            job_type="scaling-analysis",
            name=f"scaling-{group or 'study'}",
            dir=str(out),
            config={"settings": vars(an.settings)},
        )
        table = wandb.Table(
            columns=[
                "family",
                "metric",
                "law",
                "form",
                "param",
                "value",
                "ci_low",
                "ci_high",
                "verdict",
            ]
        )
        summary = {}
        for e in an.entries():
            ci = e.result.ci
            for k, v in e.result.params.items():
                lo, hi = ci[k] if ci[k] else (None, None)
                table.add_data(
                    e.family,
                    e.metric,
                    e.law_name,
                    e.result.law.form,
                    k,
                    v,
                    lo,
                    hi,
                    e.result.quality["verdict"],
                )
                summary[f"{e.family}/{e.metric}/{e.law_name}/{k}"] = v
        images = {
            f"figures/{p.stem}": wandb.Image(str(p))
            for p in sorted((out / "figures").glob("*.png"))
        }
        run.log({"scaling/fits": table, **images})
        run.summary.update(summary)
        art = wandb.Artifact("scaling-report", type="analysis")
        for name in ("fits.json", "report.md", "runs.csv"):
            if (out / name).is_file():
                art.add_file(str(out / name))
        run.log_artifact(art)
        run.finish()
    except Exception as err:  # noqa: BLE001 - a mirror failing must not lose the report
        print(f"W&B upload failed ({type(err).__name__}: {err}); the report is on disk")
        return False
    return True
