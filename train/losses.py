"""Loss terms on energy per atom, forces and stress (MSE or Huber, each weighted),
and the error sums behind validation metrics."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from data_pipelines import schema as K
from train.config import LossConfig, LossTerm, TrainConfig
from train.models.base import DIRECT_FORCES, DIRECT_STRESS
from train.optim import decay_start


def _term(pred: torch.Tensor, target: torch.Tensor, t: LossTerm) -> torch.Tensor:
    if pred.numel() == 0:
        return pred.sum() * 0.0
    if t.kind == "mse":
        return F.mse_loss(pred, target)
    return F.huber_loss(pred, target, delta=t.delta)


def _masked(batch: dict, out: dict, key: str, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and label rows of the structures that carry the label."""
    pred, target = out[key], batch[label].to(out[key].dtype)
    if label == K.FORCES:
        mask = batch[K.HAS_FORCES][batch[K.BATCH]]
    elif label == K.STRESS:
        mask = batch[K.HAS_STRESS]
    else:
        mask = batch[K.HAS_ENERGY]
    return pred[mask], target[mask]


def compute_loss(batch: dict, out: dict, cfg: LossConfig) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the active terms; returns (loss, {name: value})."""
    n = batch[K.NUM_ATOMS].to(out[K.ENERGY].dtype)
    mask = batch[K.HAS_ENERGY]
    parts = {
        "energy": _term(
            out[K.ENERGY][mask] / n[mask], batch[K.ENERGY].to(n.dtype)[mask] / n[mask], cfg.energy
        ),
    }
    for name, key, label in _LABELLED:
        if getattr(cfg, name).weight > 0 and key in out:
            parts[name] = _term(*_masked(batch, out, key, label), getattr(cfg, name))
    total = sum(getattr(cfg, name).weight * value for name, value in parts.items())
    return total, {f"train/loss_{k}": v.detach() for k, v in parts.items()}


def decay_loss(cfg: TrainConfig, budget) -> tuple[LossConfig, int | None]:
    """The loss of the decay phase (``loss.decay_weights`` over ``cfg.loss``) and
    its first step, or (cfg.loss, None) when the weights never change."""
    weights = dict(cfg.loss.decay_weights)
    start = decay_start(replace(cfg.schedule, total_steps=budget.schedule_steps),
                        budget.max_steps)
    if not weights or start is None:
        return cfg.loss, None
    terms = {name: replace(getattr(cfg.loss, name), weight=float(w)) for name, w in weights.items()}
    return replace(cfg.loss, **terms), start


# Validation quantities, in the order of ErrorSums' rows, and their units.
VAL_QUANTITIES = ("energy_per_atom", "forces", "stress", "direct_forces", "direct_stress")
VAL_UNITS = {
    "energy_per_atom": "eV/atom",
    "forces": "eV/A",
    "stress": "eV/A^3",
    "direct_forces": "eV/A",
    "direct_stress": "eV/A^3",
}
_LABELLED = (
    ("forces", K.FORCES, K.FORCES),
    ("stress", K.STRESS, K.STRESS),
    ("direct_forces", DIRECT_FORCES, K.FORCES),
    ("direct_stress", DIRECT_STRESS, K.STRESS),
)


@dataclass
class ErrorSums:
    """Running sums behind the validation metrics, one row per quantity.

    ``table[VAL_QUANTITIES.index(q)]`` holds ``[sum |e|, sum e^2, count]`` of
    quantity ``q`` in float64; sums add across batches and across ranks (one
    all-reduce of the table), so MAE and RMSE come out exact whatever the split.
    """

    table: torch.Tensor = field(
        default_factory=lambda: torch.zeros(len(VAL_QUANTITIES), 3, dtype=torch.float64)
    )

    @classmethod
    def of_batch(cls, batch: dict, out: dict) -> ErrorSums:
        """The sums of one batch's errors (prediction ``out`` against its labels)."""
        n = batch[K.NUM_ATOMS].to(torch.float64)
        e_mask = batch[K.HAS_ENERGY]
        err = {
            "energy_per_atom": (out[K.ENERGY].double()[e_mask] - batch[K.ENERGY].double()[e_mask])
            / n[e_mask],
        }
        for name, key, label in _LABELLED:
            if key in out:
                pred, target = _masked(batch, {key: out[key].double()}, key, label)
                err[name] = pred - target.double()
        sums = cls()
        for row, name in enumerate(VAL_QUANTITIES):
            e = err.get(name)
            if e is not None and e.numel() > 0:
                e = e.detach().reshape(-1).cpu()
                sums.table[row, 0] = e.abs().sum()
                sums.table[row, 1] = e.square().sum()
                sums.table[row, 2] = float(e.numel())
        return sums

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(self.table + other.table)

    def count(self, quantity: str) -> int:
        """How many values of ``quantity`` were summed (structures for energy)."""
        return int(self.table[VAL_QUANTITIES.index(quantity), 2])

    def metrics(self, prefix: str = "val") -> dict[str, float]:
        """MAE and RMSE per quantity that has values (units: VAL_UNITS)."""
        out = {}
        for row, name in enumerate(VAL_QUANTITIES):
            abs_sum, sq_sum, count = (float(v) for v in self.table[row])
            if count > 0:
                out[f"{prefix}/{name}_mae"] = abs_sum / count
                out[f"{prefix}/{name}_rmse"] = (sq_sum / count) ** 0.5
        return out


def trivial_sums(batches, baseline: torch.Tensor) -> ErrorSums:
    """Error sums of the trivial predictors, the floor a learned model must clear:
    the composition baseline for energy (``baseline``: eV per atom, indexed by
    atomic number; (num_heads, 119) with heads, by each structure's "head"),
    zero forces and zero stress."""
    baseline = baseline.detach().double().cpu()
    sums = ErrorSums()
    for batch in batches:
        num = len(batch[K.NUM_ATOMS])
        energy = torch.zeros(num, dtype=torch.float64)
        table = baseline if baseline.ndim == 1 else baseline[batch["head"][batch[K.BATCH]]]
        per_atom = table[batch[K.SPECIES]] if baseline.ndim == 1 else table.gather(
            1, batch[K.SPECIES][:, None]).squeeze(1)
        energy.index_add_(0, batch[K.BATCH], per_atom)
        out = {
            K.ENERGY: energy,
            K.FORCES: torch.zeros_like(batch[K.POSITIONS], dtype=torch.float64),
            K.STRESS: torch.zeros(num, 3, 3, dtype=torch.float64),
        }
        sums = sums + ErrorSums.of_batch(batch, out)
    return sums
