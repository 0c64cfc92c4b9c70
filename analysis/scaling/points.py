"""Which runs are points of a law: parameter counts, ladders, tuned envelopes.

- N is the non-embedding parameter count where every run records it (the
  field's convention), else the total count, and the analysis says so;
- the main run of a WSD ladder trains at constant learning rate and is never
  cooled down, so it is no point of a law: its cooldown branches are;
- a tuned study trains every value of the tuned override at each grid point;
  a law is fitted to the lower envelope, the best run per grid point on the
  metric being fitted, and the report says which value won and whether it
  sat at the edge of the values tried.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from numbers import Real

from analysis.scaling.types import Run


def choose_params(runs: list[Run], wanted: str) -> tuple[str, str | None]:
    """The parameter count to use as N, and a note when it is not the one asked for.

    One count for all runs, so that families stay comparable along N: a single
    run without the non-embedding count makes it the total count everywhere.
    """
    if wanted == "total":
        return "total", None
    lacking = [r for r in runs if not r.num_params_non_embedding]
    if not lacking:
        return "non-embedding", None
    if len(lacking) == len(runs):
        why = "no run records num_params_non_embedding (older runs)"
    else:
        names = ", ".join(r.name for r in lacking[:5]) + (", ..." if len(lacking) > 5 else "")
        why = f"{len(lacking)} of {len(runs)} runs lack num_params_non_embedding ({names})"
    return "total", f"{why}: N is the total parameter count, embeddings included"


def drop_ladder_mains(runs: list[Run], include: bool) -> tuple[list[Run], list[Run]]:
    """(runs kept, WSD-ladder main runs left out); nothing is left out if `include`."""
    if include:
        return list(runs), []
    return [r for r in runs if not r.ladder_main], [r for r in runs if r.ladder_main]


def grid_point(run: Run) -> Hashable:
    """What makes two runs of a tuned study the same grid point: family, axes and,
    for a ladder's cooldown branch, where it branched off."""
    ladder = run.ladder or {}
    branch = tuple(ladder.get(k) for k in ("decay_at", "branch_step", "cooldown_steps"))
    return run.family, json.dumps(run.axes, sort_keys=True, default=str), branch


def tuned_envelope(runs: list[Run], metric: str) -> tuple[list[Run], list[dict]]:
    """Per grid point, the tuned run best on `metric`; runs without `tune` pass through.

    A run whose metric is not finite (diverged) counts as tried and worst: a
    diverged learning rate above the best one brackets the optimum, so the best
    is not at the edge.

    Returns:
        The runs to fit (each untuned run, one per tuned grid point) and one
        selection per tuned grid point: the point, the chosen run and value,
        every value tried and `at_edge` (the tuned keys whose chosen value is
        the lowest or highest tried; None with fewer than two values tried).
    """
    keep = [r for r in runs if not r.tune]
    groups: dict[Hashable, list[Run]] = {}
    for r in runs:
        if r.tune and metric in r.metrics:
            groups.setdefault(grid_point(r), []).append(r)
    selections = []
    for group in groups.values():
        finite = [r for r in group if math.isfinite(r.metrics[metric])]
        if not finite:  # all diverged: the fit's own checks say so for the first
            keep.append(group[0])
            continue
        best = min(finite, key=lambda r: r.metrics[metric])
        keep.append(best)
        selections.append(_selection(best, group, metric))
    return keep, selections


def _selection(best: Run, group: list[Run], metric: str) -> dict:
    tried = sorted(group, key=lambda r: [_order(r.tune[k]) for k in sorted(r.tune)])
    edges: list[dict] | None = []
    values_tried = {}
    for key, value in best.tune.items():
        vals = sorted({v for r in group if isinstance(v := r.tune.get(key), Real)})
        values_tried[key] = vals
        if not isinstance(value, Real) or len(vals) < 2:
            continue  # a categorical choice, or a single value: no edge to be at
        if value == vals[0]:
            edges.append({"key": key, "side": "low"})
        elif value == vals[-1]:
            edges.append({"key": key, "side": "high"})
    if all(len(v) < 2 for v in values_tried.values()):
        edges = None
    ladder = best.ladder if best.ladder and best.ladder.get("role") == "cooldown" else None
    return {
        "family": best.family,
        "point": dict(best.axes),
        "ladder": None if ladder is None else {k: v for k, v in ladder.items() if k != "main"},
        "size": best.size,
        "chosen": best.name,
        "value": dict(best.tune),
        "metric": best.metrics[metric],
        "values_tried": values_tried,
        "tried": [
            {
                "run": r.name,
                "value": dict(r.tune),
                "metric": v if math.isfinite(v := r.metrics[metric]) else None,
            }
            for r in tried
        ],
        "at_edge": edges,
    }


def _order(value) -> tuple:
    """Numbers by value, then anything else by its text."""
    return (0, float(value), "") if isinstance(value, Real) else (1, 0.0, str(value))


def edge_points(selections: list[dict]) -> list[dict]:
    """The selections whose optimum sat at the edge of the values tried."""
    return [s for s in selections if s["at_edge"]]
