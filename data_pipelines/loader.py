"""Streaming shards into training: exactly once per epoch, resumable mid-epoch.

How one epoch is laid out is `data_pipelines.plan`: a pure function of seed,
epoch, shard counts, world size, worker count and window size, so every
process agrees without talking, and a plan is arrays over shards, never over
structures. In short: shards are shuffled by (seed, epoch); each of the
R x K global workers (rank-major, then DataLoader worker) takes one contiguous
range of the concatenated sequence (sizes differ by at most one), cut into
pieces at shard boundaries and grouped into windows of about `buffer_size`
structures; each window is decoded once and streamed in a permuted order.

1. A worker opens only the shards its range touches and skips whole packs
   outside it without decoding them; it holds one window of decoded
   structures at a time.
2. It builds neighbour lists (vesin), packs batches by atom and edge budget
   and collates them.
3. Each batch carries the worker's stream position after its last structure
   (structures dropped by a subset filter count too); the loader keeps the
   latest position per worker, and which worker's batch the DataLoader hands
   out next, as its state: a few integers per worker, whatever the data size.
   Resuming starts each worker at the window holding its position (nothing
   before it is read), and the workers before the next one in turn send an
   empty marker first, so the DataLoader (which always starts its turn at
   worker 0) yields the batches the interrupted run would have produced, in
   the same order.

Ranks can end an epoch with different numbers of batches (budgets pack
differently); `equal_steps` pads the ranks that finish first with zero-weight
repeats of their last batch, so collective ops never hang, and counts them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.batching import AtomBudgetBatcher, collate, make_graph
from data_pipelines.dataset import Dataset, open_dataset
from data_pipelines.plan import EpochPlan, epoch_layout, plan_epoch
from data_pipelines.schema import DataError, Structure
from data_pipelines.subsets import subset_u

# isort: split
# Aliases for callers on other floors; they move to data_pipelines.dataset.
from data_pipelines.dataset import load_manifest, open_stream, resolve  # noqa: F401

_DTYPES = {"float64": torch.float64, "float32": torch.float32}

# What a state's positions mean; states of another plan cannot resume mid-epoch.
PLAN_VERSION = "windows-v1"


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
        shuffle: shard + window shuffle (False: manifest order).
        buffer_size: structures per shuffle window: each worker holds one
            window of decoded structures (at least this many, plus at most one
            shard) and streams it in a permuted order.
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


def shard_counts(data: Dataset, split: str) -> np.ndarray:
    """(num_shards,) structures per shard of a split, manifest order (cached on data)."""
    key = (__name__, split, "counts")
    if key not in data.memo:
        data.memo[key] = np.array(
            [s["num_structures"] for s in data.split(split)["shards"]], dtype=np.int64
        )
    return data.memo[key]


def worker_plan(
    cfg: LoaderConfig, data: Dataset, epoch: int, rank: int, world_size: int, worker: int,
    num_workers: int,
) -> EpochPlan:
    """The plan of one rank's DataLoader worker (num_workers 0 counts as one)."""
    workers = max(num_workers, 1)
    layout = epoch_layout(shard_counts(data, cfg.split), cfg.seed, epoch, cfg.shuffle)
    return plan_epoch(layout, rank * workers + worker, world_size * workers, cfg.buffer_size)


def positioned_stream(
    cfg: LoaderConfig, data: Dataset, plan: EpochPlan, start: int = 0
) -> Iterator[tuple[int, Structure]]:
    """(stream position, structure) of a worker's plan from position `start` on,
    after the subset filter (positions of dropped structures are skipped)."""
    shards = data.split(cfg.split)["shards"]
    thr = cfg.subset_threshold
    keep_all = thr is None or thr >= 1.0
    for k in range(plan.window_of(start), plan.num_windows):
        base = int(plan.window_starts[k])
        if not plan.shuffle:
            # manifest order: stream piece by piece, holding nothing but a pack
            for s, lo, hi in plan.window(k):
                first = max(start - base, 0)
                if first < hi - lo:
                    items = data.read_shard(shards[s], int(lo + first), int(hi),
                                            verify=cfg.verify_checksums)
                    for j, item in enumerate(items, base + first):
                        if keep_all or subset_u(item.source_id) <= thr:
                            yield j, item
                base += int(hi - lo)
            continue
        structures: list[Structure] = []
        for s, lo, hi in plan.window(k):
            structures.extend(
                data.read_shard(shards[s], int(lo), int(hi), verify=cfg.verify_checksums)
            )
        order = plan.window_order(k)
        for j in range(max(start - base, 0), len(order)):
            item = structures[order[j]]
            if keep_all or subset_u(item.source_id) <= thr:
                yield base + j, item


def worker_stream(
    cfg: LoaderConfig,
    data: Dataset,
    epoch: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    start: int = 0,
) -> Iterator[Structure]:
    """One global worker's structures for one epoch, in stream order, from position `start`."""
    plan = worker_plan(cfg, data, epoch, rank, world_size, worker, num_workers)
    for _, s in positioned_stream(cfg, data, plan, start):
        yield s


_PACKED = "_packed_tensors"


def pack_tensors(batch: dict) -> dict:
    """The batch with all its tensors in one ``bytes`` buffer.

    A DataLoader worker hands every tensor over in a shared-memory segment of
    its own (a file descriptor each): for a batch of 15 small tensors that
    cost about 15 ms per batch here, ten times the work of making it. One
    buffer is a single pickled copy (about 0.1 ms for 100 kB).
    """
    layout, chunks, offset = [], [], 0
    out = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            out[key] = value
            continue
        raw = value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()  # any dtype
        layout.append((key, str(value.dtype).removeprefix("torch."), tuple(value.shape), offset))
        pad = (-len(raw)) % 8
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    out[_PACKED] = (b"".join(chunks), layout)
    return out


def unpack_tensors(batch: dict) -> dict:
    """Inverse of pack_tensors (tensors are views of one writable copy)."""
    if _PACKED not in batch:
        return batch
    raw, layout = batch.pop(_PACKED)
    buffer = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else None
    for key, dtype, shape, offset in layout:
        dt = getattr(torch, dtype)
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * torch.empty((), dtype=dt).element_size()
        if nbytes == 0:
            batch[key] = torch.empty(shape, dtype=dt)
            continue
        batch[key] = buffer[offset : offset + nbytes].view(dt).reshape(shape)
    return batch


class ShardStream(IterableDataset):
    """The per-rank iterable that DataLoader workers run (batches out)."""

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.data = open_dataset(cfg.root)
        self.epoch = 0
        self.positions: dict[int, int] = {}
        self.phase = 0

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if worker < self.phase:
            # DataLoader restarts its round-robin at worker 0; workers that had
            # already delivered in the interrupted round send one empty marker so
            # batches keep the uninterrupted order.
            yield {"_sentinel": True}
        try:
            plan = worker_plan(self.cfg, self.data, self.epoch, self.rank, self.world_size,
                               worker, num_workers)
            pending: deque[int] = deque()  # positions of the graphs the batcher holds

            def graphs():
                for pos, s in positioned_stream(self.cfg, self.data, plan,
                                                self.positions.get(worker, 0)):
                    pending.append(pos)
                    yield make_graph(s, self.cfg.cutoff)

            batcher = AtomBudgetBatcher(self.cfg.max_atoms, self.cfg.max_edges,
                                        self.cfg.max_structures)
            dtype = _DTYPES[self.cfg.dtype]
            for group in batcher(graphs()):
                # the batcher has already pulled the graph that opens the next batch
                for _ in range(len(group) - 1):
                    pending.popleft()
                position = pending.popleft() + 1
                batch = collate(group, dtype)
                if info is not None:  # one buffer crosses the process boundary
                    batch = pack_tensors(batch)
                batch["_worker"] = worker
                batch["_position"] = position
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
        positions: each DataLoader worker's stream position after the last
            structure of its delivered batches (data_pipelines.plan).
        world_size: ranks of the run (a resume must match).
        num_workers: DataLoader workers per rank (a resume must match).
        batches: batches delivered this epoch.
        next_worker: the worker whose batch the DataLoader hands out next: one
            after the last worker that delivered (DataLoader asks workers in
            turn and skips those that have run out), 0 at the start of an epoch.
    """

    epoch: int = 0
    positions: dict[int, int] = field(default_factory=dict)
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

    def _fresh(self, epoch: int) -> LoaderState:
        return LoaderState(epoch, {}, self.state.world_size, self.state.num_workers)

    def reset(self) -> None:
        """Back to the start of the current epoch (e.g. for another validation pass)."""
        self.state = self._fresh(self.state.epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.state.epoch:
            self.state = self._fresh(epoch)

    def __iter__(self) -> Iterator[dict]:
        self.dataset.epoch = self.state.epoch
        self.dataset.positions = dict(self.state.positions)
        self.dataset.phase = self.state.next_worker
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
            multiprocessing_context="fork" if self.cfg.num_workers else None,
            # page-locked batches copy to a GPU asynchronously (train.trainer.to_device)
            pin_memory=torch.cuda.is_available(),
        )
        for batch in loader:
            if batch.get("_sentinel"):
                continue
            if "_error" in batch:
                raise DataError(*batch["_error"])
            batch = unpack_tensors(batch)
            worker = batch.pop("_worker")
            self.state.positions[worker] = batch.pop("_position")
            self.state.batches += 1
            # not batches % workers: once a worker runs out the turn skips it
            self.state.next_worker = (worker + 1) % max(self.cfg.num_workers, 1)
            batch.pop("_epoch")
            yield batch

    def _plan_key(self) -> dict:
        # what fixes the meaning of a position besides the layout
        return {"version": PLAN_VERSION, "window": self.cfg.buffer_size,
                "seed": self.cfg.seed, "shuffle": self.cfg.shuffle}

    def state_dict(self) -> dict:
        """The position, a few integers per DataLoader worker (JSON-serialisable)."""
        return {
            "epoch": self.state.epoch,
            "positions": {str(k): v for k, v in self.state.positions.items()},
            "world_size": self.state.world_size,
            "num_workers": self.state.num_workers,
            "batches": self.state.batches,
            "next_worker": self.state.next_worker,
            "plan": self._plan_key(),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restores a position saved by `state_dict` (same layout and plan settings).

        Raises:
            ValueError: naming what differs (world size, workers, window, seed,
                shuffle) or saying that the state comes from an older plan.
        """
        if sd["world_size"] != self.state.world_size or sd["num_workers"] != self.state.num_workers:
            raise ValueError(
                "cannot resume mid-epoch with a different layout: saved world_size="
                f"{sd['world_size']} num_workers={sd['num_workers']}, now "
                f"{self.state.world_size} and {self.state.num_workers}"
            )
        if "positions" not in sd:
            if any(sd.get("consumed", {}).values()):
                raise ValueError(
                    "loader state 'consumed' comes from the buffer-shuffle loader, whose "
                    "epoch order differs: it cannot resume mid-epoch exactly; resume from a "
                    "checkpoint at an epoch boundary or start the epoch again"
                )
            sd = {**sd, "positions": {}, "plan": self._plan_key()}
        saved, now = sd.get("plan", {}), self._plan_key()
        if saved != now:
            diff = ", ".join(f"{k}: saved {saved.get(k)!r}, now {v!r}"
                             for k, v in now.items() if saved.get(k) != v)
            raise ValueError(f"cannot resume mid-epoch with other plan settings ({diff})")
        self.state = LoaderState(
            sd["epoch"],
            {int(k): v for k, v in sd["positions"].items()},
            sd["world_size"],
            sd["num_workers"],
            sd.get("batches", 0),
            sd.get("next_worker", 0),
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
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend(group) == "nccl"
        else torch.device("cpu")
    )
    it = iter(batches)
    last = None
    while True:
        b = next(it, None)
        # NCCL takes only GPU tensors; gloo only host ones
        flag = torch.tensor([0 if b is None else 1], dtype=torch.int64, device=device)
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
    buffer_size: int = 1024,
) -> list[str]:
    """Ids one rank streams in one epoch (worker by worker), without neighbour lists."""
    data = open_dataset(root)
    cfg = LoaderConfig(root=data, split=split, seed=seed, shuffle=shuffle,
                       buffer_size=buffer_size)
    out = []
    for w in range(max(workers, 1)):
        out.extend(
            s.source_id for s in worker_stream(cfg, data, epoch, rank, world_size, w, workers)
        )
    return out
