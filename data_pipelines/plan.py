"""One epoch's plan: which structures each global worker streams, in which order.

Everything here is a pure function of the shards' structure counts, the seed,
the epoch, the number of global workers and the window size, and reads no
data: every process computes the same plan without talking, and a plan is a
few arrays over shards and pieces, never a per-structure order, so 100M
structures in 20,000 shards cost what 20,000 shards cost.

1. Shard order: the split's shards permuted by (seed, epoch); their
   structures, concatenated in that order, form the epoch sequence of N.
2. Worker ranges: global worker g of W (rank-major, then DataLoader worker)
   takes positions [g N // W, (g + 1) N // W) of that sequence; sizes differ
   by at most one, and so do the ranks' totals (a rank's K workers are one
   contiguous range [r K N // W, (r + 1) K N // W)).
3. Pieces: a worker's range cut at shard boundaries, rows (shard, begin, end)
   with begin and end counted within the shard.
4. Windows: consecutive whole pieces, about `window` structures each. A worker
   decodes one window at a time and streams it in an order permuted by
   (seed, epoch, g, window index), so a batch mixes structures from every
   shard of its window, and a position in the worker's stream names one
   structure: a resume reads the window holding the position and nothing
   before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


@dataclass(frozen=True)
class EpochLayout:
    """The epoch's shard order.

    Attributes:
        order: (num_shards,) int64 manifest index of the epoch's k-th shard.
        starts: (num_shards + 1,) int64 epoch position where the k-th shard
            begins; the last entry is the number of structures N.
        seed: shuffle seed.
        epoch: the epoch.
        shuffle: whether shards and windows are permuted (False: manifest order).
    """

    order: np.ndarray
    starts: np.ndarray
    seed: int
    epoch: int
    shuffle: bool

    @property
    def num_structures(self) -> int:
        return int(self.starts[-1])


def epoch_layout(counts, seed: int, epoch: int, shuffle: bool = True) -> EpochLayout:
    """The shard order of one epoch.

    Args:
        counts: (num_shards,) structures per shard, in manifest order.
        seed: shuffle seed.
        epoch: the epoch (a new epoch reshuffles).
        shuffle: False keeps manifest order.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if shuffle:
        order = _rng(seed, epoch, 7919).permutation(len(counts)).astype(np.int64)
    else:
        order = np.arange(len(counts), dtype=np.int64)
    starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts[order], out=starts[1:])
    return EpochLayout(order, starts, int(seed), int(epoch), bool(shuffle))


@dataclass(frozen=True)
class EpochPlan:
    """The share of one epoch that a single global worker streams.

    Attributes:
        global_worker: rank * workers_per_rank + worker.
        num_global_workers: ranks x workers per rank.
        begin: first epoch position of the worker's range.
        end: one past its last.
        pieces: (num_pieces, 3) int64 rows (manifest shard index, first
            structure, one past the last), positions within the shard, in
            stream order.
        window_pieces: (num_windows + 1,) int64 first piece of each window;
            the last entry is num_pieces.
        window_starts: (num_windows + 1,) int64 stream position where each
            window begins; the last entry is num_structures.
        seed: shuffle seed.
        epoch: the epoch.
        shuffle: whether windows are permuted.
    """

    global_worker: int
    num_global_workers: int
    begin: int
    end: int
    pieces: np.ndarray
    window_pieces: np.ndarray
    window_starts: np.ndarray
    seed: int
    epoch: int
    shuffle: bool

    @property
    def num_structures(self) -> int:
        return self.end - self.begin

    @property
    def num_windows(self) -> int:
        return len(self.window_starts) - 1

    def window_of(self, position: int) -> int:
        """The window holding stream position `position` (num_windows past the end)."""
        if position >= self.num_structures:
            return self.num_windows
        return int(np.searchsorted(self.window_starts, position, side="right")) - 1

    def window(self, k: int) -> np.ndarray:
        """(num_pieces_in_window, 3) pieces of window k (see `pieces`)."""
        return self.pieces[self.window_pieces[k] : self.window_pieces[k + 1]]

    def window_order(self, k: int) -> np.ndarray:
        """Stream order of window k: j-th streamed = structure order[j] of the window
        (its pieces' structures concatenated); identity without shuffling."""
        size = int(self.window_starts[k + 1] - self.window_starts[k])
        if not self.shuffle:
            return np.arange(size, dtype=np.int64)
        return _rng(self.seed, self.epoch, self.global_worker, k, 104729).permutation(size)


def plan_epoch(
    layout: EpochLayout, global_worker: int, num_global_workers: int, window: int
) -> EpochPlan:
    """One global worker's plan (see the module docstring).

    Args:
        layout: the epoch's shard order (`epoch_layout`), shared by all workers.
        global_worker: rank * workers_per_rank + worker.
        num_global_workers: ranks x workers per rank.
        window: structures per shuffle window (a window is whole pieces, so it
            holds at least this many, plus at most one piece; the last fewer).
    """
    if not 0 <= global_worker < num_global_workers:
        raise ValueError(f"global worker {global_worker} is not in [0, {num_global_workers})")
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    n = layout.num_structures
    begin = global_worker * n // num_global_workers
    end = (global_worker + 1) * n // num_global_workers
    starts = layout.starts
    first = max(int(np.searchsorted(starts, begin, side="right")) - 1, 0)
    last = int(np.searchsorted(starts, end, side="left"))
    k = np.arange(first, min(last, len(layout.order)), dtype=np.int64)
    lo = np.maximum(starts[k], begin) - starts[k]
    hi = np.minimum(starts[k + 1], end) - starts[k]
    keep = hi > lo  # empty shards, and the empty range of a worker past N
    pieces = np.stack([layout.order[k][keep], lo[keep], hi[keep]], axis=1).reshape(-1, 3)
    cum = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(pieces[:, 2] - pieces[:, 1], out=cum[1:])
    # a window closes after the piece that reaches or crosses a multiple of `window`
    closes = np.flatnonzero(cum[1:] // window > cum[:-1] // window) + 1
    bounds = np.concatenate([[0], closes])
    if bounds[-1] != len(pieces):
        bounds = np.append(bounds, len(pieces))
    return EpochPlan(
        global_worker, num_global_workers, begin, end, pieces, bounds.astype(np.int64),
        cum[bounds], layout.seed, layout.epoch, layout.shuffle,
    )


def stream_indices(plan: EpochPlan, shard_offsets: np.ndarray) -> np.ndarray:
    """Manifest-order index of every structure the worker streams, in stream order.

    Materialises the worker's whole order: for checks at moderate scale, not
    for the loader (which needs one window at a time).

    Args:
        plan: the worker's plan.
        shard_offsets: (num_shards,) manifest-order index of each shard's first structure.
    """
    out = []
    for k in range(plan.num_windows):
        idx = np.concatenate(
            [np.arange(shard_offsets[s] + lo, shard_offsets[s] + hi) for s, lo, hi in
             plan.window(k)]
        )
        out.append(idx[plan.window_order(k)])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def check_coverage(counts, plans: list[EpochPlan]) -> dict:
    """Checks that the plans of all global workers cover every structure exactly once.

    Works on pieces, not structures: the pieces of all workers, sorted by
    shard, must tile each shard [0, count) without gap or overlap, and the
    workers' ranges must tile [0, N) in order with sizes differing by at most
    one. (Within a window, `window_order` is a permutation by construction.)

    Args:
        counts: (num_shards,) structures per shard, manifest order.
        plans: every global worker's plan, in global-worker order.

    Returns:
        {"num_structures", "num_pieces", "per_worker_min", "per_worker_max"}.

    Raises:
        ValueError: naming the worker or shard where coverage fails.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    edge = 0
    for g, p in enumerate(plans):
        if p.global_worker != g or p.begin != edge:
            raise ValueError(f"worker {g}: range starts at {p.begin}, expected {edge}")
        if int(p.window_starts[-1]) != p.num_structures:
            raise ValueError(f"worker {g}: pieces hold {int(p.window_starts[-1])} structures, "
                             f"its range {p.num_structures}")
        edge = p.end
    if edge != total:
        raise ValueError(f"workers' ranges end at {edge}, the split holds {total}")
    pieces = np.concatenate([p.pieces for p in plans]) if plans else np.zeros((0, 3), np.int64)
    pieces = pieces[np.lexsort((pieces[:, 1], pieces[:, 0]))]
    shard, lo, hi = pieces[:, 0], pieces[:, 1], pieces[:, 2]
    new_shard = np.ones(len(pieces), dtype=bool)
    new_shard[1:] = shard[1:] != shard[:-1]
    # within a shard each piece starts where the previous ended; each shard starts at 0
    expected_lo = np.where(new_shard, 0, np.roll(hi, 1))
    bad = np.flatnonzero(lo != expected_lo)
    if len(bad):
        j = bad[0]
        raise ValueError(f"shard {shard[j]}: structures from {expected_lo[j]} to {lo[j]} "
                         "are covered 0 or 2 times")
    ends = np.zeros(len(counts), dtype=np.int64)
    last = np.ones(len(pieces), dtype=bool)
    last[:-1] = new_shard[1:]
    ends[shard[last]] = hi[last]
    short = np.flatnonzero(ends != counts)
    if len(short):
        s = short[0]
        raise ValueError(f"shard {s}: covered up to {ends[s]} of {counts[s]} structures")
    sizes = np.array([p.num_structures for p in plans])
    if len(sizes) and sizes.max() - sizes.min() > 1:
        raise ValueError(f"worker ranges differ by {sizes.max() - sizes.min()} structures")
    return {
        "num_structures": total,
        "num_pieces": len(pieces),
        "per_worker_min": int(sizes.min()) if len(sizes) else 0,
        "per_worker_max": int(sizes.max()) if len(sizes) else 0,
    }
