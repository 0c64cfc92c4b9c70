"""Exponential moving average of the weights (validation and export use it)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    """Shadow weights w <- d w + (1 - d) p with d = min(decay, (1 + t) / (10 + t)):
    the warm-up keeps short runs (a few hundred steps) from validating what are
    mostly the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        t = self.num_updates
        decay = min(self.decay, (1 + t) / (10 + t))
        for n, p in model.named_parameters():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Temporarily loads the EMA weights into the model."""
        backup = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, sd: dict) -> None:
        self.decay = sd["decay"]
        self.num_updates = sd.get("num_updates", 0)
        self.shadow = {k: v.clone() for k, v in sd["shadow"].items()}
