"""What a study's report must show, checked against its runs and fits.

The demo (issue "the main job shows real laws") promises five things; this
module measures each from the study's ``summary.json`` files and the report's
``fits.json`` and says met or missed, with the figure behind it:

* energy learned: the largest-D cooled-down runs of each family reach an energy
  MAE under 30% of the composition baseline's;
* L(N) for each pet family: at least 4 widths spanning a decade of
  non-embedding N, and an alpha interval that excludes 0;
* L(D) for every family: a beta interval that excludes 0;
* a family comparison at equal compute;
* at least 80% of the points (runs a fit uses) rated converged.

    python -m slurm.demo_checks STUDY_DIR [--report DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ENERGY_FRACTION = 0.30
MIN_WIDTHS = 4
MIN_DECADES = 1.0
CONVERGED_FRACTION = 0.80
METRIC = "val/forces_mae"
ENERGY = "energy_per_atom_mae"


def _points(study_dir: Path, report: dict, metric: str = METRIC) -> list[dict]:
    """Finished runs that stand for a point: a ladder's main run never cools down,
    and of a tuned grid point only the run the report chose on ``metric`` (its
    envelope; the force envelope where the report has none for ``metric``) counts."""
    tuned = (report.get("tuned") or {}).values()
    if not any(by_metric.get(metric) for by_metric in tuned):
        metric = METRIC
    chosen = {
        Path(row["chosen"]).name
        for by_metric in tuned
        for row in by_metric.get(metric) or []
        if row.get("chosen")
    }
    out = []
    for path in sorted((study_dir / "runs").glob("*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("status") != "finished" or (s.get("budget") or {}).get("role") == "main":
            continue
        if s.get("tune") and s.get("run_name") not in chosen:
            continue
        out.append(s)
    return out


def _excludes_zero(param: dict | None) -> bool:
    ci = (param or {}).get("ci")
    return bool(ci) and ci[0] > 0


def _exponent(fits: dict, family: str, name: str, law: str) -> dict | None:
    """An exponent of a family's force-error fit: from the joint L(N, D) law,
    else from the one-axis ``law``; None when neither has it."""
    fit = (fits.get(family) or {}).get(METRIC) or {}
    for key in ("ND", law):
        param = ((fit.get(key) or {}).get("params") or {}).get(name)
        if param:
            return param
    return None


def _interval(name: str, param: dict | None) -> str:
    if not param:
        return f"{name} not fitted"
    ci = param.get("ci")
    inner = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else " (no interval)"
    return f"{name} = {param['value']:.3g}{inner}"


def energy_check(points: list[dict]) -> list[dict]:
    """Per family: the energy MAE of its largest-D runs over the composition baseline's."""
    rows = []
    for family in sorted({p["family"] for p in points}):
        runs = [p for p in points if p["family"] == family and f"val/{ENERGY}" in p]
        if not runs:
            continue
        top = max(p.get("atoms_seen", 0) for p in runs)
        fractions = [
            p[f"val/{ENERGY}"] / p["baseline"][ENERGY]
            for p in runs
            if p.get("atoms_seen", 0) == top and (p.get("baseline") or {}).get(ENERGY)
        ]
        if not fractions:
            continue
        best, worst = min(fractions), max(fractions)
        rows.append(
            {
                "check": f"energy learned ({family})",
                "met": worst < ENERGY_FRACTION,
                "measured": f"largest-D runs at {100 * best:.0f}-{100 * worst:.0f}% of the "
                f"composition baseline's energy MAE (target < {100 * ENERGY_FRACTION:.0f}%)",
            }
        )
    return rows


def size_check(points: list[dict], fits: dict, family: str) -> dict:
    """L(N) of one family: width count, span in decades and the alpha interval."""
    sizes = {
        p["size"]: p.get("num_params_non_embedding") or p["num_params"]
        for p in points
        if p["family"] == family
    }
    decades = math.log10(max(sizes.values()) / min(sizes.values())) if len(sizes) > 1 else 0.0
    alpha = _exponent(fits, family, "alpha", "N")
    met = len(sizes) >= MIN_WIDTHS and decades >= MIN_DECADES and _excludes_zero(alpha)
    return {
        "check": f"L(N) ({family})",
        "met": met,
        "measured": f"{len(sizes)} sizes over {decades:.2f} decades of N; "
        f"{_interval('alpha', alpha)}",
    }


def data_check(fits: dict, family: str) -> dict:
    beta = _exponent(fits, family, "beta", "D")
    return {
        "check": f"L(D) ({family})",
        "met": _excludes_zero(beta),
        "measured": _interval("beta", beta),
    }


def _best_by(front: list[dict], c: float) -> float | None:
    """The lowest error among a front's points that cost at most ``c``."""
    vals = [p["L"] for p in front if p["C"] <= c * (1 + 1e-9)]
    return min(vals) if vals else None


def measured_fronts(report: dict) -> tuple[list[str], bool]:
    """Fit-free comparison at equal compute: each direct-force family's measured
    Pareto front (best error at or below a compute) over each other family's,
    at the ends of the compute range both cover. Returns the lines and whether
    any pair shared a compute range."""
    fronts = {f: m.get(METRIC) for f, m in (report.get("pareto") or {}).items() if m.get(METRIC)}
    out, compared = [], False
    for free in sorted(f for f in fronts if f.endswith("-direct")):
        for fixed in sorted(f for f in fronts if not f.endswith("-direct")):
            a, b = fronts[free], fronts[fixed]
            lo = max(min(p["C"] for p in a), min(p["C"] for p in b))
            hi = min(max(p["C"] for p in a), max(p["C"] for p in b))
            if hi <= lo:
                out.append(f"{free}/{fixed}: no compute range in common")
                continue
            grid = [lo * (hi / lo) ** (k / 20) for k in range(21)]
            ratios = [_best_by(a, c) / _best_by(b, c) for c in grid]
            crosses = min(ratios) < 1 < max(ratios)
            compared = True
            out.append(
                f"{free}/{fixed} measured fronts {ratios[0]:.2f} -> {ratios[-1]:.2f} over C = "
                f"{lo:.2g}-{hi:.2g} FLOPs, " + ("they cross" if crosses else "no crossover")
            )
    return out, compared


def compute_check(report: dict) -> dict:
    """The fitted comparison (L(C) envelopes, L(N, D) frontiers) where its fits
    are good enough; else the measured fronts, and why the fit was skipped."""
    rows = [r for r in report.get("equal_compute") or [] if r.get("metric") == METRIC]
    fitted = [r for r in rows if r.get("status") == "ok"]
    parts, compared = [], bool(fitted)
    for r in fitted:
        lo, hi = r["ratio_unconstrained_over_constrained"]
        value = (r.get("crossover") or {}).get("value")
        cross = f"crossover at C = {value:.3g}" if value else "no crossover in range"
        parts.append(
            f"{r['unconstrained']}/{r['constrained']} L({r['law']}) error ratio "
            f"{lo:.2f} -> {hi:.2f} over the C range, {cross}"
        )
    if not fitted:
        reasons = sorted({r.get("reason", "?") for r in rows}) or ["no comparison fitted"]
        parts.append("fitted comparison skipped (" + "; ".join(reasons) + ")")
        fronts, compared = measured_fronts(report)
        parts += fronts
    return {"check": "equal compute", "met": compared, "measured": "; ".join(parts)}


def convergence_check(points: list[dict]) -> dict:
    rated = [p for p in points if (p.get("convergence") or {}).get("verdict") in
             ("converged", "still-improving")]
    good = sum(p["convergence"]["verdict"] == "converged" for p in rated)
    share = good / len(rated) if rated else 0.0
    return {
        "check": "convergence",
        "met": bool(rated) and share >= CONVERGED_FRACTION,
        "measured": f"{good} of {len(rated)} points rated converged ({100 * share:.0f}%; "
        f"target {100 * CONVERGED_FRACTION:.0f}%)",
    }


def checks(study_dir: Path, report_dir: Path | None = None) -> list[dict]:
    """Every check, in the order the issue lists them."""
    study_dir = Path(study_dir)
    report_dir = Path(report_dir) if report_dir else study_dir / "report"
    report = json.loads((report_dir / "fits.json").read_text())
    points = _points(study_dir, report)
    fits = report.get("fits") or {}
    families = sorted({p["family"] for p in points})
    # the energy target is judged on the energy envelope (a tuned study may
    # choose its runs on the energy while the force laws use the force envelope)
    rows = energy_check(_points(study_dir, report, f"val/{ENERGY}"))
    rows += [size_check(points, fits, f) for f in families if f.startswith("pet")]
    rows += [data_check(fits, f) for f in families]
    rows += [compute_check(report), convergence_check(points)]
    return rows


def lines(rows: list[dict]) -> list[str]:
    return [f"[{'met' if r['met'] else 'missed'}] {r['check']}: {r['measured']}" for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm.demo_checks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study_dir")
    p.add_argument("--report", default=None, help="report directory (default STUDY_DIR/report)")
    args = p.parse_args(argv)
    for line in lines(checks(Path(args.study_dir), args.report)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
