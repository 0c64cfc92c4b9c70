"""WSD ladders (a cooldown branch equals a straight WSD run, bit for bit) and
tuned studies (every value at each point, or tuned at one point and transferred)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from slurm import ladder, tuning
from tests.slurm.test_sweep import REPO, SMALL, sweep
from tests.train.conftest import read_metrics
from train.checkpoint import list_valid
from train.serialization import safe_load


def test_ladder_plan():
    branches = ladder.plan(100, [0.25, 0.5, 1.0], 0.2)
    assert [(b.branch_step, b.cooldown_steps) for b in branches] == [(25, 5), (50, 10), (100, 20)]
    assert sum(b.cooldown_steps for b in branches) / 100 == pytest.approx(0.35)
    with pytest.raises(ValueError, match="must lie in"):
        ladder.plan(100, [1.5], 0.2)
    with pytest.raises(ValueError, match="repeated branch steps"):
        ladder.plan(4, [0.5, 0.55], 0.2)
    # a branch's EMA remembers a quarter of its cooldown, never more than the run's own
    assert ladder.branch_ema_decay(128, 0.99) == pytest.approx(1 - 1 / 32)
    assert ladder.branch_ema_decay(16, 0.99) == pytest.approx(0.75)
    assert ladder.branch_ema_decay(2, 0.99) == 0.0
    assert ladder.branch_ema_decay(4000, 0.99) == 0.99
    branch = ladder.Branch(0, 0.5, 80, 16)
    assert "trainer.ema_decay=0.75" in ladder.branch_overrides(branch, 0, 0.99)


def test_tuning_names_and_combinations():
    combos = tuning.combinations({"optim.lr": [1e-3, 3e-3], "optim.weight_decay": [0.0]})
    assert combos == [{"optim.lr": 1e-3, "optim.weight_decay": 0.0},
                      {"optim.lr": 3e-3, "optim.weight_decay": 0.0}]
    assert tuning.suffix(combos[1]) == "_lr0.003_weight_decay0"
    assert tuning.tuning_point({"size": "w64", "model": "mace"}, {"size": "w16"}) == {
        "size": "w16", "model": "mace"}


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def test_wsd_ladder_branch_equals_a_straight_wsd_run(tmp_path):
    study = tmp_path / "study"
    out = sweep("study=smoke", "cluster=local", f"study_dir={study}", *SMALL,
                "study.axes.model=[pet-direct]", "study.axes.data_fraction=[1.0]",
                "study.budget.rule=wsd-ladder", "study.budget.steps=12",
                "study.budget.decay_at=[0.5,1.0]", "study.budget.decay_fraction=0.25",
                "trainer.log_every=1", "engine=torch", check=True)
    runs = study / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["pet-direct_f1", "pet-direct_f1_cd0",
                                                     "pet-direct_f1_cd1"], out.stdout
    main = json.loads((runs / "pet-direct_f1" / "summary.json").read_text())
    cd0 = json.loads((runs / "pet-direct_f1_cd0" / "summary.json").read_text())
    assert main["ladder"]["role"] == "main" and main["steps"] == 12
    assert cd0["ladder"] == {"steps": 12, "decay_fraction": 0.25, "role": "cooldown",
                             "main": "pet-direct_f1", "decay_at": 0.5, "branch_step": 6,
                             "cooldown_steps": 2}
    assert cd0["steps"] == 8 and cd0["atoms_seen"] > 0
    # the same overrides as the branch, trained straight through in a fresh directory
    overrides = json.loads((study / "study.json").read_text())["runs"]["pet-direct_f1_cd0"][
        "overrides"]
    straight = tmp_path / "straight"
    overrides = [o for o in overrides if not o.startswith(("run_dir=", "name="))]
    subprocess.run([sys.executable, "-m", "train", *overrides, f"run_dir={straight}"],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    combined = {**{s: v for s, v in _losses(runs / "pet-direct_f1").items() if s <= 6},
                **_losses(runs / "pet-direct_f1_cd0")}
    assert combined == _losses(straight)  # bit for bit
    assert sorted(_losses(runs / "pet-direct_f1_cd0")) == [7, 8]
    # the branch resumed the main run's EMA state (decay 0.99) and kept its own
    # decay, fitted to its 2-step cooldown (memory of at most one step: 0)
    assert "trainer.ema_decay=0.0" in overrides
    last = list_valid(runs / "pet-direct_f1_cd0" / "checkpoints")[-1]
    assert safe_load(last / "trainer_rank0.pt", "checkpoint")["ema"]["decay"] == 0.0
    main_last = list_valid(runs / "pet-direct_f1" / "checkpoints")[-1]
    assert safe_load(main_last / "trainer_rank0.pt", "checkpoint")["ema"]["decay"] == 0.99


def test_tuned_at_one_point_and_transferred(tmp_path):
    study = tmp_path / "study"
    sweep("study=smoke", "cluster=local", f"study_dir={study}", *SMALL,
          "study.axes.model=[pet-direct]", "study.axes.data_fraction=[0.5,1.0]",
          "+study.tune={optim.lr:[0.0001,0.01]}", "+study.tune_at={data_fraction:0.5}",
          "engine=torch", check=True)
    runs = sorted(p.name for p in (study / "runs").iterdir())
    tuned = [r for r in runs if r.startswith("pet-direct_f0.5")]
    assert tuned == ["pet-direct_f0.5_lr0.0001", "pet-direct_f0.5_lr0.01"]
    scores = {r: json.loads((study / "runs" / r / "summary.json").read_text())["val/forces_mae"]
              for r in tuned}
    best = min(scores, key=scores.get)
    transferred = [r for r in runs if r.startswith("pet-direct_f1")]
    assert transferred == ["pet-direct_f1" + best[len("pet-direct_f0.5"):]]
    summary = json.loads((study / "runs" / transferred[0] / "summary.json").read_text())
    assert summary["tune"] == {"optim.lr": float(best.split("_lr")[1])}
