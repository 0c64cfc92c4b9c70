"""Fitting a law to runs: input checks, the robust fit and bootstrap intervals.

The laws, their log-space model and the result type live in
:mod:`analysis.scaling.laws`; the fit's quality verdict in
:mod:`analysis.scaling.quality`; leave-one-out checks, which refit, in
:mod:`analysis.scaling.diagnostics` above this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    bootstrap_jitter: int = 2,
    bootstrap_grid: int = 1,
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
        bootstrap_jitter: Further starts per resample, the best optimum with its
            coefficients and exponents randomly perturbed.
        bootstrap_grid: Further starts per resample, the grid starts with the lowest
            loss on that resample.
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
        multi = BootstrapStarts(starts, grid, bootstrap_jitter, bootstrap_grid)
        boot = _bootstrap(law, xv, u, ly, delta, multi, num, seed)
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


@dataclass
class BootstrapStarts:
    """Where each bootstrap refit starts.

    Starting every resample only from the full-data optima keeps it in their
    basin: a resample whose best fit lies elsewhere reports a local optimum, and
    the intervals are off (too narrow when the other basins are the wider
    spread). Each resample therefore also tries jittered copies of the best
    optimum and the grid starts that suit it best. Those are only probed (a few
    L-BFGS iterations each) and the most promising probe is run to convergence,
    which about doubles the cost of a resample. On a 4 x 3 grid of L(N, D) runs
    about one resample in eight finds a better optimum that way.
    """

    optima: list[np.ndarray]
    grid: np.ndarray
    num_jitter: int
    num_grid: int
    probe_iter: int = 15

    def extra(self, law: Law, u, ly, w, delta, rng) -> list[np.ndarray]:
        """The starts beyond the optima for one resample (weights w)."""
        out = []
        best = self.optima[0]
        expo = [i for i, p in enumerate(law.param_names) if p in law.exponent_names]
        coef = [i for i in range(law.num_params) if i not in expo]
        for _ in range(self.num_jitter):
            th = best.copy()
            # a factor of e either way on every term and E, ~1.5x on the exponents
            th[coef] += rng.normal(0.0, 1.0, len(coef))
            th[expo] *= np.exp(rng.normal(0.0, 0.4, len(expo)))
            out.append(th)
        if self.num_grid and len(self.grid):
            f0 = [objective(g, law, u, ly, w, delta, 1.0)[0] for g in self.grid]
            out += [self.grid[i] for i in np.argsort(f0)[: self.num_grid]]
        return out

    def refit(self, law: Law, u, ly, w, delta, rng) -> list[tuple[float, np.ndarray]]:
        """Optimum-started refits plus the best probed extra start, best first."""
        sols = minimise(law, u, ly, w, delta, self.optima)
        extra = self.extra(law, u, ly, w, delta, rng)
        if extra:
            probes = minimise(law, u, ly, w, delta, extra, maxiter=self.probe_iter)
            if probes:
                sols += minimise(law, u, ly, w, delta, [probes[0][1]])
        return sorted(sols, key=lambda p: p[0])


def bootstrap_weights(law: Law, xv: Mapping[str, np.ndarray], num: int, seed: int):
    """Yield the resamples of the runs as multinomial weights, at most `num`.

    Resamples that cannot determine the law (too few distinct sizes) are
    redrawn, up to 5x the requested count. The stream depends on the seed
    only, so fits that differ in their starts see the same resamples.
    """
    n = len(next(iter(xv.values())))
    rng = np.random.default_rng(seed)
    made = 0
    for _ in range(5 * num):
        if made == num:
            return
        w = rng.multinomial(n, np.full(n, 1.0 / n)).astype(float)
        used = w > 0
        if used.sum() < law.num_params or any(
            num_distinct(xv[a][used]) < law.min_distinct for a in law.axes
        ):
            continue
        made += 1
        yield w


def _bootstrap(law, xv, u, ly, delta, starts: BootstrapStarts, num, seed) -> np.ndarray:
    """Refit on every resample of the runs; (num_draws, num_params)."""
    jitter_rng = np.random.default_rng([seed, 1])
    draws: list[np.ndarray] = []
    for w in bootstrap_weights(law, xv, num, seed):
        sols = starts.refit(law, u, ly, w, delta, jitter_rng)
        if sols:
            draws.append(sols[0][1])
    return np.asarray(draws).reshape(-1, law.num_params)
