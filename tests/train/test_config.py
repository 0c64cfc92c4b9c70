"""Config composition: typed, misspellings named, impossible combinations refused."""

from __future__ import annotations

import math

import pytest

from train.config import ConfigError, ScheduleConfig, check, compose, to_object
from train.optim import lr_factor


def test_the_documented_overrides_compose():
    cfg = to_object(compose(["data.root=/x", "model=mace", "size=xs", "trainer.max_steps=7",
                             "trainer.checkpoint_every=3", "schedule.total_steps=100",
                             "run_dir=/tmp/r", "seed=4", "logger=none"]))
    assert (cfg.model.family, cfg.model.size, cfg.model.forces) == ("mace", "xs", "conservative")
    assert cfg.trainer.max_steps == 7 and cfg.schedule.total_steps == 100 and cfg.seed == 4
    assert cfg.logger.kind == "none" and cfg.run_dir == "/tmp/r"
    cfg = to_object(compose(["data.root=/x", "forces=both", "logger=wandb-offline"]))
    assert cfg.model.forces == "both" and cfg.loss.direct_forces.weight > 0
    assert cfg.logger.mode == "offline"


def test_misspelled_key_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'trainer.max_steps'"):
        compose(["trainer.max_stepz=5"])
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        compose(["modle=pet"])
    with pytest.raises(ConfigError, match="size/huge"):
        compose(["size=huge"])


def test_impossible_combinations_fail_before_work():
    cfg = to_object(compose(["data.root=/x", "forces=direct", "loss.direct_stress.weight=1"]))
    with pytest.raises(ConfigError, match="direct_stress.*forces=both"):
        check(cfg)
    with pytest.raises(ConfigError, match="data.root is not set"):
        check(to_object(compose([])))
    with pytest.raises(ConfigError, match="model.forces='sideways'"):
        check(to_object(compose(["data.root=/x", "model.forces=sideways"])))


def test_schedules_are_decoupled_from_the_budget():
    cos = lr_factor(ScheduleConfig(kind="cosine", warmup_fraction=0.1, total_steps=100), 30)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert cos(29) > 0.5  # a 30-step budget stops early on the 100-step curve
    short = lr_factor(ScheduleConfig(kind="cosine", warmup_fraction=0.1), 30)
    assert short(29) < 0.01  # without total_steps the curve ends with the budget
    wsd = lr_factor(ScheduleConfig(kind="wsd", warmup_fraction=0.0, decay_fraction=0.2,
                                   total_steps=100), 100)
    assert wsd(50) == 1.0 and wsd(79) == 1.0 and wsd(90) == pytest.approx(0.5)
    assert wsd(100) == pytest.approx(0.0)


def test_misspelt_knob_fails_at_config_time_with_the_closest_name(tmp_path):
    cfg = to_object(compose([f"data.root={tmp_path}", "model.knobs.d_pet=64",
                             f"run_dir={tmp_path / 'run'}"]))
    with pytest.raises(ConfigError, match=r"model.knobs.d_pet'.*did you mean 'd_edge'"):
        check(cfg)
    # the check runs before anything is written: no run directory appears
    from train.run import run

    with pytest.raises(ConfigError):
        run(cfg)
    assert not (tmp_path / "run").exists()
    check(to_object(compose([f"data.root={tmp_path}", "model.knobs.d_edge=16"])))


def test_every_size_preset_has_a_size_config_and_back():
    """`size=NAME` is a Hydra choice: a preset without configs/size/NAME.yaml
    cannot be chosen from the command line or a study (it failed a study once)."""
    from pathlib import Path

    from train.models.presets import MACE_PRESETS, PET_PRESETS

    configs = {p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "size").glob(
        "*.yaml")}
    assert configs == set(PET_PRESETS) | set(MACE_PRESETS)
