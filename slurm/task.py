"""One run of a study, as every executor runs it (in-process or a SLURM job):
train unless it already finished, then its missing evaluation stages.

A run that fails leaves RUN/error.txt (its last line sums the error up) and
never stops the study.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from data_pipelines.atomic import write_text


def write_error(run_dir: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "error.txt", text.rstrip() + "\n")


def train_once(overrides: list[str], run_dir: Path, progress: bool = False) -> dict:
    """Composes and runs one training run in this process; errors go to error.txt."""
    from train.config import ConfigError, compose, to_object
    from train.run import run

    (run_dir / "error.txt").unlink(missing_ok=True)
    try:
        # a bar on a terminal only: redirected to a file its carriage returns make
        # one unreadable line, so there (and in SLURM logs) periodic lines
        mode = "auto" if progress else "lines"
        cfg = to_object(compose([*overrides, f"trainer.progress={mode}"]))
        return run(cfg)
    except ConfigError as err:
        first = str(err).splitlines()[0]
        write_error(run_dir, f"{err}\n\nconfig error: {first}")  # the last line sums it up
        return {"status": "failed", "error": f"config error: {str(err).splitlines()[0]}"}
    except Exception as err:  # noqa: BLE001 - a failed run must not stop the study
        write_error(run_dir, traceback.format_exc() + f"\n{type(err).__name__}: {err}")
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def train_and_evaluate(
    overrides: list[str],
    run_dir: Path,
    stages: list | None = None,
    progress: bool = False,
    evaluate: bool = True,
    branches: list[dict] | None = None,
) -> dict:
    """Trains the run unless it already finished, then runs its missing
    evaluation stages (slurm/stages.py); the result holds both.

    Args:
        branches: cooldown branches of a WSD ladder (slurm/ladder.py), each
            ``{"overrides", "run_dir", "stages", "start_step"}``, trained after
            this run from its checkpoint at ``start_step``; their results go
            under ``result["branches"]``. A branch stopped by a signal marks the
            whole result preempted, so the job is requeued. A fine-tune branch
            (slurm.study.FinetuneConfig) has start_step None: it starts from
            the run's weights through its own trainer.init_from.
    """
    from slurm.ladder import seed_branch
    from slurm.stages import run_stages
    from slurm.study import run_state

    if run_state(run_dir) == "finished":
        result = json.loads((run_dir / "summary.json").read_text())
    else:
        result = train_once(overrides, run_dir, progress=progress)
    if stages and evaluate and result.get("status") == "finished":
        result["eval"] = run_stages(run_dir, stages)
    if not branches or result.get("status") != "finished":
        return result
    result["branches"] = {}
    for branch in branches:
        branch_dir = Path(branch["run_dir"])
        # a fine-tune branch (start_step None) starts from trainer.init_from instead
        if run_state(branch_dir) != "finished" and branch.get("start_step") is not None:
            try:
                seed_branch(run_dir, branch_dir, int(branch["start_step"]))
            except FileNotFoundError as err:
                write_error(branch_dir, str(err))
                result["branches"][branch_dir.name] = {"status": "failed", "error": str(err)}
                continue
        done = train_and_evaluate(
            branch["overrides"], branch_dir, branch["stages"], progress, evaluate
        )
        result["branches"][branch_dir.name] = done
        if done.get("status") == "preempted":
            result.update(status="preempted", signal=done.get("signal"))
            break
    return result
