"""Batches from DataLoader workers cross the process boundary as one buffer:
the unpacked tensors equal the originals (dtype, shape, values), for every
dtype a batch holds, and the batches equal those sent tensor by tensor."""

from __future__ import annotations

import torch

from data_pipelines.convert import write_dataset
from data_pipelines.loader import LoaderConfig, StreamingLoader, pack_tensors, unpack_tensors
from tests.data_pipelines.helpers import emt_structures


def test_pack_round_trip_keeps_every_dtype_and_shape():
    batch = {
        "f64": torch.randn(5, 3, dtype=torch.float64),
        "f32": torch.randn(7, dtype=torch.float32),
        "bf16": torch.randn(3, 3, dtype=torch.bfloat16),
        "i64": torch.arange(9).reshape(3, 3),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "ids": ["a", "b"],
    }
    back = unpack_tensors(pack_tensors(batch))
    assert set(back) == set(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
            assert torch.equal(back[key], value), key
        else:
            assert back[key] == value
    back["f64"][0, 0] = 1.0  # writable, not a view of an immutable buffer


def test_packed_worker_batches_equal_unpacked_ones(tmp_path, monkeypatch):
    import data_pipelines.loader as loader

    write_dataset(emt_structures(40, seed=6), tmp_path, shard_size=10, pack_size=4,
                  splits={"train": 1.0})

    def batches():
        cfg = LoaderConfig(root=str(tmp_path), split="train", cutoff=4.0, max_atoms=48,
                           num_workers=2, seed=3)
        return list(StreamingLoader(cfg))

    packed = batches()
    monkeypatch.setattr(loader, "pack_tensors", lambda batch: batch)  # forked workers too
    plain = batches()
    assert [b["ids"] for b in packed] == [b["ids"] for b in plain] and packed
    for a, b in zip(packed, plain):
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
