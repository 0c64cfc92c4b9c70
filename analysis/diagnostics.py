"""Fit diagnostics: goodness of fit with a verdict, and leave-one-out checks.

The verdict says whether a fitted law can be read as a scaling law; the
leave-one-out checks say whether it predicts: the largest run from the smaller
ones (the extrapolation a scaling study is for) and every run from the others.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from analysis.fits import AXIS_PARAMS, FitError, check_fittable, fit_law, single_threaded_blas

if TYPE_CHECKING:
    from analysis.fits import FitResult


def quality(res: FitResult) -> dict:
    """Goodness of fit in log space and a verdict a reader can act on.

    The verdict is "poor" when the law explains little (R^2 < 0.5), when an
    F-test against a constant finds no trend (p > 0.05), or when an exponent sits
    at 0 (the metric does not fall along that axis); "fair" when R^2 < 0.9 or an
    exponent's interval reaches 0; "unverified" with as many runs as parameters
    (the curve passes through every point); else "good".
    """
    ly, r = np.log(res.y), res.residuals_log
    n, p = len(ly), res.law.num_params
    ss_res = float(r @ r)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    dof = n - p
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    p_value = None
    if dof > 0 and ss_tot > 0 and p > 1:
        if ss_res <= 1e-30:
            p_value = 0.0
        else:
            f_stat = max(ss_tot - ss_res, 0.0) / (p - 1) / (ss_res / dof)
            p_value = float(stats.f.sf(f_stat, p - 1, dof))
    reasons: list[str] = []
    params, ci = res.params, res.ci
    flat = [e for e in res.law.exponent_names if params[e] < 1e-3]
    flat_reasons = [
        f"{e} = {params[e]:.2g}: the metric does not fall along {_axis_of(e)}" for e in flat
    ]
    if ss_tot == 0:
        verdict, reasons = "poor", ["the metric takes one value: nothing to fit"]
    elif dof == 0:
        # As many runs as parameters: the law can match them (nearly) exactly, so the
        # fit itself proves nothing; only a flat exponent is evidence against it.
        rms = math.sqrt(ss_res / n)
        verdict = "poor" if flat else "unverified"
        reasons = flat_reasons or [
            f"{n} runs for {p} parameters: nothing checks the law (no intervals"
            + (
                f"; RMS residual {100 * rms:.1f}% with an exponent or E at its bound)"
                if rms > 1e-3
                else ")"
            )
        ]
    else:
        if p_value is not None and p_value > 0.05:
            reasons.append(f"no significant trend (F-test against a constant: p = {p_value:.2g})")
        if r2 is not None and r2 < 0.5:
            reasons.append(f"the law explains little of the variation (R^2 = {r2:.2f} in log)")
        reasons += flat_reasons
        verdict = "poor" if reasons else "good"
        if not reasons:
            if r2 is not None and r2 < 0.9:
                reasons.append(f"R^2 = {r2:.2f} in log space")
            reasons += [
                f"the interval of {e} reaches 0"
                for e in res.law.exponent_names
                if ci[e] is not None and ci[e][0] < 0.01
            ]
            verdict = "fair" if reasons else "good"
    return {
        "verdict": verdict,
        "reasons": reasons,
        "num_runs": n,
        "num_params": p,
        "dof": dof,
        "r2_log": r2,
        "rmse_log": math.sqrt(ss_res / n),
        "max_abs_residual_log": float(np.abs(r).max()),
        "trend_p_value": p_value,
        "huber_delta": res.delta,
        "bootstrap_draws": len(res.theta_boot),
    }


def _axis_of(exponent: str) -> str:
    return next(a for a, (_, e) in AXIS_PARAMS.items() if e == exponent)


def loo_largest(res: FitResult, num_bootstrap: int = 200, seed: int = 0) -> dict:
    """Predict the largest run(s) from a fit to the smaller ones.

    "Largest" is the largest N, D or N*D (joint law); runs within 1% of it (seeds)
    are held out together. The observation counts as inside the prediction
    interval when it lies in the refit's curve band widened by twice its residual
    scatter, because run-to-run noise is not in the curve band.
    """
    size = sum(np.log(res.x[a]) for a in res.law.axes)
    held = size >= size.max() - math.log(1.01)
    try:
        sub = refit(res, ~held, num_bootstrap=num_bootstrap, seed=seed)
    except FitError as err:
        return {
            "status": "skipped",
            "reason": f"not possible, the smaller runs alone give {err.short}",
        }
    x_held = {a: v[held] for a, v in res.x.items()}
    pred, obs = sub.predict(x_held), res.y[held]
    widen = math.exp(2 * sub.quality["rmse_log"])
    band = sub.band(x_held)
    out = {
        "status": "ok",
        "held_out": [n for n, h in zip(res.names, held) if h],
        "observed": obs.tolist(),
        "predicted": pred.tolist(),
        "relative_error": float(np.mean(np.abs(pred / obs - 1))),
        "num_smaller_runs": int((~held).sum()),
        "interval": None,
        "inside_interval": None,
    }
    if band is not None:
        lo, hi = band[0] / widen, band[1] * widen
        out["interval"] = [lo.tolist(), hi.tolist()]
        out["inside_interval"] = bool(np.all((obs >= lo) & (obs <= hi)))
    return out


def loo_cv(res: FitResult) -> float | None:
    """Root-mean-square leave-one-out error in log space (None if a refit cannot
    determine the law)."""
    n = len(res.y)
    errs = []
    with single_threaded_blas():
        for i in range(n):
            keep = np.arange(n) != i
            try:
                check_fittable(res.law, {a: v[keep] for a, v in res.x.items()}, res.y[keep])
            except FitError:
                return None
            errs.append(res.refit_point(keep, i))
    return float(np.sqrt(np.mean(np.square(errs))))


def refit(res: FitResult, keep: np.ndarray, num_bootstrap: int = 0, seed: int = 0) -> FitResult:
    """The same law fitted to a subset of the runs (boolean mask), from a smaller
    grid of starts."""
    return fit_law(
        {a: v[keep] for a, v in res.x.items()},
        res.y[keep],
        res.law,
        names=[n for n, k in zip(res.names, keep) if k],
        delta=res.delta,
        num_bootstrap=num_bootstrap,
        ci_level=res.ci_level,
        seed=seed,
        max_starts=16,
    )
