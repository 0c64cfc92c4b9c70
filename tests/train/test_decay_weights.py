"""loss.decay_weights: term weights that replace the loss's own while the
learning rate decays (MACE's second stage, which raises the energy weight late)."""

from __future__ import annotations

import pytest

from tests.train.conftest import read_metrics, train_cli
from train.config import ConfigError, ScheduleConfig, check, compose, to_object
from train.optim import decay_start, lr_factor


def test_decay_start_is_where_the_rate_starts_to_fall():
    wsd = ScheduleConfig(kind="wsd", warmup_steps=2, total_steps=20, decay_fraction=0.25)
    start = decay_start(wsd, 20)
    assert start == 15
    f = lr_factor(wsd, 20)
    assert f(start - 1) == 1.0 and f(start + 1) < 1.0
    cosine = ScheduleConfig(kind="cosine", warmup_fraction=0.0, decay_fraction=0.2)
    assert decay_start(cosine, 100) == 80
    assert decay_start(ScheduleConfig(kind="constant"), 100) is None


@pytest.mark.parametrize("override, match", [
    ("loss.decay_weights.enrgy=10", "not a loss term"),
    ("loss.decay_weights.energy=-1", "must be >= 0"),
])
def test_bad_decay_weights_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        check(to_object(compose(["data.root=x", override])))


def test_a_constant_schedule_has_no_decay_to_weight():
    with pytest.raises(ConfigError, match="schedule=constant"):
        check(to_object(compose(["data.root=x", "schedule=constant",
                                 "loss.decay_weights.energy=10"])))


def test_the_weights_switch_at_the_decay(emt_shards, tmp_path):
    """Logged per step: before the decay the total is e + f + s, from its first
    step on 7 e + f + s (the logged parts are unweighted)."""
    run = tmp_path / "run"
    train_cli(f"data.root={emt_shards}", "model=pet", "size=tiny", "forces=direct",
              "trainer.max_steps=8", "trainer.log_every=1", "trainer.val_every=0",
              "schedule=wsd", "schedule.warmup_steps=1", "schedule.decay_fraction=0.5",
              "loss.energy.weight=1", "loss.forces.weight=1", "loss.stress.weight=1",
              "loss.decay_weights.energy=7", "data.max_atoms=64", "engine=torch",
              "logger=none", f"run_dir={run}")
    rows = [r for r in read_metrics(run) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        # row "step" counts finished steps: step k's batch was optimiser step k - 1
        weight = 7.0 if r["step"] - 1 >= 4 else 1.0
        expected = (weight * r["train/loss_energy"] + r["train/loss_forces"]
                    + r["train/loss_stress"])
        assert r["train/loss"] == pytest.approx(expected, rel=1e-5), r
    assert any(r["train/loss_energy"] > 1e-6 for r in rows[4:])  # the switch is visible
