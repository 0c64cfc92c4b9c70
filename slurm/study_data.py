"""A study's data: an existing shard directory, or one generated once under
STUDY_DIR/data and keyed by every generation setting.

Generated data is never regenerated silently: finished runs were trained on
it, so a study whose generation settings changed (seed, size, calculator,
shard size) stops with a message instead of replacing the data under them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slurm.study import StudyConfig

GENERATE_DEFAULTS: dict[str, Any] = {
    "calculator": "emt",
    "num_structures": 1000,
    "seed": 0,
    "shard_size": 1000,
}


class StudyDataMismatch(ValueError):
    """The study's generated data was made with other settings than asked now."""


def generation_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """Every setting that determines the generated data, defaults filled in.

    Raises:
        ValueError: an unknown setting (naming the valid ones).
    """
    unknown = sorted(set(raw) - set(GENERATE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"study.data.generate: unknown settings {unknown}; "
            f"valid: {', '.join(GENERATE_DEFAULTS)}"
        )
    settings = {**GENERATE_DEFAULTS, **raw}
    return {
        "calculator": str(settings["calculator"]),
        "num_structures": int(settings["num_structures"]),
        "seed": int(settings["seed"]),
        "shard_size": int(settings["shard_size"]),
    }


def recorded_settings(manifest: dict) -> dict[str, Any] | None:
    """The generation settings a generated data set recorded, or None."""
    sources = manifest.get("sources") or []
    options = sources[0].get("options") if sources else None
    if not options or not str(sources[0].get("path", "")).startswith("generate:"):
        return None
    return {k: options.get(k) for k in GENERATE_DEFAULTS}


def prepare_data(study: StudyConfig, study_dir: Path) -> str:
    """The study's shard directory: given, or generated once under STUDY_DIR/data.

    Raises:
        ValueError: neither a root nor generation settings.
        StudyDataMismatch: STUDY_DIR/data exists with other generation settings.
    """
    if study.data.root:
        return study.data.root
    if not study.data.generate:
        raise ValueError("the study sets neither study.data.root nor study.data.generate")
    wanted = generation_settings(dict(study.data.generate))
    out = study_dir / "data"
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        have = recorded_settings(json.loads(manifest_path.read_text()))
        if have and have["shard_size"] is None:  # made before the shard size was recorded
            have["shard_size"] = wanted["shard_size"]
        if have == wanted:
            return str(out)
        differ = (
            ", ".join(
                f"{k}: {have.get(k)!r} there, {wanted[k]!r} asked"
                for k in wanted
                if have.get(k) != wanted[k]
            )
            if have
            else "it was not made by study.data.generate"
        )
        raise StudyDataMismatch(
            f"{out} holds data generated with other settings ({differ}); the runs of "
            f"{study_dir} were trained on it, so it is not replaced. Use another study_dir, "
            f"or delete {out} and {study_dir / 'runs'} to start the study over"
        )
    from data_pipelines.convert import write_dataset
    from data_pipelines.generate import generate_structures

    calc, n, seed = wanted["calculator"], wanted["num_structures"], wanted["seed"]
    print(f"generating {n} structures ({calc}, seed {seed}) into {out}", flush=True)
    write_dataset(
        # every core: the structures are the same for any number of workers
        generate_structures(n, seed=seed, calculator=calc, num_workers=os.cpu_count() or 1),
        out,
        shard_size=wanted["shard_size"],
        seed=seed,
        name=f"{calc}-{n}-s{seed}",
        level_of_theory="EMT (ASE)",
        progress=True,
        sources=[{"path": f"generate:{calc}", "sha256": None, "options": wanted}],
    )
    return str(out)
