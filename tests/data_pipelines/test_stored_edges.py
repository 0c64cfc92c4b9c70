"""Neighbour lists stored in the shards (convert --store-edges): exact round
trips, the same batches as computed lists, smaller cutoffs filtered, larger
ones computed, corrupt indices reported by structure."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from data_pipelines import schema as K
from data_pipelines.convert import main as convert_main
from data_pipelines.convert import write_dataset
from data_pipelines.graph import neighbour_list, store_edges, structure_edges
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.schema import DataError
from data_pipelines.shards import decode_pack, encode_pack
from tests.data_pipelines.helpers import emt_structures


def _pairs(i, j, s) -> list[tuple]:
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, np.asarray(s).tolist())))


@pytest.fixture(scope="module")
def structures():
    return emt_structures(40, seed=3)


def test_stored_lists_round_trip_exactly(structures):
    stored = [store_edges(copy.copy(s), 5.0) for s in structures[:12]]
    back = decode_pack(encode_pack(stored))
    for a, b in zip(stored, back):
        assert b.edges.cutoff == 5.0
        for x, y in zip(a.edges[1:], b.edges[1:]):
            assert np.array_equal(x, y)
    # packs without stored lists decode without them
    assert all(s.edges is None for s in decode_pack(encode_pack(structures[:3])))


def test_same_cutoff_gives_the_computed_list_and_smaller_ones_are_filtered(structures):
    for s in structures:
        stored = store_edges(copy.copy(s), 5.0)
        computed = neighbour_list(s.positions, s.cell, s.pbc, 5.0)
        assert [np.array_equal(a, b) for a, b in zip(structure_edges(stored, 5.0), computed)] \
            == [True] * 3
        for smaller in (3.0, 4.2):
            fresh = neighbour_list(s.positions, s.cell, s.pbc, smaller)
            assert _pairs(*structure_edges(stored, smaller)) == _pairs(*fresh), (s.source_id,
                                                                               smaller)
        # a larger cutoff than the stored one is computed, not truncated
        larger = structure_edges(stored, 6.0)
        assert _pairs(*larger) == _pairs(*neighbour_list(s.positions, s.cell, s.pbc, 6.0))


def test_a_pack_stores_lists_for_all_or_none(structures):
    mixed = [store_edges(copy.copy(structures[0]), 5.0), copy.copy(structures[1])]
    with pytest.raises(ValueError, match="all its structures"):
        encode_pack(mixed)


def test_corrupt_stored_index_names_the_structure(structures):
    stored = [store_edges(copy.copy(s), 5.0) for s in structures[:4]]
    victim = stored[2]
    victim.edges.j[0] = victim.num_atoms + 3
    with pytest.raises(DataError, match=victim.source_id):
        decode_pack(encode_pack(stored), "x.tar:k")


def _batches(root, cutoff):
    cfg = LoaderConfig(root=str(root), split="train", cutoff=cutoff, max_atoms=64, seed=2,
                       shuffle=True, buffer_size=16)
    return list(StreamingLoader(cfg))


def test_training_batches_are_the_same_with_stored_lists(structures, tmp_path):
    plain, stored = tmp_path / "plain", tmp_path / "stored"
    write_dataset(structures, plain, shard_size=10, pack_size=4, splits={"train": 1.0})
    manifest = write_dataset(structures, stored, shard_size=10, pack_size=4,
                             splits={"train": 1.0}, store_edges_cutoff=5.0)
    assert manifest["stored_edges_cutoff"] == 5.0
    assert json.loads((plain / "stats.json").read_text()) == json.loads(
        (stored / "stats.json").read_text())
    a, b = _batches(plain, 5.0), _batches(stored, 5.0)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key, value in x.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, y[key]), key
            else:
                assert value == y[key], key
    # at a smaller cutoff the filtered lists hold the same pairs
    for x, y in zip(_batches(plain, 4.0), _batches(stored, 4.0)):
        ex = x[K.EDGE_INDEX].T.tolist()
        ey = y[K.EDGE_INDEX].T.tolist()
        assert sorted(map(tuple, ex)) == sorted(map(tuple, ey))


def test_convert_cli_stores_lists(tmp_path, capsys):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for s in emt_structures(12, seed=1, molecules=False):
        atoms = Atoms(s.numbers, s.positions, cell=s.cell, pbc=s.pbc)
        atoms.calc = SinglePointCalculator(atoms, energy=s.energy, forces=s.forces)
        frames.append(atoms)
    xyz = tmp_path / "in.extxyz"
    write(xyz, frames)
    out = tmp_path / "out"
    assert convert_main([str(xyz), "--out", str(out), "--store-edges", "4.5",
                         "--split", "train=1.0"]) == 0
    assert json.loads((out / "manifest.json").read_text())["stored_edges_cutoff"] == 4.5
    # not a terminal (as in a SLURM log): no progress bar's carriage returns
    assert "\r" not in capsys.readouterr().err
