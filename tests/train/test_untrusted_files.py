"""Model files and checkpoints are loaded without running code from them: a
crafted pickle is refused with a clear error and its command never runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.conftest import REPO, train_cli
from train.checkpoint import CheckpointError
from train.config import ConfigError, compose, to_object
from train.run import run
from train.serialization import UnsafeFileError, safe_load

BASE = ["model=pet", "size=tiny", "data.max_atoms=64", "trainer.val_every=0",
        "trainer.threads=1", "logger=none"]


class _Payload:
    """Unpickling this runs `touch MARKER` (what an attacker would ship)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def craft(path: Path, marker: Path, **extra) -> Path:
    torch.save({"format": "mlip-scaling-model", "version": 1, "evil": _Payload(marker),
                **extra}, path)
    return path


def test_the_crafted_file_would_run_code_if_loaded_unsafely(tmp_path):
    """The test's attack is real: plain unpickling runs the command."""
    marker = tmp_path / "ran"
    evil = craft(tmp_path / "evil.pt", marker)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_safe_load_refuses_code_and_names_the_file(tmp_path):
    marker = tmp_path / "ran"
    evil = craft(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeFileError, match=r"evil.pt: refused to load this model file.*posix"):
        safe_load(evil, "model file")
    assert not marker.exists()


def test_analysis_commands_refuse_a_crafted_model_file(tmp_path):
    marker = tmp_path / "ran"
    evil = craft(tmp_path / "evil.pt", marker)
    for workflow in ("symmetry", "speed"):
        args = ["--model", str(evil), "--out", str(tmp_path / workflow)]
        if workflow == "symmetry":
            args += ["--structures", "builtin:cu-fcc"]
        else:
            args += ["--sizes", "8"]
        proc = subprocess.run([sys.executable, "-m", "analysis", workflow, *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        assert "refused to load" in proc.stdout + proc.stderr, proc.stderr[-2000:]
        assert not marker.exists(), workflow


def test_training_refuses_crafted_init_weights_and_checkpoints(emt_shards, tmp_path):
    marker = tmp_path / "ran"
    evil = craft(tmp_path / "evil.pt", marker)
    cfg = to_object(compose([f"data.root={emt_shards}", *BASE, "engine=torch",
                             "trainer.max_steps=2", f"trainer.init_from={evil}",
                             f"run_dir={tmp_path / 'init'}"]))
    with pytest.raises(UnsafeFileError):
        run(cfg)
    assert not marker.exists()

    # a real run, then its trainer-state file and DeepSpeed's model states replaced
    good = tmp_path / "good"
    train_cli(f"data.root={emt_shards}", *BASE, "trainer.max_steps=2",
              "trainer.checkpoint_every=2", f"run_dir={good}")
    step = sorted((good / "checkpoints").glob("step-*"))[-1]
    for victim in ("trainer_rank0.pt", f"{step.name}/mp_rank_00_model_states.pt"):
        target = good / "checkpoints" / step.name / victim
        if not target.exists():  # DeepSpeed keeps its files in a folder named by tag
            target = next((good / "checkpoints" / step.name).rglob(Path(victim).name))
        backup = target.read_bytes()
        craft(target, marker)
        cfg = to_object(compose([f"data.root={emt_shards}", *BASE, "trainer.max_steps=4",
                                 f"run_dir={good}"]))
        with pytest.raises(CheckpointError, match=r"refused to load"):
            run(cfg)
        assert not marker.exists(), victim
        target.write_bytes(backup)


def test_weights_of_a_run_still_start_another(emt_shards, tmp_path):
    """The safe loader reads what the project writes: init_from a finished run."""
    first = tmp_path / "first"
    train_cli(f"data.root={emt_shards}", *BASE, "engine=torch", "trainer.max_steps=2",
              f"run_dir={first}")
    for source in (first, first / "model.pt"):
        cfg = to_object(compose([f"data.root={emt_shards}", *BASE, "engine=torch",
                                 "trainer.max_steps=1", f"trainer.init_from={source}",
                                 f"run_dir={tmp_path / 'second'}"]))
        assert run(cfg)["status"] == "finished"
        shutil.rmtree(tmp_path / "second")
    with pytest.raises(ConfigError):
        cfg = to_object(compose([f"data.root={emt_shards}", *BASE, "model=mace",
                                 "trainer.max_steps=1", f"trainer.init_from={first}",
                                 f"run_dir={tmp_path / 'third'}"]))
        run(cfg)
