"""Training on a mixture of data roots: per-source counts follow the weights,
levels of theory are not mixed silently, resume is exact."""

from __future__ import annotations

import json

import pytest

from data_pipelines.convert import write_dataset
from tests.data_pipelines.helpers import emt_structures
from tests.train.conftest import read_metrics
from train import trainer as trainer_module
from train.config import ConfigError, compose, to_object
from train.run import run

BASE = ["model=pet", "size=tiny", "data.max_atoms=64", "engine=torch", "trainer.threads=1",
        "logger=none", "trainer.log_every=1", "trainer.val_every=0"]


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    roots = []
    for k, level in enumerate(("EMT (ASE)", "EMT (ASE)", "PBE")):
        out = tmp_path_factory.mktemp(f"src{k}")
        write_dataset(emt_structures(80, seed=10 + k, prefix=f"s{k}", molecules=False), out,
                      shard_size=20, pack_size=8, splits={"train": 0.85, "val": 0.15},
                      level_of_theory=level)
        roots.append(str(out))
    return roots


def _sources(a, b, wa=0.7, wb=0.3):
    return f"data.sources=[{{root:'{a}',weight:{wa},name:a}},{{root:'{b}',weight:{wb},name:b}}]"


def test_mixture_counts_follow_the_weights(two_roots, tmp_path):
    cfg = to_object(compose([*BASE, _sources(*two_roots[:2]), "trainer.max_steps=40",
                             f"run_dir={tmp_path / 'mix'}"]))
    summary = run(cfg)
    seen = summary["data"]["seen_by_source"]
    batches = {k: v["batches"] for k, v in seen.items()}
    assert sum(batches.values()) == 40
    assert abs(batches["a"] / 40 - 0.7) <= 0.05  # within 2 batches of 28
    assert "val/a/forces_mae" in summary and "val/b/forces_mae" in summary
    assert "val/forces_mae" in summary  # pooled over both validation splits
    assert summary["data"]["sources"][0]["weight"] == pytest.approx(0.7)


def test_levels_of_theory_are_not_mixed_silently(two_roots, tmp_path):
    mixed = _sources(two_roots[0], two_roots[2])
    cfg = to_object(compose([*BASE, mixed, "trainer.max_steps=2", f"run_dir={tmp_path / 'x'}"]))
    with pytest.raises(ConfigError, match=r"mix levels of theory .*'EMT \(ASE\)'.*'PBE'"):
        run(cfg)
    assert not (tmp_path / "x").exists()
    cfg = to_object(compose([*BASE, mixed, "data.mix_levels_of_theory=true",
                             "trainer.max_steps=2", f"run_dir={tmp_path / 'y'}"]))
    assert run(cfg)["status"] == "finished"


class Killed(Exception):
    pass


def test_resume_mid_mixture_is_bit_exact(two_roots, tmp_path, monkeypatch):
    args = [*BASE, _sources(*two_roots[:2]), "trainer.max_steps=14", "schedule.total_steps=14",
            "trainer.checkpoint_every=5", "data.buffer_size=16"]
    ref = tmp_path / "ref"
    run(to_object(compose([*args, f"run_dir={ref}"])))
    real, calls = trainer_module.compute_loss, {"n": 0}

    def dies(batch, out, loss_cfg):
        calls["n"] += 1
        if calls["n"] == 8:
            raise Killed
        return real(batch, out, loss_cfg)

    killed = tmp_path / "killed"
    monkeypatch.setattr(trainer_module, "compute_loss", dies)
    with pytest.raises(Killed):
        run(to_object(compose([*args, f"run_dir={killed}"])))
    monkeypatch.setattr(trainer_module, "compute_loss", real)
    summary = run(to_object(compose([*args, f"run_dir={killed}"])))

    def losses(d):
        return {r["step"]: r["train/loss"] for r in read_metrics(d) if "train/loss" in r}

    assert losses(killed) == losses(ref)
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert summary["data"]["seen_by_source"] == ref_summary["data"]["seen_by_source"]
