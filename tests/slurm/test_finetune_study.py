"""The pretrain/fine-tune study rule end to end on generated EMT data: every grid
point pretrained on A, fine-tuned on B from its weights, beside the stage-1-only
and B-only baselines, and the report of how much pretraining is worth."""

from __future__ import annotations

import json

import pytest

from data_pipelines.convert import write_dataset
from data_pipelines.generate import generate_structures


@pytest.fixture(scope="module")
def root_b(tmp_path_factory):
    out = tmp_path_factory.mktemp("emt-b")
    write_dataset(generate_structures(60, seed=7), out, shard_size=30, seed=7,
                  splits={"train": 0.8, "val": 0.2},
                  level_of_theory="EMT (ASE)")
    return out


def test_finetune_study_runs_end_to_end(root_b, tmp_path, capsys):
    from analysis.finetune import collect, main, read_runs
    from slurm.sweep import sweep

    study = tmp_path / "study"
    args = ["study=finetune-smoke", "cluster=local", f"study_dir={study}",
            f"study.finetune.root={root_b}", "study.data.generate.num_structures=80",
            "study.budget.steps=4", "study.finetune.steps=3"]
    results = sweep(args)
    printed = capsys.readouterr().out
    # each run's line gives its errors with units; the end says what to run next
    assert "forces_mae=" in printed and " eV/A" in printed
    assert f"next: python -m slurm.status {study}" in printed
    names = sorted(results)
    assert names == sorted([
        "pet-direct_tiny_f0.5", "pet-direct_tiny_f0.5_ft", "pet-direct_tiny_f0.5_zs",
        "pet-direct_tiny_f1", "pet-direct_tiny_f1_ft", "pet-direct_tiny_f1_zs",
        "pet-direct_tiny_bonly"])
    assert all(r["status"] == "finished" for r in results.values()), results
    runs_dir = study / "runs"
    ft = json.loads((runs_dir / "pet-direct_tiny_f1_ft" / "summary.json").read_text())
    assert ft["budget"]["role"] == "finetune" and ft["steps"] == 3
    assert ft["data"]["root"] == str(root_b)
    pre = json.loads((runs_dir / "pet-direct_tiny_f1" / "summary.json").read_text())
    zs = json.loads((runs_dir / "pet-direct_tiny_f1_zs" / "summary.json").read_text())
    # the fine-tune started from the pretrained weights: its stage-1-only twin
    # (lr 0) validates the pretrained model on B, and the fine-tune improves on it
    assert zs["val/forces_mae"] != pre["val/forces_mae"]  # another validation set
    points = collect(read_runs(study), "val/forces_mae")
    assert [p.data_fraction for p in points] == [0.5, 1.0]
    assert points[0].pretrain_structures < points[1].pretrain_structures
    for p in points:
        assert None not in (p.finetuned, p.stage1_only, p.b_only, p.pretrain_error)
        assert p.finetuned < p.stage1_only
    assert main([str(study), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "finetune.md").read_text()
    assert "fine-tuned on B" in text and "| pet-direct | tiny |" in text
    assert (tmp_path / "report" / "finetune.png").stat().st_size > 0
    # the scaling analysis of the same study fits pretraining runs only: the
    # second-stage runs are excluded, each with its reason
    from analysis.scaling.analyse import analyse
    from analysis.scaling.load import load_study
    from analysis.scaling.types import Settings

    result = analyse(load_study(study / "runs"), Settings(), ["val/forces_mae"])
    excluded = {e["run"] for e in result.excluded if "fine-tune study" in e["reason"]}
    assert excluded == {"pet-direct_tiny_f0.5_ft", "pet-direct_tiny_f0.5_zs",
                        "pet-direct_tiny_f1_ft", "pet-direct_tiny_f1_zs",
                        "pet-direct_tiny_bonly"}
    # re-running skips everything
    assert sweep(args) == {}
