"""Evaluation stages: practical workflows run on each trained model of a study.

A study may list stages under ``study.evaluate``; each names a workflow of
``analysis/`` and its command-line arguments (everything but ``--model`` and
``--out``, which the stage fills in)::

    study:
      evaluate:
        - {name: relax, workflow: relax, args: [--structures, builtin:metals]}
        - {name: relax-rot3, workflow: relax,
           args: [--structures, builtin:metals, --rotational-average, "3"]}

After a run finishes training, in the same job (or in-process with
``cluster=local``), every stage whose result is missing runs on RUN/model.pt:
the workflow writes its files to ``RUN/eval/<name>/`` and its metrics go to
``RUN/eval/<name>.json`` as ``<name>/<metric>`` (the workflow's own prefix
replaced by the stage name), where ``python -m analysis.scaling`` reads them,
so every downstream metric gets a scaling curve like the validation errors.

A failing stage writes ``RUN/eval/<name>.error.txt`` and does not stop the
other stages or the study; re-running the sweep retries it.
"""

from __future__ import annotations

import importlib
import json
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKFLOWS = {
    "relax": "analysis.relax",
    "phonons": "analysis.phonons",
    "symmetry": "analysis.symmetry",
    "speed": "analysis.speed",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Stage:
    """One evaluation stage: ``workflow`` run with ``args`` on each trained model."""

    name: str
    workflow: str
    args: list[str] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, raw: Any, where: str = "study.evaluate") -> Stage:
        """Validates one entry of ``study.evaluate``.

        Raises:
            ValueError: naming the entry and what is wrong with it.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected {{name, workflow, args}}, got {raw!r}")
        unknown = set(raw) - {"name", "workflow", "args"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (name, workflow, args)")
        workflow = str(raw.get("workflow", ""))
        if workflow not in WORKFLOWS:
            raise ValueError(
                f"{where}: workflow {workflow!r} is not one of {', '.join(sorted(WORKFLOWS))}"
            )
        name = str(raw.get("name") or workflow)
        if not _NAME.match(name):
            raise ValueError(f"{where}: stage name {name!r} must be a plain file name")
        args = [str(a) for a in (raw.get("args") or [])]
        for reserved in ("--model", "--out"):
            if reserved in args:
                raise ValueError(f"{where} ({name}): {reserved} is set by the stage, drop it")
        return cls(name=name, workflow=workflow, args=args)


def parse_stages(raw: list[Any] | None) -> list[Stage]:
    """All stages of a study, with unique names."""
    stages = [Stage.from_mapping(r, f"study.evaluate[{i}]") for i, r in enumerate(raw or [])]
    names = [s.name for s in stages]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"study.evaluate: stage names must be unique, repeated: {duplicated}")
    return stages


def result_file(run_dir: Path, stage: Stage) -> Path:
    """RUN/eval/<name>.json: the stage's metrics, and the marker that it is done."""
    return Path(run_dir) / "eval" / f"{stage.name}.json"


def error_file(run_dir: Path, stage: Stage) -> Path:
    """RUN/eval/<name>.error.txt: why the last attempt failed."""
    return Path(run_dir) / "eval" / f"{stage.name}.error.txt"


def stage_done(run_dir: Path, stage: Stage) -> bool:
    return result_file(run_dir, stage).is_file()


def stage_failed(run_dir: Path, stage: Stage) -> bool:
    return not stage_done(run_dir, stage) and error_file(run_dir, stage).is_file()


def missing_stages(run_dir: Path, stages: list[Stage]) -> list[Stage]:
    return [s for s in stages if not stage_done(run_dir, s)]


def stage_metrics(stage: Stage, metrics: dict[str, Any]) -> dict[str, Any]:
    """A workflow's flat metrics renamed ``<stage>/<metric>``."""
    out = {}
    for key, value in metrics.items():
        tail = key.split("/", 1)[1] if "/" in key else key
        out[f"{stage.name}/{tail}"] = value
    return out


def run_stage(run_dir: Path, stage: Stage) -> dict[str, Any]:
    """Runs one stage on RUN/model.pt; returns ``{"status", "seconds", ...}``."""
    run_dir = Path(run_dir)
    errors = error_file(run_dir, stage)
    errors.parent.mkdir(parents=True, exist_ok=True)
    errors.unlink(missing_ok=True)
    t0 = time.time()
    out_dir = run_dir / "eval" / stage.name
    try:
        module = importlib.import_module(WORKFLOWS[stage.workflow])
        argv = ["--model", str(run_dir / "model.pt"), *stage.args, "--out", str(out_dir)]
        module.main(argv)
        metrics = json.loads((out_dir / "metrics.json").read_text())
    except SystemExit as err:  # argparse rejected the stage's arguments
        errors.write_text(f"stage {stage.name}: bad arguments {stage.args} (exit {err})\n")
        return {"status": "failed", "error": f"bad arguments for {stage.workflow}"}
    except Exception as err:  # noqa: BLE001 - one stage must not stop the others
        errors.write_text(traceback.format_exc() + f"\n{type(err).__name__}: {err}\n")
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    target = result_file(run_dir, stage)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stage_metrics(stage, metrics), indent=1) + "\n")
    tmp.replace(target)  # the marker that the stage is done appears last
    return {"status": "finished", "seconds": time.time() - t0}


def run_stages(run_dir: Path, stages: list[Stage], log=print) -> dict[str, dict]:
    """Every missing stage of one finished run, in order."""
    results = {}
    if not stages:
        return results
    if not (Path(run_dir) / "model.pt").is_file():
        return {s.name: {"status": "failed", "error": "no model.pt"} for s in stages}
    for stage in missing_stages(run_dir, stages):
        result = run_stage(run_dir, stage)
        results[stage.name] = result
        if result["status"] == "finished":
            log(f"  eval {stage.name}: done in {result['seconds']:.0f}s")
        else:
            log(f"  eval {stage.name}: failed, {result['error']} (see eval/{stage.name}.error.txt)")
    return results
