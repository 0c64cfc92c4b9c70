"""An in-process sweep stops when asked: SIGTERM or SIGINT checkpoints the run
in progress, no further run starts, and the next sweep command resumes; study
names cannot escape their folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.slurm.test_sweep import REPO, SMALL, sweep


def _rows(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_whole_sweep_after_a_checkpoint(tmp_path, signum):
    study = tmp_path / "study"
    grid = ["study=smoke", "cluster=local", f"study_dir={study}", *SMALL,
            "study.axes.model=[pet-direct]", "study.axes.data_fraction=[0.5,1.0]"]
    args = [*grid, "study.budget.steps=400", "trainer.checkpoint_every=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "slurm.sweep", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = study / "runs" / "pet-direct_f0.5"
    deadline = time.time() + 300
    while (time.time() < deadline and proc.poll() is None
           and len(_rows(first / "metrics.jsonl")) < 3):
        time.sleep(0.1)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, out
    assert f"stopped by {signal.Signals(signum).name}" in out
    assert "re-run the same command to resume" in out
    assert list((first / "checkpoints").glob("step-*")), "the run in progress checkpointed"
    assert not (first / "summary.json").exists()
    assert not (study / "runs" / "pet-direct_f1" / "metrics.jsonl").exists()  # never started
    # the next sweep command resumes the stopped run and runs the rest
    again = sweep(*grid, "study.budget.steps=8", check=True)
    assert f"resumed {first}" in again.stdout
    for name in ("pet-direct_f0.5", "pet-direct_f1"):
        assert json.loads((study / "runs" / name / "summary.json").read_text())["steps"] >= 8


def test_study_names_stay_inside_runs(tmp_path):
    out = sweep("study=smoke", "cluster=local", "study.name=../../escaped-study", *SMALL)
    assert out.returncode == 2
    assert "study.name='../../escaped-study' must be a plain folder name" in out.stderr
    assert not (REPO.parent / "escaped-study").exists()
    assert not (REPO / "runs" / ".." / ".." / "escaped-study").exists()
