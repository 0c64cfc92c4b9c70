"""The report's words: each fitted law, frontier, comparison and tuned grid in
sentences a reader can act on. :mod:`analysis.scaling.markdown` puts them
together with the tables into report.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from analysis.scaling.fitsjson import entry_json
from analysis.scaling.points import edge_points
from analysis.scaling.types import FitEntry

_LIMIT = {
    "N": "with unlimited parameters at this data budget",
    "D": "with unlimited data at this size",
    "ND": "with unlimited size and data",
    "C": "with unlimited compute",
}


def g(x: float | None) -> str:
    """A number in three significant figures, "n/a" for None."""
    return "n/a" if x is None else f"{x:.3g}"


def pv(p: Mapping, name: str) -> str:
    """A {"value", "ci"} entry as `value [low, high]`."""
    v = p[name]
    return f"{g(v['value'])} [{g(v['ci'][0])}, {g(v['ci'][1])}]" if v["ci"] else g(v["value"])


def law_sentences(e: FitEntry, unit: str) -> list[str]:
    """The fitted law of one entry in words and numbers."""
    j = entry_json(e)
    p, q = j["params"], j["quality"]
    v = {k: x["value"] for k, x in p.items()}
    terms = [f"{g(v['E'])}"] if "E" in v else []
    for coef, expo, axis in (("A", "alpha", "N"), ("B", "beta", "D"), ("K", "kappa", "C")):
        if coef in v:
            terms.append(f"{g(v[coef])} {axis}^-{v[expo]:.3f}")
    args = ", ".join(e.result.law.axes)
    d_name = e.data_measure.replace("_", " ")
    n_name = "non-embedding parameters" if e.param_measure == "non-embedding" else "parameters"
    defs = {"N": f"N = {n_name}", "D": f"D = {d_name}", "C": "C = training FLOPs"}
    out = [
        f"**{e.family}**, L({args}) = {' + '.join(terms)}{' ' + unit if unit else ''} "
        f"({'; '.join(defs[a] for a in e.result.law.axes)}; {len(e.result.y)} runs"
        + (f", {len(e.still_improving)} of them still improving" if e.still_improving else "")
        + ")."
    ]
    for name, what in (("alpha", n_name), ("beta", d_name), ("kappa", "compute")):
        if name in p:
            ex = p[name]
            cut = 1 - 2 ** -ex["value"]
            rng = ""
            if ex["ci"]:
                rng = (
                    f" [{100 * (1 - 2 ** -ex['ci'][0]):.0f}%, {100 * (1 - 2 ** -ex['ci'][1]):.0f}%]"
                )
            out.append(
                f"{name} = {pv(p, name)}: doubling the {what} removes "
                f"{100 * cut:.0f}%{rng} of the {'reducible ' if 'E' in p else ''}error."
            )
    u = f" {unit}" if unit else ""
    if "E" in p:
        if p["E"]["value"] < 1e-6 * float(e.result.y.min()):
            # at its lower bound: the data show no floor, only an upper limit on one
            hi = p["E"]["ci"][1] if p["E"]["ci"] else None
            out.append(
                f"E = 0: no error floor is resolved {_LIMIT[e.law_name]}"
                + (f" (E < {g(hi)}{u} at {100 * e.result.ci_level:g}%)" if hi else "")
                + "."
            )
        else:
            out.append(f"E = {pv(p, 'E')}{u}: the error approached {_LIMIT[e.law_name]}.")
    if b := j["baseline"]:
        fr = b["fraction_range"]
        out.append(
            f"Against the trivial predictor ({g(b['value'])}{u}): the runs reach "
            f"{100 * fr[0]:.1f}-{100 * fr[1]:.1f}% of its error"
            + (f", the floor E {100 * b['E_fraction']:.2g}%" if b["E_fraction"] else "")
            + (f"; NOT LEARNED: {', '.join(b['not_learned'])}" if b["not_learned"] else "")
            + "."
        )
    if e.fixed:
        f = e.fixed
        out.append(
            f"Fitted at fixed {f['quantity']} = {g(f['min'])}"
            + (f"-{g(f['max'])}" if f["max"] > f["min"] * 1.001 else "")
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
    out += _converged_only(j)
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


def _converged_only(j: dict) -> list[str]:
    c = j["converged_only"]
    if c is None:
        return []
    if c["status"] != "ok":
        return [f"Without the still-improving runs the law cannot be fitted: {c['reason']}."]
    exps = [k for k in ("alpha", "beta", "kappa") if k in c["params"]]
    shown = ", ".join(f"{k} = {pv(c['params'], k)}" for k in exps)
    return [
        f"Without the {len(j['still_improving'])} still-improving run(s) ({c['num_runs']} "
        f"runs, {c['form']} form): {shown}; fit quality {c['quality']['verdict']}."
    ]


def _in_range(f: dict) -> str:
    c, inside = f["curve"]["C"], f["curve"]["in_range"]
    cs = [x for x, ok in zip(c, inside) if ok]
    if not cs:
        return "; the optimal sizes and data lie outside the sampled ranges: extrapolation"
    if len(cs) == len(c):
        return ""
    return f"; the optimum lies inside the sampled ranges for C = {g(cs[0])}-{g(cs[-1])} only"


def frontier_lines(fam: str, f: dict) -> list[str]:
    """The compute-optimal allocation of one family: from the L(N, D) fit (all
    runs, the law's form assumed) and from the envelope runs (no law, few points)."""
    out = []
    env = f.get("envelope") or {}
    if f.get("status") == "ok":
        cm = f["cost_model"]
        k = cm["k_per_param_atom"]
        out.append(
            f"- {fam}, from the L(N, D) fit: for a compute budget C the best size grows as "
            f"N_opt ~ C^{pv(f, 'N_opt_exponent')} and the data as D_opt ~ "
            f"C^{pv(f, 'D_opt_exponent')} (cost model C = {cm['c']:.3g} N^{cm['gamma']:.3f} D "
            f"fitted to measured FLOPs; k = C / (N D) = {g(k['median'])} FLOPs per parameter "
            f"and atom, {g(k['range'][0])}-{g(k['range'][1])})" + _in_range(f) + "."
        )
    else:
        out.append(f"- {fam}, from the L(N, D) fit: not available: {f['reason']}.")
    if env.get("status") == "ok":
        out.append(
            f"- {fam}, from the {env['num_points']} envelope runs (least squares on log C, "
            f"intervals resample the family's runs): N_opt ~ C^{pv(env, 'N_opt_exponent')}, "
            f"D_opt ~ C^{pv(env, 'D_opt_exponent')}." + _agreement(f, env)
        )
    elif env:
        out.append(f"- {fam}, from the envelope: not available: {env['reason']}.")
    if f.get("headline") == "L(N, D)" and env.get("status") == "ok":
        out.append(
            f"- {fam}: the headline is the L(N, D) estimate, which uses every run; the "
            f"envelope holds only {env['num_points']}, at few distinct sizes, so it is "
            "the model-free check."
        )
    return out


def _agreement(f: dict, env: dict) -> str:
    if f.get("status") != "ok":
        return " This is the only estimate: read it as coarse."
    a, b = f["N_opt_exponent"]["ci"], env["N_opt_exponent"]["ci"]
    if not a or not b:
        return ""
    if a[1] < b[0] or b[1] < a[0]:
        return (
            " The two estimates of the N_opt exponent DISAGREE (intervals do not "
            "overlap): the law's form or the envelope's few points mislead."
        )
    return " The two estimates agree within their intervals."


def compute_lines(rows: list[dict]) -> list[str]:
    """Unconstrained against constrained families at equal compute."""
    law_name = {"C": "L(C) envelope fits", "ND": "L(N, D) compute-optimal frontiers"}
    out = []
    for r in rows:
        free, fixed = r["unconstrained"], r["constrained"]
        head = f"- {r['metric']}, {free} vs {fixed} ({law_name[r['law']]})"
        if r["status"] != "ok":
            out.append(f"{head}: not compared: {r['reason']}.")
            continue
        lo, hi = r["ratio_unconstrained_over_constrained"]
        c0, c1 = r["range"]
        cr = r["crossover"]
        frac = cr["fraction_of_draws"]
        if cr["value"] is not None:
            winner = r["lower_at_top"]
            loser = fixed if winner == free else free
            verdict = f"{winner} overtakes {loser} at C = {g(cr['value'])}" + (
                f" [{g(cr['ci'][0])}, {g(cr['ci'][1])}]" if cr["ci"] else " (no interval)"
            )
            if frac is not None:
                verdict += f", a crossing in {100 * frac:.0f}% of bootstrap draws"
            if len(cr["all"]) > 1:
                verdict += f"; the curves cross {len(cr['all'])} times"
        else:
            lower = free if hi < 1 else fixed
            verdict = f"no crossover in range: {lower} is lower throughout" + (
                f" ({100 * frac:.0f}% of bootstrap draws do cross)" if frac else ""
            )
        out.append(
            f"{head}: error ratio {free}/{fixed} = {lo:.3g} at C = {g(c0)} and {hi:.3g} at "
            f"C = {g(c1)}; {verdict}."
        )
    return out


def tuned_lines(selections: list[dict], metric: str) -> list[str]:
    """The tuned grid of one metric: the chosen value per point, and edge optima."""
    keys = sorted({k for s in selections for k in s["value"]})
    out = [
        f"Per grid point the run best on {metric} is the point of the laws; the others "
        "are left out.",
        "",
        f"| family | grid point | {' | '.join(keys)} chosen | {metric} | values tried | edge |",
        "|---|---|---|---|---|---|",
    ]
    varying = _varying_axes(selections)
    for s in selections:
        point = ", ".join(f"{k}={s['point'][k]}" for k in varying) or "-"
        if s["ladder"]:
            point += f", cooldown at {s['ladder'].get('decay_at')}"
        if len(keys) == 1:  # each value, and which diverged
            tried = ", ".join(
                g(t["value"].get(keys[0])) + (" (diverged)" if t["metric"] is None else "")
                for t in s["tried"]
            )
        else:
            tried = "; ".join(", ".join(g(v) for v in s["values_tried"].get(k, [])) for k in keys)
        edge = (
            "n/a (one value)"
            if s["at_edge"] is None
            else ", ".join(f"{e['key']} {e['side']}" for e in s["at_edge"]) or "no"
        )
        chosen = " | ".join(g(s["value"].get(k)) for k in keys)
        out.append(f"| {s['family']} | {point} | {chosen} | {g(s['metric'])} | {tried} | {edge} |")
    edges = edge_points(selections)
    out.append("")
    if edges:
        out.append(
            f"The optimum sits at the EDGE of the tuned grid for {len(edges)} of "
            f"{len(selections)} grid points ("
            + "; ".join(f"`{s['chosen']}`" for s in edges)
            + "): the best value may lie outside the values tried, so widen the grid there."
        )
    else:
        out.append("No optimum sits at the edge of the values tried.")
    return out


def _varying_axes(selections: list[dict]) -> list[str]:
    keys = sorted({k for s in selections for k in s["point"]})
    return [k for k in keys if len({str(s["point"].get(k)) for s in selections}) > 1]
