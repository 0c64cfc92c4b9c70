"""The types of a scaling analysis: runs, fit settings, fitted entries, the result.

Only the laws (:mod:`analysis.scaling.laws`) sit below them; loading,
fitting, the frontier, plots, the report and the command all build on them,
so none of those needs another just for a type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analysis.scaling.laws import FitResult

# Data measures the fits can use as D, by CLI name -> Run attribute.
DATA_MEASURES = {
    "atoms_seen": "atoms_seen",
    "structures_seen": "structures_seen",
    "train_atoms": "num_train_atoms",
    "train_structures": "num_train_structures",
}


@dataclass
class Run:
    """One training run: what it was, what it cost, and what it reached.

    Attributes:
        name: Unique name in the table (the run directory relative to its study).
        source: Where it came from (a path, `file.csv:LINE`, a W&B run path).
        family: Model family, e.g. "pet-direct", "mace".
        finished: Whether it finished (only finished runs enter fits).
        reason: Why it is not finished (None when finished).
        warnings: Problems met while reading a run that still counts.
        axes: The sweep's axis values.
        metrics: Final metrics (summary `val/...` keys and `eval/*.json` files).
        history: Validation rows of metrics.jsonl (dicts with `step` and `val/...`).
        flops: Total training FLOPs (`total_flops`, else flops/atom x atoms seen).
    """

    name: str
    source: str
    family: str = "unknown"
    finished: bool = False
    reason: str | None = None
    model: str | None = None
    forces: str | None = None
    size: str | None = None
    seed: int | None = None
    num_params: float | None = None
    flops_per_atom: float | None = None
    flops_per_atom_forward: float | None = None
    total_flops: float | None = None
    structures_seen: float | None = None
    atoms_seen: float | None = None
    wall_time_s: float | None = None
    steps: float | None = None
    num_train_structures: float | None = None
    num_train_atoms: float | None = None
    data_fraction: float | None = None
    axes: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    last_step: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def flops(self) -> float | None:
        if self.total_flops:
            return self.total_flops
        if self.flops_per_atom and self.atoms_seen:
            return self.flops_per_atom * self.atoms_seen
        return None

    def data(self, measure: str) -> float | None:
        """Data seen or trained on, by a `DATA_MEASURES` name."""
        return getattr(self, DATA_MEASURES[measure])


@dataclass
class Settings:
    """How to fit. Attributes mirror the CLI flags."""

    laws: tuple[str, ...] = ("N", "D", "ND")
    form: str = "offset"
    # auto: atoms_seen, or the training-set size if that is all that varies
    data_measure: str = "auto"
    num_bootstrap: int = 1000
    ci_level: float = 0.95
    huber_delta: float = 1e-3
    seed: int = 0
    loo_bootstrap: int = 100
    workers: int = 1


@dataclass
class FitEntry:
    """One fitted law for one family and metric, with what it was fitted to."""

    family: str
    metric: str
    law_name: str
    result: FitResult
    runs: list[Run]
    data_measure: str
    fixed: dict | None = None
    notes: list[str] = field(default_factory=list)
    loo: dict = field(default_factory=dict)
    loo_cv_rmse_log: float | None = None


@dataclass
class Analysis:
    """Everything the report needs."""

    runs: list[Run]
    metrics: list[str]
    settings: Settings
    fits: dict[str, dict[str, dict[str, FitEntry]]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    frontiers: dict[str, dict[str, dict]] = field(default_factory=dict)
    pareto: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    comparisons: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def families(self) -> list[str]:
        return sorted({r.family for r in self.runs if r.finished})

    def entries(self):
        for fam in self.fits.values():
            for laws in fam.values():
                yield from laws.values()
