"""Evaluation stages: practical workflows run on each trained model of a study.

A study may list stages under ``study.evaluate``; each names a workflow of
``analysis.workflows`` and its settings: the fields of the workflow's settings
dataclass, the model corrections it takes and, for workflows that take
structures, ``structures`` (a file or ``builtin:NAME``)::

    study:
      evaluate:
        - {name: relax, workflow: relax, settings: {structures: "builtin:metals"}}
        - {name: relax-rot3, workflow: relax,
           settings: {structures: "builtin:metals", rotational_average: 3}}

The settings are checked against the dataclass when the study is loaded, so a
misspelt setting stops the sweep before any training, naming the closest
valid one. After a run finishes training, in the same job (or in-process with
``cluster=local``), every stage whose result is missing calls the workflow's
``run()`` on RUN/model.pt: the workflow writes its files to
``RUN/eval/<name>/`` and its metrics go to ``RUN/eval/<name>.json`` as
``<name>/<metric>`` (the workflow's own prefix replaced by the stage name),
where ``python -m analysis scaling`` reads them, so every downstream metric
gets a scaling curve like the validation errors.

A failing stage writes ``RUN/eval/<name>.error.txt`` and does not stop the
other stages or the study; re-running the sweep retries it.
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipelines.atomic import write_json

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_KEYS = ("name", "workflow", "settings")


def _workflows() -> dict:
    # imported on first use: a study without stages (and slurm.status) needs no
    # phonopy, ASE optimisers or train.corrections
    from analysis.workflows.registry import STAGE_WORKFLOWS

    return STAGE_WORKFLOWS


@dataclass
class Stage:
    """One evaluation stage: ``workflow`` run with ``settings`` on each trained model.

    ``settings`` is kept as the mapping the study gave (checked when the stage
    was made), so a stage stays plain data for study.json and for the job.
    """

    name: str
    workflow: str
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, raw: Any, where: str = "study.evaluate") -> Stage:
        """Validates one entry of ``study.evaluate``, its settings included.

        Raises:
            ValueError: naming the entry and what is wrong with it.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected {{name, workflow, settings}}, got {raw!r}")
        if "args" in raw:
            raise ValueError(
                f"{where}: 'args' (command-line arguments) is now 'settings', a mapping of "
                "the workflow's settings, e.g. settings: {structures: builtin:metals, fmax: 0.02}"
            )
        unknown = sorted(set(raw) - set(_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown} ({', '.join(_KEYS)})")
        workflows = _workflows()
        workflow = str(raw.get("workflow", ""))
        if workflow not in workflows:
            raise ValueError(
                f"{where}: workflow {workflow!r} is not one of {', '.join(sorted(workflows))}"
            )
        name = str(raw.get("name") or workflow)
        if not _NAME.match(name):
            raise ValueError(f"{where}: stage name {name!r} must be a plain file name")
        settings = raw.get("settings") or {}
        if not isinstance(settings, dict):
            raise ValueError(f"{where} ({name}): settings must be a mapping, got {settings!r}")
        stage = cls(name=name, workflow=workflow, settings=dict(settings))
        stage.inputs("model.pt", f"{where} ({name})")  # fails here, before any training
        return stage

    def inputs(self, model: str, where: str | None = None) -> tuple[Any, Any, Any]:
        """The workflow's (ModelOptions, structures, settings) for the model file ``model``.

        Raises:
            ValueError: a setting that is unknown (naming the closest valid one),
                missing or of the wrong type.
        """
        workflow = _workflows()[self.workflow]
        where = where or f"stage {self.name}"
        for reserved in ("model", "out"):
            if reserved in self.settings:
                raise ValueError(f"{where}: {reserved} is set by the stage, drop it")
        return workflow.inputs(self.settings, where, model=model)


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
    try:
        model, structures, settings = stage.inputs(str(run_dir / "model.pt"))
        workflow = _workflows()[stage.workflow]
        result = workflow.run(model, structures, settings, run_dir / "eval" / stage.name)
    except Exception as err:  # noqa: BLE001 - one stage must not stop the others
        errors.write_text(traceback.format_exc() + f"\n{type(err).__name__}: {err}\n")
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    # written whole and last: the marker that the stage is done
    write_json(result_file(run_dir, stage), stage_metrics(stage, result["metrics"]), indent=1)
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
