"""fits.json: the whole analysis as data, values unrounded.

Schema version 2. Under fits[family][metric][law] each fitted parameter is
{"value": x, "ci": [low, high]} (ci null where the bootstrap could not give
one), with the fit's quality, residuals, leave-one-out check, its points
(still improving, not learned, fraction of the trivial predictor) and
`converged_only`, the same law without the still-improving runs. Top-level
keys beside `fits`: `frontier` (compute-optimal N and D, from the L(N, D) fit
and from the envelope), `pareto` (envelope runs), `comparisons`,
`equal_compute` (unconstrained against constrained families along compute),
`tuned` (the value chosen per grid point of a tuned study) and
`trivial_predictors`. Version 2 added those and made N the non-embedding
count by default (`variables` says which).
"""

from __future__ import annotations

import datetime as dt

from analysis.scaling.types import PARAM_MEASURES, Analysis, FitEntry, Run
from data_pipelines.atomic import jsonable

SCHEMA_VERSION = 2


def variables(e: FitEntry) -> dict[str, str]:
    """What each axis of a fit counts, by run field."""
    names = {"N": PARAM_MEASURES[e.param_measure], "D": e.data_measure, "C": "train_flops"}
    return {a: names[a] for a in e.result.law.axes}


def baseline_of(runs: list[Run], metric: str) -> float | None:
    """The trivial predictor's value of a metric over some runs (their median:
    runs of one study share a validation set)."""
    vals = sorted(b for r in runs if (b := r.baseline_of(metric)))
    return vals[len(vals) // 2] if vals else None


def _params(e: FitEntry) -> dict:
    ci = e.result.ci
    return {
        k: {"value": v, "ci": list(ci[k]) if ci[k] else None} for k, v in e.result.params.items()
    }


def entry_json(e: FitEntry) -> dict:
    """One fit as written to fits.json."""
    res = e.result
    base = baseline_of(e.runs, e.metric)
    points = []
    for i, (r, y) in enumerate(zip(e.runs, res.y.tolist())):
        b = r.baseline_of(e.metric)
        points.append(
            {
                "run": r.name,
                **{a: float(res.x[a][i]) for a in res.law.axes},
                "L": y,
                "still_improving": r.still_improving,
                "not_learned": r.not_learned(e.metric),
                "fraction_of_baseline": y / b if b else None,
            }
        )
    conv = e.converged_only
    out = {
        "law": e.law_name,
        "form": res.law.form,
        "formula": res.law.formula(),
        "variables": variables(e),
        "params": _params(e),
        "quality": res.quality,
        "num_runs": len(res.y),
        "runs": res.names,
        "range": {a: [float(v.min()), float(v.max())] for a, v in res.x.items()},
        "fixed": e.fixed,
        "residuals_log": dict(zip(res.names, res.residuals_log.tolist())),
        "points": points,
        "still_improving": e.still_improving,
        "converged_only": (
            None
            if conv is None
            else {"status": "skipped", "reason": conv}
            if isinstance(conv, str)
            else {
                "status": "ok",
                "num_runs": len(conv.result.y),
                "runs": conv.result.names,
                "form": conv.result.law.form,
                "params": _params(conv),
                "quality": conv.result.quality,
            }
        ),
        "baseline": None,
        "envelope_of": e.envelope_of,
        "loo_largest": e.loo,
        "loo_cv_rmse_log": e.loo_cv_rmse_log,
        "notes": e.notes,
    }
    if base:
        fr = [p["fraction_of_baseline"] for p in points if p["fraction_of_baseline"]]
        e_val = res.params.get("E")
        out["baseline"] = {
            "value": base,
            "fraction_range": [min(fr), max(fr)] if fr else None,
            "E_fraction": e_val / base if e_val is not None else None,
            "not_learned": [p["run"] for p in points if p["not_learned"]],
        }
    return out


def is_unconstrained(an: Analysis, family: str) -> bool:
    """A family with direct (non-conservative) forces, by its name or its runs."""
    runs = [r for r in an.runs if r.family == family and r.finished]
    return family.endswith("-direct") or bool(runs) and all(r.forces == "direct" for r in runs)


def equal_compute(an: Analysis) -> list[dict]:
    """Each unconstrained family against each constrained one along compute: the
    L(C) envelope fits first, then the L(N, D) frontiers, as compared."""
    out = []
    for c in an.comparisons:
        if c["law"] not in ("C", "ND"):
            continue
        a, b = c["families"]
        kinds = [is_unconstrained(an, a), is_unconstrained(an, b)]
        if kinds[0] == kinds[1]:
            continue
        free, fixed = (a, b) if kinds[0] else (b, a)
        row = {"metric": c["metric"], "law": c["law"], "unconstrained": free, "constrained": fixed}
        if c.get("status") != "ok":
            row.update(status="skipped", reason=c["reason"])
        else:
            ratio = c["ratio"] if free == a else [1 / v for v in c["ratio"]]
            row.update(
                status="ok",
                range=c["range"],
                ratio_unconstrained_over_constrained=[ratio[0], ratio[-1]],
                lower_at_top=free if ratio[-1] < 1 else fixed,
                crossover=c["crossover"],
            )
        out.append(row)
    return sorted(out, key=lambda r: (r["metric"], r["law"] != "C"))


def trivial_predictors(an: Analysis) -> dict | None:
    """Range of each trivial predictor's error over the finished runs, or None."""
    runs = [r for r in an.runs if r.finished and r.baseline]
    if not runs:
        return None
    out: dict = {"num_runs": len(runs)}
    for key in sorted({k for r in runs for k in r.baseline}):
        vals = [r.baseline[key] for r in runs if key in r.baseline]
        out[key] = [min(vals), max(vals)]
    return out


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
    fin = [r for r in an.runs if r.finished]
    return jsonable(
        {
            "schema_version": SCHEMA_VERSION,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "inputs": inputs,
            "settings": {
                "laws": list(s.laws),
                "form": s.form,
                "data_measure": s.data_measure,
                "param_measure": s.param_measure,
                "include_ladder_mains": s.include_ladder_mains,
                "num_bootstrap": s.num_bootstrap,
                "ci_level": s.ci_level,
                "huber_delta": s.huber_delta,
                "seed": s.seed,
                "loss": "Huber on log(L_pred / L_obs), L-BFGS-B from a grid of starts",
                "bootstrap_starts": "the full-data optima, jittered copies of the best "
                "and the best grid starts on each resample",
            },
            "runs": {
                "total": len(an.runs),
                "finished": len(fin),
                "unfinished": [
                    {"name": r.name, "family": r.family, "source": r.source, "reason": r.reason}
                    for r in an.runs
                    if not r.finished
                ],
                "excluded": an.excluded,
                "warnings": [
                    {"name": r.name, "warnings": r.warnings} for r in an.runs if r.warnings
                ],
                "still_improving": [r.name for r in fin if r.still_improving],
                "ladder_mains": [r.name for r in fin if r.ladder_main],
                "not_learned": [
                    {"name": r.name, "metric": m}
                    for r in fin
                    for m in an.metrics
                    if r.not_learned(m)
                ],
            },
            "metrics": an.metrics,
            "trivial_predictors": trivial_predictors(an),
            "fits": fits,
            "skipped": an.skipped,
            "frontier": frontiers,
            "pareto": an.pareto,
            "comparisons": an.comparisons,
            "equal_compute": equal_compute(an),
            "tuned": an.tuned,
            "notes": an.notes,
        }
    )
