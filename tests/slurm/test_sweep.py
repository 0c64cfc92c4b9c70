"""Sweeps end to end: a local grid (failures isolated, idempotent re-runs, nested
data subsets, status), and a SLURM job array on the local cluster whose job is
preempted, requeued and resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "study.budget.steps=4",
    "study.data.generate.num_structures=60",
    "study.data.generate.shard_size=20",
    "trainer.val_every=2",
    "trainer.checkpoint_every=2",
    "logger=none",
    "trainer.threads=1",
]


def sweep(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "slurm.sweep", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def status_text(study: Path) -> str:
    """What `python -m slurm.status STUDY` prints."""
    return subprocess.run(
        [sys.executable, "-m", "slurm.status", str(study)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_local_sweep_isolates_failures_and_is_idempotent(tmp_path):
    study = tmp_path / "study"
    args = [
        "study=smoke",
        "cluster=local",
        f"study_dir={study}",
        *SMALL,
        "study.axes.model=[pet-direct]",
        "study.axes.data_fraction=[0.5,1.0]",
        "study.axes.size=[tiny,nosuch]",
    ]
    first = sweep(*args)
    assert first.returncode == 1, first.stdout + first.stderr  # two runs failed
    runs = {p.name: p for p in (study / "runs").iterdir()}
    assert sorted(runs) == [
        "pet-direct_f0.5_nosuch",
        "pet-direct_f0.5_tiny",
        "pet-direct_f1_nosuch",
        "pet-direct_f1_tiny",
    ]
    for name in ("pet-direct_f0.5_nosuch", "pet-direct_f1_nosuch"):
        error = (runs[name] / "error.txt").read_text()
        assert "config error" in error and "size/nosuch" in error
        assert not (runs[name] / "metrics.jsonl").exists()  # failed at once
    half = json.loads((runs["pet-direct_f0.5_tiny"] / "summary.json").read_text())
    full = json.loads((runs["pet-direct_f1_tiny"] / "summary.json").read_text())
    assert half["axes"] == {"model": "pet-direct", "data_fraction": 0.5, "size": "tiny"}
    assert half["budget"]["rule"] == "steps" and half["steps"] == 4
    total = full["data"]["num_train_structures"]
    assert half["data"]["num_train_structures"] == round(0.5 * total)

    from data_pipelines.dataset import iter_split
    from data_pipelines.subsets import subset_threshold, subset_u

    root = str(study / "data")
    small = {
        s.source_id
        for s in iter_split(root, "train")
        if subset_u(s.source_id) <= subset_threshold(root, "train", 0.3)["threshold"]
    }
    large = {
        s.source_id
        for s in iter_split(root, "train")
        if subset_u(s.source_id) <= subset_threshold(root, "train", 0.6)["threshold"]
    }
    assert small < large  # nested

    again = sweep(*args)
    assert again.stdout.count("finished, skipped") == 2
    assert "2 to run" in again.stdout  # only the failed ones are tried again

    status = status_text(study)
    assert "2 failed, 2 finished" in status
    assert "Could not find 'size/nosuch'" in status or "size/nosuch" in status



def _release_settled(job_id: str, first_seen: dict) -> None:
    """Lets a requeued job start without SLURM's 30 s hold, but only once it has
    sat pending for a few seconds: started while the old allocation is still
    being torn down, it dies with 'Job credential revoked'."""
    from slurm.slurmctl import release_requeued

    start = first_seen.setdefault(job_id, time.time())
    if time.time() - start > 5:
        release_requeued(job_id)


def _wait_for_summary(run: Path, job_id: str) -> None:
    """Waits until a run (whose job may have been requeued) writes its summary."""
    from slurm.slurmctl import job_state

    seen: dict = {}

    def finished() -> bool:
        if (run / "summary.json").exists():
            return True
        if job_state(job_id) == "PENDING":
            _release_settled(job_id, seen)
        return False

    _wait(finished, "the requeued job to finish")


def _wait(predicate, what, timeout_s=400):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_slurm_sweep_preempted_job_requeues_and_resumes(local_slurm, tmp_path):
    import submitit

    study = tmp_path / "slurm-study"
    proc = sweep(
        "study=smoke",
        "cluster=local-slurm",
        f"study_dir={study}",
        "study.budget.steps=40",
        "study.data.generate.num_structures=60",
        "study.data.generate.shard_size=20",
        "study.axes.model=[pet-direct]",
        "study.axes.data_fraction=[1.0]",
        "trainer.val_every=0",
        "trainer.checkpoint_every=1000",
        "logger=none",
        "trainer.threads=1",
        check=True,
    )
    assert "submitted pet-direct_f1 as job" in proc.stdout
    job_id = json.loads((study / "jobs.json").read_text())["pet-direct_f1"]
    run = study / "runs" / "pet-direct_f1"

    def steps() -> int:
        path = run / "metrics.jsonl"
        if not path.exists():
            return 0
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return max([r.get("step", 0) for r in rows] + [0])

    _wait(lambda: steps() >= 5, "the job to train a few steps")
    job = submitit.SlurmJob(study / "submitit" / "%j", job_id)
    job._interrupt(timeout=False)  # SIGTERM then USR2, as SLURM does on preemption

    _wait_for_summary(run, job_id)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 40
    ckpt_steps = [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*")]
    assert max(ckpt_steps) == 40
    logs = "".join(p.read_text() for p in (study / "submitit").rglob("*_log.out"))
    assert "resumed" in logs and "from step" in logs
    status = status_text(study)
    assert "1 finished" in status


def test_slurm_grid_two_process_job_and_requeue_from_scratch(local_slurm, tmp_path,
                                                             monkeypatch):
    """A 2x2 grid as a job array; a 2-process DeepSpeed run through submitit; a run
    requeued without warning (scontrol requeue) resumes from its last checkpoint.
    The submitting shell holds another process group's launcher variables (as
    after an in-process run): SLURM copies them into the jobs, which must not
    trip over them."""
    from slurm.status import study_status

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29431")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")

    study = tmp_path / "grid"
    common = [
        "study.data.generate.num_structures=60",
        "study.data.generate.shard_size=20",
        "logger=none",
        "trainer.threads=1",
        "trainer.val_every=0",
    ]
    sweep(
        "study=smoke",
        "cluster=local-slurm",
        f"study_dir={study}",
        "study.budget.steps=4",
        "trainer.checkpoint_every=2",
        *common,
        check=True,
    )
    jobs = json.loads((study / "jobs.json").read_text())
    assert len(jobs) == 4

    pending_since: dict = {}

    def all_done(folder: Path) -> bool:
        rows = study_status(folder)
        for r in rows:
            if r["state"] == "queued":
                job = json.loads((folder / "jobs.json").read_text())[r["name"]]
                _release_settled(job, pending_since)
        return all(r["state"] in ("finished", "failed") for r in rows)

    _wait(lambda: all_done(study), "the 2x2 array to finish")
    assert [r["state"] for r in study_status(study)] == ["finished"] * 4

    ddp = tmp_path / "ddp"
    sweep(
        "study=smoke",
        "cluster=local-slurm",
        f"study_dir={ddp}",
        "cluster.tasks_per_node=2",
        "cluster.mem_gb=2",
        "study.budget.steps=4",
        "study.axes.model=[pet-direct]",
        "study.axes.data_fraction=[1.0]",
        "trainer.checkpoint_every=2",
        *common,
        # an evaluation stage runs once, on the first task, inside the job
        "study.evaluate=[{name:sym,workflow:symmetry,settings:{structures:'builtin:cu-fcc',"
        "num_rotations:1,grid_l_max:null,jacobian_atoms:0,md_steps:0,min_atoms:4}}]",
        check=True,
    )
    _wait(lambda: all_done(ddp), "the 2-process job to finish")
    summary = json.loads((ddp / "runs" / "pet-direct_f1" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    sym = ddp / "runs" / "pet-direct_f1" / "eval" / "sym.json"
    _wait(sym.exists, "the evaluation stage of the 2-process job")
    assert json.loads(sym.read_text())["sym/num_structures"] == 1

    again = tmp_path / "requeue"
    sweep(
        "study=smoke",
        "cluster=local-slurm",
        f"study_dir={again}",
        "study.budget.steps=400",
        "study.axes.model=[pet-direct]",
        "study.axes.data_fraction=[1.0]",
        "trainer.checkpoint_every=5",
        *common,
        check=True,
    )
    job_id = json.loads((again / "jobs.json").read_text())["pet-direct_f1"]
    run = again / "runs" / "pet-direct_f1"
    _wait(
        lambda: (
            any(int(p.name[5:]) >= 10 for p in (run / "checkpoints").glob("step-*"))
            if (run / "checkpoints").exists()
            else False
        ),
        "two checkpoints",
    )
    subprocess.run(["scontrol", "requeue", str(job_id)], check=True)

    _wait_for_summary(run, job_id)
    assert json.loads((run / "summary.json").read_text())["steps"] == 400
    logs = "".join(p.read_text() for p in (again / "submitit").rglob("*_log.out"))
    assert "resumed" in logs


def test_local_sweep_runs_evaluation_stages_after_training(tmp_path):
    """Each trained model goes through the study's evaluation stages; their metrics
    land in RUN/eval/<stage>.json where the scaling analysis reads them, a failing
    stage is reported without losing the others, and a re-run only retries it."""
    study = tmp_path / "study"
    stages = (
        "study.evaluate=["
        "{name:relax,workflow:relax,settings:{structures:'builtin:cu-fcc',max_steps:5,"
        "reference_model:'none'}},"
        "{name:sym,workflow:symmetry,settings:{structures:'builtin:cu-fcc',num_rotations:2,"
        "grid_l_max:1,jacobian_atoms:0,md_steps:0,min_atoms:4}},"
        "{name:broken,workflow:phonons,settings:{structures:'builtin:nosuch'}}]"
    )
    args = [
        "study=smoke",
        "cluster=local",
        f"study_dir={study}",
        *SMALL,
        "study.axes.model=[pet-direct]",
        "study.axes.data_fraction=[1.0]",
        stages,
    ]
    first = sweep(*args)
    assert first.returncode == 1, first.stdout + first.stderr  # the broken stage
    assert "eval 2 done, failed: broken" in first.stdout, first.stdout
    run = study / "runs" / "pet-direct_f1"
    relax = json.loads((run / "eval" / "relax.json").read_text())
    assert relax["relax/num_structures"] == 1
    assert (run / "eval" / "relax" / "results.csv").is_file()
    sym = json.loads((run / "eval" / "sym.json").read_text())
    assert sym["sym/rot_error_forces"] > 0  # pet is not equivariant
    assert "builtin:nosuch" in (run / "eval" / "broken.error.txt").read_text()
    assert not (run / "eval" / "broken.json").exists()

    from analysis.scaling.load import load_run_dir

    loaded = load_run_dir(run)
    assert loaded.metrics["relax/num_structures"] == 1
    assert loaded.metrics["sym/rot_error_forces"] == sym["sym/rot_error_forces"]

    status = status_text(study)
    assert "2/3" in status and "eval failed: broken" in status, status

    stamp = (run / "eval" / "relax.json").stat().st_mtime_ns
    again = sweep(*args)
    assert "evaluation stages to run: broken" in again.stdout, again.stdout
    assert (run / "eval" / "relax.json").stat().st_mtime_ns == stamp  # not redone
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4  # not retrained


def test_bad_stage_definitions_fail_before_training():
    from slurm.stages import parse_stages

    metals = {"structures": "builtin:metals"}
    with pytest.raises(ValueError, match="workflow 'relx' is not one of"):
        parse_stages([{"name": "x", "workflow": "relx"}])
    with pytest.raises(ValueError, match="out is set by the stage"):
        parse_stages([{"workflow": "relax", "settings": {**metals, "out": "x"}}])
    with pytest.raises(ValueError, match=r"evaluate\[0\] \(relax\).*'fmx'.*did you mean 'fmax'"):
        parse_stages([{"workflow": "relax", "settings": {**metals, "fmx": 0.1}}])
    with pytest.raises(ValueError, match="'max_steps' = '5': expected int"):
        parse_stages([{"workflow": "relax", "settings": {**metals, "max_steps": "5"}}])
    with pytest.raises(ValueError, match="'structures' must name a file"):
        parse_stages([{"workflow": "phonons"}])
    with pytest.raises(ValueError, match="'args' .* is now 'settings'"):
        parse_stages([{"workflow": "relax", "args": ["--structures", "builtin:metals"]}])
    with pytest.raises(ValueError, match="repeated"):
        parse_stages([{"workflow": "relax", "settings": metals}] * 2)
    assert parse_stages([{"workflow": "speed"}])[0].name == "speed"
    (stage,) = parse_stages(
        [{"workflow": "relax", "settings": {**metals, "rotational_average": 3, "fmax": 0.02}}]
    )
    model, structures, settings = stage.inputs("RUN/model.pt")
    assert (model.spec, model.rotational_average) == ("RUN/model.pt", 3)
    assert structures == "builtin:metals" and settings.fmax == 0.02
