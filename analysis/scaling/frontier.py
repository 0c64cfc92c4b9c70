"""Compute envelopes, the compute-optimal frontier and family comparisons.

The lower envelope L(C) of a family is the best metric any of its runs reached
at or below each compute: the runs no cheaper run beats. The frontier answers
"for a compute budget C, which N and D?" two ways: from an L(N, D) fit
minimised under the measured cost of the runs (it uses every run, and trusts
the law's form), and by regressing log N and log D of the envelope runs on
log C (no law, but only as many points as the envelope has). The comparison
puts two families' fitted curves side by side: their error ratio along N, D
or compute, and where (if anywhere in range) one overtakes the other, with
bootstrap uncertainty.
"""

from __future__ import annotations

import math

import numpy as np

from analysis.scaling.laws import num_distinct
from analysis.scaling.types import FitEntry, Run


def envelope(runs: list[Run], metric: str) -> list[Run]:
    """Runs on the lower envelope L(C): no run of at most their compute does better.

    Sorted by compute; runs without measured compute are not on it.
    """
    pts = sorted((r for r in runs if r.flops), key=lambda r: (r.flops, r.metrics[metric]))
    best, out = math.inf, []
    for r in pts:
        if r.metrics[metric] < best:
            best = r.metrics[metric]
            out.append(r)
    return out


def pareto(runs: list[Run], metric: str, measure: str, param_measure: str = "total") -> list[dict]:
    """The envelope runs as rows: compute, metric, N, D, still improving."""
    return [
        {
            "run": r.name,
            "C": r.flops,
            "L": r.metrics[metric],
            "N": r.params(param_measure),
            "D": r.data(measure),
            "still_improving": r.still_improving,
        }
        for r in envelope(runs, metric)
    ]


def envelope_allocation(
    runs: list[Run],
    metric: str,
    measure: str,
    param_measure: str,
    level: float,
    num_bootstrap: int,
    seed: int = 0,
) -> dict:
    """N_opt ~ C^a and D_opt ~ C^b by least squares on the envelope runs.

    Model-free but coarse: the envelope of a grid holds a few runs at a few
    sizes. Intervals resample all the family's runs and recompute the envelope,
    so they include the chance of a different run being best at some compute.
    """
    runs = [r for r in runs if r.flops and r.params(param_measure) and r.data(measure)]

    def slopes(rs: list[Run]) -> tuple[float, float] | None:
        env = envelope(rs, metric)
        n = [r.params(param_measure) for r in env]
        if len(env) < 3 or num_distinct(n) < 2 or num_distinct([r.data(measure) for r in env]) < 2:
            return None
        logc = np.log([r.flops for r in env])
        a = np.polyfit(logc, np.log(n), 1)[0]
        b = np.polyfit(logc, np.log([r.data(measure) for r in env]), 1)[0]
        return float(a), float(b)

    point = slopes(runs)
    env = envelope(runs, metric)
    if point is None:
        return {
            "status": "skipped",
            "reason": f"the envelope has {len(env)} run(s); at least 3, at two or more "
            "sizes and data budgets, are needed",
        }
    rng = np.random.default_rng(seed)
    draws = [
        d
        for _ in range(num_bootstrap)
        if (d := slopes([runs[i] for i in rng.integers(0, len(runs), len(runs))])) is not None
    ]
    out = {
        "status": "ok",
        "method": "least squares of log N and log D on log C over the envelope runs",
        "num_points": len(env),
        "runs": [r.name for r in env],
        "N_opt_exponent": {"value": point[0], "ci": None},
        "D_opt_exponent": {"value": point[1], "ci": None},
        "num_draws": len(draws),
    }
    if len(draws) >= 20:
        q = 50 * (1 - level)
        arr = np.asarray(draws)
        for k, key in enumerate(("N_opt_exponent", "D_opt_exponent")):
            out[key]["ci"] = [
                float(np.percentile(arr[:, k], q)),
                float(np.percentile(arr[:, k], 100 - q)),
            ]
    return out


def frontier(entry: FitEntry, level: float, num_points: int = 40) -> dict:
    """Compute-optimal N and D from an L(N, D) fit and a fitted cost model.

    Cost is linear in data seen and a power of size, C = c N^gamma D (6ND does
    not hold for graph models, so c and gamma are fitted to measured FLOPs;
    gamma = 1 is C = k N D with k the FLOPs per parameter and atom).
    Minimising E + A N^-alpha + B D^-beta on that constraint gives
    N_opt ~ C^(beta / (alpha + gamma beta)) and D_opt ~ C^(alpha / (alpha + gamma beta)).
    """
    if entry.result.quality["verdict"] == "poor":
        return {"status": "skipped", "reason": "the L(N, D) fit is poor"}
    if entry.data_measure not in ("atoms_seen", "structures_seen"):
        return {
            "status": "skipped",
            "reason": f"D is {entry.data_measure}, not data seen, so "
            "compute is not proportional to it",
        }
    runs = [r for r in entry.runs if r.flops]
    n = np.array([r.params(entry.param_measure) for r in runs], dtype=float)
    if len(runs) < 2 or num_distinct(n) < 2:
        return {"status": "skipped", "reason": "measured FLOPs for at least two sizes needed"}
    d = np.array([r.data(entry.data_measure) for r in runs], dtype=float)
    c = np.array([r.flops for r in runs], dtype=float)
    gamma, kappa = np.polyfit(np.log(n), np.log(c / d), 1)
    if gamma <= 0:
        return {"status": "skipped", "reason": f"cost does not grow with size (gamma={gamma:.2g})"}
    res = entry.result
    logc = np.linspace(np.log(c.min()), np.log(c.max()), num_points)

    def solve(p: dict) -> tuple:
        a, b = np.asarray(p["alpha"], float), np.asarray(p["beta"], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            den = a + gamma * b
            log_n = (
                (np.log(a * p["A"]) - np.log(gamma * b * p["B"]))[..., None]
                + b[..., None] * (logc - kappa)
            ) / den[..., None]
            log_d = logc - kappa - gamma * log_n
            loss = (
                np.asarray(p.get("E", 0.0))[..., None]
                + p["A"][..., None] * np.exp(-a[..., None] * log_n)
                + p["B"][..., None] * np.exp(-b[..., None] * log_d)
            )
        return b / den, a / den, log_n, log_d, loss

    point = {k: np.asarray(v) for k, v in res.params.items()}
    if point["alpha"] <= 1e-6 or point["beta"] <= 1e-6:
        return {
            "status": "skipped",
            "reason": "alpha or beta is 0: the optimum puts all compute on one axis",
        }
    a_exp, b_exp, log_n, log_d, loss = solve(point)
    k = c / (n * d)
    out = {
        "status": "ok",
        "method": "the L(N, D) fit minimised at fixed compute under the fitted cost model",
        "cost_model": {
            "c": float(math.exp(kappa)),
            "gamma": float(gamma),
            "formula": f"C = c N^gamma {entry.data_measure}",
            # the measured FLOPs per parameter and atom: constant when gamma = 1
            "k_per_param_atom": {"median": float(np.median(k)), "range": [k.min(), k.max()]},
        },
        "N_opt_exponent": {"value": float(a_exp), "ci": None},
        "D_opt_exponent": {"value": float(b_exp), "ci": None},
        "curve": {
            "C": np.exp(logc).tolist(),
            "N_opt": np.exp(log_n).tolist(),
            "D_opt": np.exp(log_d).tolist(),
            "L": loss.tolist(),
            "L_band": None,
            # where the optimal allocation lies inside the sampled sizes and data
            # (within 1.5x): elsewhere the curve is an extrapolation of the law
            "in_range": (
                (log_n >= np.log(n.min() / 1.5))
                & (log_n <= np.log(n.max() * 1.5))
                & (log_d >= np.log(d.min() / 1.5))
                & (log_d <= np.log(d.max() * 1.5))
            ).tolist(),
        },
    }
    if res.has_ci:
        ab, bb, _, _, lb = solve(res.params_boot)
        ok = np.isfinite(ab) & np.isfinite(bb) & np.all(np.isfinite(lb), axis=1)
        q = 50 * (1 - level)
        for key, arr in (("N_opt_exponent", ab[ok]), ("D_opt_exponent", bb[ok])):
            if len(arr) >= 20:
                out[key]["ci"] = [float(np.percentile(arr, q)), float(np.percentile(arr, 100 - q))]
        if ok.sum() >= 20:
            out["curve"]["L_band"] = [
                np.percentile(lb[ok], q, axis=0).tolist(),
                np.percentile(lb[ok], 100 - q, axis=0).tolist(),
            ]
        out["boot_curves"] = lb[ok]  # for comparisons; not written to fits.json
    return out


# --- family comparison --------------------------------------------------------------


def _crossings(logx: np.ndarray, logr: np.ndarray) -> list[float]:
    s = np.sign(logr)
    idx = np.nonzero(s[:-1] * s[1:] < 0)[0]
    return [
        float(math.exp(logx[i] - logr[i] * (logx[i + 1] - logx[i]) / (logr[i + 1] - logr[i])))
        for i in idx
    ]


def compare_curves(
    name_a: str,
    name_b: str,
    axis: str,
    x: np.ndarray,
    la: np.ndarray,
    lb: np.ndarray,
    boot_a: np.ndarray | None,
    boot_b: np.ndarray | None,
    level: float,
) -> dict:
    """Error ratio a/b along a shared grid and where the curves cross.

    Bootstrap draws of the two families are independent, so draw i of one is
    paired with draw i of the other. The crossover interval is over the draws
    that cross in range; the fraction of such draws is reported beside it.
    """
    ratio = la / lb
    logx = np.log(x)
    cross = _crossings(logx, np.log(ratio))
    out: dict = {
        "families": [name_a, name_b],
        "axis": axis,
        "x": x.tolist(),
        "ratio": ratio.tolist(),
        "ratio_band": None,
        "range": [float(x[0]), float(x[-1])],
    }
    frac, ci = None, None
    if boot_a is not None and boot_b is not None:
        k = min(len(boot_a), len(boot_b))
        rb = boot_a[:k] / boot_b[:k]
        q = 50 * (1 - level)
        out["ratio_band"] = [
            np.percentile(rb, q, axis=0).tolist(),
            np.percentile(rb, 100 - q, axis=0).tolist(),
        ]
        firsts = []
        for row in np.log(rb):
            c = _crossings(logx, row)
            if c:  # the crossing nearest the point estimate's, else the first
                firsts.append(min(c, key=lambda v: abs(math.log(v / cross[0]))) if cross else c[0])
        frac = len(firsts) / k
        if len(firsts) >= 20:
            ci = [float(np.percentile(firsts, q)), float(np.percentile(firsts, 100 - q))]
    lo_hi = f"{ratio.min():.3g}-{ratio.max():.3g}"
    if cross:
        after = name_a if ratio[-1] < 1 else name_b
        stmt = (
            f"{after} overtakes {name_b if after == name_a else name_a} at {axis} = "
            f"{cross[0]:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
        )
        if frac is not None:
            stmt += f" (a crossing in {100 * frac:.0f}% of bootstrap draws)"
        if len(cross) > 1:
            stmt += f"; the curves cross {len(cross)} times"
    else:
        lower = name_a if ratio.mean() < 1 else name_b
        stmt = (
            f"no crossover in range ({axis} = {x[0]:.3g}-{x[-1]:.3g}): {lower} is lower "
            f"throughout (ratio {name_a}/{name_b} = {lo_hi})"
        )
        if frac:
            stmt += f"; {100 * frac:.0f}% of bootstrap draws do cross"
    out["crossover"] = {
        "value": cross[0] if cross else None,
        "ci": ci,
        "all": cross,
        "fraction_of_draws": frac,
        "statement": stmt,
    }
    return out


def compare_pair(ea: FitEntry, eb: FitEntry, law: str, level: float, fr: dict) -> dict:
    """Compare two families' fits of one law and metric (status "skipped" and the
    reason where they cannot be compared)."""
    poor = [e.family for e in (ea, eb) if e.result.quality["verdict"] == "poor"]
    if poor:
        return {"status": "skipped", "reason": f"the fit of {' and '.join(poor)} is poor"}
    if law in ("N", "D", "C"):
        xa, xb = ea.result.x[law], eb.result.x[law]
        lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
        if lo >= hi:
            return {"status": "skipped", "reason": f"the families' {law} ranges do not overlap"}
        x = np.geomspace(lo, hi, 60)
        la, lb = ea.result.predict({law: x}), eb.result.predict({law: x})
        ba = ea.result.predict_boot({law: x}) if ea.result.has_ci else None
        bb = eb.result.predict_boot({law: x}) if eb.result.has_ci else None
        axis = law
    else:  # along the compute frontier: which family is better at equal compute
        fa, fb = fr.get(ea.family, {}), fr.get(eb.family, {})
        if fa.get("status") != "ok" or fb.get("status") != "ok":
            return {"status": "skipped", "reason": "needs a compute frontier for both families"}
        ca, cb = np.array(fa["curve"]["C"]), np.array(fb["curve"]["C"])
        lo, hi = max(ca[0], cb[0]), min(ca[-1], cb[-1])
        if lo >= hi:
            return {"status": "skipped", "reason": "the families' compute ranges do not overlap"}
        x = np.geomspace(lo, hi, 60)

        def interp(c, ys):
            return np.exp(np.interp(np.log(x), np.log(c), np.log(ys)))

        la, lb = interp(ca, fa["curve"]["L"]), interp(cb, fb["curve"]["L"])
        ba = np.array([interp(ca, r) for r in fa["boot_curves"]]) if "boot_curves" in fa else None
        bb = np.array([interp(cb, r) for r in fb["boot_curves"]]) if "boot_curves" in fb else None
        axis = "C"
    out = compare_curves(ea.family, eb.family, axis, x, la, lb, ba, bb, level)
    out.update(status="ok", metric=ea.metric, law=law)
    if law == "C":  # the fitted envelopes against the runs themselves, at the top compute
        best = {
            e.family: min(r.metrics[e.metric] for r in e.runs if r.flops <= x[-1] * (1 + 1e-9))
            for e in (ea, eb)
        }
        out["best_run_at_top"] = {"C": float(x[-1]), **best}
    return out
