"""The run table as CSV: runs.csv written by the report, and tables read back.

A table has one row per run: `family`, `num_params`, `structures_seen` or
`atoms_seen`, optionally `flops` (total training FLOPs) and one column per
metric. Columns `axes.X` hold axis values; `tune.X`, `baseline.X`,
`convergence.X` and `ladder.X` the fields of summary.json's dicts of the same
names, so a table written by :func:`write_csv` reads back as the same runs.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from analysis.scaling.types import LoadError, Run

# Numeric facts of a run: summary.json keys and CSV columns alike.
RUN_NUMBERS = (
    "num_params",
    "num_params_non_embedding",
    "flops_per_atom",
    "flops_per_atom_forward",
    "total_flops",
    "train_flops",
    "structures_seen",
    "atoms_seen",
    "wall_time_s",
    "steps",
)
_CSV_NUMBERS = RUN_NUMBERS + ("num_train_structures", "num_train_atoms", "data_fraction")
_CSV_TEXT = (
    "name",
    "run_name",
    "family",
    "model",
    "forces",
    "size",
    "seed",
    "status",
    "reason",
    "source",
)
# summary.json dicts kept as columns PREFIX.KEY (None-valued ones hold a dict or nothing)
_CSV_DICTS = ("tune", "baseline", "convergence", "ladder")


def load_csv(path: Path) -> list[Run]:
    """Every row of a table as a Run (see the module docstring for the columns)."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in ("family", "num_params") if c not in cols]
        if not ({"structures_seen", "atoms_seen"} & set(cols)):
            missing.append("structures_seen or atoms_seen")
        if missing:
            raise LoadError(f"{path}: missing column(s) {', '.join(missing)}; found {cols}")
        runs = [_csv_row(path, reader.line_num, row, i) for i, row in enumerate(reader)]
    return runs


def _csv_row(path: Path, line: int, row: dict[str, str], index: int) -> Run:
    def number(col: str, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise LoadError(
                f"{path}:{line}: column {col!r}: expected a number, got {text!r}"
            ) from None

    name = row.get("name") or row.get("run_name") or f"{path.stem}#{index + 1}"
    run = Run(name=name, source=row.get("source") or f"{path}:{line}", finished=True)
    for col, text in row.items():
        text = (text or "").strip()
        if col is None or not text:
            continue
        prefix, _, key = col.partition(".")
        if col in ("name", "run_name", "source"):
            continue
        if col == "flops":
            run.total_flops = number(col, text)
        elif col in _CSV_NUMBERS:
            setattr(run, col, number(col, text))
        elif prefix == "axes" and key:
            run.axes[key] = _parse_scalar(text)
        elif prefix in _CSV_DICTS and key:
            if getattr(run, prefix) is None:
                setattr(run, prefix, {})
            getattr(run, prefix)[key] = _parse_scalar(text)
        elif col == "seed":
            run.seed = int(number(col, text))
        elif col == "status":
            run.finished = text == "finished"
        elif col in _CSV_TEXT:
            setattr(run, col, text)
        else:
            try:
                run.metrics[col] = float(text)
            except ValueError:
                run.axes[col] = text
    if not run.finished and not run.reason:
        run.reason = f"status is {row.get('status')!r}"
    if run.family == "unknown" and not row.get("family"):
        raise LoadError(f"{path}:{line}: column 'family' is empty")
    if run.num_params is None and run.finished:
        raise LoadError(f"{path}:{line}: column 'num_params' is empty")
    return run


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def to_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Flat rows (CSV-ready, readable back by `load_csv`)."""
    metric_keys = sorted({k for r in runs for k in r.metrics})
    axis_keys = sorted({k for r in runs for k in r.axes})
    dict_keys = {p: sorted({k for r in runs for k in (getattr(r, p) or {})}) for p in _CSV_DICTS}
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            "name": r.name,
            "family": r.family,
            "status": "finished" if r.finished else "unfinished",
            "reason": r.reason or "",
            "source": r.source,
        }
        for key in ("model", "forces", "size", "seed", *_CSV_NUMBERS):
            row[key] = getattr(r, key)
        row["flops"] = r.flops
        row.update({f"axes.{k}": r.axes.get(k) for k in axis_keys})
        for prefix, keys in dict_keys.items():
            values = getattr(r, prefix) or {}
            row.update({f"{prefix}.{k}": values.get(k) for k in keys})
        row.update({k: r.metrics.get(k) for k in metric_keys})
        rows.append(row)
    return rows


def write_csv(runs: list[Run], path: Path) -> None:
    """The table as CSV; empty cells for missing values (non-finite written as-is)."""
    rows = to_rows(runs)
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                    for k, v in row.items()
                }
            )
