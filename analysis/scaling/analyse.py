"""Fitting a whole study: every law for every family and metric, frontiers, comparisons.

L(N) is fitted at fixed data (the data budget with the most distinct sizes),
L(D) at fixed size, L(N, D) on all runs of a family and L(C) on the family's
lower compute envelope. Which runs are points at all (ladder mains, tuned
envelopes) is :mod:`analysis.scaling.points`. Every fit with still-improving
runs is refitted without them. The command that reads the inputs and writes
the report around this is :mod:`analysis.scaling.command`.
"""

from __future__ import annotations

import math
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from itertools import combinations

import numpy as np

from analysis.scaling.diagnostics import loo_cv, loo_largest
from analysis.scaling.fits import fit_law
from analysis.scaling.frontier import (
    compare_pair,
    envelope,
    envelope_allocation,
    frontier,
    pareto,
)
from analysis.scaling.laws import FitError, Law, clusters, num_distinct
from analysis.scaling.load import LoadError, available_metrics, resolve_metric
from analysis.scaling.points import choose_params, drop_ladder_mains, tuned_envelope
from analysis.scaling.types import (
    DATA_MEASURES,
    PARAM_MEASURES,
    Analysis,
    FitEntry,
    Run,
    Settings,
)

_D_TOL = 0.05  # runs within 5% of data seen share a data budget (dynamic batching jitters it)
_N_TOL = 0.01


# --- choosing the runs for a law ------------------------------------------------


def _points(runs: list[Run], family: str, metric: str, s: Settings, out: Analysis) -> list[Run]:
    """The runs of a family that are points of a law for a metric: ladder mains out
    (unless asked), one run per tuned grid point, then the usable ones."""
    pool = [r for r in runs if r.finished and r.family == family and metric in r.metrics]
    for r in [r for r in pool if r.finetune_stage]:
        out.excluded.append({
            "run": r.name, "family": family, "metric": metric,
            "reason": f"a fine-tune study's {r.finetune_stage} run, not a point of a "
            "pretraining law (python -m analysis.finetune reports it)",
        })
    pool = [r for r in pool if not r.finetune_stage]
    pool, _ = drop_ladder_mains(pool, s.include_ladder_mains)
    pool, selections = tuned_envelope(pool, metric)
    if selections:
        out.tuned.setdefault(family, {})[metric] = selections
    return _usable(pool, family, metric, out, s.param_measure)


def _usable(runs: list[Run], family: str, metric: str, out: Analysis, pm: str) -> list[Run]:
    """Finished runs of a family with a positive, finite metric; the rest are
    recorded in out.excluded with the reason."""
    keep = []
    for r in runs:
        if not r.finished or r.family != family or metric not in r.metrics:
            continue
        v = r.metrics[metric]
        reason = None
        if not math.isfinite(v):
            reason = f"{metric} is {v} (diverged run?)"
        elif v <= 0:
            reason = (
                f"{metric} = {v:g}: a power law needs positive values (exactly 0 is "
                "expected for e.g. the non-conservativeness of gradient forces)"
            )
        elif not r.params(pm) or r.params(pm) <= 0:
            reason = f"{PARAM_MEASURES[pm]} missing"
        if reason:
            out.excluded.append(
                {"run": r.name, "family": family, "metric": metric, "reason": reason}
            )
        else:
            keep.append(r)
    return keep


def _measure(runs: list[Run], wanted: str) -> tuple[str, str | None]:
    """The data measure to use: the one asked for when the runs have it."""
    if any(r.data(wanted) for r in runs):
        return wanted, None
    for alt in DATA_MEASURES:
        if any(r.data(alt) for r in runs):
            return alt, f"no run records {wanted}; D is {alt} instead"
    return wanted, None


def choose_measure(runs: list[Run], wanted: str) -> tuple[str, str | None]:
    """Resolve "auto": atoms seen, unless no family's runs differ in it while their
    training sets do (a fixed step budget over nested subsets), in which case D is
    the training-set size; says so."""
    if wanted != "auto":
        return wanted, None
    fams = {r.family for r in runs}

    def varies(measure: str) -> bool:
        return any(
            num_distinct([v for r in runs if r.family == f and (v := r.data(measure))]) >= 2
            for f in fams
        )

    if varies("atoms_seen"):
        return "atoms_seen", None
    for alt in ("train_atoms", "train_structures"):
        if varies(alt):
            return alt, (
                f"atoms seen is the same for every run of a family while the training "
                f"sets differ: D is the training-set size ({alt})"
            )
    return "atoms_seen", None


def _slice(
    runs: list[Run], axis: str, measure: str, pm: str
) -> tuple[list[Run], dict | None, str | None]:
    """Runs at one fixed value of the other axis: the slice with the most distinct
    values along `axis`, ties to the most runs, then the largest fixed value."""
    if axis == "N":
        fixed = [r.data(measure) or 0.0 for r in runs]
        # Runs with the same data seen but different training sets (fixed steps,
        # nested subsets) are not at fixed data: split them as well.
        train = [r.num_train_atoms or r.num_train_structures or 0.0 for r in runs]
        keys = list(zip(clusters(fixed, _D_TOL), clusters(train, _D_TOL)))
        along = [r.params(pm) for r in runs]
    else:
        fixed = [r.params(pm) for r in runs]
        keys = list(clusters(fixed, _N_TOL))
        along = [r.data(measure) for r in runs]
    groups: dict = {}
    for r, k, f, a in zip(runs, keys, fixed, along):
        groups.setdefault(k, []).append((r, f, a))
    best = max(
        groups.values(),
        key=lambda g: (num_distinct([a for *_, a in g]), len(g), max(f for _, f, _ in g)),
    )
    chosen = [r for r, *_ in best]
    fixed_vals = [f for _, f, _ in best]
    name = PARAM_MEASURES[pm] if axis == "D" else measure
    desc = {
        "quantity": name,
        "min": min(fixed_vals),
        "max": max(fixed_vals),
        "num_slices": len(groups),
    }
    if num_distinct([a for *_, a in best]) < 2 and num_distinct(along) >= 2:
        what = "data budget" if axis == "N" else "size"
        return (
            runs,
            None,
            (
                f"no two runs share a {what}: L({axis}) is fitted across all "
                f"runs, so it mixes in the effect of the other axis"
            ),
        )
    return chosen, desc, None


def _fit_with_fallback(x, y, names, law_name: str, s: Settings, what: str, seed: int):
    law = Law.parse(law_name, offset=s.form == "offset")
    kw = dict(
        names=names,
        delta=s.huber_delta,
        num_bootstrap=s.num_bootstrap,
        ci_level=s.ci_level,
        seed=seed,
        what=what,
    )
    try:
        return fit_law(x, y, law, **kw), []
    except FitError as err:
        if not law.offset:
            raise
        pure = Law(law.axes, offset=False)
        try:
            res = fit_law(x, y, pure, **kw)
        except FitError as err2:
            raise FitError(
                f"{err}; not even the pure power law can be fitted: {err2.short}", err2.short
            ) from None
        return res, [
            f"fell back to the pure power law {pure.formula()}: the offset law has {err.short}"
        ]


def fit_entry(
    runs: list[Run],
    family: str,
    metric: str,
    law_name: str,
    s: Settings,
    seed: int,
    checks: bool = True,
) -> FitEntry:
    """Fit one law to a family's runs, choosing the runs it needs.

    Args:
        checks: Also run the leave-one-out checks and, where runs of the fit are
            still improving, the same fit without them (`converged_only`).
    """
    measure, note = _measure(runs, s.data_measure)
    pm = s.param_measure
    notes = [note] if note else []
    fixed, envelope_of = None, None
    if law_name in ("N", "D"):
        pool = runs if law_name == "N" else [r for r in runs if r.data(measure)]
        if not pool:
            raise FitError(f"no run records {measure}")
        chosen, fixed, note = _slice(pool, law_name, measure, pm)
        notes += [note] if note else []
    elif law_name == "C":
        costed = [r for r in runs if r.flops]
        if not costed:
            raise FitError("no run records its training compute (train_flops)")
        chosen, envelope_of = envelope(costed, metric), len(costed)
        notes.append(
            f"fitted to the {len(chosen)} runs on the lower envelope (the best "
            f"{metric} at or below each compute) of {len(costed)} with measured compute; "
            "intervals resample those runs"
        )
    else:
        chosen = [r for r in runs if r.data(measure)]
        if len(chosen) < len(runs):
            notes.append(f"{len(runs) - len(chosen)} run(s) without {measure} left out")
    axes = Law.parse(law_name).axes
    x = {}
    if "N" in axes:
        x["N"] = np.array([r.params(pm) for r in chosen], dtype=float)
    if "D" in axes:
        x["D"] = np.array([r.data(measure) for r in chosen], dtype=float)
    if "C" in axes:
        x["C"] = np.array([r.flops for r in chosen], dtype=float)
    y = np.array([r.metrics[metric] for r in chosen])
    what = f"{family}, {metric}, L({','.join(law_name)})"
    res, fb_notes = _fit_with_fallback(x, y, [r.name for r in chosen], law_name, s, what, seed)
    entry = FitEntry(
        family, metric, law_name, res, chosen, measure, fixed, notes + fb_notes + res.notes
    )
    entry.param_measure, entry.envelope_of = pm, envelope_of
    if nl := [r.name for r in chosen if r.not_learned(metric)]:
        entry.notes.append(
            f"{len(nl)} run(s) within 5% of the trivial predictor (not learned): {', '.join(nl)}"
        )
    if not checks:
        return entry
    entry.loo = loo_largest(res, min(s.loo_bootstrap, s.num_bootstrap), seed)
    entry.loo_cv_rmse_log = loo_cv(res) if res.quality["dof"] > 0 else None
    if still := entry.still_improving:
        entry.notes.append(
            f"{len(still)} of {len(chosen)} runs were still improving at the end of "
            "training (their convergence verdict); the fit without them is "
            "`converged_only` in fits.json"
        )
        converged = [r for r in runs if not r.still_improving]
        try:
            entry.converged_only = fit_entry(converged, family, metric, law_name, s, seed, False)
        except FitError as err:
            entry.converged_only = err.short
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
            entry.converged_only = f"the fit failed: {type(err).__name__}: {err}"
    return entry


# --- the whole study ----------------------------------------------------------------


def _task(args) -> FitEntry | str:
    usable, family, metric, law, settings, seed = args
    try:
        if not usable:
            raise FitError(f"no finished run of {family} records {metric}")
        return fit_entry(usable, family, metric, law, settings, seed)
    except FitError as err:
        return str(err)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
        # one broken fit must not take the rest of the report down with it
        return f"the fit failed: {type(err).__name__}: {err}"


def _run_tasks(tasks: list, workers: int) -> list[FitEntry | str]:
    """Fits are independent: spread them over processes when asked (spawned, so
    no BLAS or matplotlib state is inherited)."""
    if workers <= 1 or len(tasks) < 2:
        return [_task(t) for t in tasks]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        return list(pool.map(_task, tasks))


def field_notes(finished: list[Run], include_ladder_mains: bool) -> list[str]:
    """What the analysis falls back on for runs written before summary.json's newer
    fields (train_flops, convergence, baseline) and what it leaves out (ladder mains)."""
    notes = []
    n = len(finished)
    if old := [r for r in finished if r.train_flops is None and r.flops]:
        notes.append(
            f"{len(old)} of {n} runs have no train_flops: their compute is total_flops "
            "(FLOPs per atom x atoms seen, the same quantity)"
        )
    verdicts = ("converged", "still-improving")
    if missing := [r for r in finished if (r.convergence or {}).get("verdict") not in verdicts]:
        old = sum(r.convergence is None for r in missing)
        why = f"{old} older run(s) without the field" if old else ""
        if len(missing) > old:
            why += ("; " if why else "") + f"{len(missing) - old} too short to judge"
        notes.append(
            f"{len(missing)} of {n} runs carry no convergence verdict ({why}): they "
            "count as converged, so no fit without still-improving runs covers them"
        )
    if not any(r.baseline for r in finished):
        notes.append(
            "no run records the trivial predictors' errors (summary.json `baseline`): "
            "errors are not given as fractions of them and no run is flagged as not learned"
        )
    mains = [r.name for r in finished if r.ladder_main]
    if mains and not include_ladder_mains:
        notes.append(
            f"{len(mains)} WSD-ladder main run(s) (constant learning rate, never cooled "
            f"down) are no points of a law and are left out of every fit and envelope; "
            f"their cooldown branches are the points (--include-ladder-mains keeps them): "
            + ", ".join(mains[:6])
            + (", ..." if len(mains) > 6 else "")
        )
    return notes


def analyse(runs: list[Run], settings: Settings, metrics: list[str] | None = None) -> Analysis:
    """Fit every requested law to every family and metric; frontier; comparisons."""
    finished = [r for r in runs if r.finished]
    if not finished:
        raise LoadError(f"none of the {len(runs)} runs finished; nothing to fit")
    notes = []
    if metrics:
        metrics = [resolve_metric(m, finished) for m in metrics]
    else:
        # By default, only metrics some family has at least two runs of: downstream
        # evaluations often cover just the largest model, which no law can be fitted to.
        metrics, rare, constant = [], [], []
        for m in available_metrics(finished):
            counts = Counter(r.family for r in finished if m in r.metrics)
            values = {r.metrics[m] for r in finished if m in r.metrics}
            if max(counts.values()) < 2:
                rare.append(m)
            elif len(values) == 1:  # e.g. a count of evaluated structures: no trend to fit
                constant.append(m)
            else:
                metrics.append(m)
        if rare:
            notes.append(
                f"{len(rare)} metric(s) recorded by fewer than two runs of any family "
                f"are not fitted: {', '.join(rare[:8])}{', ...' if len(rare) > 8 else ''}"
            )
        if constant:
            notes.append(
                f"{len(constant)} metric(s) with the same value in every run are not fitted: "
                f"{', '.join(constant[:8])}{', ...' if len(constant) > 8 else ''}"
            )
    measure, note = choose_measure(finished, settings.data_measure)
    notes += [note] if note else []
    pm, note = choose_params(finished, settings.param_measure)
    notes += [note] if note else []
    settings = replace(settings, data_measure=measure, param_measure=pm)
    out = Analysis(runs, metrics, settings, notes=notes)
    out.notes += field_notes(finished, settings.include_ladder_mains)
    if not metrics:
        out.notes.append("the finished runs record no metric that can be fitted")
    tasks, points = [], {}
    seed = settings.seed
    for family in out.families:
        for metric in metrics:
            usable = points[family, metric] = _points(finished, family, metric, settings, out)
            for law in settings.laws:
                seed += 1
                tasks.append((usable, family, metric, law, settings, seed))
            if usable and any(r.flops for r in usable):
                out.pareto.setdefault(family, {})[metric] = pareto(
                    usable, metric, _measure(usable, settings.data_measure)[0], pm
                )
    for (_, family, metric, law, *_), got in zip(tasks, _run_tasks(tasks, settings.workers)):
        if isinstance(got, str):
            out.skipped.append({"family": family, "metric": metric, "law": law, "reason": got})
        else:
            out.fits.setdefault(family, {}).setdefault(metric, {})[law] = got
    for (family, metric), usable in points.items():
        if not any(r.flops for r in usable):
            continue
        nd = out.fits.get(family, {}).get(metric, {}).get("ND")
        why = "no L(N, D) fit" if "ND" in settings.laws else "L(N, D) was not asked for (--law)"
        fr = frontier(nd, settings.ci_level) if nd else {"status": "skipped", "reason": why}
        seed += 1
        fr["envelope"] = envelope_allocation(
            usable,
            metric,
            _measure(usable, settings.data_measure)[0],
            pm,
            settings.ci_level,
            settings.num_bootstrap,
            seed,
        )
        # the L(N, D) route uses every run; the envelope holds only a few of them
        fr["headline"] = (
            "L(N, D)"
            if fr["status"] == "ok"
            else "envelope"
            if fr["envelope"]["status"] == "ok"
            else None
        )
        out.frontiers.setdefault(family, {})[metric] = fr
    for metric in metrics:
        for law in settings.laws:
            have = [f for f in out.families if law in out.fits.get(f, {}).get(metric, {})]
            for fa, fb in combinations(have, 2):
                fr = {f: out.frontiers.get(f, {}).get(metric, {}) for f in (fa, fb)}
                cmp = compare_pair(
                    out.fits[fa][metric][law], out.fits[fb][metric][law], law, settings.ci_level, fr
                )
                cmp.update(metric=metric, law=law, families=[fa, fb])
                out.comparisons.append(cmp)
    return out
