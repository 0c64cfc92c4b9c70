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
# Parameter counts the fits can use as N, by CLI name -> Run attribute. The field
# counts non-embedding parameters (Kaplan et al. 2020): per-species tables and
# per-element baselines grow with the number of elements, not with capacity.
PARAM_MEASURES = {
    "non-embedding": "num_params_non_embedding",
    "total": "num_params",
}
# What a trivial predictor scores on the validation set (summary.json `baseline`),
# by the metric it is the floor of.
BASELINE_METRICS = {
    "val/energy_per_atom_mae": "energy_per_atom_mae",
    "val/forces_mae": "forces_mae",
    "val/stress_mae": "stress_mae",
}
NOT_LEARNED_FRACTION = 0.95  # a run within 5% of the trivial predictor learned nothing


class LoadError(ValueError):
    """An input that cannot be read, naming the file, the record and the field."""


# roles of study.finetune's runs that are not points of a pretraining law
# (python -m analysis.finetune reads them)
FINETUNE_ROLES = ("finetune", "stage1-only", "b-only")


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
        num_params_non_embedding: Parameters without per-species embeddings and
            per-element baselines (None for runs written before the field).
        train_flops: Training FLOPs of the whole run (None before the field; the
            same quantity as `total_flops`).
        convergence: summary.json `convergence` ({"metric", "rel_slope",
            "verdict": "converged" | "still-improving", "window"}), or None.
        tune: The tuned override of a tuned study's run ({"optim.lr": 0.003}),
            empty otherwise; `axes` is then the grid point without it.
        ladder: WSD-ladder role ({"role": "main"} or {"role": "cooldown", "main",
            "decay_at", "branch_step", "cooldown_steps"}), or None.
        baseline: Trivial predictors' validation errors ({"energy_per_atom_mae":
            composition baseline, "forces_mae": zero forces}), empty if unknown.
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
    num_params_non_embedding: float | None = None
    train_flops: float | None = None
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
    convergence: dict[str, Any] | None = None
    tune: dict[str, Any] = field(default_factory=dict)
    ladder: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    baseline: dict[str, float] = field(default_factory=dict)

    @property
    def flops(self) -> float | None:
        """Training FLOPs: `train_flops`, else `total_flops`, else flops/atom x atoms."""
        if self.train_flops:
            return self.train_flops
        if self.total_flops:
            return self.total_flops
        if self.flops_per_atom and self.atoms_seen:
            return self.flops_per_atom * self.atoms_seen
        return None

    def data(self, measure: str) -> float | None:
        """Data seen or trained on, by a `DATA_MEASURES` name."""
        return getattr(self, DATA_MEASURES[measure])

    def params(self, measure: str) -> float | None:
        """The parameter count, by a `PARAM_MEASURES` name."""
        return getattr(self, PARAM_MEASURES[measure])

    @property
    def still_improving(self) -> bool:
        return (self.convergence or {}).get("verdict") == "still-improving"

    @property
    def finetune_stage(self) -> str | None:
        """The role of a fine-tune study's second-stage run (finetune,
        stage1-only, b-only), None for a pretraining or ordinary run."""
        role = (self.budget or {}).get("role")
        return role if role in FINETUNE_ROLES else None

    @property
    def ladder_main(self) -> bool:
        """A WSD ladder's constant-LR main run: never cooled down, so no point of a law."""
        return (self.ladder or {}).get("role") == "main"

    def baseline_of(self, metric: str) -> float | None:
        """The trivial predictor's value of a metric, if the run records it."""
        v = self.baseline.get(BASELINE_METRICS.get(metric, ""))
        return float(v) if v else None

    def not_learned(self, metric: str) -> bool:
        """The metric is within 5% of the trivial predictor's (or worse)."""
        b, v = self.baseline_of(metric), self.metrics.get(metric)
        return b is not None and v is not None and v >= NOT_LEARNED_FRACTION * b


@dataclass
class Settings:
    """How to fit. Attributes mirror the CLI flags."""

    laws: tuple[str, ...] = ("N", "D", "ND", "C")
    form: str = "offset"
    # auto: atoms_seen, or the training-set size if that is all that varies
    data_measure: str = "auto"
    # non-embedding, falling back to total when a run lacks the count
    param_measure: str = "non-embedding"
    # WSD-ladder main runs (constant LR, not cooled down) are no points of a law
    include_ladder_mains: bool = False
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
    param_measure: str = "total"
    # The same law refitted without the still-improving runs: an entry, the reason
    # it could not be fitted, or None when no run of the fit is still improving.
    converged_only: FitEntry | str | None = None
    envelope_of: int | None = None  # L(C): how many runs the envelope was taken over

    @property
    def still_improving(self) -> list[str]:
        return [r.name for r in self.runs if r.still_improving]


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
    # tuned studies: family -> metric -> one selection per grid point
    tuned: dict[str, dict[str, list[dict]]] = field(default_factory=dict)

    @property
    def families(self) -> list[str]:
        return sorted({r.family for r in self.runs if r.finished})

    def entries(self):
        for fam in self.fits.values():
            for laws in fam.values():
                yield from laws.values()
