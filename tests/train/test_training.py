"""End-to-end training through the real CLI: the loss falls, resume is exact,
the run directory holds what the contract says."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import REPO, read_metrics, train_cli

COMMON = ["model=pet", "size=tiny", "logger=none", "trainer.log_every=1", "data.max_atoms=64",
          "trainer.threads=1",
          "optim.lr=1e-2", "schedule.warmup_fraction=0.05"]


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def test_one_process_run_writes_the_contract_and_learns(emt_shards, tmp_path):
    run = tmp_path / "run"
    train_cli(f"data.root={emt_shards}", *COMMON, "forces=direct", "trainer.max_steps=60",
              "trainer.val_every=30", "trainer.checkpoint_every=30", f"run_dir={run}")
    rows = read_metrics(run)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10  # the loss falls
    for key in ("step", "lr", "atoms_per_s", "grad_norm", "data_wait_fraction"):
        assert key in rows[0]
    val_rows = [r for r in rows if "val/forces_mae" in r]
    assert val_rows and all("val/energy_per_atom_mae" in r and "val/stress_mae" in r
                            for r in val_rows)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("num_params", "flops_per_atom", "structures_seen", "atoms_seen", "wall_time_s",
                "steps", "val/energy_per_atom_mae", "val/forces_mae", "val/stress_mae"):
        assert key in summary, key
    assert summary["steps"] == 60 and summary["status"] == "finished"
    assert summary["flops_per_atom"] > 0 and summary["num_params"] < 10_000
    # the command's start-up is timed from the process's start, imports included
    assert 0 < summary["startup_s"]["imports and config"] < 300
    assert (run / "config.yaml").exists() and (run / "model.pt").exists()
    git = json.loads((run / "git.json").read_text())
    assert set(git) == {"commit", "dirty"}
    # evaluate with the exported EMA weights reproduces the final validation metrics
    from train.evaluate import evaluate

    again = evaluate(run, emt_shards, split="val")
    assert again["val/forces_mae"] == pytest.approx(summary["val/forces_mae"], rel=1e-5)


def test_kill_and_resume_is_exact(emt_shards, tmp_path):
    args = [f"data.root={emt_shards}", *COMMON, "forces=conservative", "trainer.max_steps=14",
            "trainer.val_every=0", "trainer.checkpoint_every=4"]
    ref = tmp_path / "ref"
    train_cli(*args, f"run_dir={ref}")
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "train", *args, f"run_dir={run}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill once step 6 is logged
        if (run / "metrics.jsonl").exists() and any(
                r.get("step", 0) >= 6 for r in read_metrics(run)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()
    assert (run / "checkpoints" / "step-00000004" / "meta.json").exists()
    train_cli(*args, f"run_dir={run}")
    assert _losses(run) == _losses(ref)  # bit-exact, every step after the kill
    assert json.loads((run / "summary.json").read_text())["steps"] == 14


def test_sigterm_checkpoints_and_exits_cleanly(emt_shards, tmp_path):
    run = tmp_path / "term"
    args = [f"data.root={emt_shards}", *COMMON, "trainer.max_steps=400", "trainer.val_every=0",
            "trainer.checkpoint_every=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "train", *args, f"run_dir={run}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "re-run the same command to resume" in out
    ckpts = list((run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "meta.json").exists()
    step = json.loads((ckpts[0] / "meta.json").read_text())["step"]
    assert step >= 3


def test_two_processes_train_and_see_each_structure_once_per_epoch(emt_shards, tmp_path):
    run = tmp_path / "ddp"
    train_cli(f"data.root={emt_shards}", *COMMON, "trainer.max_steps=12", "trainer.val_every=6",
              "engine=zero2", "trainer.max_epochs=1", f"run_dir={run}", nproc=2)
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((Path(emt_shards) / "manifest.json").read_text())
    assert summary["world_size"] == 2
    if summary["steps"] < 12:  # the epoch ended first: every structure exactly once
        assert summary["structures_seen"] == manifest["splits"]["train"]["num_structures"]
    assert summary["val/forces_mae"] > 0


def test_a_lone_run_survives_an_inherited_busy_master_port(emt_shards, tmp_path):
    """A parent that holds a process group leaks MASTER_PORT to its children; a
    one-process run must not die on EADDRINUSE because of it."""
    import socket

    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = train_cli(f"data.root={emt_shards}", *COMMON, "trainer.max_steps=2",
                         "trainer.val_every=0", f"run_dir={tmp_path / 'run'}",
                         env={"MASTER_PORT": str(port), "MASTER_ADDR": "127.0.0.1"})
    assert f"MASTER_PORT={port} is in use" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
