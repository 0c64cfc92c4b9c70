"""Epoch plans at reduced scale: exactly once, equal shares, deterministic, and a
loader state that does not grow with the data (analysis.bench.plan runs the
same checks at 100M structures on 512 ranks x 8 workers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipelines.loader import LoaderConfig, StreamingLoader, worker_plan
from data_pipelines.plan import check_coverage, epoch_layout, plan_epoch, stream_indices


def _counts(num_shards: int, seed: int = 0) -> np.ndarray:
    # uneven shards, some empty, as convert leaves them at split ends
    counts = np.random.default_rng(seed).integers(0, 900, num_shards)
    counts[::37] = 0
    return counts


def _plans(counts, ranks, workers, window, seed=0, epoch=0, shuffle=True):
    layout = epoch_layout(counts, seed, epoch, shuffle)
    return [plan_epoch(layout, g, ranks * workers, window) for g in range(ranks * workers)]


@pytest.mark.parametrize("window", [1, 300, 10**6])
def test_plan_covers_every_structure_exactly_once_in_equal_shares(window):
    counts = _counts(400)
    ranks, workers = 32, 4
    plans = _plans(counts, ranks, workers, window)
    cover = check_coverage(counts, plans)  # on pieces, as the 100M benchmark does
    assert cover["num_structures"] == counts.sum()
    assert cover["per_worker_max"] - cover["per_worker_min"] <= 1
    per_rank = np.array([p.num_structures for p in plans]).reshape(ranks, workers).sum(axis=1)
    assert per_rank.max() - per_rank.min() <= 1  # equal shares: equal steps up to packing
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    streams = [stream_indices(p, offsets) for p in plans]
    seen = np.bincount(np.concatenate(streams), minlength=int(counts.sum()))
    assert np.all(seen == 1)  # and on materialised ids
    for p, s in zip(plans, streams):
        assert len(s) == p.num_structures
        # a window never holds more than `window` plus one piece (one shard at most)
        assert np.diff(p.window_starts).max(initial=0) < window + counts.max()


def test_plan_is_deterministic_and_reshuffles_by_epoch():
    counts = _counts(50)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def order(epoch, seed=0):
        return np.concatenate([stream_indices(p, offsets)
                               for p in _plans(counts, 2, 2, 200, seed, epoch)])

    assert np.array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))
    assert not np.array_equal(order(0), order(0, seed=1))
    plain = np.concatenate([stream_indices(p, offsets)
                            for p in _plans(counts, 2, 2, 200, shuffle=False)])
    assert np.array_equal(plain, np.arange(counts.sum()))  # no shuffle: manifest order


def test_position_names_one_structure_without_replay():
    counts = _counts(60)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    plan = _plans(counts, 1, 3, 250)[1]
    full = stream_indices(plan, offsets)
    for position in (0, 1, 249, 250, 251, plan.num_structures - 1):
        k = plan.window_of(position)
        assert plan.window_starts[k] <= position < plan.window_starts[k + 1]
        window = np.concatenate([np.arange(offsets[s] + lo, offsets[s] + hi)
                                 for s, lo, hi in plan.window(k)])
        j = position - plan.window_starts[k]
        assert window[plan.window_order(k)[j]] == full[position]
    assert plan.window_of(plan.num_structures) == plan.num_windows


def test_coverage_check_can_fail():
    counts = _counts(40)
    plans = _plans(counts, 2, 2, 100)
    p = plans[1]
    gap = p.pieces.copy()
    gap[0, 1] += 1  # one structure nobody streams
    broken = type(p)(**{**p.__dict__, "pieces": gap})
    with pytest.raises(ValueError, match="covered 0 or 2 times|pieces hold"):
        check_coverage(counts, [plans[0], broken, *plans[2:]])
    with pytest.raises(ValueError, match="range starts"):
        check_coverage(counts, [plans[0], *plans[2:]])


def _manifest(root, num_structures: int, num_shards: int) -> None:
    counts = np.full(num_shards, num_structures // num_shards)
    shards = [{"file": f"train/shard-{k:06d}.tar", "num_structures": int(c),
               "sha256": f"{k:064x}"} for k, c in enumerate(counts)]
    root.mkdir()
    (root / "manifest.json").write_text(
        json.dumps({"pack_size": 8, "splits": {"train": {"shards": shards}}}))


def test_loader_state_does_not_grow_with_the_data(tmp_path):
    """A rank's state mid-epoch is a few integers per worker, at 10^3 or 10^8 structures."""
    sizes = {}
    for n, shards in ((1_000, 10), (100_000_000, 20_000)):
        root = tmp_path / f"n{n}"
        _manifest(root, n, shards)  # plans only: the shards are never read
        loader = StreamingLoader(LoaderConfig(root=str(root), num_workers=4), rank=3,
                                 world_size=8)
        for w in range(4):
            plan = worker_plan(loader.cfg, loader.data, 0, 3, 8, w, 4)
            loader.state.positions[w] = plan.num_structures // 2
        loader.state.batches = 1000
        state = loader.state_dict()
        sizes[n] = len(json.dumps(state))
        again = StreamingLoader(LoaderConfig(root=str(root), num_workers=4), rank=3,
                                world_size=8)
        again.load_state_dict(json.loads(json.dumps(state)))
        assert again.state_dict() == state
    assert sizes[100_000_000] < 1024
    assert sizes[100_000_000] - sizes[1_000] <= 4 * 6  # only the positions' digits grow
