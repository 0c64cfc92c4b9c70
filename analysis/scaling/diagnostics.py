"""Leave-one-out checks of a fitted law: does it predict?

They check the largest run predicted from the smaller ones (the extrapolation
a scaling study is for) and every run predicted from the others. The fit's
own quality verdict is :mod:`analysis.scaling.quality`.
"""

from __future__ import annotations

import math

import numpy as np

from analysis.scaling.fits import check_fittable, fit_law
from analysis.scaling.laws import FitError, FitResult, single_threaded_blas


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
