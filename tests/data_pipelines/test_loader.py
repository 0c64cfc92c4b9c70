"""Streaming contracts: exactly once per epoch, resume mid-epoch, budgets, URLs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list

from data_pipelines import schema as K
from data_pipelines.convert import write_dataset
from data_pipelines.dataset import open_dataset
from data_pipelines.graph import neighbour_list
from data_pipelines.loader import LoaderConfig, StreamingLoader, epoch_ids, equal_steps
from tests.data_pipelines.helpers import emt_structures


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream")
    write_dataset(emt_structures(150), out, shard_size=13, pack_size=4,
                  splits={"train": 0.8, "val": 0.2}, stats_cutoff=None)
    return str(out)


def _train_ids(root):
    return sorted(s.source_id for s in open_dataset(root).iter_split("train"))


def _epoch(root, rank, world, workers, epoch, **kw):
    cfg = LoaderConfig(root=root, cutoff=4.0, max_atoms=48, num_workers=workers, seed=3, **kw)
    loader = StreamingLoader(cfg, rank=rank, world_size=world)
    loader.set_epoch(epoch)
    return [b[K.IDS] for b in loader]


def test_exactly_once_over_two_ranks_and_two_workers(root):
    expected = _train_ids(root)
    orders = []
    for epoch in (0, 1):
        per_rank = [sum(_epoch(root, r, 2, 2, epoch), []) for r in range(2)]
        everything = per_rank[0] + per_rank[1]
        assert sorted(everything) == expected  # each structure once, none missing
        assert abs(len(per_rank[0]) - len(per_rank[1])) <= 2  # ranges differ by <= 1 per worker
        orders.append(everything)
    assert orders[0] != orders[1]  # a new epoch reshuffles


def test_inspect_keys_match_what_the_loader_streams(root):
    for rank in range(2):
        streamed = sorted(sum(_epoch(root, rank, 2, 2, epoch=1), []))
        listed = sorted(epoch_ids(root, "train", rank, 2, 2, epoch=1, seed=3))
        assert streamed == listed


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_repeats_and_skips_nothing(root, workers):
    cfg = LoaderConfig(root=root, cutoff=4.0, max_atoms=40, num_workers=workers, seed=1)
    full = StreamingLoader(cfg)
    full.set_epoch(2)
    reference = [b for b in full]
    stop = len(reference) // 2 + 1
    first = StreamingLoader(cfg)
    first.set_epoch(2)
    got = []
    for k, batch in enumerate(first):
        got.append(batch)
        if k + 1 == stop:
            break
    state = first.state_dict()
    second = StreamingLoader(cfg)
    second.load_state_dict(state)
    got += list(second)
    key = [tuple(b[K.IDS]) for b in got]
    assert sorted(key) == sorted(tuple(b[K.IDS]) for b in reference)  # same batches
    assert len(set(sum(map(list, key), []))) == sum(len(k) for k in key)  # no repeats
    ref_by_ids = {tuple(b[K.IDS]): b for b in reference}
    for b in got:  # and the same numbers in them
        assert torch.equal(b[K.POSITIONS], ref_by_ids[tuple(b[K.IDS])][K.POSITIONS])
    assert key == [tuple(b[K.IDS]) for b in reference]  # and in the same order


def _same_batch(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            if not (value.dtype == other.dtype and torch.equal(value, other)):
                return False
        elif value != other:
            return False
    return True


def _resumed(cfg, epoch, stop):
    first = StreamingLoader(cfg)
    first.set_epoch(epoch)
    got = []
    for batch in first:
        got.append(batch)
        if len(got) == stop:
            break
    state = first.state_dict()
    second = StreamingLoader(cfg)
    second.load_state_dict(state)
    return got + list(second)


@pytest.fixture(scope="module")
def uneven_root(tmp_path_factory):
    # Largest structures first and no shuffle: worker 0 packs few per batch and
    # the last worker many, so the last one runs out while the others go on and
    # the round-robin continues over fewer workers.
    out = tmp_path_factory.mktemp("uneven")
    structures = sorted(emt_structures(90), key=lambda s: -s.num_atoms)
    write_dataset(structures, out, shard_size=16, pack_size=4, splits={"train": 1.0},
                  stats_cutoff=None)
    return str(out)


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_resume_yields_the_uninterrupted_batches_exactly(root, uneven_root, workers):
    cases = [
        (LoaderConfig(root=root, cutoff=4.0, max_atoms=40, num_workers=workers, seed=1), 2),
        (LoaderConfig(root=uneven_root, cutoff=4.0, max_atoms=32, num_workers=workers,
                      shuffle=False), 0),
    ]
    for cfg, epoch in cases:
        full = StreamingLoader(cfg)
        full.set_epoch(epoch)
        reference = list(full)
        n = len(reference)
        # odd and even stops, early, in the middle and once some worker has run out
        for stop in sorted({1, 2, 3, n // 2, n // 2 + 1, n - 3, n - 2, n - 1}):
            got = _resumed(cfg, epoch, stop)
            assert len(got) == n, (cfg.root, stop)
            for k, (a, b) in enumerate(zip(got, reference)):
                assert _same_batch(a, b), f"{workers} workers, stop {stop}: batch {k} differs"


def test_resume_refuses_another_layout(root):
    loader = StreamingLoader(LoaderConfig(root=root, num_workers=0), world_size=1)
    state = loader.state_dict()
    state["world_size"] = 4
    with pytest.raises(ValueError, match="world_size=4"):
        loader.load_state_dict(state)


def test_atom_and_edge_budgets(root):
    cfg = LoaderConfig(root=root, cutoff=4.0, max_atoms=30, max_edges=900, shuffle=False)
    loader = StreamingLoader(cfg)
    for batch in loader:
        n = batch[K.NUM_ATOMS]
        if len(n) > 1:
            assert int(n.sum()) <= 30
            assert batch[K.EDGE_INDEX].shape[1] <= 900
        assert batch[K.PTR][-1] == batch[K.POSITIONS].shape[0]
        assert torch.equal(torch.bincount(batch[K.BATCH], minlength=len(n)), n)


def test_pipe_url_streams_the_same(root):
    local = _epoch(root, 0, 1, 0, 0)
    piped = _epoch("pipe:cat " + root + "/{path}", 0, 1, 0, 0)
    assert local == piped


def test_edges_match_ase():
    cases = [bulk("Cu", "fcc", a=3.6, cubic=True), molecule("C6H6"), bulk("Al") * (2, 1, 1)]
    slab = bulk("Ni", "fcc", cubic=True) * (2, 2, 2)
    slab.pbc = [True, True, False]
    cases.append(slab)
    for atoms in cases:
        atoms.rattle(0.05, seed=2)
        i, j, s = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.5)
        ia, ja, sa = neighbor_list("ijS", atoms, 4.5)
        assert sorted(zip(i, j, map(tuple, s))) == sorted(zip(ia, ja, map(tuple, sa)))
        d = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + s @ atoms.cell.array, axis=1)
        assert np.all(d <= 4.5)


def _equal_steps_worker(rank, world, port, counts, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    batches = [{"i": k} for k in range(counts[rank])]
    steps = list(equal_steps(iter(batches)))
    out[rank] = (len(steps), sum(pad for _, pad in steps))
    dist.destroy_process_group()


def test_equal_steps_pads_the_rank_that_runs_out():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_equal_steps_worker, args=(2, port, [5, 3], out), nprocs=2, join=True)
    assert out[0] == (5, 0)
    assert out[1] == (5, 2)  # two padded steps, counted


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_across_windows_with_a_subset_filter(root, workers):
    # small windows: a resume starts inside a later window; the subset filter drops
    # structures, whose positions count so the state still names the next one
    from data_pipelines.subsets import subset_u

    cfg = LoaderConfig(root=root, cutoff=4.0, max_atoms=40, num_workers=workers, seed=5,
                       buffer_size=7, subset_threshold=0.6)
    full = StreamingLoader(cfg)
    full.set_epoch(1)
    reference = list(full)
    ids = sum((b[K.IDS] for b in reference), [])
    assert sorted(ids) == sorted(i for i in _train_ids(root) if subset_u(i) <= 0.6)
    n = len(reference)
    for stop in (1, n // 3, n // 2 + 1, n - 1):
        got = _resumed(cfg, 1, stop)
        assert len(got) == n
        assert all(_same_batch(a, b) for a, b in zip(got, reference)), stop


def test_state_from_the_buffer_shuffle_loader_is_refused_mid_epoch(root):
    loader = StreamingLoader(LoaderConfig(root=root))
    old = {"epoch": 2, "consumed": {"0": 17}, "world_size": 1, "num_workers": 0,
           "batches": 3, "next_worker": 0}
    with pytest.raises(ValueError, match="consumed"):
        loader.load_state_dict(old)
    loader.load_state_dict({**old, "consumed": {}})  # an epoch start still resumes
    assert loader.state.epoch == 2 and loader.state.positions == {}
    state = loader.state_dict()
    state["plan"]["window"] = 99
    with pytest.raises(ValueError, match="window: saved 99, now 1024"):
        loader.load_state_dict(state)
