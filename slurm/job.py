"""One run of a study as a submitit job that survives preemption.

On SLURM, submitit sends SIGUSR2 before a time-out or preemption. The training
loop catches it, finishes the step, writes a checkpoint and returns; the job
then hands the signal to submitit's own handler, which calls `checkpoint()`
here (resubmit the same overrides) and requeues the job. The requeued job
starts `python -m train` with the same run directory and resumes from that
checkpoint.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import submitit


def write_error(run_dir: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text(text.rstrip() + "\n")


def train_once(overrides: list[str], run_dir: Path, progress: bool = False) -> dict:
    """Composes and runs one training run in this process; errors go to error.txt."""
    from train.config import ConfigError, compose, to_object
    from train.run import run

    (run_dir / "error.txt").unlink(missing_ok=True)
    try:
        cfg = to_object(compose([*overrides, f"trainer.progress={str(progress).lower()}"]))
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
) -> dict:
    """Trains the run unless it already finished, then runs its missing
    evaluation stages (slurm/stages.py); the result holds both."""
    import json

    from slurm.stages import run_stages
    from slurm.study import run_state

    if run_state(run_dir) == "finished":
        result = json.loads((run_dir / "summary.json").read_text())
    else:
        result = train_once(overrides, run_dir, progress=progress)
    if stages and evaluate and result.get("status") == "finished":
        result["eval"] = run_stages(run_dir, stages)
    return result


class TrainJob(submitit.helpers.Checkpointable):
    """Picklable callable that submitit runs on the allocated node(s)."""

    def __call__(self, overrides: list[str], run_dir: str, stages: list | None = None) -> dict:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # one process per GPU/task: RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ.setdefault("WANDB_MODE", "offline")
        stop = "trainer.stop_signals=[SIGUSR1,SIGUSR2]"
        # evaluation stages run once, on the first task, after training
        result = train_and_evaluate(
            [*overrides, stop], Path(run_dir), stages, evaluate=env.global_rank == 0
        )
        if result.get("status") == "preempted":
            import signal

            # the checkpoint is on disk: let submitit requeue us (checkpoint() below)
            handler = signal.getsignal(signal.SIGUSR2)
            if callable(handler):
                handler(signal.SIGUSR2, None)
        return result

    def checkpoint(
        self, overrides: list[str], run_dir: str, stages: list | None = None
    ) -> submitit.helpers.DelayedSubmission:
        # the training loop already saved; the requeued job resumes from it
        return submitit.helpers.DelayedSubmission(TrainJob(), overrides, run_dir, stages)
