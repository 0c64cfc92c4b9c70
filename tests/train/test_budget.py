"""Budgets compose: the first reached ends the run, the schedule follows it,
a wall-clock budget checkpoints and stops, the best weights are kept."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import read_metrics
from train.budget import parse_seconds, resolve
from train.config import ConfigError, compose, to_object
from train.run import run

BASE = ["model=pet", "size=tiny", "data.max_atoms=64", "engine=torch", "trainer.threads=1",
        "logger=none"]


def _cfg(root, *extra):
    return to_object(compose([f"data.root={root}", *BASE, *extra]))


def test_epochs_alone_run_an_epoch_with_the_schedule_sized_to_it(tmp_path):
    b = resolve(_cfg(tmp_path, "trainer.max_epochs=1"), num_structures=4735, num_atoms=70000)
    assert b.max_steps > 10**9 and 1000 < b.schedule_steps < 3000
    assert "max_epochs=1" in b.reason and f"over {b.schedule_steps} steps" in b.reason
    both = resolve(_cfg(tmp_path, "trainer.max_epochs=1", "trainer.max_steps=50"), 4735, 70000)
    assert both.max_steps == 50 and both.schedule_steps == 50  # the step budget ends it first
    none = resolve(_cfg(tmp_path), 100, 1000)
    assert none.max_steps == 100 == none.schedule_steps
    fixed = resolve(_cfg(tmp_path, "trainer.max_steps=50", "schedule.total_steps=500"), 10, 100)
    assert fixed.schedule_steps == 500 and "schedule.total_steps" in fixed.reason


def test_time_budget_parses():
    assert parse_seconds("01:00:00") == 3600 and parse_seconds("1-00:00:10") == 86410
    assert parse_seconds("90") == 90 and parse_seconds(None) is None
    with pytest.raises(ConfigError, match="max_time"):
        parse_seconds("an hour")


def test_one_epoch_ends_after_the_split(emt_shards, tmp_path):
    summary = run(_cfg(emt_shards, "trainer.max_epochs=1", "trainer.val_every=0",
                       f"run_dir={tmp_path / 'ep'}"))
    assert summary["epochs"] == 1
    assert summary["structures_seen"] == summary["data"]["num_train_structures"]
    assert summary["budget_resolved"]["schedule_steps"] >= summary["steps"] * 0.5


def test_max_time_checkpoints_and_stops(emt_shards, tmp_path):
    run_dir = tmp_path / "timed"
    out = run(_cfg(emt_shards, "trainer.max_steps=100000", "trainer.max_time=2",
                   "trainer.val_every=0", f"run_dir={run_dir}"))
    assert out["status"] == "timed-out"
    assert list((run_dir / "checkpoints").glob("step-*"))
    assert not (run_dir / "summary.json").exists()


def test_best_weights_and_early_stopping(emt_shards, tmp_path):
    run_dir = tmp_path / "best"
    summary = run(_cfg(emt_shards, "trainer.max_steps=60", "trainer.val_every=2",
                       "trainer.early_stopping.patience=4", "optim.lr=0.5",
                       f"run_dir={run_dir}"))
    assert (run_dir / "model_best.pt").exists()
    best = summary["best"]
    assert best["best_metric"] == "val/forces_mae" and best["best_step"] <= summary["steps"]
    vals = [r["val/forces_mae"] for r in read_metrics(run_dir) if "val/forces_mae" in r]
    assert best["best_value"] == pytest.approx(min(vals[:-1]))  # the last row is the final eval
    events = [r for r in read_metrics(run_dir) if r.get("event") == "early stop"]
    if summary["steps"] < 60:
        assert events and summary["steps"] - best["best_step"] >= 4
    json.dumps(summary)
