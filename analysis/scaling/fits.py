"""Fitting a law to runs: input checks, the robust fit and bootstrap intervals.

The laws, their log-space model and the result type live in
:mod:`analysis.scaling.laws`; the fit's quality verdict in
:mod:`analysis.scaling.quality`; leave-one-out checks, which refit, in
:mod:`analysis.scaling.diagnostics` above this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from analysis.scaling.laws import (
    DEFAULT_DELTA,
    FitError,
    FitResult,
    Law,
    distinct_solutions,
    minimise,
    num_distinct,
    objective,
    single_threaded_blas,
    start_grid,
)
from analysis.scaling.quality import quality


def check_fittable(law: Law, x: Mapping[str, np.ndarray], y: np.ndarray, what: str = "") -> None:
    """Raise FitError, saying what is missing, if the data cannot determine the law."""
    where = f" ({what})" if what else ""
    n = len(y)
    if n < law.num_params:
        alt = " or the pure power law without E (--form pure)" if law.offset else ""
        short = f"{law.num_params} parameters but only {n} runs"
        raise FitError(
            f"{law.formula()} has {short}{where}; it needs at least {law.num_params} runs - "
            f"add runs{alt}",
            short,
        )
    for axis in law.axes:
        k = num_distinct(x[axis])
        if k < law.min_distinct:
            short = f"needs {law.min_distinct} distinct values of {axis}, found {k}"
            raise FitError(f"{law.formula()} {short}{where}", short)


def _validate(law: Law, x: Mapping[str, ArrayLike], y: ArrayLike):
    yv = np.asarray(y, dtype=float)
    xv = {}
    for axis in law.axes:
        if axis not in x:
            raise FitError(f"{law.formula()} needs values of {axis}")
        xv[axis] = np.asarray(x[axis], dtype=float)
        if xv[axis].shape != yv.shape:
            raise FitError(f"{axis} has {xv[axis].size} values but L has {yv.size}")
        bad = ~(np.isfinite(xv[axis]) & (xv[axis] > 0))
        if bad.any():
            raise FitError(f"{int(bad.sum())} values of {axis} are not finite and positive")
    bad = ~(np.isfinite(yv) & (yv > 0))
    if bad.any():
        raise FitError(
            f"{int(bad.sum())} metric values are not finite and positive; "
            "power laws are fitted in log space"
        )
    return xv, yv


def fit_law(
    x: Mapping[str, ArrayLike],
    y: ArrayLike,
    law: Law,
    *,
    names: Sequence[str] | None = None,
    delta: float = DEFAULT_DELTA,
    num_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    max_starts: int = 64,
    bootstrap_starts: int = 2,
    what: str = "",
) -> FitResult:
    """Fit a law to runs and bootstrap its parameters over runs.

    Args:
        x: Axis name ("N", "D") -> one value per run (parameters, data seen).
        y: The metric per run (positive).
        law: Which law.
        names: Run names for residual reports.
        delta: Huber delta on log-residuals.
        num_bootstrap: Resamples of the runs (0: no intervals).
        ci_level: Two-sided interval level.
        seed: Bootstrap random seed.
        max_starts: Grid starts refined by L-BFGS (the best by initial loss).
        bootstrap_starts: Distinct full-data optima each resample starts from.
        what: Context for error messages, e.g. "pet-direct, val/forces_mae".

    Returns:
        The fit, with intervals and quality.

    Raises:
        FitError: Bad values, or too few runs / distinct sizes for the law.
    """
    xv, yv = _validate(law, x, y)
    check_fittable(law, xv, yv, what)
    ly = np.log(yv)
    ref = np.array([np.log(xv[a]).mean() for a in law.axes])
    u = np.stack([np.log(xv[a]) - r for a, r in zip(law.axes, ref)])
    w = np.ones_like(ly)
    with single_threaded_blas():
        grid = start_grid(law, ly)
        if len(grid) > max_starts:
            f0 = [objective(g, law, u, ly, w, delta, 1.0)[0] for g in grid]
            grid = grid[np.argsort(f0)[:max_starts]]
        sols = minimise(law, u, ly, w, delta, grid)
        if not sols:
            raise FitError(f"the fit diverged from every start{' (' + what + ')' if what else ''}")
        starts = distinct_solutions(sols, law, u, bootstrap_starts)
        # n == p: every usable resample is the data itself, so there is nothing to draw
        num = num_bootstrap if len(yv) > law.num_params else 0
        boot = _bootstrap(law, xv, u, ly, delta, starts, num, seed)
    names = list(names) if names is not None else [str(i) for i in range(len(yv))]
    res = FitResult(
        law, xv, yv, names, sols[0][1], ref, boot, num_bootstrap, ci_level, delta, starts=starts
    )
    if num and not res.has_ci:
        res.notes.append(
            f"only {len(boot)} of {num} bootstrap resamples could determine the "
            "law (too few distinct runs): no intervals"
        )
    res.quality = quality(res)
    return res


def _bootstrap(law, xv, u, ly, delta, starts, num, seed) -> np.ndarray:
    """Refit on resamples of the runs; resamples that cannot determine the law
    (too few distinct sizes) are redrawn, up to 5x the requested count."""
    n = len(ly)
    rng = np.random.default_rng(seed)
    draws: list[np.ndarray] = []
    for _ in range(5 * num):
        if len(draws) == num:
            break
        w = rng.multinomial(n, np.full(n, 1.0 / n)).astype(float)
        used = w > 0
        if used.sum() < law.num_params or any(
            num_distinct(xv[a][used]) < law.min_distinct for a in law.axes
        ):
            continue
        sols = minimise(law, u, ly, w, delta, starts)
        if sols:
            draws.append(sols[0][1])
    return np.asarray(draws).reshape(-1, law.num_params)
