"""Model cards: what an exported model is, carried inside every model file.

A card is plain JSON data: the model (family, size, force mode, parameters,
cutoff, elements, units), the training data and its level of theory, the
validation metrics, the commit and the resolved config. ``train.export``
stores it under ``card`` in our model files; ``train.metatomic`` in the
metatomic metadata (``extra["mlip-scaling::card"]``); ``train.mace_torch``
in a ``mlip-scaling-card.json`` record of the mace-torch file.
``python -m train.export --show FILE`` prints it (:func:`read_card`,
:func:`format_card`), reading the file without unpickling any Python object.
"""

from __future__ import annotations

import datetime
import json
import zipfile
from pathlib import Path
from typing import Any

CARD_VERSION = 1
CARD_KEY = "mlip-scaling::card"  # the key in a metatomic model's metadata.extra
CARD_RECORD = "mlip-scaling-card.json"  # the zip record in a mace-torch file
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"}


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _validation(run_dir: Path | None, metrics: dict | None) -> dict:
    """The validation metrics and where they come from.

    Given metrics win; then a finished run's summary.json (EMA weights); then
    the last validation row of metrics.jsonl (a run still going).
    """
    if metrics:
        return {"source": "training run", "metrics": dict(metrics)}
    if run_dir is None:
        return {"source": None, "metrics": {}}
    summary = _json(run_dir / "summary.json")
    if summary is not None:
        values = {k: v for k, v in summary.items() if k.startswith("val/")}
        return {"source": "summary.json", "metrics": values, "step": summary.get("steps")}
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return {"source": None, "metrics": {}}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        values = {k: v for k, v in row.items() if k.startswith("val/")}
        if values:
            return {"source": "metrics.jsonl (last validation)", "metrics": values,
                    "step": row.get("step")}  # fmt: skip
    return {"source": None, "metrics": {}}


def _training_data(root: str | None, fraction: float) -> dict:
    """Name, level of theory and split sizes from the data root's manifest."""
    out: dict[str, Any] = {"root": root, "fraction": fraction}
    if root is None:
        return out
    try:
        from data_pipelines.dataset import load_manifest

        manifest = load_manifest(root)
    except Exception as err:  # a card describes what it can; the export goes on
        out["error"] = f"manifest not readable: {err}"
        return out
    out.update(
        name=manifest.get("name"),
        level_of_theory=manifest.get("level_of_theory"),
        sources=[s.get("path") for s in manifest.get("sources", [])],
        elements=manifest.get("elements"),
        splits={k: v.get("num_structures") for k, v in manifest.get("splits", {}).items()},
    )
    return out


def model_baselines(model) -> dict[str, dict[int, float]]:
    """The composition baseline a model computes with, per head ("" for a model
    with one head): {head: {atomic number: eV per atom}}, non-zero entries."""
    import torch

    table = model.composition_baseline.detach().double().cpu()
    rows = table if model.head_names else table[None]
    names = model.head_names or ("",)
    return {
        name: {int(z): float(row[z]) for z in torch.nonzero(row).flatten().tolist()}
        for name, row in zip(names, rows)
    }


def build_card(
    model, cfg, stats: dict, run_dir: str | Path | None = None, metrics: dict | None = None
) -> dict[str, Any]:
    """The card of a model about to be exported.

    Args:
        model: the trained model (parameters, cutoff, description).
        cfg: the run's TrainConfig.
        stats: the dataset statistics (elements).
        run_dir: the run directory (git.json, summary.json, metrics.jsonl), if any.
        metrics: validation metrics to record instead of the run directory's.
    """
    from omegaconf import OmegaConf

    run = Path(run_dir) if run_dir is not None else None
    git = _json(run / "git.json") if run is not None else None
    if git is None:
        from train.rundir import git_state

        git = {**git_state(), "note": "checkout at export time (the run recorded none)"}
    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    description = model.describe()
    return {
        "card_version": CARD_VERSION,
        "name": f"{cfg.model.family}-{cfg.model.size}-{cfg.model.forces}",
        "family": cfg.model.family,
        "size": cfg.model.size,
        "forces": cfg.model.forces,
        "num_parameters": int(model.num_parameters()),
        "cutoff_A": float(model.cutoff),
        "elements": list(stats.get("elements", [])),
        "dtype": cfg.trainer.dtype,
        "units": UNITS,
        "model_config": json.loads(json.dumps(description, default=str)),
        "training_data": _training_data(cfg.data.root, cfg.data.fraction),
        # per head and per source: what the energies are measured against
        "heads": list(model.head_names),
        "baselines": {k: {str(z): e for z, e in v.items()}
                      for k, v in model_baselines(model).items()},
        "energy_scale": float(model.energy_scale),
        "sources": json.loads(json.dumps(stats.get("sources") or {}, default=str)),
        "statistics_origin": getattr(model, "statistics_origin", None),
        "validation": _validation(run, metrics),
        "git": git,
        "run_dir": str(run) if run is not None else None,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": json.loads(json.dumps(config, default=str)),
    }


def read_card(path: str | Path) -> dict:
    """The card of a model file of any of the three formats.

    Nothing in the file is executed: TorchScript and mace-torch files are read
    as zip archives, our own files with ``torch.load(weights_only=True)``.

    Raises:
        ValueError: the file carries no card (or is no model file we know).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            metadata = [n for n in names if n.endswith("extra/model-metadata")]
            if metadata:  # a metatomic model
                extra = json.loads(archive.read(metadata[0])).get("extra", {})
                if CARD_KEY in extra:
                    return json.loads(extra[CARD_KEY])
                raise ValueError(f"{path}: a metatomic model without a mlip-scaling card")
            record = [n for n in names if n.endswith(CARD_RECORD)]
            if record:  # a mace-torch file written by train.mace_torch
                return json.loads(archive.read(record[0]))
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load of a text or foreign file fails many ways
        raise ValueError(f"{path}: not a model file with a card ({err})") from None
    if not isinstance(payload, dict) or "card" not in payload:
        raise ValueError(f"{path}: no model card (exported before cards existed?)")
    return payload["card"]


def _metrics_line(values: dict) -> str:
    parts = []
    for key, value in sorted(values.items()):
        shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
        parts.append(f"{key.removeprefix('val/')} {shown}")
    return ", ".join(parts) or "none recorded"


def format_card(card: dict, with_config: bool = True) -> str:
    """The card as a person reads it (the resolved config as YAML at the end)."""
    data = card.get("training_data", {})
    valid = card.get("validation", {})
    git = card.get("git") or {}
    splits = ", ".join(f"{k} {v}" for k, v in (data.get("splits") or {}).items())
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    lines = [
        f"model card: {card.get('name')}",
        f"  model        {card.get('family')} size {card.get('size')}, forces "
        f"{card.get('forces')}, {card.get('num_parameters', 0):,} parameters, "
        f"{card.get('dtype')}",
        f"  cutoff       {card.get('cutoff_A')} A",
        f"  elements     {' '.join(card.get('elements', [])) or '?'}",
        "  units        " + ", ".join(f"{k} {v}" for k, v in card.get("units", {}).items()),
        f"  data         {data.get('name')} at {data.get('root')} (fraction {data.get('fraction')})"
        + (f"; {splits}" if splits else ""),
        f"  theory       {data.get('level_of_theory') or 'not recorded'}",
    ]
    if card.get("heads"):
        lines.append(f"  heads        {', '.join(card['heads'])}")
    for name, src in (card.get("sources") or {}).items():
        lines.append(f"  source       {name}: {src.get('level_of_theory') or '?'}"
                     + (f" -> head {src['head']}" if src.get("head") else ""))
    origin = card.get("statistics_origin")
    if origin:
        lines.append(f"  baselines    kept from {origin.get('from')} (fine-tune)")
    lines += [
        f"  validation   {_metrics_line(valid.get('metrics', {}))}"
        + (f" [{valid['source']}, step {valid.get('step')}]" if valid.get("source") else ""),
        f"  commit       {git.get('commit') or 'unknown'}{dirty}",
        f"  exported     {card.get('exported_at')}"
        + (f" as {card['format']}" if card.get("format") else ""),
    ]
    if card.get("format_details"):
        lines.append(f"  file         {card['format_details']}")
    if with_config and card.get("config") is not None:
        from omegaconf import OmegaConf

        config = OmegaConf.to_yaml(card["config"]).splitlines()
        lines += ["  config:", *("    " + line for line in config)]
    return "\n".join(lines)
