"""Streaming shards into training: exactly once per epoch, resumable mid-epoch.

How one epoch is laid out (all of it a pure function of seed, epoch, rank,
world size and worker count, so every process agrees without talking):

1. The split's shards are shuffled by (seed, epoch) and their structures,
   concatenated in that order, form the epoch's sequence of N structures.
2. The R x K global workers (rank-major, then DataLoader worker) each take one
   contiguous range of that sequence; range sizes differ by at most one. A
   worker opens only the shards its range touches and skips whole packs
   outside it without decoding them.
3. Each worker shuffles its structures through a buffer seeded by
   (seed, epoch, global worker), builds neighbour lists (vesin), packs batches
   by atom and edge budget and collates them.
4. Each batch carries how many structures its worker has consumed; the
   loader keeps the latest count per worker, and which worker's batch the
   DataLoader hands out next, as its state. Resuming replays each worker's
   deterministic stream and skips what was consumed, and the workers before
   the next one in turn send an empty marker first, so the DataLoader (which
   always starts its turn at worker 0) yields the batches the interrupted run
   would have produced, in the same order.

Ranks can end an epoch with different numbers of batches (budgets pack
differently); `equal_steps` pads the ranks that finish first with zero-weight
repeats of their last batch, so collective ops never hang, and counts them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.batching import AtomBudgetBatcher, collate, make_graph
from data_pipelines.dataset import Dataset, open_dataset
from data_pipelines.schema import DataError, Structure
from data_pipelines.subsets import subset_u

# isort: split
# Aliases for callers on other floors; they move to data_pipelines.dataset.
from data_pipelines.dataset import load_manifest, open_stream, resolve  # noqa: F401

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


@dataclass
class EpochPlan:
    """The slice of one epoch that a single global worker streams."""

    shards: list[dict]  # this epoch's shard order
    starts: list[int]  # first structure index of each shard in the epoch sequence
    begin: int
    end: int


def plan_epoch(
    split_info: dict,
    seed: int,
    epoch: int,
    global_worker: int,
    num_global_workers: int,
    shuffle: bool = True,
) -> EpochPlan:
    order = list(split_info["shards"])
    if shuffle:
        perm = _rng(seed, epoch, 7919).permutation(len(order))
        order = [order[i] for i in perm]
    starts = np.concatenate([[0], np.cumsum([s["num_structures"] for s in order])]).tolist()
    total = starts[-1]
    begin = global_worker * total // num_global_workers
    end = (global_worker + 1) * total // num_global_workers
    return EpochPlan(order, starts[:-1], begin, end)


def iter_plan(data: Dataset, plan: EpochPlan, verify: bool = True) -> Iterator[Structure]:
    """Structures of a plan's range in epoch order (before the buffer shuffle)."""
    for shard, start in zip(plan.shards, plan.starts):
        count = shard["num_structures"]
        if start + count <= plan.begin or start >= plan.end:
            continue
        yield from data.read_shard(
            shard, max(plan.begin - start, 0), min(plan.end - start, count), verify=verify
        )


def buffer_shuffle(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = int(rng.integers(size))
        out, buf[k] = buf[k], item
        yield out
    rng.shuffle(buf)
    yield from buf


@dataclass
class LoaderConfig:
    """What the loader needs; units in the names.

    Attributes:
        root: data root (folder, URL prefix or '{path}' template) or a Dataset
            already opened with data_pipelines.dataset.open_dataset (so that
            several loaders share one manifest read and one subset index).
        split: split name in the manifest.
        cutoff: neighbour-list cutoff, Angstrom.
        max_atoms: atom budget per batch.
        max_edges: edge budget per batch (None: unlimited).
        max_structures: structure cap per batch (None: unlimited).
        shuffle: shard + buffer shuffle (False: manifest order).
        buffer_size: structures held by each worker's shuffle buffer.
        seed: shuffle seed (combined with the epoch).
        num_workers: DataLoader worker processes per rank (0: in-process).
        dtype: float dtype of the batch tensors.
        subset_threshold: keep only structures with subset_u(id) <= this
            (data_pipelines.subsets; None keeps all).
        verify_checksums: check each shard against its manifest sha256 as it
            is read, before any of its structures are used. On by default;
            turning it off trades that guarantee for about one hash per byte.
    """

    root: str | Dataset
    split: str = "train"
    cutoff: float = 5.0
    max_atoms: int = 512
    max_edges: int | None = None
    max_structures: int | None = None
    shuffle: bool = True
    buffer_size: int = 1024
    seed: int = 0
    num_workers: int = 0
    dtype: str = "float64"
    subset_threshold: float | None = None
    verify_checksums: bool = True


def worker_stream(
    cfg: LoaderConfig,
    data: Dataset,
    epoch: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    skip: int = 0,
) -> Iterator[Structure]:
    """One global worker's structures for one epoch, shuffled, minus the first `skip`."""
    split_info = data.split(cfg.split)
    workers = max(num_workers, 1)
    g = rank * workers + worker
    plan = plan_epoch(split_info, cfg.seed, epoch, g, world_size * workers, cfg.shuffle)
    stream: Iterator[Structure] = iter_plan(data, plan, verify=cfg.verify_checksums)
    if cfg.subset_threshold is not None and cfg.subset_threshold < 1.0:
        thr = cfg.subset_threshold
        stream = (s for s in stream if subset_u(s.source_id) <= thr)
    if cfg.shuffle:
        stream = buffer_shuffle(stream, cfg.buffer_size, _rng(cfg.seed, epoch, g, 104729))
    for n, s in enumerate(stream):
        if n >= skip:
            yield s


class ShardStream(IterableDataset):
    """The per-rank iterable that DataLoader workers run (batches out)."""

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.data = open_dataset(cfg.root)
        self.epoch = 0
        self.skip: dict[int, int] = {}
        self.phase = 0

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        consumed = self.skip.get(worker, 0)
        if worker < self.phase:
            # DataLoader restarts its round-robin at worker 0; workers that had
            # already delivered in the interrupted round send one empty marker so
            # batches keep the uninterrupted order.
            yield {"_sentinel": True}
        stream = worker_stream(
            self.cfg,
            self.data,
            self.epoch,
            self.rank,
            self.world_size,
            worker,
            num_workers,
            skip=consumed,
        )
        graphs = (make_graph(s, self.cfg.cutoff) for s in stream)
        batcher = AtomBudgetBatcher(self.cfg.max_atoms, self.cfg.max_edges, self.cfg.max_structures)
        dtype = _DTYPES[self.cfg.dtype]
        try:
            for group in batcher(graphs):
                consumed += len(group)
                batch = collate(group, dtype)
                batch["_worker"] = worker
                batch["_consumed"] = consumed
                batch["_epoch"] = self.epoch
                yield batch
        except DataError as err:
            if info is None:
                raise
            # DataLoader re-raises worker errors as RuntimeError (DataError needs
            # four arguments); sent as data, it reaches the caller as itself.
            yield {"_error": [err.file, err.record, err.field, err.reason]}


@dataclass
class LoaderState:
    """Where a rank is in an epoch.

    Attributes:
        epoch: the epoch being streamed.
        consumed: structures each DataLoader worker has put into delivered batches.
        world_size: ranks of the run (a resume must match).
        num_workers: DataLoader workers per rank (a resume must match).
        batches: batches delivered this epoch.
        next_worker: the worker whose batch the DataLoader hands out next: one
            after the last worker that delivered (DataLoader asks workers in
            turn and skips those that have run out), 0 at the start of an epoch.
    """

    epoch: int = 0
    consumed: dict[int, int] = field(default_factory=dict)
    world_size: int = 1
    num_workers: int = 0
    batches: int = 0
    next_worker: int = 0


class StreamingLoader:
    """Epoch iterator over batches with a saveable position.

    Usage: `loader.set_epoch(e); for batch in loader: ...`; `state_dict()` at any
    step and `load_state_dict()` before iterating again resumes mid-epoch.
    """

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.dataset = ShardStream(cfg, rank, world_size)
        self.state = LoaderState(world_size=world_size, num_workers=cfg.num_workers)

    @property
    def data(self) -> Dataset:
        """The opened data root this loader streams."""
        return self.dataset.data

    @property
    def manifest(self) -> dict:
        return self.dataset.data.manifest

    def reset(self) -> None:
        """Back to the start of the current epoch (e.g. for another validation pass)."""
        self.state = LoaderState(self.state.epoch, {}, self.state.world_size,
                                 self.state.num_workers, 0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.state.epoch:
            self.state = LoaderState(epoch, {}, self.state.world_size, self.state.num_workers, 0)

    def __iter__(self) -> Iterator[dict]:
        self.dataset.epoch = self.state.epoch
        self.dataset.skip = dict(self.state.consumed)
        self.dataset.phase = self.state.next_worker
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
            multiprocessing_context="fork" if self.cfg.num_workers else None,
        )
        for batch in loader:
            if batch.get("_sentinel"):
                continue
            if "_error" in batch:
                raise DataError(*batch["_error"])
            worker = batch.pop("_worker")
            self.state.consumed[worker] = batch.pop("_consumed")
            self.state.batches += 1
            # not batches % workers: once a worker runs out the turn skips it
            self.state.next_worker = (worker + 1) % max(self.cfg.num_workers, 1)
            batch.pop("_epoch")
            yield batch

    def state_dict(self) -> dict:
        return {
            "epoch": self.state.epoch,
            "consumed": {str(k): v for k, v in self.state.consumed.items()},
            "world_size": self.state.world_size,
            "num_workers": self.state.num_workers,
            "batches": self.state.batches,
            "next_worker": self.state.next_worker,
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd["world_size"] != self.state.world_size or sd["num_workers"] != self.state.num_workers:
            raise ValueError(
                "cannot resume mid-epoch with a different layout: saved world_size="
                f"{sd['world_size']} num_workers={sd['num_workers']}, now "
                f"{self.state.world_size} and {self.state.num_workers}"
            )
        workers = max(sd["num_workers"], 1)
        self.state = LoaderState(
            sd["epoch"],
            {int(k): v for k, v in sd["consumed"].items()},
            sd["world_size"],
            sd["num_workers"],
            sd.get("batches", 0),
            # states saved before next_worker existed: exact while no worker had run out
            sd.get("next_worker", sd.get("batches", 0) % workers),
        )


def equal_steps(batches: Iterator[dict], group=None) -> Iterator[tuple[dict, bool]]:
    """Yields (batch, is_padding) until every rank is exhausted.

    One all-reduce of a flag per step. A rank that runs out first repeats its
    last batch flagged as padding (the trainer gives it zero weight), so every
    rank takes the same number of optimiser steps. Without an initialised
    process group this is a plain pass-through.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    if not distributed:
        for b in batches:
            yield b, False
        return
    it = iter(batches)
    last = None
    while True:
        b = next(it, None)
        flag = torch.tensor([0 if b is None else 1], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        if flag.item() == 0:
            return
        if b is None:
            if last is None:
                raise RuntimeError(
                    "a rank has no batch at all this epoch; the split is too "
                    "small for this many ranks and workers"
                )
            yield last, True
        else:
            last = b
            yield b, False


def epoch_ids(
    root: str | Dataset,
    split: str,
    rank: int,
    world_size: int,
    workers: int,
    epoch: int,
    seed: int = 0,
    shuffle: bool = True,
) -> list[str]:
    """Ids one rank streams in one epoch (worker by worker), without neighbour lists."""
    data = open_dataset(root)
    cfg = LoaderConfig(root=data, split=split, seed=seed, shuffle=shuffle)
    out = []
    for w in range(max(workers, 1)):
        out.extend(
            s.source_id for s in worker_stream(cfg, data, epoch, rank, world_size, w, workers)
        )
    return out
