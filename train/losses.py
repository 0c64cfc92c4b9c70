"""Loss terms on energy per atom, forces and stress (MSE or Huber, each weighted),
and the error sums behind validation metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data_pipelines import schema as K
from train.config import LossConfig, LossTerm
from train.models.base import DIRECT_FORCES, DIRECT_STRESS


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
    plan = [
        ("forces", K.FORCES, K.FORCES),
        ("stress", K.STRESS, K.STRESS),
        ("direct_forces", DIRECT_FORCES, K.FORCES),
        ("direct_stress", DIRECT_STRESS, K.STRESS),
    ]
    for name, key, label in plan:
        if getattr(cfg, name).weight > 0 and key in out:
            parts[name] = _term(*_masked(batch, out, key, label), getattr(cfg, name))
    total = sum(getattr(cfg, name).weight * value for name, value in parts.items())
    return total, {f"train/loss_{k}": v.detach() for k, v in parts.items()}


# Validation sums: for each quantity, sum |err|, sum err^2 and the count of values.
VAL_QUANTITIES = ("energy_per_atom", "forces", "stress", "direct_forces", "direct_stress")


def error_sums(batch: dict, out: dict) -> torch.Tensor:
    """(len(VAL_QUANTITIES), 3) tensor of [sum |e|, sum e^2, count] in float64."""
    rows = []
    n = batch[K.NUM_ATOMS].to(torch.float64)
    e_mask = batch[K.HAS_ENERGY]
    err = {
        "energy_per_atom": (out[K.ENERGY].double()[e_mask] - batch[K.ENERGY].double()[e_mask])
        / n[e_mask],
    }
    for name, key, label in [
        ("forces", K.FORCES, K.FORCES),
        ("stress", K.STRESS, K.STRESS),
        ("direct_forces", DIRECT_FORCES, K.FORCES),
        ("direct_stress", DIRECT_STRESS, K.STRESS),
    ]:
        if key in out:
            pred, target = _masked(batch, {key: out[key].double()}, key, label)
            err[name] = pred - target.double()
    for name in VAL_QUANTITIES:
        e = err.get(name)
        if e is None or e.numel() == 0:
            rows.append(torch.zeros(3, dtype=torch.float64))
        else:
            e = e.detach().reshape(-1).cpu()
            rows.append(
                torch.stack(
                    [
                        e.abs().sum(),
                        e.square().sum(),
                        torch.tensor(float(e.numel()), dtype=torch.float64),
                    ]
                )
            )
    return torch.stack(rows)


def metrics_from_sums(sums: torch.Tensor, prefix: str = "val") -> dict[str, float]:
    """MAE and RMSE per quantity (units: eV/atom, eV/A, eV/A^3)."""
    out = {}
    for k, name in enumerate(VAL_QUANTITIES):
        count = float(sums[k, 2])
        if count > 0:
            out[f"{prefix}/{name}_mae"] = float(sums[k, 0]) / count
            out[f"{prefix}/{name}_rmse"] = (float(sums[k, 1]) / count) ** 0.5
    return out
