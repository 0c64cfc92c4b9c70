"""summary.json carries the axes of scaling laws (non-embedding N, training
compute), the trivial predictors' errors, and a convergence verdict."""

from __future__ import annotations

import pytest

from train.config import compose, to_object
from train.models import build_model
from train.run import run
from train.rundir import convergence, not_learned


def test_convergence_verdict_from_the_last_fifth():
    flat = [{"step": s, "val/forces_mae": 0.1} for s in range(10, 101, 10)]
    assert convergence(flat, "val/forces_mae", 0.1, 100)["verdict"] == "converged"
    falling = [{"step": s, "val/forces_mae": 1.0 / s} for s in range(10, 101, 10)]
    verdict = convergence(falling, "val/forces_mae", 0.01, 100)
    assert verdict["verdict"] == "still-improving" and verdict["rel_slope"] < -0.02
    assert verdict["num_points"] == 3  # steps 80, 90 and the final 100
    few = convergence(flat[:2], "val/forces_mae", None, 100)
    assert few["verdict"].startswith("unknown") and few["rel_slope"] is None


def test_a_cooldown_branch_is_judged_on_the_second_half_of_its_cooldown():
    # constant rate to step 100, then a cooldown to 120: the error falls while the
    # rate decays and flattens once it is small
    rows = [{"step": s, "val/forces_mae": 0.2} for s in range(84, 101, 4)]
    rows += [{"step": s, "val/forces_mae": 0.1 + 0.1 * max(0.0, 110 - s) / 10}
             for s in range(104, 121, 2)]
    plain = convergence(rows, "val/forces_mae", 0.1, 120)
    assert plain["verdict"] == "still-improving"  # the fall of the cooldown in its window
    budget = {"rule": "wsd-ladder", "role": "cooldown", "branch_step": 100, "cooldown_steps": 20}
    branch = convergence(rows, "val/forces_mae", 0.1, 120, budget)
    assert branch["window"] == "second half of the cooldown" and branch["num_points"] == 6
    assert branch["verdict"] == "converged"
    # a cooldown still falling in its second half is not converged
    steep = [{"step": s, "val/forces_mae": 1.0 / s} for s in range(100, 121, 2)]
    assert convergence(steep, "val/forces_mae", 1 / 120, 120, budget)["verdict"] == (
        "still-improving")


def test_not_learned_compares_with_the_trivial_predictor():
    trivial = {"energy_per_atom_mae": 0.1, "forces_mae": 0.5}
    assert not_learned({"val/energy_per_atom_mae": 0.099, "val/forces_mae": 0.1}, trivial) == [
        "val/energy_per_atom_mae"]


def test_non_embedding_parameters_leave_out_species_tables():
    pet = build_model("pet", "tiny")
    tables = sum(p.numel() for n, p in pet.named_parameters() if "species" in n)
    assert tables > 0 and pet.num_parameters_non_embedding() == pet.num_parameters() - tables


def test_summary_fields(emt_shards, tmp_path):
    cfg = to_object(compose([f"data.root={emt_shards}", "model=pet", "size=tiny",
                             "data.max_atoms=64", "engine=torch", "logger=none",
                             "trainer.max_steps=20", "trainer.val_every=2", "trainer.threads=1",
                             f"run_dir={tmp_path / 'run'}"]))
    summary = run(cfg)
    assert summary["num_params_non_embedding"] < summary["num_params"]
    assert summary["train_flops"] == pytest.approx(summary["flops_per_atom"]
                                                   * summary["atoms_seen"])
    assert summary["baseline"]["forces_mae"] > 0 and summary["baseline"]["energy_per_atom_mae"] > 0
    assert summary["convergence"]["verdict"] in ("converged", "still-improving")
    assert isinstance(summary["not_learned"], list)
    phases = summary["startup_s"]  # every start-up phase named and timed
    assert {"data open", "model build", "FLOPs reference batch", "engine"} <= set(phases)
    assert all(v >= 0 for v in phases.values())
