"""The single-node SLURM cluster, driven through submitit as the sweep will.

These tests run in the default suite against a real slurmctld/slurmd started
by slurm/local_cluster.sh. Where SLURM is not running and cannot be started
(not root, no apt-get) they skip and say why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from slurm.cluster import ClusterConfig, load_preset, make_executor
from slurm.slurmctl import job_state, release_requeued

# Jobs unpickle these functions on the SLURM side, where `tests` is not an
# importable package: ship this module's code inside the pickles instead.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def node(local_slurm) -> str:
    return local_slurm


@pytest.fixture
def cluster() -> ClusterConfig:
    cfg = load_preset("local-slurm")
    # Small enough that two jobs fit on a 2-core CI machine side by side.
    cfg.mem_gb = 1
    # Keep time_limit_min above 10: submitit counts any signal that arrives
    # within (limit - 10 min) of the start as a time-out, never a preemption.
    assert cfg.time_limit_min > 10
    return cfg


def accounting_enabled() -> bool:
    """sacct works (LOCAL_SLURM_ACCOUNTING=slurmdbd, the default)."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    return "accounting_storage/none" not in out.stdout


def wait_until(predicate, what: str, timeout_s: float = JOB_TIMEOUT_S, poll_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def result_within(job: submitit.Job, timeout_s: float = JOB_TIMEOUT_S, all_tasks: bool = False):
    """job.result() (or .results()) with a deadline, and the logs on failure.

    A requeued job waits pending for SLURM's hold (AuthInfo cred_expire) before
    it may start again; this lets it start at once, as an operator could.
    """

    def finished() -> bool:
        if job.done():
            return True
        if job_state(job.job_id) == "PENDING":
            release_requeued(job.job_id)
        return False

    try:
        wait_until(finished, f"job {job.job_id} to finish", timeout_s)
    except AssertionError as error:
        logs = f"stdout:\n{job.stdout()}\nstderr:\n{job.stderr()}"
        raise AssertionError(f"{error}; squeue state {job_state(job.job_id)}\n{logs}") from None
    return job.results() if all_tasks else job.result()


# ---------------------------------------------------------------- job bodies


def whoami(x: int) -> dict:
    return {
        "square": x * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
    }


def rank_and_world() -> tuple[int, int]:
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks


def square_or_fail(x: int) -> int:
    if x == 2:
        raise ValueError(f"bad input {x}")
    return x * x


class CountWithCheckpoint(submitit.helpers.Checkpointable):
    """Counts to ``total`` slowly, keeping its progress in a file.

    Every start resumes from the file, so it survives both kinds of requeue:
    the signalled one (submitit calls ``checkpoint`` and requeues) and the one
    that restarts the job from the start without warning.
    """

    def __call__(self, workdir: str, total: int, step_s: float = 0.3) -> dict:
        work = Path(workdir)
        progress = work / "progress.txt"
        with (work / "starts.txt").open("a") as starts:
            starts.write(f"{os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
        done = int(progress.read_text()) if progress.exists() else 0
        resumed_from = done
        while done < total:
            time.sleep(step_s)
            done += 1
            tmp = progress.with_suffix(".tmp")
            tmp.write_text(str(done))
            tmp.replace(progress)  # atomic: a kill never leaves half a number
        return {"count": done, "resumed_from": resumed_from}


def progress_of(workdir: Path) -> int:
    path = workdir / "progress.txt"
    return int(path.read_text()) if path.exists() else 0


def starts_of(workdir: Path) -> list[str]:
    path = workdir / "starts.txt"
    return path.read_text().split() if path.exists() else []


# ---------------------------------------------------------------- tests


def test_single_job_returns_result(node: str, cluster: ClusterConfig, tmp_path: Path) -> None:
    executor = make_executor(cluster, tmp_path / "submitit" / "%j", job_name="test-single")
    job = executor.submit(whoami, 7)
    out = result_within(job)
    assert out == {"square": 49, "job_id": job.job_id, "partition": "debug"}
    if accounting_enabled():
        # sacct, which submitit uses to see job states, knows the job.
        assert wait_until(lambda: job.state == "COMPLETED", "sacct to report COMPLETED", 30)


def test_job_array_with_one_failure(node: str, cluster: ClusterConfig, tmp_path: Path) -> None:
    executor = make_executor(cluster, tmp_path / "submitit" / "%j", job_name="test-array")
    with executor.batch():
        jobs = [executor.submit(square_or_fail, x) for x in range(4)]
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, f"expected one SLURM array, got {[j.job_id for j in jobs]}"
    for job in jobs:
        wait_until(job.done, f"array task {job.job_id}")
    assert [jobs[x].result() for x in (0, 1, 3)] == [0, 1, 9]
    # The failed task fails alone, with the error it raised.
    with pytest.raises(submitit.core.utils.FailedJobError, match="bad input 2"):
        jobs[2].result()
    if accounting_enabled():
        assert wait_until(lambda: jobs[2].state == "FAILED", "sacct to report FAILED", 30)


def test_two_task_job_sees_ranks(node: str, cluster: ClusterConfig, tmp_path: Path) -> None:
    """One process per task via srun, as multi-GPU jobs use (rank/world from SLURM)."""
    cluster.tasks_per_node = 2
    executor = make_executor(cluster, tmp_path / "submitit" / "%j", job_name="test-ranks")
    job = executor.submit(rank_and_world)
    assert sorted(result_within(job, all_tasks=True)) == [(0, 2), (1, 2)]


def test_signalled_preemption_checkpoints_requeues_and_resumes(
    node: str, cluster: ClusterConfig, tmp_path: Path
) -> None:
    """submitit's preemption path: USR2 -> checkpoint() -> scontrol requeue -> resume."""
    executor = make_executor(cluster, tmp_path / "submitit" / "%j", job_name="test-preempt")
    job = executor.submit(CountWithCheckpoint(), str(tmp_path), 20)
    wait_until(lambda: progress_of(tmp_path) >= 3, "the job to make progress")
    job._interrupt(timeout=False)  # SIGTERM then USR2, as SLURM does on preemption
    out = result_within(job)
    assert out["count"] == 20
    assert 3 <= out["resumed_from"] < out["count"], "not resumed from the point of interruption"
    assert starts_of(tmp_path) == ["0", "1"]  # SLURM_RESTART_COUNT of each start
    assert "this job is preempted" in job.stderr()


def test_requeue_without_signal_resumes_from_checkpoint_file(
    node: str, cluster: ClusterConfig, tmp_path: Path
) -> None:
    """`scontrol requeue` kills and restarts the job from the start, with no warning.

    The job gets SIGTERM (which submitit ignores) and SIGKILL KillWait seconds
    later, so it needs more work than that to be cut off mid-way.
    """
    executor = make_executor(cluster, tmp_path / "submitit" / "%j", job_name="test-requeue")
    job = executor.submit(CountWithCheckpoint(), str(tmp_path), 40, 0.25)
    wait_until(lambda: progress_of(tmp_path) >= 3, "the job to make progress")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    out = result_within(job)
    assert out["count"] == 40
    # No checkpoint() call: submitit reran the original submission.
    assert "Calling checkpoint method" not in job.stdout()
    assert 3 <= out["resumed_from"] < out["count"], "not resumed from the point of interruption"
    assert starts_of(tmp_path) == ["0", "1"]


def test_presets_parse_and_map_to_sbatch(tmp_path: Path) -> None:
    """Runs without SLURM: every preset loads, and the GPU example reaches sbatch."""
    from submitit.slurm.slurm import _make_sbatch_string

    local = load_preset("local")
    assert local.kind == "local"
    assert load_preset("local-slurm").partition == "debug"
    gpu = load_preset("example-gpu")
    executor = make_executor(gpu, tmp_path, job_name="sweep")
    sbatch = _make_sbatch_string(
        command="python -m x", folder=tmp_path, **executor._executor.parameters
    )
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=my-project",
        "#SBATCH --qos=normal",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=240GB",
        "#SBATCH --constraint=a100",
        "#SBATCH --time=1440",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --mail-type=FAIL",
        "module load cuda/12.4",
    ):
        assert line in sbatch, f"{line!r} missing from\n{sbatch}"


def test_unknown_preset_key_names_the_closest() -> None:
    with pytest.raises(KeyError, match="did you mean 'partition'"):
        ClusterConfig.from_mapping({"kind": "slurm", "partiton": "gpu"})


def test_local_executor_runs_in_process_and_keeps_failures(tmp_path: Path) -> None:
    executor = make_executor(load_preset("local"), tmp_path)
    with executor.batch():
        jobs = [executor.submit(square_or_fail, x) for x in range(4)]
        assert not any(job.done() for job in jobs)  # an array runs when the batch closes
    assert [jobs[x].result() for x in (0, 1, 3)] == [0, 1, 9]
    assert jobs[2].state == "FAILED"
    with pytest.raises(ValueError, match="bad input 2"):
        jobs[2].result()
    assert executor.submit(whoami, 3).result()["square"] == 9


def test_partition_preemption_requeues_with_signal_and_resumes(
    node: str, cluster: ClusterConfig, tmp_path: Path
) -> None:
    """A job in the high-priority 'urgent' partition preempts a 'debug' job.

    SLURM sends submitit's USR2 at preemption (preempt_send_user_signal), so the
    job checkpoints and requeues itself, then resumes once the node is free.
    """
    whole_node = int(
        subprocess.run(
            ["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    cluster.cpus_per_task = whole_node
    executor = make_executor(cluster, tmp_path / "submitit" / "%j", job_name="test-victim")
    job = executor.submit(CountWithCheckpoint(), str(tmp_path), 20)
    wait_until(lambda: progress_of(tmp_path) >= 3, "the job to make progress")
    urgent = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "urgent",
            "-c",
            str(whole_node),
            "--mem=100M",
            "-o",
            str(tmp_path / "urgent.out"),
            "--wrap",
            "sleep 2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = result_within(job)
    assert out["count"] == 20
    assert 3 <= out["resumed_from"] < out["count"], "not resumed from the point of interruption"
    assert "this job is preempted" in job.stderr()
    assert job_state(urgent) in ("COMPLETED", "UNKNOWN")


@pytest.mark.slow
def test_time_limit_signal_requeues_and_resumes(
    node: str, cluster: ClusterConfig, tmp_path: Path
) -> None:
    """USR2 arrives before the time limit; the job checkpoints, requeues, resumes.

    SLURM checks warning signals every 30 s and may send them up to a minute
    early, so when the signal comes varies; 60 s of work cannot fit in one
    1-minute slot, so at least one requeue is certain.
    """
    cluster.time_limit_min = 1
    cluster.signal_delay_s = 10
    executor = make_executor(cluster, tmp_path / "submitit" / "%j", job_name="test-timeout")
    job = executor.submit(CountWithCheckpoint(), str(tmp_path), 240, 0.25)  # 60 s of work
    out = result_within(job, 240)
    assert out["count"] == 240
    assert 0 < out["resumed_from"] < out["count"], "not resumed from the point of interruption"
    # Any signal within (limit - 10 min) of the start counts as a time-out in submitit.
    assert "this job is timed-out" in job.stderr()
    assert len(starts_of(tmp_path)) >= 2
