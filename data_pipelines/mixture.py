"""Dataset mixtures: several sources, one stream of batches, weights held over any window.

    mix = MixtureLoader([MixtureSource(cfg_a, 0.7), MixtureSource(cfg_b, 0.3)],
                        rank=rank, world_size=world_size, seed=seed)
    for batch in mix:          # endless: the trainer stops at its step budget
        batch["source"], batch["source_epoch"], batch["head"]
    mix.seen                   # batches, structures, atoms per source (this rank)
    mix.state_dict(); mix.load_state_dict(sd)   # exact resume mid-mixture

Each source is its own `StreamingLoader` (its own Dataset, epoch plan and
DataLoader workers), so within a source everything the loader promises holds:
exactly once per source epoch, split by rank and worker, exact resume. Each
batch is packed from one source's stream. A source that runs out on a rank
starts its own next epoch there; the other sources go on where they are, so
source epochs advance separately.

Which source step t of rank r draws from is a pure function of (seed, t, r,
world size, weights), never of global `random` or of history: a golden-ratio
(Weyl) sequence u = frac(phase(seed) + r / R + t * (sqrt(5) - 1) / 2), and the
source is the weight interval u falls in. Over any n consecutive steps a
source's count stays within a few batches of n * weight (a low-discrepancy
sequence: the error grows like log n, not like sqrt n as i.i.d. draws do), and
at any one step the R ranks' points are 1/R apart, so about R * weight ranks
draw from each source. The state is the step and each source's loader state.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from data_pipelines import schema as K
from data_pipelines.batching import with_head
from data_pipelines.loader import LoaderConfig, StreamingLoader

# Batch keys the mixture adds (plain ints, not tensors).
SOURCE = "source"  # int: index of the source the batch came from (order of `sources`)
SOURCE_EPOCH = "source_epoch"  # int: that source's epoch the batch belongs to

_ONE = 1 << 64  # fixed point: the schedule works in integers, the same on every machine
_GOLDEN = round((math.sqrt(5) - 1) / 2 * _ONE) | 1


@dataclass
class MixtureSource:
    """One source of a mixture.

    Attributes:
        cfg: its loader settings (root, split, budgets, seed, workers, ...).
        weight: its share of batches (weights are normalised; 0 never draws it).
        name: how errors and the state name it (default: the root).
        head: index of the model head its structures train (batch key "head",
            data_pipelines.batching.HEAD); 0 for a single-head model.
    """

    cfg: LoaderConfig
    weight: float
    name: str | None = None
    head: int = 0


def _phase(seed: int) -> int:
    digest = hashlib.sha256(f"mixture:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def thresholds(weights: Sequence[float]) -> list[int]:
    """Cumulative weights in 64-bit fixed point; the last is 2^64.

    Raises:
        ValueError: a weight is negative or not finite, or none is positive.
    """
    if not weights:
        raise ValueError("a mixture needs at least one source")
    bad = [w for w in weights if not (math.isfinite(w) and w >= 0)]
    total = math.fsum(weights)
    if bad or total <= 0:
        raise ValueError(f"mixture weights must be finite, >= 0 and not all 0, got "
                         f"{list(weights)}")
    out, acc = [], 0.0
    for w in weights:
        acc += w
        out.append(min(round(acc / total * _ONE), _ONE))
    out[-1] = _ONE
    return out


def source_of(cum: Sequence[int], seed: int, step: int, rank: int = 0,
              world_size: int = 1) -> int:
    """The source that step `step` of rank `rank` draws from (see the module docstring).

    Args:
        cum: `thresholds(weights)`.
        seed: the mixture's seed.
        step: the rank's batch count so far (0 for its first batch).
        rank: this rank.
        world_size: ranks of the run.
    """
    u = (_phase(seed) + rank * (_ONE // world_size) + step * _GOLDEN) % _ONE
    # the first threshold above u; a zero-weight source's interval is empty, never hit
    return bisect_right(cum, u)


class MixtureLoader:
    """Batches from several sources by weight, with a saveable position.

    Iterating never ends by itself: each source restarts its own epoch when it
    runs out, so the caller stops at its step (or atom) budget. There is no
    mixture-wide epoch; `epochs` has each source's.

    Args:
        sources: the sources, in the order their index (`batch["source"]`) names.
        rank: this rank.
        world_size: ranks of the run.
        seed: the schedule's seed (each source's shuffle seed is its cfg.seed).
    """

    def __init__(self, sources: Sequence[MixtureSource], rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        self.sources = list(sources)
        self.weights = [float(s.weight) for s in self.sources]
        self.cum = thresholds(self.weights)
        self.names = [s.name or str(getattr(s.cfg.root, "root", s.cfg.root))
                      for s in self.sources]
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.loaders = [StreamingLoader(s.cfg, rank, world_size) for s in self.sources]
        self.step = 0
        self.seen = [_zero_counts() for _ in self.sources]

    @property
    def epochs(self) -> list[int]:
        """The epoch each source is in on this rank."""
        return [loader.state.epoch for loader in self.loaders]

    def source_of(self, step: int) -> int:
        """The source this rank's step `step` draws from."""
        return source_of(self.cum, self.seed, step, self.rank, self.world_size)

    def _next(self, i: int, its: list[Iterator[dict] | None]) -> dict:
        loader = self.loaders[i]
        for restarted in (False, True):
            if its[i] is None:
                its[i] = iter(loader)
            batch = next(its[i], None)
            if batch is not None:
                return batch
            its[i] = None
            if not restarted:  # this source's epoch is done here: only it moves on
                loader.set_epoch(loader.state.epoch + 1)
        cfg = self.sources[i].cfg
        raise ValueError(
            f"mixture source {i} ({self.names[i]}): split '{cfg.split}' gives rank "
            f"{self.rank} of {self.world_size} no batch in epoch {loader.state.epoch}; "
            "it is empty or too small for this many ranks and workers"
        )

    def __iter__(self) -> Iterator[dict]:
        its: list[Iterator[dict] | None] = [None] * len(self.loaders)
        try:
            while True:
                i = self.source_of(self.step)
                batch = self._next(i, its)
                batch[SOURCE] = i
                batch[SOURCE_EPOCH] = self.loaders[i].state.epoch
                with_head(batch, self.sources[i].head)
                seen = self.seen[i]
                seen["batches"] += 1
                seen["structures"] += len(batch[K.IDS])
                seen["atoms"] += int(batch[K.NUM_ATOMS].sum())
                self.step += 1
                yield batch
        finally:
            for it in its:  # shuts the sources' DataLoader workers down now
                if it is not None:
                    it.close()

    def state_dict(self) -> dict:
        """The step, each source's loader state and counts (JSON-serialisable).

        Keys: "kind" ("mixture"), "step" (batches this rank has drawn), "seed",
        "weights", "names", "sources" (each source's StreamingLoader.state_dict),
        "seen" (per source: batches, structures, atoms on this rank).
        """
        return {
            "kind": "mixture",
            "step": self.step,
            "seed": self.seed,
            "weights": list(self.weights),
            "names": list(self.names),
            "sources": [loader.state_dict() for loader in self.loaders],
            "seen": [dict(s) for s in self.seen],
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restores a position saved by `state_dict` (same sources, weights and seed).

        Raises:
            ValueError: naming what differs, or what a source's loader refuses.
        """
        if sd.get("kind") != "mixture":
            raise ValueError("not a mixture loader state (no 'kind': 'mixture'); a single "
                             "source's state goes to StreamingLoader.load_state_dict")
        now = {"names": self.names, "weights": self.weights, "seed": self.seed}
        diff = [f"{k}: saved {sd.get(k)!r}, now {v!r}" for k, v in now.items()
                if sd.get(k) != v]
        if diff:
            raise ValueError("cannot resume a mixture with other sources, weights or seed ("
                             + "; ".join(diff) + ")")
        for i, (loader, sub) in enumerate(zip(self.loaders, sd["sources"])):
            try:
                loader.load_state_dict(sub)
            except ValueError as err:
                raise ValueError(f"mixture source {i} ({self.names[i]}): {err}") from None
        self.step = int(sd["step"])
        self.seen = [{k: int(v) for k, v in s.items()} for s in sd["seen"]]


def _zero_counts() -> dict[str, int]:
    return {"batches": 0, "structures": 0, "atoms": 0}
