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
import time
from pathlib import Path

import submitit

from slurm.task import train_and_evaluate

# Time kept back from the job's end for the last checkpoint and the requeue.
END_MARGIN_S = 180


def time_budget() -> list[str]:
    """``trainer.max_time`` from the job's end time (SLURM_JOB_END_TIME, unix
    seconds, set by SLURM 23.02 and later); nothing where SLURM does not say."""
    end = os.environ.get("SLURM_JOB_END_TIME")
    if not end or not end.isdigit():
        return []
    left = int(end) - int(time.time()) - END_MARGIN_S
    return [f"trainer.max_time={max(60, left)}"]


INHERITED_LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                           "MASTER_ADDR", "MASTER_PORT")


class TrainJob(submitit.helpers.Checkpointable):
    """Picklable callable that submitit runs on the allocated node(s)."""

    def __call__(
        self,
        overrides: list[str],
        run_dir: str,
        stages: list | None = None,
        branches: list[dict] | None = None,
    ) -> dict:
        env = submitit.JobEnvironment()
        # SLURM copies the submitting shell's environment into the job; a
        # launcher's variables from there (an earlier in-process run, a torchrun
        # shell) describe another process group, and submitit refuses to
        # overwrite them. The job's own group comes from SLURM alone.
        for key in INHERITED_LAUNCHER_KEYS:
            os.environ.pop(key, None)
        if env.num_tasks > 1:
            # one process per GPU/task: RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ.setdefault("WANDB_MODE", "offline")
        stop = ["trainer.stop_signals=[SIGUSR1,SIGUSR2]", *time_budget()]
        branches = [{**b, "overrides": [*b["overrides"], *stop]} for b in branches or []]
        # evaluation stages run once, on the first task, after training
        result = train_and_evaluate(
            [*overrides, *stop],
            Path(run_dir),
            stages,
            evaluate=env.global_rank == 0,
            branches=branches,
        )
        if result.get("status") in ("preempted", "timed-out"):
            import signal

            # the checkpoint is on disk: let submitit requeue us (checkpoint() below)
            handler = signal.getsignal(signal.SIGUSR2)
            if callable(handler):
                handler(signal.SIGUSR2, None)
        return result

    def checkpoint(
        self,
        overrides: list[str],
        run_dir: str,
        stages: list | None = None,
        branches: list[dict] | None = None,
    ) -> submitit.helpers.DelayedSubmission:
        # the training loop already saved; the requeued job resumes from it
        return submitit.helpers.DelayedSubmission(TrainJob(), overrides, run_dir, stages, branches)
