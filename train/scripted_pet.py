"""PET as TorchScript: a twin of ``PET.atom_outputs`` over the same weights.

The eager PET is not scriptable as it stands (a dataclass graph, ``super()``
calls in its norms and readouts, tensor unpacking in its attention).
:class:`PETCore` repeats ``PET.atom_outputs`` step for step and keeps PET's own
``TransformerBlock``, ``SwiGLU`` and readout modules, with the few leaves
TorchScript refuses (``RMSNorm`` and ``OutputLinear`` subclasses calling
``super().forward``, ``CutoffAttention``) swapped for scriptable leaves over
the same parameters. A change to PET's blocks is followed; a change to
``atom_outputs`` or to the geometry helpers must be repeated here (the tests
compare both on the same weights, output by output).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.models.pet import PET, CutoffAttention, GNNLayer, geometry_features

# as in train.models.pet: the floor of a cutoff factor before its log
_MIN_FACTOR = 1e-15


# ---- geometry helpers (TorchScript versions of train.models.geometry) ------------------


def _switch(r: Tensor, cutoff: Tensor, width: float) -> Tensor:
    """geometry.cosine_switch with a tensor cutoff."""
    x = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


def _switch_at(r: Tensor, cutoff: float, width: float) -> Tensor:
    """geometry.cosine_switch with a scalar cutoff."""
    x = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


def _adaptive_cutoffs(
    r: Tensor,
    edge_i: Tensor,
    num_atoms: int,
    max_cutoff: float,
    min_cutoff: float,
    width: float,
    target: float,
    num_candidates: int,
    softness: float,
) -> Tensor:
    """geometry.adaptive_cutoffs."""
    grid = torch.linspace(min_cutoff, max_cutoff, num_candidates, dtype=r.dtype, device=r.device)
    weights = _switch(r[:, None], grid[None, :], width)
    counts = r.new_zeros(num_atoms, num_candidates).index_add_(0, edge_i, weights)
    logits = -0.5 * ((counts - target) / softness) ** 2
    return torch.softmax(logits, dim=1) @ grid


def _edge_key(a: Tensor, b: Tensor, s: Tensor, num_atoms: int, bound: int) -> Tensor:
    radix = 2 * bound + 1
    s = s + bound
    return ((a * num_atoms + b) * radix + s[:, 0]) * radix**2 + s[:, 1] * radix + s[:, 2]


def _reverse_edges(edge_i: Tensor, edge_j: Tensor, shifts: Tensor, num_atoms: int) -> Tensor:
    """geometry.reverse_edge_index: index of the edge (j, i, -S), -1 when absent."""
    if edge_i.numel() == 0:
        return edge_i.clone()
    bound = int(shifts.abs().max()) if shifts.numel() > 0 else 0
    forward = _edge_key(edge_i, edge_j, shifts, num_atoms, bound)
    backward = _edge_key(edge_j, edge_i, -shifts, num_atoms, bound)
    order = torch.argsort(forward)
    pos = torch.searchsorted(forward[order], backward).clamp(max=forward.numel() - 1)
    found = forward[order][pos] == backward
    return torch.where(found, order[pos], torch.full_like(pos, -1))


# ---- scriptable leaves over PET's parameters -------------------------------------------


class _RMSNorm(nn.Module):
    """An nn.RMSNorm subclass's forward (normalise in the weight's precision)."""

    def __init__(self, norm: nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.normalized_shape = [int(n) for n in norm.normalized_shape]
        self.eps: float | None = norm.eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.to(self.weight.dtype), self.normalized_shape, self.weight, self.eps)


class _ScaledLinear(nn.Module):
    """A linear layer whose weight enters times a constant (muP's OutputLinear)."""

    def __init__(self, linear: nn.Linear, multiplier: float):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.multiplier = float(multiplier)

    def forward(self, x: Tensor) -> Tensor:
        if self.multiplier == 1.0:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight * self.multiplier, self.bias)


class _Attention(nn.Module):
    """CutoffAttention.forward without tensor unpacking."""

    def __init__(self, attention: CutoffAttention):
        super().__init__()
        self.num_heads = attention.num_heads
        self.qkv = attention.qkv
        self.out = attention.out
        self.scale: float | None = getattr(attention, "scale", None)

    def forward(self, x: Tensor, bias: Tensor, fused: bool) -> Tensor:
        n, t, d = x.shape[0], x.shape[1], x.shape[2]
        h = self.num_heads
        qkv = self.qkv(x).view(n, t, 3, h, d // h)
        if fused:
            parts = qkv.permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(
                parts[0],
                parts[1],
                parts[2],
                attn_mask=bias[:, None, None, :].to(parts.dtype),
                scale=self.scale,
            )
            return self.out(y.transpose(1, 2).reshape(n, t, d))
        parts = qkv.permute(2, 0, 3, 1, 4).reshape(3, n * h, t, d // h)
        q, k, v = parts[0], parts[1], parts[2]
        mask = bias[:, None, None, :].expand(n, h, 1, t).reshape(n * h, 1, t).to(q.dtype)
        scale = self.scale
        alpha = float(d // h) ** -0.5 if scale is None else scale
        scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=alpha)
        y = torch.bmm(torch.softmax(scores, dim=-1), v)
        return self.out(y.view(n, h, t, d // h).transpose(1, 2).reshape(n, t, d))


def _scriptable_leaves(module: nn.Module) -> nn.Module:
    """``module`` with every leaf TorchScript refuses replaced, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, CutoffAttention):
            replacement: nn.Module = _Attention(child)
        elif isinstance(child, nn.RMSNorm) and type(child) is not nn.RMSNorm:
            replacement = _RMSNorm(child)
        elif isinstance(child, nn.Linear) and type(child) is not nn.Linear:
            replacement = _ScaledLinear(child, getattr(child, "multiplier", 1.0))
        else:
            replacement = _scriptable_leaves(child)
        setattr(module, name, replacement)
    return module


class _Tokens(nn.Module):
    """GNNLayer.tokens: input tokens from geometry and species (first layer) or message."""

    def __init__(self, layer: GNNLayer):
        super().__init__()
        self.geometry = layer.geometry
        self.compress_in = layer.compress[0]
        self.compress_out = layer.compress[2]
        self.width = int(layer.geometry.out_features)
        species = layer.neighbour_species
        # later layers hear the species through the message: an empty table
        self.species_weight = (
            species.weight
            if species is not None
            else nn.Parameter(torch.zeros(0, self.width), requires_grad=False)
        )

    def forward(self, geometry_in: Tensor, species_j: Tensor, message: Tensor | None) -> Tensor:
        d = self.width
        w_geo = self.compress_in.weight[:, :d]
        w_partner = self.compress_in.weight[:, d:]
        hidden = F.linear(
            geometry_in,
            w_geo @ self.geometry.weight,
            self.compress_in.bias + w_geo @ self.geometry.bias,
        )
        if message is None:
            table = F.linear(self.species_weight, w_partner)
            hidden = hidden + table.to(hidden.dtype)[species_j]
        else:
            hidden = hidden + F.linear(message, w_partner)
        return self.compress_out(F.silu(hidden))


class _Layer(nn.Module):
    def __init__(self, layer: GNNLayer):
        super().__init__()
        self.tokens = _Tokens(layer)
        self.blocks = _scriptable_leaves(layer.blocks)
        self.node_energy = _scriptable_leaves(layer.node_energy)
        self.edge_readout = _scriptable_leaves(layer.edge_readout)


class PETCore(nn.Module):
    """PET.atom_outputs as TorchScript (see the module docstring).

    Args:
        model: an eager PET; it is copied, the original is left untouched.
    """

    def __init__(self, model: PET):
        super().__init__()
        model = copy.deepcopy(model)
        cfg = model.config
        self.cutoff = float(cfg.cutoff)
        self.width = float(cfg.cutoff_width)
        self.num_radial = int(cfg.num_radial)
        self.d_edge = int(cfg.d_edge)
        self.adaptive = bool(cfg.adaptive_cutoff)
        self.target = float(cfg.target_neighbours)
        self.min_cutoff = float(cfg.adaptive_min_cutoff)
        self.num_candidates = int(cfg.adaptive_candidates)
        self.softness = float(cfg.adaptive_softness)
        self.attention = str(cfg.attention)
        self.min_factor = _MIN_FACTOR
        self.node_species = model.node_species
        self.layers = nn.ModuleList(_Layer(layer) for layer in model.layers)

    def forward(
        self,
        species: Tensor,
        positions: Tensor,
        batch: Tensor,
        num_structures: int,
        edge_i: Tensor,
        edge_j: Tensor,
        shifts: Tensor,
        vectors: Tensor,
        direct: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        n = species.shape[0]
        r = torch.linalg.vector_norm(vectors, dim=-1)
        if self.adaptive:
            inside = r < self.cutoff
            edge_i, edge_j, shifts = edge_i[inside], edge_j[inside], shifts[inside]
            vectors, r = vectors[inside], r[inside]
            radius = _adaptive_cutoffs(
                r,
                edge_i,
                n,
                self.cutoff,
                self.min_cutoff,
                self.width,
                self.target,
                self.num_candidates,
                self.softness,
            )
            fc = _switch(r, radius[edge_i], self.width)
        else:
            fc = _switch_at(r, self.cutoff, self.width)
        keep = fc.detach() > 0
        order = torch.argsort(edge_i[keep], stable=True)
        index = torch.nonzero(keep).squeeze(1)[order]
        edge_i, edge_j, shifts = edge_i[index], edge_j[index], shifts[index]
        vectors, r, fc = vectors[index], r[index], fc[index]

        counts = torch.bincount(edge_i, minlength=n)
        m = int(counts.max()) if edge_i.numel() > 0 else 0
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(edge_i.numel(), device=counts.device) - start[edge_i]
        reverse = _reverse_edges(edge_i, edge_j, shifts, n)
        e = edge_i.numel()
        fused = self.attention == "sdpa" or (self.attention == "auto" and r.is_cuda)
        flat = edge_i * m + slot
        bias = r.new_full((n, 1 + m), float("-inf"))
        bias[:, 0] = 0.0
        log_fc = torch.log(fc.clamp_min(self.min_factor))
        bias = bias.view(-1).index_copy(0, flat + edge_i + 1, log_fc).view(n, 1 + m)
        geometry_in = geometry_features(vectors, r, self.cutoff, self.num_radial)
        has_reverse = (reverse >= 0).to(r.dtype)[:, None]
        reverse = reverse.clamp_min(0)

        species_j = species[edge_j]
        node = self.node_species(species)
        energy = r.new_zeros(n)
        edge_sum = r.new_zeros(e, 3)
        message: Tensor | None = None
        for layer in self.layers:
            x = layer.tokens(geometry_in, species_j, message)
            tokens = x.new_zeros(n * m, self.d_edge).index_copy_(0, flat, x)
            tokens = tokens.view(n, m, self.d_edge)
            for block in layer.blocks:
                node, tokens = block(node, tokens, bias, fused)
            out = tokens.reshape(n * m, self.d_edge).index_select(0, flat)
            energy = energy + layer.node_energy(node).squeeze(-1).to(r.dtype)
            edge_sum = edge_sum + layer.edge_readout(out).to(r.dtype)
            sent = fc[:, None].to(out.dtype) * out
            message = sent.index_select(0, reverse) * has_reverse.to(out.dtype)
        weighted = fc[:, None] * edge_sum
        energy = energy.index_add(0, edge_i, weighted[:, 0])
        if not direct:
            return energy, None, None
        unit = vectors / r.clamp_min(1e-12)[:, None]
        forces = r.new_zeros(n, 3).index_add(0, edge_i, weighted[:, 1:2] * unit)
        edge_virial = (weighted[:, 2] * r)[:, None, None] * unit[:, :, None] * unit[:, None, :]
        virial = r.new_zeros(n, 3, 3).index_add(0, edge_i, edge_virial)
        return energy, forces, virial
