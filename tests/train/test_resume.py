"""Resume and run directories: exact with loader workers, one run per directory,
checkpoints that cannot be used stop the start (never a silent fresh start),
empty inputs are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipelines.convert import write_dataset
from tests.data_pipelines.helpers import emt_structures
from tests.train.conftest import read_metrics
from train import trainer as trainer_module
from train.checkpoint import CheckpointError
from train.config import ConfigError, compose, to_object
from train.run import run

BASE = ["model=pet", "size=tiny", "data.max_atoms=64", "trainer.val_every=0", "engine=torch",
        "trainer.threads=1", "logger=none", "trainer.log_every=1", "optim.lr=1e-2"]


class Killed(Exception):
    """Stands in for SIGKILL in the middle of a step: nothing after it runs."""


def _train(emt_shards, run_dir, *extra, kill_at: int | None = None, monkeypatch=None):
    cfg = to_object(compose([f"data.root={emt_shards}", *BASE, f"run_dir={run_dir}", *extra]))
    if kill_at is None:
        return run(cfg)
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def dies(batch, out, loss_cfg):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed
        return real(batch, out, loss_cfg)

    monkeypatch.setattr(trainer_module, "compute_loss", dies)
    with pytest.raises(Killed):
        run(cfg)
    monkeypatch.setattr(trainer_module, "compute_loss", real)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_resume_with_loader_workers_is_bit_exact(emt_shards, tmp_path, monkeypatch, workers):
    common = ["trainer.max_steps=12", "schedule.total_steps=12", f"data.num_workers={workers}",
              "data.buffer_size=16"]
    ref = tmp_path / "ref"
    _train(emt_shards, ref, *common)
    for stop in (5, 6):  # an odd and an even checkpoint step
        killed = tmp_path / f"stop{stop}"
        # checkpoint at `stop`, killed two steps later (its checkpoint is the latest)
        _train(emt_shards, killed, *common, f"trainer.checkpoint_every={stop}",
               kill_at=stop + 2, monkeypatch=monkeypatch)
        assert max(_losses(killed)) == stop + 1
        _train(emt_shards, killed, *common, f"trainer.checkpoint_every={stop}")
        assert _losses(killed) == _losses(ref), f"{workers} workers, resumed at step {stop}"


def test_a_run_directory_is_one_run(emt_shards, tmp_path):
    run_dir = tmp_path / "run"
    _train(emt_shards, run_dir, "trainer.max_steps=3", "trainer.checkpoint_every=2")
    before = _snapshot(run_dir)
    with pytest.raises(CheckpointError, match=r"model.size: 'tiny' -> 'mini'.*Nothing was changed"):
        _train(emt_shards, run_dir, "size=mini", "trainer.max_steps=3")
    with pytest.raises(CheckpointError, match=r"seed: 0 -> 1"):
        _train(emt_shards, run_dir, "seed=1", "trainer.max_steps=3")
    assert _snapshot(run_dir) == before  # nothing touched, the old checkpoints kept
    # safe changes resume: a longer budget, other logging and validation cadence
    summary = _train(emt_shards, run_dir, "trainer.max_steps=5", "trainer.log_every=2",
                     "trainer.val_every=2")
    assert summary["steps"] == 5 and sorted(_losses(run_dir))[:3] == [1, 2, 3]
    with pytest.raises(ConfigError, match=r"trainer.resume=never: .* already holds a run"):
        _train(emt_shards, run_dir, "trainer.resume=never")
    with pytest.raises(ConfigError, match=r"trainer.resume=require: .* no checkpoint"):
        _train(emt_shards, tmp_path / "fresh", "trainer.resume=require")
    assert not (tmp_path / "fresh").exists()


def test_an_unusable_checkpoint_stops_the_start_and_says_how_to_start_over(emt_shards, tmp_path):
    run_dir = tmp_path / "run"
    _train(emt_shards, run_dir, "trainer.max_steps=4", "trainer.checkpoint_every=2")
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    latest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    meta = json.loads((latest / "meta.json").read_text())
    (latest / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match=rf"{latest.name} has format version 99.*start "
                       r"this run over on purpose"):
        _train(emt_shards, run_dir, "trainer.max_steps=6")
    (latest / "meta.json").write_text(json.dumps(meta))
    (latest / "trainer_rank0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"cannot resume from checkpoint .*{latest.name}"):
        _train(emt_shards, run_dir, "trainer.max_steps=6")
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics  # history kept


def test_an_empty_training_split_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    write_dataset(emt_structures(6, seed=1, molecules=False), data,
                  splits={"train": 0.0, "val": 1.0}, allow_empty=True)
    with pytest.raises(ConfigError, match=r"split 'train' holds no structures"):
        _train(str(data), tmp_path / "run", "trainer.max_steps=2")
    assert not (tmp_path / "run").exists()  # validated before anything is written


def test_training_refuses_a_shard_with_one_changed_byte(emt_shards, tmp_path):
    import shutil

    from data_pipelines.schema import DataError

    data = tmp_path / "data"
    shutil.copytree(emt_shards, data)
    shard = sorted((data / "train").glob("shard-*.tar"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size, one bit flipped inside a structure
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{shard.name}.*sha256"):
        _train(str(data), tmp_path / "run", "trainer.max_steps=40")
