"""The scaling laws: power laws with and without an offset, and a fitted law.

With N the parameter count, D the data seen (atoms or structures) and C the
measured training compute (FLOPs):

    L(N)    = E + A N^-alpha
    L(D)    = E + B D^-beta
    L(N, D) = E + A N^-alpha + B D^-beta        (the Chinchilla form)
    L(C)    = E + K C^-kappa                    (fitted to a lower envelope)

and the pure power laws without E. As in Hoffmann et al. (2022) the fit
minimises a Huber loss on log-residuals (log L_pred - log L_obs) with L-BFGS
from a grid of initial values. Parameters are carried as logs (e = log E,
a = log A, ...) against log x centred on the data, so the prediction is a
log-sum-exp, only the exponents need bounds and the problem stays well
conditioned whatever the units. Confidence intervals come from a bootstrap
over runs (percentile intervals). The fitting itself is
:func:`analysis.scaling.fits.fit_law`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize

AXIS_PARAMS: dict[str, tuple[str, str]] = {
    "N": ("A", "alpha"),
    "D": ("B", "beta"),
    "C": ("K", "kappa"),
}
LAW_NAMES = ("N", "D", "ND", "C")
EXPONENT_BOUNDS = (0.0, 6.0)
DEFAULT_DELTA = 1e-3  # Hoffmann et al.: close to L1, so one bad run cannot drag the law
_LBFGS_OPTIONS = {"maxiter": 2000, "ftol": 1e-9, "gtol": 1e-6}


class FitError(ValueError):
    """The data cannot determine the law (too few runs, bad values, ...).

    Attributes:
        short: The bare reason ("3 parameters but only 2 runs"), for messages that
            already say which law and data they are about.
    """

    def __init__(self, message: str, short: str | None = None):
        super().__init__(message)
        self.short = short or message


@dataclass(frozen=True)
class Law:
    """Which power law: the axes it depends on and whether it has an offset E.

    Attributes:
        axes: ("N",), ("D",), ("N", "D") or ("C",).
        offset: True for E + ..., False for the pure power law.
    """

    axes: tuple[str, ...]
    offset: bool = True

    @classmethod
    def parse(cls, name: str, offset: bool = True) -> Law:
        """Law from its CLI name "N", "D", "ND" or "C"."""
        axes = {"N": ("N",), "D": ("D",), "ND": ("N", "D"), "C": ("C",)}.get(name.upper())
        if axes is None:
            raise ValueError(f"unknown law {name!r}: expected N, D, ND or C")
        return cls(axes, offset)

    @property
    def name(self) -> str:
        return "".join(self.axes)

    @property
    def form(self) -> str:
        return "offset" if self.offset else "pure"

    @property
    def param_names(self) -> tuple[str, ...]:
        names = ("E",) if self.offset else ()
        for axis in self.axes:
            names += AXIS_PARAMS[axis]
        return names

    @property
    def exponent_names(self) -> tuple[str, ...]:
        return tuple(AXIS_PARAMS[a][1] for a in self.axes)

    @property
    def num_params(self) -> int:
        return len(self.param_names)

    @property
    def min_distinct(self) -> int:
        """Distinct values each axis needs: a curve with offset has three unknowns
        along its axis (E, coefficient, exponent), a pure one two."""
        return 3 if self.offset else 2

    def formula(self) -> str:
        terms = ["E"] if self.offset else []
        terms += [f"{c} {a}^-{e}" for a in self.axes for c, e in [AXIS_PARAMS[a]]]
        return "L = " + " + ".join(terms)


def clusters(values: ArrayLike, rel_tol: float) -> np.ndarray:
    """Label values that agree within a relative tolerance (sorted single linkage).

    Runs meant to sit at one size or data budget differ slightly (atoms seen with
    dynamic batching), so "distinct values" must be counted with a tolerance.
    """
    v = np.asarray(values, dtype=float)
    order = np.argsort(v)
    labels = np.empty(len(v), dtype=int)
    label, prev = 0, None
    for i in order:
        if prev is not None and v[i] > prev * (1.0 + rel_tol):
            label += 1
        labels[i] = label
        prev = v[i]
    return labels


def num_distinct(values: ArrayLike, rel_tol: float = 0.01) -> int:
    """Number of distinct values within a relative tolerance."""
    v = np.asarray(values, dtype=float)
    return 0 if v.size == 0 else int(clusters(v, rel_tol).max()) + 1


# --- BLAS threads ----------------------------------------------------------------


@functools.cache
def _openblas_thread_setters() -> list[tuple[Callable, Callable]]:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process."""
    found = []
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            for suffix in ("", "64_"):
                for prefix in ("openblas", "scipy_openblas"):
                    setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    if setter is not None and getter is not None:
                        found.append((getter, setter))
    except (OSError, IndexError):  # not Linux, or a library that will not load: no-op
        return []
    return found


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS on one thread inside the block.

    L-BFGS-B calls BLAS on vectors of a few numbers; OpenBLAS's threads then spin
    and on a busy 2-core machine make every fit about 10x slower. The bootstrap is
    thousands of such fits, so pin BLAS to one thread while fitting (what
    threadpoolctl does, without the dependency).
    """
    setters = _openblas_thread_setters()
    before = [get() for get, _ in setters]
    for _, set_ in setters:
        set_(1)
    try:
        yield
    finally:
        for (_, set_), n in zip(setters, before):
            set_(n)


# --- the model in log space -------------------------------------------------------


def _terms(theta: np.ndarray, law: Law, u: np.ndarray) -> np.ndarray:
    """Log of each additive term, shape (num_terms, n); u: (num_axes, n) centred log x."""
    rows = [np.full(u.shape[1], theta[0])] if law.offset else []
    j = 1 if law.offset else 0
    for k in range(len(law.axes)):
        rows.append(theta[j + 2 * k] - theta[j + 2 * k + 1] * u[k])
    return np.stack(rows)


def _log_predict(theta: np.ndarray, law: Law, u: np.ndarray) -> np.ndarray:
    t = _terms(theta, law, u)
    tmax = t.max(axis=0)
    return tmax + np.log(np.exp(t - tmax).sum(axis=0))


def objective(theta, law, u, y, w, delta, scale):
    """Weighted Huber loss on log-residuals and its exact gradient."""
    t = _terms(theta, law, u)
    tmax = t.max(axis=0)
    ex = np.exp(t - tmax)
    s = ex.sum(axis=0)
    r = tmax + np.log(s) - y
    soft = ex / s  # d log_pred / d term
    a = np.abs(r)
    h = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    g = np.clip(r, -delta, delta) * w
    grad = np.empty_like(theta)
    j = 0
    if law.offset:
        grad[0] = (g * soft[0]).sum()
        j = 1
    for k in range(len(law.axes)):
        gs = g * soft[j + k]
        grad[j + 2 * k] = gs.sum()
        grad[j + 2 * k + 1] = -(gs * u[k]).sum()
    return float((w * h).sum()) * scale, grad * scale


def _bounds(law: Law, y: np.ndarray) -> list[tuple[float | None, float | None]]:
    # E below 1e-11 of the smallest loss is indistinguishable from no offset; the
    # bound keeps e finite when the data want E = 0.
    b: list[tuple[float | None, float | None]] = []
    if law.offset:
        b.append((float(y.min()) - 25.0, float(y.max()) + 1.0))
    for _ in law.axes:
        b += [(None, None), EXPONENT_BOUNDS]
    return b


def start_grid(law: Law, y: np.ndarray) -> np.ndarray:
    """Initial values spread over exponents, offsets and the split between terms."""
    l_min, l_mid = math.exp(y.min()), math.exp(np.median(y))
    two = len(law.axes) == 2
    exps = (0.1, 0.3, 0.6, 1.2) if two else (0.05, 0.15, 0.3, 0.6, 1.0, 2.0)
    e_fracs = (1e-3, 0.3, 0.6, 0.9) if law.offset else (0.0,)
    splits = (0.25, 0.5, 0.75) if two else (1.0,)
    starts = []
    for ef in e_fracs:
        reducible = max(l_mid - ef * l_min, 0.05 * l_mid)
        for split in splits:
            coefs = (math.log(split * reducible), math.log((1 - split) * reducible + 1e-300))
            for p1 in exps:
                for p2 in exps if two else (None,):
                    th = [math.log(ef * l_min)] if law.offset else []
                    th += [coefs[0], p1]
                    if two:
                        th += [coefs[1], p2]
                    starts.append(th)
    return np.asarray(starts, dtype=float)


def minimise(law, u, y, w, delta, starts, maxiter: int | None = None):
    """L-BFGS-B from every start; (objective, theta) sorted best first.

    Args:
        maxiter: Stop each start after this many iterations (a cheap probe of
            where it is heading) instead of at convergence.
    """
    scale = 1.0 / (w.sum() * delta)
    bounds = _bounds(law, y)
    options = _LBFGS_OPTIONS if maxiter is None else {**_LBFGS_OPTIONS, "maxiter": maxiter}
    out: list[tuple[float, np.ndarray]] = []
    for th0 in starts:
        res = optimize.minimize(
            objective,
            th0,
            args=(law, u, y, w, delta, scale),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options=options,
        )
        if np.all(np.isfinite(res.x)) and np.isfinite(res.fun):
            out.append((float(res.fun), res.x))
    out.sort(key=lambda p: p[0])
    return out


def distinct_solutions(sols, law: Law, u: np.ndarray, k: int) -> list[np.ndarray]:
    """The k best solutions whose curves differ on the data (different basins).

    Compared by prediction, not by parameters: with E near 0, log E wanders along
    a flat direction without changing the curve.
    """
    picked: list[np.ndarray] = []
    curves: list[np.ndarray] = []
    for _, th in sols:
        curve = _log_predict(th, law, u)
        if all(np.max(np.abs(curve - c)) > 1e-3 for c in curves):
            picked.append(th)
            curves.append(curve)
        if len(picked) == k:
            break
    return picked


# --- the result ----------------------------------------------------------------


@dataclass
class FitResult:
    """A fitted law with bootstrap draws and diagnostics.

    Attributes:
        law: The law fitted.
        x: Axis name ("N", "D") -> values, one per run.
        y: Observed metric values (linear, positive).
        names: Run names, aligned with y.
        theta: Internal parameters (log coefficients against centred log x).
        ref: Mean log x per axis (the centring).
        theta_boot: (num_valid_draws, num_params) bootstrap parameters.
        num_bootstrap: Draws requested.
        ci_level: Two-sided level of the intervals.
        delta: Huber delta on log-residuals.
        quality: Fit quality (see `quality`).
        notes: Things the reader must know (fallbacks, degenerate intervals).
    """

    law: Law
    x: dict[str, np.ndarray]
    y: np.ndarray
    names: list[str]
    theta: np.ndarray
    ref: np.ndarray
    theta_boot: np.ndarray
    num_bootstrap: int
    ci_level: float
    delta: float
    quality: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    starts: list[np.ndarray] = field(default_factory=list, repr=False)

    def _u(self, x: Mapping[str, ArrayLike]) -> np.ndarray:
        return np.stack(
            [np.log(np.asarray(x[a], dtype=float)) - r for a, r in zip(self.law.axes, self.ref)]
        )

    def _raw(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Parameters in the user's units from (..., p) internal ones."""
        out: dict[str, np.ndarray] = {}
        j = 0
        if self.law.offset:
            out["E"] = np.exp(theta[..., 0])
            j = 1
        for k, axis in enumerate(self.law.axes):
            coef, expo = AXIS_PARAMS[axis]
            c, p = theta[..., j + 2 * k], theta[..., j + 2 * k + 1]
            out[coef] = np.exp(c + p * self.ref[k])
            out[expo] = p
        return out

    @property
    def params(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._raw(self.theta).items()}

    @property
    def params_boot(self) -> dict[str, np.ndarray]:
        return self._raw(self.theta_boot)

    @property
    def ci(self) -> dict[str, tuple[float, float] | None]:
        """Percentile intervals; None where the bootstrap could not give one."""
        if not self.has_ci:
            return dict.fromkeys(self.law.param_names)
        q = 50 * (1 - self.ci_level)
        return {
            k: (float(np.percentile(v, q)), float(np.percentile(v, 100 - q)))
            for k, v in self.params_boot.items()
        }

    @property
    def has_ci(self) -> bool:
        # Fewer than 20 usable draws, or under half of those asked, is no interval;
        # with as many runs as parameters every draw reproduces the same curve.
        nb = len(self.theta_boot)
        return nb >= 20 and nb >= 0.5 * self.num_bootstrap and len(self.y) > self.law.num_params

    def predict(self, x: Mapping[str, ArrayLike]) -> np.ndarray:
        """Metric predicted at x (axis name -> values)."""
        return np.exp(_log_predict(self.theta, self.law, self._u(x)))

    def predict_boot(self, x: Mapping[str, ArrayLike]) -> np.ndarray:
        """(num_draws, m) predictions of every bootstrap draw."""
        u = self._u(x)
        return np.exp(np.stack([_log_predict(t, self.law, u) for t in self.theta_boot]))

    def band(self, x: Mapping[str, ArrayLike]) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise interval of the fitted curve, or None without a bootstrap."""
        if not self.has_ci:
            return None
        q = 50 * (1 - self.ci_level)
        p = self.predict_boot(x)
        return np.percentile(p, q, axis=0), np.percentile(p, 100 - q, axis=0)

    def refit_point(self, keep: np.ndarray, i: int) -> float:
        """log(pred / obs) of run i from a refit to the runs in `keep` (no bootstrap),
        started from this fit's optima so that it is cheap."""
        u = self._u({a: v[keep] for a, v in self.x.items()})
        ly = np.log(self.y[keep])
        sols = minimise(self.law, u, ly, np.ones_like(ly), self.delta, self.starts)
        u_i = self._u({a: v[i : i + 1] for a, v in self.x.items()})
        return float(_log_predict(sols[0][1], self.law, u_i)[0] - math.log(self.y[i]))

    @property
    def residuals_log(self) -> np.ndarray:
        """log(predicted / observed) per run."""
        return np.log(self.predict(self.x)) - np.log(self.y)
