"""Tuned studies: every value of a hyper-parameter at each grid point.

``study.tune: {optim.lr: [1e-3, 3e-3, 1e-2]}`` runs each value (each
combination, for several keys) at every grid point; run names get a suffix
(``_lr0.003``) and each summary records the values under ``tune``, so
``analysis scaling`` fits the lower envelope (the best run per point).

``study.tune_at: {size: w16}`` tunes only at the grid points with those axis
values and transfers the best value (on ``study.tune_metric``) to the points
that share their other axes: with muP the optimum found at the smallest
width holds at the others. A point whose tuning runs have not all finished
waits for a later sweep command.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

_SAFE = re.compile(r"[^A-Za-z0-9.+-]+")


def combinations(tune: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the tuned values ([{}] when nothing is tuned).

    Raises:
        ValueError: a tuned key with no values.
    """
    if not tune:
        return [{}]
    keys = list(tune)
    values = []
    for key in keys:
        raw = tune[key]
        options = list(raw) if isinstance(raw, list | tuple) else [raw]
        if not options:
            raise ValueError(f"study.tune.{key} lists no values")
        values.append(options)
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def suffix(values: dict[str, Any]) -> str:
    """``_lr0.003`` for ``{optim.lr: 0.003}``: the last part of each key and its value."""
    parts = []
    for key, value in values.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.split('.')[-1]}{_SAFE.sub('_', text)}")
    return "".join(f"_{p}" for p in parts)


def overrides(values: dict[str, Any]) -> list[str]:
    """The tuned values as training overrides, and their record for summary.json."""
    out = []
    for key, value in values.items():
        out += [f"{key}={value}", f"++tune.{key}={value}"]
    return out


def at_tuning_point(point: dict[str, Any], tune_at: dict[str, Any]) -> bool:
    return all(str(point.get(k)) == str(v) for k, v in tune_at.items())


def tuning_point(point: dict[str, Any], tune_at: dict[str, Any]) -> dict[str, Any]:
    """The grid point whose tuned value transfers to ``point``."""
    return {k: tune_at.get(k, v) for k, v in point.items()}


def best(run_dirs: list[Path], combos: list[dict[str, Any]], metric: str) -> dict | None:
    """The combination whose run is best on ``metric``; None while any of the
    runs has not finished (a transferred value must come from the whole grid).

    Raises:
        ValueError: every run finished but none reports ``metric``.
    """
    scored = []
    for run_dir, combo in zip(run_dirs, combos):
        path = run_dir / "summary.json"
        if not path.is_file():
            return None
        summary = json.loads(path.read_text())
        if summary.get("status") != "finished":
            return None
        value = summary.get(metric)
        if isinstance(value, int | float):
            scored.append((float(value), combo))
    if not scored:
        raise ValueError(f"no tuning run of {run_dirs[0].parent} reports {metric}")
    return min(scored, key=lambda item: item[0])[1]
