"""How well a fitted law fits: goodness of fit in log space and a verdict.

The verdict says whether a fitted law can be read as a scaling law. It needs
only the fitted result, so :func:`analysis.scaling.fits.fit_law` attaches it
to every fit; the leave-one-out checks, which refit, sit above in
:mod:`analysis.scaling.diagnostics`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from analysis.scaling.laws import AXIS_PARAMS, EXPONENT_BOUNDS, FitResult


def quality(res: FitResult) -> dict:
    """Goodness of fit in log space and a verdict a reader can act on.

    The verdict is "poor" when the law explains little (R^2 < 0.5), when an
    F-test against a constant finds no trend (p > 0.05), or when an exponent sits
    at 0 (the metric does not fall along that axis) or at its upper bound (a
    step, not a power law); "fair" when R^2 < 0.9 or an
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
        # An exponent at the optimiser's upper bound is not measured: the data
        # want a step, not a power law, along that axis (e.g. no trend but one
        # outlier), and its value is the bound's, not the data's.
        reasons += [
            f"{e} = {params[e]:.3g} sits at its bound ({EXPONENT_BOUNDS[1]:g}): not a power "
            f"law along {_axis_of(e)}"
            for e in res.law.exponent_names
            if params[e] >= EXPONENT_BOUNDS[1] - 1e-3
        ]
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
