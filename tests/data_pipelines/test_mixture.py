"""Mixtures of sources: weights over any window, exact resume, separate source epochs."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

from data_pipelines import schema as K
from data_pipelines.convert import write_dataset
from data_pipelines.dataset import open_dataset
from data_pipelines.loader import LoaderConfig
from data_pipelines.mixture import (
    SOURCE,
    SOURCE_EPOCH,
    MixtureLoader,
    MixtureSource,
    source_of,
    thresholds,
)
from tests.data_pipelines.helpers import emt_structures


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A large and a small source (ids 'a#k' and 'b#k')."""
    out = {}
    for name, num, seed in (("a", 60, 1), ("b", 16, 2)):
        root = tmp_path_factory.mktemp(f"mix_{name}")
        write_dataset(emt_structures(num, seed=seed, prefix=name), root, shard_size=9,
                      pack_size=3, splits={"train": 1.0}, stats_cutoff=None)
        out[name] = str(root)
    return out


def _ids(root):
    return sorted(s.source_id for s in open_dataset(root).iter_split("train"))


def _mixture(roots, workers=0, rank=0, world=1, weights=(0.7, 0.3), **kw):
    sources = [
        MixtureSource(LoaderConfig(root=roots[n], cutoff=4.0, max_atoms=kw.get("max_atoms", 40),
                                   num_workers=workers, seed=k + 3, buffer_size=10), w)
        for k, (n, w) in enumerate(zip("ab", weights))
    ]
    return MixtureLoader(sources, rank=rank, world_size=world, seed=kw.get("seed", 11))


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


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


@pytest.mark.parametrize("weights", [(0.7, 0.3), (0.5, 0.3, 0.2), (0.95, 0.05), (1, 0, 2)])
def test_schedule_holds_the_weights_over_any_window(weights):
    cum = thresholds(weights)
    w = np.array(weights) / sum(weights)
    steps = np.array([source_of(cum, 7, t) for t in range(5000)])
    counts = np.cumsum(np.vstack([np.zeros(len(w)), np.eye(len(w))[steps]]), axis=0)
    for n in (10, 100, 1000):  # every window of n consecutive steps, not only from 0
        window = counts[n:] - counts[:-n]
        assert np.abs(window - n * w).max() <= 2.0, n
    assert np.all(counts[-1][w == 0] == 0)  # a zero weight is never drawn
    ranks = np.array([[source_of(cum, 7, t, r, 16) for r in range(16)] for t in range(200)])
    per_step = np.stack([(ranks == i).sum(axis=1) for i in range(len(w))], axis=1)
    assert np.abs(per_step - 16 * w).max() < 1.0  # at each step, ranks spread by weight
    other_seed = [source_of(cum, 8, t) for t in range(200)]
    assert list(steps[:200]) == [source_of(cum, 7, t) for t in range(200)]
    assert other_seed != list(steps[:200]) or len(set(steps)) == 1


def test_bad_weights_are_refused():
    for bad in ([], [0.0, 0.0], [1.0, -0.5], [float("nan")]):
        with pytest.raises(ValueError, match="mixture"):
            thresholds(bad)


def test_batches_follow_the_weights_and_name_their_source(roots):
    mix = _mixture(roots, max_atoms=24)
    batches = _take(mix, 1000)
    share = np.bincount([b[SOURCE] for b in batches], minlength=2) / len(batches)
    assert np.allclose(share, [0.7, 0.3], atol=0.02)
    for b in batches:  # a batch is packed from one source's stream
        assert {i.split("#")[0] for i in b[K.IDS]} == {"ab"[b[SOURCE]]}
    for i in range(2):
        mine = [b for b in batches if b[SOURCE] == i]
        assert mix.seen[i] == {
            "batches": len(mine),
            "structures": sum(len(b[K.IDS]) for b in mine),
            "atoms": sum(int(b[K.NUM_ATOMS].sum()) for b in mine),
        }
    assert mix.epochs[1] > mix.epochs[0] > 0  # the small source ran out more often


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_mixture_is_bit_identical(roots, workers):
    reference = _take(_mixture(roots, workers), 30)
    # the first batch of a source's second epoch, and the one after it
    boundary = next(k for k, b in enumerate(reference) if b[SOURCE_EPOCH] == 1)
    for stop in sorted({1, boundary, boundary + 1, 23} if workers == 0 else
                       {boundary, boundary + 1}):
        first = _mixture(roots, workers)
        got = _take(first, stop)
        state = first.state_dict()
        second = _mixture(roots, workers)
        second.load_state_dict(state)
        assert second.seen == first.seen and second.step == stop
        got += _take(second, len(reference) - stop)
        for k, (a, b) in enumerate(zip(got, reference, strict=True)):
            assert _same_batch(a, b), f"{workers} workers, stop {stop}: batch {k} differs"


def test_resume_refuses_other_weights_or_sources(roots):
    state = _mixture(roots).state_dict()
    with pytest.raises(ValueError, match="weights: saved"):
        _mixture(roots, weights=(0.5, 0.5)).load_state_dict(state)
    with pytest.raises(ValueError, match="not a mixture"):
        _mixture(roots).load_state_dict(state["sources"][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_each_source_restarts_alone_and_covers_its_structures_once(roots, workers):
    per_epoch = {0: defaultdict(list), 1: defaultdict(list)}
    epochs_when_b_restarts = []
    finals = []
    for rank in range(2):
        mix = _mixture(roots, workers, rank=rank, world=2, max_atoms=24)
        last_b = 0
        for step, batch in enumerate(mix):
            per_epoch[batch[SOURCE]][batch[SOURCE_EPOCH]].extend(batch[K.IDS])
            if batch[SOURCE] == 1 and batch[SOURCE_EPOCH] != last_b:
                last_b = batch[SOURCE_EPOCH]
                epochs_when_b_restarts.append(mix.epochs[0])
            if step + 1 == 70:
                break
        finals.append(mix.epochs)
        assert finals[-1][1] >= 3 and finals[-1][0] < finals[-1][1]  # epochs advance apart
    assert epochs_when_b_restarts and min(epochs_when_b_restarts) == 0  # A stayed in its epoch
    for source, root in enumerate((roots["a"], roots["b"])):
        complete = range(min(f[source] for f in finals))  # epochs both ranks have finished
        assert len(complete) >= 1
        for epoch in complete:  # both ranks together: every structure once per source epoch
            assert sorted(per_epoch[source][epoch]) == _ids(root), (source, epoch)
