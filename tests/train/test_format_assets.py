"""Files written by an earlier commit still load: a checkpoint and a model file
of format version 2 are committed under tests/assets/format-v2 (golden.json
names the commit and command that made them). If this test fails, the new
code broke reading old runs: keep a reader for the old format instead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase.build import bulk
from omegaconf import OmegaConf

from train import checkpoint
from train.build import make_model
from train.calculator import load_calculator
from train.config import compose, to_object
from train.dist import init_distributed
from train.engine import build_engine
from train.optim import build_optimizer, lr_factor
from train.resume import resume_point

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "format-v2"
GOLDEN = json.loads((ASSETS / "golden.json").read_text())


def test_model_file_of_format_2_predicts_as_it_did():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = load_calculator(str(ASSETS / "model.pt"))
    assert np.isclose(atoms.get_potential_energy(), GOLDEN["cu_fcc_rattled_energy_eV"],
                      rtol=1e-5, atol=1e-6)
    assert np.allclose(atoms.get_forces(), GOLDEN["cu_fcc_rattled_forces_eV_per_A"], atol=1e-5)


def test_checkpoint_of_format_2_resumes():
    cfg = to_object(OmegaConf.merge(compose([]), OmegaConf.load(ASSETS / "config.yaml")))
    step_dir = ASSETS / "checkpoints" / "step-00000002"
    assert resume_point(ASSETS, cfg, world_size=1) == step_dir  # its identity matches
    info = init_distributed("cpu", None, need_group=True)
    model = make_model(cfg, {})
    engine = build_engine(model, build_optimizer(model.parameters(), cfg.optim),
                          lr_factor(cfg.schedule, cfg.trainer.max_steps), cfg.optim, cfg.engine)
    state = checkpoint.load(step_dir, engine, info.rank)
    assert state["progress"]["step"] == GOLDEN["checkpoint_step"]
    assert set(state["ema"]["shadow"]) <= set(engine.module.state_dict())
    assert state["loader"]["batches"] >= GOLDEN["checkpoint_step"]
