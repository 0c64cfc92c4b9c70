"""PET: an unconstrained point-edge transformer (our own implementation).

Each message-passing layer runs a small transformer over the neighbours of
every atom. The sequence of atom i is one central token (a projection of the
atom's node state, width `d_node`) followed by one token per neighbour j, built
from the edge direction r_ij/|r_ij| and a Gaussian radial basis of |r_ij|, and
either the species of j (first layer) or the message that the reverse edge
(j, i) produced in the previous layer.
Attention weights are multiplied by a smooth cutoff factor of each neighbour,
so a neighbour fades out continuously as it reaches the cutoff; with an
adaptive cutoff each atom has its own radius, chosen smoothly to keep about a
target number of neighbours.

Nothing constrains rotations: the edge directions enter as plain Cartesian
components, and equivariance has to be learned (rotation augmentation). The
distance enters through a radial basis, not raw: a single raw distance (or raw
Cartesian vector) fed to a linear embedding makes every token nearly linear in
the distance over the narrow range of neighbour shells, and the network then
needs hundreds of steps to carve out the sharp distance dependence of forces.

Outputs: per-atom energies read from node and edge tokens of every layer;
direct forces F_i = sum_j f_ij s_ij r_ij/|r_ij| and direct per-atom virials
W_i = sum_j f_ij q_ij r_ij r_ij^T/|r_ij| from a head on the edge tokens (s, q
scalars, f the cutoff factor), so direct outputs are also continuous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.models import mup
from train.models.base import (
    NUM_ELEMENT_SLOTS,
    AtomisticModel,
    AtomOutputs,
    ForcesMode,
    check_heads,
)
from train.models.geometry import (
    ModelGraph,
    adaptive_cutoffs,
    cosine_switch,
    reverse_edge_index,
)

# Cutoff factors are floored here before the log that biases attention, so the
# gradient of log(f) stays finite; a neighbour this faded weighs < 1e-15 anyway.
_MIN_FACTOR = 1e-15


@dataclass
class PETConfig:
    """Every knob of the point-edge transformer.

    Attributes:
        d_edge: edge-token width (the transformer width, "d_pet").
        d_node: width of the per-atom node state carried across layers.
        d_ff: hidden width of the SwiGLU feed-forward on edge tokens.
        d_node_ff: hidden width of the SwiGLU feed-forward on the node state.
        d_head: hidden width of the readout heads.
        num_heads: attention heads (must divide d_edge).
        num_gnn_layers: message-passing layers.
        num_attention_layers: transformer blocks per message-passing layer.
        cutoff: neighbour-list radius (the largest cutoff when adaptive), Angstrom.
        cutoff_width: width of the smooth switch below the cutoff, Angstrom.
        num_radial: Gaussian radial basis functions of the edge length, spread
            evenly over [0, cutoff] (the geometric input of every edge token).
        adaptive_cutoff: per-atom radius keeping about `target_neighbours`.
        target_neighbours: smooth neighbour count the adaptive radius aims for.
        adaptive_min_cutoff: smallest adaptive radius, Angstrom.
        adaptive_candidates: number of candidate radii on the grid.
        adaptive_softness: tolerance around the target count, neighbours.
        attention: "sdpa" (torch's fused kernel), "manual" (supports double
            backward, needed to train on gradient forces), or "auto" (sdpa on GPUs
            unless training with gradient forces, manual otherwise).
        parametrization: "standard", or "mup" (train.models.mup: Adam learning
            rate / m on hidden matrices, readout multiplier 1/m, attention logits
            q.k/d_head, with m = d_edge / mup_base_width). Every other width
            (d_node, d_ff, d_node_ff, d_head, num_heads) is assumed to scale with
            d_edge, as in the `w*` width ladder of presets.py.
        mup_base_width: the edge width at which both parametrisations agree, i.e.
            where the learning rate was tuned.
        mup_base_head_dim: attention head width at the base width; None: the head
            width of this model (the number of heads scales with width, as in the
            `w*` ladder). Only read under muP.
        heads: names of the energy heads, one per level of theory (e.g. PBE,
            r2SCAN); None: one head. Each head adds one energy output row to every
            readout (node and edge); direct forces and virials stay shared.
    """

    d_edge: int = 128
    d_node: int = 512
    d_ff: int = 256
    d_node_ff: int = 1024
    d_head: int = 128
    num_heads: int = 4
    num_gnn_layers: int = 2
    num_attention_layers: int = 1
    cutoff: float = 7.5
    cutoff_width: float = 0.5
    num_radial: int = 16
    adaptive_cutoff: bool = True
    target_neighbours: float = 8.0
    adaptive_min_cutoff: float = 2.0
    adaptive_candidates: int = 24
    adaptive_softness: float = 1.0
    attention: Literal["auto", "manual", "sdpa"] = "auto"
    parametrization: mup.Parametrization = "standard"
    mup_base_width: int = 64
    mup_base_head_dim: int | None = None
    heads: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.heads = check_heads(self.heads)
        if self.d_edge % self.num_heads:
            raise ValueError(f"d_edge={self.d_edge} is not divisible by num_heads={self.num_heads}")
        if not 0 < self.cutoff_width < self.cutoff:
            raise ValueError(f"cutoff_width must lie in (0, cutoff), got {self.cutoff_width}")
        if self.num_radial < 2:
            raise ValueError(f"num_radial must be at least 2, got {self.num_radial}")
        if self.attention not in ("auto", "manual", "sdpa"):
            raise ValueError(f"attention must be auto, manual or sdpa, got '{self.attention}'")
        mup.check_parametrization(self.parametrization, self.mup_base_width)
        if self.mup_base_head_dim is not None and self.mup_base_head_dim < 1:
            raise ValueError(f"mup_base_head_dim must be positive, got {self.mup_base_head_dim}")

    @property
    def width_multiplier(self) -> float:
        """m = d_edge / mup_base_width under muP, 1 under the standard parametrisation."""
        return mup.width_multiplier(self.d_edge, self.mup_base_width, self.parametrization)

    @property
    def attention_scale(self) -> float:
        """Multiplier of the attention logits q.k (1/sqrt(d_head) under SP)."""
        return mup.attention_scale(
            self.d_edge // self.num_heads, self.parametrization, self.mup_base_head_dim
        )


class RMSNorm(nn.RMSNorm):
    """RMSNorm that normalises in the weight's precision (float32 under autocast)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == self.weight.dtype:
            return super().forward(x)
        return F.rms_norm(x.to(self.weight.dtype), self.normalized_shape, self.weight, self.eps)


class SwiGLU(nn.Module):
    """Gated feed-forward: w_out(value * silu(gate)), without biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.w_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(value * F.silu(gate))


def readout_head(d_in: int, d_hidden: int, d_out: int, multiplier: float = 1.0) -> nn.Sequential:
    """Normalised two-hidden-layer MLP used for every readout.

    `multiplier` scales the last layer's weight in the forward pass (muP's 1/m).
    """
    return nn.Sequential(
        RMSNorm(d_in),
        nn.Linear(d_in, d_hidden),
        nn.SiLU(),
        nn.Linear(d_hidden, d_hidden),
        nn.SiLU(),
        mup.OutputLinear(d_hidden, d_out, multiplier),
    )


class CutoffAttention(nn.Module):
    """Multi-head self-attention with an additive log-cutoff bias on the keys."""

    def __init__(self, dim: int, num_heads: int, scale: float | None = None):
        """scale: logit multiplier; None: 1/sqrt(head width), torch's default."""
        super().__init__()
        self.num_heads = num_heads
        self.scale = scale
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, bias: Tensor, fused: bool) -> Tensor:
        """Attends within each atom's sequence.

        Args:
            x: (num_atoms, seq, dim) normalised tokens.
            bias: (num_atoms, seq) log cutoff factor of each key (-inf = padding).
            fused: use scaled_dot_product_attention (no double backward).
        """
        n, t, d = x.shape
        h = self.num_heads
        qkv = self.qkv(x).view(n, t, 3, h, d // h)
        if fused:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias[:, None, None, :].to(q.dtype), scale=self.scale
            )
            return self.out(y.transpose(1, 2).reshape(n, t, d))
        # Heads folded into the batch: with one head these reshapes are free views.
        q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, n * h, t, d // h)
        mask = bias[:, None, None, :].expand(n, h, 1, t).reshape(n * h, 1, t).to(q.dtype)
        alpha = (d // h) ** -0.5 if self.scale is None else self.scale
        scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=alpha)
        y = torch.bmm(torch.softmax(scores, dim=-1), v)
        return self.out(y.view(n, h, t, d // h).transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm block over [central token, neighbour tokens] of every atom.

    Its linear maps have no biases (as in LLaMA-style blocks, whose RMSNorms
    carry the scales): on CPUs broadcasting a bias into every token's output
    costs as much memory traffic as the product itself.

    The node state (width d_node) enters as a contracted central token and is
    updated by an expansion of that token's attention output and by its own
    SwiGLU, so a wide node state costs O(num_atoms), not O(num_edges).
    """

    def __init__(self, cfg: PETConfig):
        super().__init__()
        d, dn = cfg.d_edge, cfg.d_node
        self.norm_node = RMSNorm(dn)
        self.contract = nn.Linear(dn, d, bias=False)
        self.norm_tokens = RMSNorm(d)
        # SP keeps torch's own default scale (None), so it stays bit-identical.
        scale = cfg.attention_scale if cfg.parametrization == "mup" else None
        self.attention = CutoffAttention(d, cfg.num_heads, scale)
        self.expand = nn.Linear(d, dn, bias=False)
        self.norm_ff = RMSNorm(d)
        self.ff = SwiGLU(d, cfg.d_ff)
        self.norm_node_ff = RMSNorm(dn)
        self.node_ff = SwiGLU(dn, cfg.d_node_ff)

    def forward(
        self, node: Tensor, tokens: Tensor, bias: Tensor, fused: bool
    ) -> tuple[Tensor, Tensor]:
        """Args: node (num_atoms, d_node), tokens (num_atoms, max_nb, d_edge), bias
        (num_atoms, 1 + max_nb). Returns the updated (node, tokens)."""
        centre = self.contract(self.norm_node(node))[:, None, :]
        seq = torch.cat([centre, self.norm_tokens(tokens)], dim=1)
        update = self.attention(seq, bias, fused)
        node = node + self.expand(update[:, 0])
        node = node + self.node_ff(self.norm_node_ff(node))
        tokens = tokens + update[:, 1:]
        tokens = tokens + self.ff(self.norm_ff(tokens))
        return node, tokens


class GNNLayer(nn.Module):
    """One message-passing layer: token building, transformer, readouts."""

    def __init__(self, cfg: PETConfig, first: bool):
        super().__init__()
        d = cfg.d_edge
        self.geometry = nn.Linear(3 + cfg.num_radial, d)
        # Later layers learn the neighbour's species from its message instead.
        self.neighbour_species = nn.Embedding(NUM_ELEMENT_SLOTS, d) if first else None
        self.compress = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.num_attention_layers))
        out_mult = 1.0 / cfg.width_multiplier
        num_heads = len(cfg.heads or ()) or 1
        self.node_energy = readout_head(cfg.d_node, cfg.d_head, num_heads, out_mult)
        # One head for the edge energy and the direct force/virial scalars: direct
        # outputs then cost one extra output row, and every force mode has the same
        # weights, so one checkpoint serves direct and gradient inference. Rows:
        # (energy of head 0, force scalar s, virial scalar q, energies of heads 1..).
        self.edge_readout = readout_head(d, cfg.d_head, 2 + num_heads, out_mult)
        # Start near the composition baseline: the edge terms are summed over every
        # neighbour, so default-initialised heads put the first energies several
        # eV/atom off and the first hundreds of steps are spent undoing that.
        with torch.no_grad():
            for head in (self.node_energy, self.edge_readout):
                head[-1].weight.mul_(0.01)
                head[-1].bias.zero_()

    def tokens(self, geometry_in: Tensor, species_j: Tensor, message: Tensor | None) -> Tensor:
        """Input tokens (num_edges, d_edge) from geometry and species or message.

        Computes compress(cat(geometry(g), partner)) without materialising the
        concatenation: the geometry embedding is linear and feeds a linear map,
        so their product is applied to the 3 + num_radial geometric inputs directly, and the
        first layer's species embedding is projected as a table (one row per
        element) instead of once per edge. Same function, same parameters.
        """
        first = self.compress[0]
        d = self.geometry.out_features
        w_geo, w_partner = first.weight[:, :d], first.weight[:, d:]
        hidden = F.linear(
            geometry_in,
            w_geo @ self.geometry.weight,
            first.bias + w_geo @ self.geometry.bias,
        )
        if message is None:
            assert self.neighbour_species is not None
            table = F.linear(self.neighbour_species.weight, w_partner)  # (elements, d)
            hidden = hidden + table.to(hidden.dtype)[species_j]
        else:
            hidden = hidden + F.linear(message, w_partner)
        return self.compress[2](F.silu(hidden))


def geometry_features(vectors: Tensor, r: Tensor, cutoff: float, num_radial: int) -> Tensor:
    """(num_edges, 3 + num_radial) token inputs: unit edge vector and radial basis.

    Gaussians of width equal to their spacing, centred evenly on [0, cutoff]:
    every input is O(1), and each distance lights up its own few features, so the
    first linear map can already express a sharp function of the distance.
    """
    unit = vectors / r.clamp_min(1e-12)[:, None]
    spacing = cutoff / (num_radial - 1)
    centres = torch.arange(num_radial, dtype=r.dtype, device=r.device) * spacing
    radial = torch.exp(-0.5 * ((r[:, None] - centres) / spacing) ** 2)
    return torch.cat([unit, radial], dim=1)


@dataclass
class _Layout:
    """Where each edge sits in the padded (num_atoms, max_nb) token tensor."""

    slot: Tensor  # (num_edges,) position of the edge within its centre's sequence
    max_nb: int
    reverse: Tensor  # (num_edges,) index of the reverse edge, -1 if absent


class PET(AtomisticModel):
    """Point-edge transformer; see the module docstring."""

    family = "pet"
    Config = PETConfig

    def __init__(self, config: PETConfig, forces: ForcesMode = "conservative"):
        super().__init__(config, forces)
        self.node_species = nn.Embedding(NUM_ELEMENT_SLOTS, config.d_node)
        self.layers = nn.ModuleList(
            GNNLayer(config, first=(i == 0)) for i in range(config.num_gnn_layers)
        )
        if config.parametrization == "mup":
            mup.scale_hidden_biases(self, self.mup_roles(), config.width_multiplier)

    def mup_roles(self) -> dict[str, str]:
        """Parameter name -> muP role (train.models.mup); the geometry embeddings
        map the fixed 3 + num_radial inputs to the width, so they are inputs."""
        return mup.module_roles(self, inputs=[layer.geometry for layer in self.layers])

    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups: one group of every parameter under SP
        (exactly `model.parameters()`), per-role learning rates under muP."""
        if self.config.parametrization == "standard":
            return [{"params": list(self.parameters()), "lr": lr}]
        return mup.parameter_groups(self, self.mup_roles(), lr, self.config.width_multiplier)

    def _cutoff_factors(self, graph: ModelGraph) -> tuple[ModelGraph, Tensor, Tensor]:
        """Keeps the edges inside each atom's cutoff; returns (graph, r, factors)."""
        cfg = self.config
        r = torch.linalg.vector_norm(graph.vectors, dim=-1)
        if cfg.adaptive_cutoff:
            inside = r < cfg.cutoff
            graph, r = graph.select_edges(inside), r[inside]
            radius = adaptive_cutoffs(
                r,
                graph.edge_i,
                graph.num_atoms,
                max_cutoff=cfg.cutoff,
                min_cutoff=cfg.adaptive_min_cutoff,
                width=cfg.cutoff_width,
                target=cfg.target_neighbours,
                num_candidates=cfg.adaptive_candidates,
                softness=cfg.adaptive_softness,
            )
            factors = cosine_switch(r, radius[graph.edge_i], cfg.cutoff_width)
        else:
            factors = cosine_switch(r, cfg.cutoff, cfg.cutoff_width)
        # Edges whose factor is exactly zero contribute nothing (every use of an
        # edge token is weighted by its factor), so dropping them is exact.
        keep = factors.detach() > 0
        order = torch.argsort(graph.edge_i[keep], stable=True)
        index = torch.nonzero(keep).squeeze(1)[order]
        return graph.select_edges(index), r[index], factors[index]

    @staticmethod
    def _layout(graph: ModelGraph) -> _Layout:
        counts = torch.bincount(graph.edge_i, minlength=graph.num_atoms)
        max_nb = int(counts.max()) if graph.edge_i.numel() else 0
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(graph.edge_i.numel(), device=counts.device) - start[graph.edge_i]
        reverse = reverse_edge_index(graph.edge_i, graph.edge_j, graph.shifts, graph.num_atoms)
        return _Layout(slot, max_nb, reverse)

    def head_state(self, state: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        """Keeps head ``index``'s rows of every readout's output layer."""
        edge_rows = [edge_energy_row(index), 1, 2]
        out = dict(state)
        for k in range(self.config.num_gnn_layers):
            last = len(self.layers[k].node_energy) - 1
            for part in ("weight", "bias"):
                node = f"layers.{k}.node_energy.{last}.{part}"
                edge = f"layers.{k}.edge_readout.{last}.{part}"
                out[node] = state[node][index : index + 1].clone()
                out[edge] = state[edge][edge_rows].clone()
        return out

    def atom_outputs(
        self, graph: ModelGraph, direct: bool, head: Tensor | None = None
    ) -> AtomOutputs:
        cfg = self.config
        graph, r, fc = self._cutoff_factors(graph)
        lay = self._layout(graph)
        n, e, m = graph.num_atoms, graph.edge_i.numel(), lay.max_nb
        # torch's fused kernel wins on GPUs; on CPUs, for sequences of tens of
        # tokens, the plain implementation is faster. Neither has double backward.
        fused = cfg.attention == "sdpa" or (
            cfg.attention == "auto"
            and r.is_cuda
            and not (self.training and self.forces != "direct")
        )
        # Flat positions of the edges in the padded (n, m) token tensor: index_select
        # / index_copy on a flat view are much faster than 2-D advanced indexing.
        flat = graph.edge_i * m + lay.slot
        bias = r.new_full((n, 1 + m), float("-inf"))
        bias[:, 0] = 0.0  # the central token is always fully visible
        log_fc = torch.log(fc.clamp_min(_MIN_FACTOR))
        bias = bias.view(-1).index_copy(0, flat + graph.edge_i + 1, log_fc).view(n, 1 + m)
        geometry_in = geometry_features(graph.vectors, r, cfg.cutoff, cfg.num_radial)
        has_reverse = (lay.reverse >= 0).to(r.dtype)[:, None]
        reverse = lay.reverse.clamp_min(0)

        species_j = graph.species[graph.edge_j]
        node = self.node_species(graph.species)
        num_heads = self.num_heads
        # (num_atoms,) for one head; (num_atoms, num_heads) with heads
        energy = r.new_zeros(n) if num_heads == 1 else r.new_zeros(n, num_heads)
        # (energy, direct force scalar s, virial scalar q, energies of heads 1..)
        edge_sum = r.new_zeros(e, 2 + num_heads)
        message = None
        for layer in self.layers:
            x = layer.tokens(geometry_in, species_j, message)
            tokens = x.new_zeros(n * m, cfg.d_edge).index_copy_(0, flat, x).view(n, m, cfg.d_edge)
            for block in layer.blocks:
                node, tokens = block(node, tokens, bias, fused)
            out = tokens.reshape(n * m, cfg.d_edge).index_select(0, flat)  # (num_edges, d_edge)
            node_out = layer.node_energy(node)
            energy = energy + (node_out.squeeze(-1) if num_heads == 1 else node_out).to(r.dtype)
            edge_sum = edge_sum + layer.edge_readout(out).to(r.dtype)
            # The reverse edge hears this edge in proportion to its cutoff factor,
            # so a message fades out with its edge instead of vanishing abruptly.
            sent = fc[:, None].to(out.dtype) * out
            message = sent.index_select(0, reverse) * has_reverse.to(out.dtype)
        weighted = fc[:, None] * edge_sum
        if num_heads == 1:
            energy = energy.index_add(0, graph.edge_i, weighted[:, 0])
        else:
            rows = [edge_energy_row(h) for h in range(num_heads)]
            energy = energy.index_add(0, graph.edge_i, weighted[:, rows])
            assert head is not None, "a model with heads needs each structure's head"
            energy = energy.gather(1, head[graph.batch][:, None]).squeeze(1)
        if not direct:
            return AtomOutputs(energy)
        unit = graph.vectors / r.clamp_min(1e-12)[:, None]
        forces = r.new_zeros(n, 3).index_add(0, graph.edge_i, weighted[:, 1:2] * unit)
        edge_virial = (weighted[:, 2] * r)[:, None, None] * unit[:, :, None] * unit[:, None, :]
        virial = r.new_zeros(n, 3, 3).index_add(0, graph.edge_i, edge_virial)
        return AtomOutputs(energy, forces, virial)


def edge_energy_row(head: int) -> int:
    """The edge readout's output row of head ``head``'s energy (rows 1 and 2 are
    the direct force and virial scalars, shared by all heads)."""
    return 0 if head == 0 else 2 + head
