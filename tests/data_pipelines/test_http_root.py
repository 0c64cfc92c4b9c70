"""A data root served over HTTP (loopback) streams exactly what the local
folder streams, and a missing shard is an error naming its URL."""

from __future__ import annotations

import json

import pytest
import torch

from data_pipelines.convert import write_dataset
from data_pipelines.dataset import open_dataset
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.schema import DataError
from data_pipelines.serve import serve_root
from tests.data_pipelines.helpers import emt_structures


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("http_root")
    write_dataset(emt_structures(60, seed=4), out, shard_size=15, pack_size=4,
                  splits={"train": 0.8, "val": 0.2})
    return out


def _batches(location):
    cfg = LoaderConfig(root=str(location), split="train", cutoff=4.0, max_atoms=48, seed=1)
    return list(StreamingLoader(cfg))


def test_http_root_streams_the_same_batches_as_the_folder(root):
    local = _batches(root)
    with serve_root(root) as url:
        assert open_dataset(url).manifest == json.loads((root / "manifest.json").read_text())
        remote = _batches(url)
    assert len(local) == len(remote) > 0
    for a, b in zip(local, remote):
        assert a["ids"] == b["ids"]
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), key


def test_a_missing_shard_names_its_url(root, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    victim = sorted((broken / "train").glob("shard-*.tar"))[1]
    victim.unlink()
    with serve_root(broken) as url, pytest.raises((DataError, RuntimeError),
                                                  match=victim.name):
        _batches(url)
