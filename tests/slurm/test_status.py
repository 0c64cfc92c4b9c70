"""slurm.status tells running, queued, stopped, failed and finished apart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import slurm.slurmctl as slurmctl
from slurm.status import format_status, main, study_status

NOW = 1_800_000_000.0


def _run(study: Path, name: str, *, row_age_s: float | None = None, summary: bool = False,
         error: str | None = None) -> Path:
    run = study / "runs" / name
    run.mkdir(parents=True)
    if row_age_s is not None:
        t = NOW - row_age_s
        rows = [{"step": 10, "train/loss": 1.0, "time": t - 5},
                {"step": 10, "val/forces_mae": 0.125, "val/energy_per_atom_mae": 0.0125, "time": t}]
        path = run / "metrics.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.utime(path, (t, t))
    if summary:
        (run / "summary.json").write_text(json.dumps(
            {"status": "finished", "steps": 20, "val/forces_mae": 0.1,
             "val/energy_per_atom_mae": 0.01}))
    if error:
        (run / "error.txt").write_text(f"Traceback...\n{error}\n")
    return run


@pytest.fixture
def study(tmp_path) -> Path:
    names = ["done", "broken", "training", "halted", "waiting", "on-slurm", "fresh"]
    (tmp_path / "study.json").write_text(json.dumps({"runs": {n: {} for n in names}}))
    _run(tmp_path, "done", row_age_s=30, summary=True)
    _run(tmp_path, "broken", row_age_s=30, error="ValueError: bad knob")
    _run(tmp_path, "training", row_age_s=30)  # in-process sweep: no SLURM job
    _run(tmp_path, "halted", row_age_s=3 * 3600)
    _run(tmp_path, "waiting", row_age_s=3 * 3600)  # requeued, waiting in the queue
    _run(tmp_path, "on-slurm", row_age_s=3 * 3600)  # a slow step, but SLURM runs it
    (tmp_path / "runs" / "fresh").mkdir()
    (tmp_path / "jobs.json").write_text(json.dumps({"waiting": "11", "on-slurm": "12"}))
    return tmp_path


def test_states(study, monkeypatch):
    monkeypatch.setattr(slurmctl, "job_state", {"11": "PENDING", "12": "RUNNING"}.__getitem__)
    rows = {r["name"]: r for r in study_status(study, now=NOW)}
    assert {n: r["state"] for n, r in rows.items()} == {
        "done": "finished", "broken": "failed", "training": "running", "halted": "stopped",
        "waiting": "queued", "on-slurm": "running", "fresh": "new"}
    assert rows["broken"]["detail"] == "ValueError: bad knob"
    assert rows["training"]["detail"] == "last log 30 s ago"
    assert rows["halted"]["detail"] == "last log 3.0 h ago; re-run the sweep to resume"
    assert rows["waiting"]["detail"].startswith("job 11 pending")
    assert rows["training"]["val/forces_mae"] == 0.125


def test_window_and_missing_squeue(study, monkeypatch):
    def no_squeue(job_id):
        raise FileNotFoundError("squeue")

    monkeypatch.setattr(slurmctl, "job_state", no_squeue)
    rows = {r["name"]: r for r in study_status(study, running_within_s=10, now=NOW)}
    assert rows["training"]["state"] == "stopped"  # 30 s quiet is too long for a 10 s window
    assert rows["waiting"]["state"] == "stopped" and "job 11 unknown" in rows["waiting"]["detail"]


def test_a_checkpoint_being_written_counts_as_life(study, monkeypatch):
    monkeypatch.setattr(slurmctl, "job_state", lambda job: "UNKNOWN")
    step = study / "runs" / "halted" / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    os.utime(step, (NOW - 5, NOW - 5))
    rows = {r["name"]: r for r in study_status(study, now=NOW)}
    assert rows["halted"]["state"] == "running"


def test_table_has_units(study, monkeypatch, capsys):
    monkeypatch.setattr(slurmctl, "job_state", lambda job: "UNKNOWN")
    text = format_status(study_status(study, now=NOW))
    header = text.splitlines()[0]
    assert "val F MAE (eV/A)" in header and "val E MAE (eV/atom)" in header
    assert text.splitlines()[-1] == "1 failed, 1 finished, 1 new, 1 running, 3 stopped"
    # and the command itself, against the real clock (the fixture rows are years old)
    (study / "runs" / "training" / "metrics.jsonl").write_text(json.dumps(
        {"step": 3, "time": time.time()}) + "\n")
    assert main([str(study)]) == 0
    out = capsys.readouterr().out
    assert "training" in out and "running" in out.split("training", 1)[1].splitlines()[0]
