"""Load runs into one table: study directories, CSV tables, W&B projects.

A study directory holds run directories (possibly nested, e.g. STUDY/runs/NAME);
a run directory is any folder with `config.yaml`, `summary.json`,
`metrics.jsonl` or `error.txt`. A run is finished when its `summary.json` says
so; the others are kept in the table with the reason, and left out of fits.

Every input becomes a list of `Run`; inputs are named on the command line as a
directory, a `.csv` file, or `wandb:ENTITY/PROJECT[/GROUP]`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

# the tables and the error are read through this module as well
from analysis.scaling.table import RUN_NUMBERS, load_csv, to_rows, write_csv  # noqa: F401
from analysis.scaling.types import LoadError, Run

RUN_FILES = ("summary.json", "config.yaml", "metrics.jsonl", "error.txt")
STANDARD_METRICS = ("val/energy_per_atom_mae", "val/forces_mae", "val/stress_mae")
# summary.json dicts copied onto the Run as they are (see Run for their keys)
_SUMMARY_DICTS = ("convergence", "tune", "ladder", "budget")


def _num(value: Any) -> float | None:
    """A finite-or-not float from JSON/YAML, None for absent or non-numbers."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts, keys joined with '/'."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    elif (x := _num(obj)) is not None and prefix:
        out[prefix] = x
    return out


def _metrics_of(summary: dict[str, Any]) -> dict[str, float]:
    # Final metrics are the namespaced top-level keys (val/..., test/...); plain keys
    # and nested dicts (num_params, model_config, data) are run facts, not metrics.
    return {k: v for k, x in summary.items() if "/" in k and (v := _num(x)) is not None}


def _family(summary: dict, cfg: dict, axes: dict) -> tuple[str, str | None, str | None]:
    model_cfg = cfg.get("model")
    model = summary.get("model")
    forces = summary.get("forces") or cfg.get("forces")
    if isinstance(model_cfg, dict):
        model = model or model_cfg.get("family") or model_cfg.get("name")
        forces = forces or model_cfg.get("forces")
    elif isinstance(model_cfg, str):
        model = model or model_cfg
    if isinstance(forces, dict):
        forces = forces.get("name") or forces.get("kind")
    family = summary.get("family") or axes.get("model") or axes.get("family")
    if not family and model:
        family = f"{model}-{forces}" if forces and model == "pet" else str(model)
    return str(family or "unknown"), model and str(model), forces and str(forces)


def run_from_summary(
    name: str, source: str, summary: dict[str, Any], cfg: dict[str, Any] | None = None
) -> Run:
    """A Run from a summary dict (summary.json, or a W&B run's summary)."""
    cfg = cfg or {}
    axes = summary.get("axes") or cfg.get("axes") or {}
    family, model, forces = _family(summary, cfg, axes)
    data = summary.get("data") or {}
    size = summary.get("size") or axes.get("size")
    if size is None and isinstance(cfg.get("model"), dict):
        size = cfg["model"].get("size")
    seed = summary.get("seed", axes.get("seed", cfg.get("seed")))
    run = Run(
        name=name,
        source=source,
        family=family,
        model=model,
        forces=forces,
        size=None if size is None else str(size),
        axes=dict(axes),
        config=cfg,
        seed=int(seed) if _num(seed) is not None else None,
    )
    for key in RUN_NUMBERS:
        setattr(run, key, _num(summary.get(key)))
    for key in _SUMMARY_DICTS:
        if isinstance(value := summary.get(key), dict):
            setattr(run, key, dict(value))
    if isinstance(base := summary.get("baseline"), dict):
        run.baseline = {k: x for k, v in base.items() if (x := _num(v)) is not None and x > 0}
    run.num_train_structures = _num(data.get("num_train_structures"))
    run.num_train_atoms = _num(data.get("num_train_atoms"))
    run.data_fraction = _num(data.get("data_fraction", axes.get("data_fraction")))
    run.metrics = _metrics_of(summary)
    status = summary.get("status", "finished")
    run.finished = status == "finished"
    if not run.finished:
        run.reason = f"summary.json status is {status!r}"
    return run


def _read_history(path: Path) -> tuple[list[dict[str, float]], int | None, int]:
    """Validation rows, the last step, and how many lines could not be parsed (a
    run killed mid-write leaves a torn last line)."""
    rows, last, bad = [], None, 0
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(row, dict):
                bad += 1
                continue
            if (step := _num(row.get("step"))) is not None:
                last = int(step)
            # Only validation rows are kept: per-step rows of long runs would be
            # millions of entries and the analysis needs the val curves.
            val = {
                k: float(v) for k, v in row.items() if k.startswith("val/") and _num(v) is not None
            }
            if val:
                val["step"] = float(step) if step is not None else float("nan")
                rows.append(val)
    return rows, last, bad


def _eval_metrics(run_dir: Path) -> dict[str, float]:
    """Metrics from RUN/eval/*.json, named `stem/key` unless already namespaced."""
    out: dict[str, float] = {}
    for path in sorted((run_dir / "eval").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LoadError(f"{path}: not readable JSON ({err})") from err
        if not isinstance(data, dict):
            raise LoadError(f"{path}: expected a JSON object of metrics")
        for top, value in data.items():
            # a namespaced top-level key ("relax/rmsd") is kept; a bare one gets the stem
            out.update(_flatten(value, top if "/" in top else f"{path.stem}/{top}"))
    return out


def load_run_dir(run_dir: Path, name: str | None = None) -> Run:
    """One run directory. Never raises for an unfinished or damaged run: such runs
    come back unfinished with the reason, so nothing is dropped silently."""
    run_dir = Path(run_dir)
    name = name or run_dir.name
    cfg: dict[str, Any] = {}
    problems: list[str] = []
    if (run_dir / "config.yaml").is_file():
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            problems.append(f"config.yaml unreadable: {str(err).splitlines()[0]}")
    summary: dict[str, Any] | None = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except json.JSONDecodeError as err:
            problems.append(f"summary.json unreadable: {err}")
    run = run_from_summary(name, str(run_dir), summary or {}, cfg if isinstance(cfg, dict) else {})
    if (run_dir / "metrics.jsonl").is_file():
        run.history, run.last_step, bad = _read_history(run_dir / "metrics.jsonl")
        if bad:
            problems.append(f"{bad} unparsable line(s) in metrics.jsonl")
    if summary is None:
        run.finished = False
        err_file = run_dir / "error.txt"
        lines = err_file.read_text().strip().splitlines() if err_file.is_file() else []
        run.reason = lines[-1].strip() if lines else "no summary.json (still running or killed)"
        if run.last_step is not None:
            run.reason += f"; last logged step {run.last_step}"
    try:
        run.metrics.update(_eval_metrics(run_dir))
    except LoadError as err:
        problems.append(str(err))
    run.warnings += problems
    return run


def find_run_dirs(study: Path) -> list[Path]:
    """Run directories under a study (the study itself if it is one), sorted."""
    study = Path(study)
    if any((study / f).is_file() for f in RUN_FILES):
        return [study]
    found = []
    for dirpath, dirnames, filenames in os.walk(study):
        if any(f in filenames for f in RUN_FILES):
            found.append(Path(dirpath))
            dirnames.clear()  # a run's own subfolders (checkpoints, eval) hold no runs
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "wandb")))
    return sorted(found)


def load_study(study: Path) -> list[Run]:
    """Every run under a study directory, named by its path relative to the study."""
    study = Path(study)
    planned = _planned_axes(study)
    runs = []
    for run_dir in find_run_dirs(study):
        rel = run_dir.relative_to(study).as_posix() if run_dir != study else run_dir.name
        run = load_run_dir(run_dir, rel)
        # a run that failed before writing its config still belongs to a family
        if run.family == "unknown" and (axes := planned.get(run_dir.name)):
            run.axes, run.family = dict(axes), str(axes.get("model", "unknown"))
            run.size = run.size or axes.get("size")
        runs.append(run)
    return runs


def _planned_axes(study: Path) -> dict[str, dict]:
    """Axis values per run name from the sweep's STUDY/study.json, if present."""
    try:
        data = json.loads((study / "study.json").read_text())
        return {k: v["axes"] for k, v in data["runs"].items() if isinstance(v.get("axes"), dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def load_wandb(spec: str) -> list[Run]:
    """Runs of a W&B project (online only): `wandb:ENTITY/PROJECT[/GROUP]`."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise LoadError(
            f"{spec}: reading a W&B project needs online mode, but "
            f"WANDB_MODE={mode}; export the runs to CSV or unset WANDB_MODE"
        )
    parts = spec.removeprefix("wandb:").strip("/").split("/")
    if len(parts) not in (2, 3):
        raise LoadError(f"{spec}: expected wandb:ENTITY/PROJECT or wandb:ENTITY/PROJECT/GROUP")
    try:
        import wandb
    except ImportError as err:
        raise LoadError(f"{spec}: the wandb package is not installed") from err
    filters = {"group": parts[2]} if len(parts) == 3 else {}
    runs = []
    for wr in wandb.Api().runs(f"{parts[0]}/{parts[1]}", filters=filters):
        summary = dict(getattr(wr.summary, "_json_dict", None) or wr.summary)
        cfg = dict(wr.config)
        run = run_from_summary(wr.name, f"wandb:{'/'.join(wr.path)}", summary, cfg)
        if wr.state != "finished":
            run.finished, run.reason = False, f"W&B state is {wr.state!r}"
        runs.append(run)
    return runs


def load_inputs(inputs: list[str]) -> list[Run]:
    """Every run of every input, with names made unique across inputs."""
    runs: list[Run] = []
    for spec in inputs:
        if spec.startswith("wandb:"):
            new = load_wandb(spec)
        elif spec.lower().endswith(".csv"):
            if not Path(spec).is_file():
                raise LoadError(f"{spec}: no such file")
            new = load_csv(Path(spec))
        elif Path(spec).is_dir():
            new = load_study(Path(spec))
            if not new:
                raise LoadError(
                    f"{spec}: no run directories (no {', '.join(RUN_FILES)}) found under it"
                )
        else:
            raise LoadError(f"{spec}: not a study directory, a .csv file or wandb:...")
        if len(inputs) > 1:  # several studies may each have a run called "xs-0"
            stem = Path(spec.rstrip("/")).name.removesuffix(".csv")
            for r in new:
                r.name = f"{stem}/{r.name}"
        runs += new
    seen: dict[str, int] = {}
    for r in runs:
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name}~{seen[r.name]}"
        else:
            seen[r.name] = 0
    return runs


def available_metrics(runs: list[Run]) -> list[str]:
    """Metric names of finished runs: the standard validation MAEs first, then
    downstream metrics (anything not under val/ or train/), then the rest of val/."""
    names = {k for r in runs if r.finished for k in r.metrics}
    std = [m for m in STANDARD_METRICS if m in names]
    other = sorted(k for k in names if not k.startswith(("val/", "train/", "test/")))
    return std + other


def resolve_metric(name: str, runs: list[Run]) -> str:
    """A metric name as given (`val/forces_mae`, `forces_mae`, `lambda`) -> its key."""
    names = sorted({k for r in runs for k in r.metrics})
    if name in names:
        return name
    for candidate in (f"val/{name}",):
        if candidate in names:
            return candidate
    hits = [k for k in names if k.endswith("/" + name)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise LoadError(f"metric {name!r} is ambiguous: {', '.join(hits)}")
    raise LoadError(f"metric {name!r} not found in any run; available: {', '.join(names)}")
