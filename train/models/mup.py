"""Maximal-update parametrisation (muP) for width-transferable hyper-parameters.

Under the standard parametrisation (SP) the best Adam learning rate shrinks
as a model gets wider: an Adam step moves every weight of a width-n matrix by
about the learning rate, so the change of that layer's output grows like n.
muP (Yang et al., Tensor Programs V, arXiv:2203.03466; CompleteP,
arXiv:2505.01618) rescales initialisation, learning rates and a few forward
multipliers by the width multiplier m = width / base_width so that every
layer's output changes by O(1) per step at any width; hyper-parameters tuned
at the base width then carry over to wider models.

Each parameter has one role, and each role one rule (Adam):

| role   | what                                   | init             | Adam LR | forward |
|--------|----------------------------------------|------------------|---------|---------|
| input  | fixed-size input -> width (embeddings) | as SP            | lr      | as SP   |
| hidden | width -> width matrices                | as SP (1/fan_in) | lr / m  | as SP   |
| output | width -> fixed-size readout            | as SP            | lr      | x 1/m   |
| vector | biases, norm gains                     | width-free       | lr      | as SP   |

The 1/m forward multiplier on the readout with an unscaled LR is the same
model as TP5's output init 1/fan_in^2 with LR / m, written so that m = 1 is
bit-identical to SP. Attention logits use q.k / d_head (times the constant
that matches SP at the base head width) instead of q.k / sqrt(d_head),
because q and k become correlated during training. At m = 1 every rule is
the identity, so a muP model at its base width is the SP model.

Not scaled: Adam's epsilon (readout gradients shrink like 1/m, so at widths
far beyond the base a large epsilon would start to damp them) and AdamW's
weight decay, which torch multiplies by each group's learning rate (hidden
matrices decay m times more slowly per step; the default decay is 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

Parametrization = Literal["standard", "mup"]
PARAMETRIZATIONS: tuple[str, ...] = ("standard", "mup")
Role = Literal["input", "hidden", "output", "vector"]
ROLES: tuple[str, ...] = ("input", "hidden", "output", "vector")

# Adam learning rate of each role is lr * m**exponent. The readout's 1/m lives
# in its forward multiplier, so its raw weight keeps the base learning rate.
LR_EXPONENT: dict[str, int] = {"input": 0, "hidden": -1, "output": 0, "vector": 0}


def check_parametrization(name: str, base_width: int | None) -> None:
    """Raises ValueError on an unknown parametrisation or a bad base width."""
    if name not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be standard or mup, got '{name}'")
    if base_width is not None and base_width < 1:
        raise ValueError(f"mup_base_width must be a positive width, got {base_width}")


def width_multiplier(width: int, base_width: int, parametrization: str) -> float:
    """m = width / base_width under muP; 1 under the standard parametrisation."""
    return width / base_width if parametrization == "mup" else 1.0


def attention_scale(head_dim: int, parametrization: str, base_head_dim: int | None) -> float:
    """Multiplier of the attention logits q.k.

    Args:
        head_dim: query/key width of one head.
        parametrization: "standard" (1/sqrt(head_dim)) or "mup"
            (sqrt(base_head_dim)/head_dim, equal to SP at the base head width).
        base_head_dim: head width at the base width; None: this head width
            (ladders that scale the number of heads keep head_dim fixed).
    """
    if parametrization != "mup":
        return head_dim**-0.5
    base = head_dim if base_head_dim is None else base_head_dim
    return base**0.5 / head_dim


class OutputLinear(nn.Linear):
    """A readout layer whose weight enters the forward pass times `multiplier`.

    With multiplier 1 this is exactly nn.Linear (same parameters, same kernel).
    """

    def __init__(self, in_features: int, out_features: int, multiplier: float = 1.0):
        super().__init__(in_features, out_features)
        self.multiplier = float(multiplier)

    def forward(self, x: Tensor) -> Tensor:
        if self.multiplier == 1.0:
            return super().forward(x)
        return F.linear(x, self.weight * self.multiplier, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, multiplier={self.multiplier:g}"


def module_roles(model: nn.Module, inputs: Iterable[nn.Module] = ()) -> dict[str, str]:
    """The muP role of every parameter of `model`, by the module that owns it.

    Embeddings and the modules in `inputs` (linear maps from a fixed-size input)
    are input layers, OutputLinear the readouts, every other nn.Linear a hidden
    matrix; one-dimensional parameters (biases, norm gains) are vectors.

    Raises:
        TypeError: a parameter that fits none of these (a new layer type must
            declare its role rather than silently get the wrong learning rate).
    """
    input_ids = {id(m) for m in inputs}
    roles: dict[str, str] = {}
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            if p.ndim <= 1:
                roles[full] = "vector"
            elif isinstance(module, nn.Embedding) or id(module) in input_ids:
                roles[full] = "input"
            elif isinstance(module, OutputLinear):
                roles[full] = "output"
            elif isinstance(module, nn.Linear):
                roles[full] = "hidden"
            else:
                raise TypeError(f"muP: no role for parameter '{full}' of {type(module).__name__}")
    return roles


def scale_hidden_biases(model: nn.Module, roles: Mapping[str, str], multiplier: float) -> None:
    """Makes hidden-layer bias init width-independent (that of the base width).

    nn.Linear draws biases from U(+-1/sqrt(fan_in)), which shrinks with width;
    muP wants O(1) vectors, so they are stretched by sqrt(m) (identity at m = 1).
    """
    if multiplier == 1.0:
        return
    for prefix, module in model.named_modules():
        bias = getattr(module, "bias", None)
        if bias is not None and roles.get(f"{prefix}.weight") == "hidden":
            bias.data.mul_(multiplier**0.5)


def parameter_groups(
    model: nn.Module, roles: Mapping[str, str], lr: float, multiplier: float
) -> list[dict]:
    """Optimizer parameter groups with each role's learning rate.

    Args:
        model: the model whose parameters are grouped (order kept within a group).
        roles: parameter name -> role (module_roles).
        lr: the base learning rate (tuned at the base width).
        multiplier: width multiplier m.

    Returns:
        One group per role that has parameters, `input`/`vector` roles first so
        that group 0 carries the configured learning rate (what the loop logs).
        Each group has `params`, `lr` and `mup_role`; LambdaLR schedules each
        group's own `lr`.
    """
    order = ("vector", "input", "hidden", "output")
    buckets: dict[str, list] = {role: [] for role in order}
    for name, p in model.named_parameters():
        buckets[roles[name]].append(p)
    return [
        {"params": ps, "lr": lr * multiplier ** LR_EXPONENT[role], "mup_role": role}
        for role, ps in buckets.items()
        if ps
    ]
