"""Faults: non-finite losses, foreign elements, W&B offline mirrors metrics.jsonl,
the two-stage recipe as two configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipelines.convert import write_dataset
from data_pipelines.schema import Structure
from tests.train.conftest import read_metrics, train_cli
from train import trainer as trainer_module
from train.config import compose, to_object
from train.run import run

BASE = ["model=pet", "size=tiny", "data.max_atoms=64", "trainer.val_every=0",
        "engine=torch", "trainer.threads=1"]


def test_non_finite_losses_are_skipped_then_stop_the_run(emt_shards, tmp_path, monkeypatch):
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def sometimes_nan(batch, out, cfg):
        calls["n"] += 1
        loss, parts = real(batch, out, cfg)
        return (loss * float("nan"), parts) if calls["n"] in (3, 4) or calls["n"] > 8 else (
            loss, parts)

    monkeypatch.setattr(trainer_module, "compute_loss", sometimes_nan)
    cfg = to_object(compose([f"data.root={emt_shards}", *BASE, "logger=none",
                             "trainer.max_steps=50", "trainer.max_bad_steps=3",
                             f"run_dir={tmp_path / 'nan'}"]))
    with pytest.raises(trainer_module.BadBatchError, match=r"3 non-finite losses in a row at "
                       r"step 6; last batch held structures t#\d+"):
        run(cfg)
    events = [r for r in read_metrics(tmp_path / "nan") if "event" in r]
    assert len(events) == 5 and all(r["ids"] for r in events)


def test_foreign_element_names_element_and_structure(emt_shards, tmp_path):
    from train.evaluate import evaluate

    run_dir = tmp_path / "small"
    train_cli(f"data.root={emt_shards}", *BASE, "logger=none", "trainer.max_steps=2",
              f"run_dir={run_dir}")
    odd = Structure("odd#0", [29, 26], [[0, 0, 0], [1.8, 0, 0]], [[4, 0, 0], [0, 4, 0],
                    [0, 0, 4]], [True] * 3, energy=-1.0, forces=[[0, 0, 0], [0, 0, 0]])
    write_dataset([odd] * 1, tmp_path / "odd", splits={"test": 1.0})
    with pytest.raises(ValueError, match=r"structure odd#0 contains Fe \(Z=26\)"):
        evaluate(run_dir, str(tmp_path / "odd"), split="test")


def _wandb_records(path: Path):
    """Payloads of a .wandb file: a 7-byte header (':W&B', magic, version), then
    32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type:
    1 full, 2 first, 3 middle, 4 last); a block tail under 7 bytes is padding."""
    import struct

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending
            pending = b""


def _wandb_history(run_dir: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for payload in _wandb_records(path):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(payload)
            if rec.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in rec.history.item})
    return rows


def test_wandb_offline_holds_the_metrics_of_metrics_jsonl(emt_shards, tmp_path):
    run_dir = tmp_path / "wb"
    train_cli(f"data.root={emt_shards}", *BASE, "logger=wandb-offline", "trainer.max_steps=4",
              f"run_dir={run_dir}", env={"WANDB_MODE": "offline"})
    history = _wandb_history(run_dir)
    logged = [r for r in read_metrics(run_dir) if "train/loss" in r]
    assert len(logged) == 4
    by_step = {r["_step"]: r for r in history if "train/loss" in r}
    for row in logged:
        assert by_step[row["step"]]["train/loss"] == pytest.approx(row["train/loss"], rel=1e-12)
        assert by_step[row["step"]]["lr"] == pytest.approx(row["lr"], rel=1e-12)


def test_two_stage_recipe_runs_as_two_configs(emt_shards, tmp_path):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    common = [f"data.root={emt_shards}", "data.max_atoms=64", "trainer.val_every=0",
              "logger=none", "engine=torch", "trainer.threads=1", "size=tiny"]
    train_cli(*common, "experiment=stage1-direct", "trainer.max_steps=3", f"run_dir={stage1}")
    train_cli(*common, "experiment=stage2-conservative", "trainer.max_steps=3",
              f"trainer.init_from={stage1}", f"run_dir={stage2}")
    s1 = json.loads((stage1 / "summary.json").read_text())
    s2 = json.loads((stage2 / "summary.json").read_text())
    assert s1["forces"] == s2["forces"] == "both"
    assert "val/direct_forces_mae" in s2 and "val/forces_mae" in s2
    # stage 2 starts from stage 1's (EMA) weights: with a zero learning rate it ends on them
    frozen = tmp_path / "frozen"
    train_cli(*common, "experiment=stage2-conservative", "trainer.max_steps=2", "optim.lr=0",
              f"trainer.init_from={stage1}", f"run_dir={frozen}")
    w1 = torch.load(stage1 / "model.pt", weights_only=False)["state_dict"]
    w2 = torch.load(frozen / "model.pt", weights_only=False)["state_dict"]
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
