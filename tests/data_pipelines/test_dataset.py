"""Opening a data root: one manifest read, cheap split index, cached subset thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import dataset as dataset_module
from data_pipelines import schema as K
from data_pipelines import shards
from data_pipelines.convert import write_dataset
from data_pipelines.dataset import Dataset, open_dataset
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.schema import DataError
from data_pipelines.subsets import subset_threshold, subset_u, threshold_of
from tests.data_pipelines.helpers import emt_structures


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    write_dataset(emt_structures(90), out, shard_size=16, pack_size=5,
                  splits={"train": 0.8, "val": 0.2}, stats_cutoff=None)
    return str(out)


def test_open_reads_manifest_and_stats_once(root, monkeypatch):
    ds = open_dataset(root)
    assert open_dataset(ds) is ds
    assert ds.stats["split"] == "train"
    calls = []
    real = dataset_module.open_stream
    monkeypatch.setattr(dataset_module, "open_stream", lambda loc: calls.append(loc) or real(loc))
    assert ds.stats is ds.stats and not calls  # cached: no second read
    StreamingLoader(LoaderConfig(root=ds, split="train"))
    StreamingLoader(LoaderConfig(root=ds, split="val"))
    assert not calls  # loaders given a Dataset do not read the manifest again


def test_split_index_matches_full_decode_without_decoding(root, monkeypatch):
    ds = Dataset(root, open_dataset(root).manifest)
    full = list(ds.iter_split("train"))

    def no_decode(*_):
        raise AssertionError("split_index decoded a pack")

    monkeypatch.setattr(shards, "decode_pack", no_decode)
    index = ds.split_index("train")
    assert index.ids == [s.source_id for s in full]
    assert np.array_equal(index.num_atoms, [s.num_atoms for s in full])


def _reference_threshold(structures, fraction, unit):
    # the computation as it was: every structure decoded, then the arithmetic
    u = np.array([subset_u(s.source_id) for s in structures])
    return threshold_of(u, np.array([s.num_atoms for s in structures]), fraction, unit)


@pytest.mark.parametrize("unit", ["structures", "atoms"])
def test_subset_threshold_is_cached_and_matches_full_decode(root, unit, monkeypatch):
    ds = open_dataset(root)
    structures = list(ds.iter_split("train"))
    for fraction in (0.1, 0.5, 1.0):
        got = subset_threshold(ds, "train", fraction, unit)
        assert got == _reference_threshold(structures, fraction, unit)
        assert got == subset_threshold(root, "train", fraction, unit)  # a root string works too
    reads = []
    real = dataset_module.open_stream
    monkeypatch.setattr(dataset_module, "open_stream", lambda loc: reads.append(loc) or real(loc))
    subset_threshold(ds, "train", 0.5, unit)
    subset_threshold(ds, "train", 0.3, unit)  # new fraction, same split: index reused
    assert not reads


def test_subset_filter_keeps_what_the_threshold_counts(root):
    ds = open_dataset(root)
    sub = subset_threshold(ds, "train", 0.4)
    cfg = LoaderConfig(root=ds, cutoff=4.0, max_atoms=60, subset_threshold=sub["threshold"])
    ids = [i for b in StreamingLoader(cfg) for i in b[K.IDS]]
    assert len(ids) == len(set(ids)) == sub["num_structures"]


def test_unknown_split_names_manifest_and_splits(root):
    with pytest.raises(DataError, match=r"manifest.json.*no split 'nope'.*'train', 'val'"):
        list(open_dataset(root).iter_split("nope"))


def test_read_shard_range_equals_slice_of_whole_shard(root):
    ds = open_dataset(root)
    shard = ds.split("train")["shards"][0]
    whole = [s.source_id for s in ds.read_shard(shard)]
    for begin, end in [(0, 3), (4, 11), (5, 10), (13, len(whole))]:
        assert [s.source_id for s in ds.read_shard(shard, begin, end)] == whole[begin:end]


def test_require_nonempty_names_root_and_split(tmp_path):
    out = tmp_path / "ds"
    write_dataset(emt_structures(6), out, splits={"train": 1.0, "val": 0.0}, stats_cutoff=None)
    ds = open_dataset(str(out))
    assert ds.require_nonempty("train")["num_structures"] == 6
    with pytest.raises(ValueError, match=rf"{out}: split 'val' holds no structures"):
        ds.require_nonempty("val")
    with pytest.raises(DataError, match="no split 'test'"):
        ds.require_nonempty("test")
    assert StreamingLoader(LoaderConfig(root=ds, split="train")).data is ds
