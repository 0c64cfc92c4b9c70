"""Size presets: data, not code. Each entry lists every knob it sets; anything it
leaves out takes the family's config default. Any knob can be overridden alone
through `build_model(..., knob=value)`.

PET `xs`..`xl` follow the published PET-OMat ladder (science.md): edge width,
GNN layers, attention layers per GNN layer, cutoff and target neighbours as
published; node width 4x, edge feed-forward 2x, node feed-forward 8x and head
width 1x the edge width (the published XL uses 2560 / 1280 / 640 at edge width
640; XS takes 2x heads), which lands every count within 5% of the published one.

PET `w8`, `w16`, `w24`, `w32`, `w40`, `w64`, `w128`, `w256` are a width-only ladder for muP and
width-scaling studies: one shape scaled by the edge width d (node width 4d,
edge feed-forward 2d, node feed-forward 8d, head width d, d/8 attention heads
of width 8, the published ratios), while depth (2 GNN layers of 1 attention
layer), cutoff (5 A, fixed) and everything else stay the same. The published
ladder above changes depth and cutoff with width, so it is not a muP ladder.
Use them with `model.knobs.parametrization=mup` and `model.knobs.mup_base_width`
(the width whose tuned learning rate should carry over; default 64, `w64`).

MACE presets span the same parameter range with channels, max L, correlation
order and layers (89 elements). Hidden irreps alternate in parity as in
mace-torch's standard models, so `xs` (128x0e+128x1o, correlation 3, 2 layers,
residual first block) is MACE-MP-0 medium: 4 688 400 parameters, its published count.

MACE `c4`, `c8`, `c12`, `c16`, `c24`, `c32` are a channel-only ladder, the MACE
counterpart of PET's width ladder: only the channel count changes (hidden irreps
cx0e+cx1o), while max L 1, correlation order 3, 2 interactions, max ell 2, the
radial MLP and the 5 A cutoff (PET's ladder's) stay fixed.
"""

from __future__ import annotations

from typing import Any

# Published parameter counts the PET ladder must match within 10%.
PUBLISHED_PET_PARAMETERS = {
    "xs": 4.5e6,
    "s": 25.9e6,
    "m": 109e6,
    "l": 255e6,
    "xl": 730e6,
}


def _pet_ladder(d: int, gnn: int, attn: int, cutoff: float, target: int) -> dict[str, Any]:
    return {
        "d_edge": d,
        "d_node": 4 * d,
        "d_ff": 2 * d,
        "d_node_ff": 8 * d,
        "d_head": d,
        "num_heads": d // 32,
        "num_gnn_layers": gnn,
        "num_attention_layers": attn,
        "cutoff": cutoff,
        "cutoff_width": 0.5,
        "adaptive_cutoff": True,
        "target_neighbours": float(target),
    }


def pet_width_shape(d: int) -> dict[str, Any]:
    """Knobs of the width-only ladder at edge width `d` (a multiple of 8)."""
    if d < 8 or d % 8:
        raise ValueError(f"width ladder: edge width must be a positive multiple of 8, got {d}")
    return {
        "d_edge": d,
        "d_node": 4 * d,
        "d_ff": 2 * d,
        "d_node_ff": 8 * d,
        "d_head": d,
        "num_heads": d // 8,
        "num_gnn_layers": 2,
        "num_attention_layers": 1,
        "cutoff": 5.0,
        "cutoff_width": 0.5,
        "adaptive_cutoff": False,
        "target_neighbours": 8.0,
    }


# Edge widths of the width-only ladder (presets `w8` ... `w256`). w8 to w32 are the
# CPU end (16.6k to 257k non-embedding parameters, 1.19 decades; the demo's widths).
PET_WIDTH_LADDER = (8, 16, 24, 32, 40, 64, 128, 256)

PET_PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests: small fixed cutoff so test cells stay cheap.
    "tiny": {
        "d_edge": 8,
        "d_node": 16,
        "d_ff": 16,
        "d_node_ff": 16,
        "d_head": 8,
        "num_heads": 2,
        "num_gnn_layers": 2,
        "num_attention_layers": 1,
        "cutoff": 4.0,
        "cutoff_width": 0.5,
        "adaptive_cutoff": False,
        "target_neighbours": 8.0,
    },
    # CPU demos: a step between tiny and xxs (about 30k parameters).
    "mini": {
        "d_edge": 16,
        "d_node": 32,
        "d_ff": 32,
        "d_node_ff": 64,
        "d_head": 16,
        "num_heads": 2,
        "num_gnn_layers": 2,
        "num_attention_layers": 1,
        "cutoff": 4.5,
        "cutoff_width": 0.5,
        "adaptive_cutoff": False,
        "target_neighbours": 8.0,
    },
    # CPU demos.
    "xxs": {
        "d_edge": 32,
        "d_node": 64,
        "d_ff": 64,
        "d_node_ff": 128,
        "d_head": 32,
        "num_heads": 1,
        "num_gnn_layers": 2,
        "num_attention_layers": 1,
        "cutoff": 5.0,
        "cutoff_width": 0.5,
        "adaptive_cutoff": False,
        "target_neighbours": 8.0,
    },
    # Head width 2x at XS: with the 1x rule XS alone lands 8% under the published
    # count (the fixed per-layer head cost weighs most at the smallest width).
    "xs": {**_pet_ladder(128, 2, 1, 7.5, 8), "d_head": 256},
    "s": _pet_ladder(256, 3, 1, 8.0, 16),
    "m": _pet_ladder(384, 3, 2, 8.5, 24),
    "l": _pet_ladder(512, 4, 2, 9.0, 32),
    "xl": _pet_ladder(640, 5, 3, 10.0, 40),
    # Width-only ladder: same depth and cutoff at every width (see the docstring).
    **{f"w{d}": pet_width_shape(d) for d in PET_WIDTH_LADDER},
}

MACE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "channels": 4,
        "max_L": 0,
        "correlation": 2,
        "num_interactions": 2,
        "max_ell": 1,
        "radial_mlp": (8,),
        "readout_mlp": 8,
        "cutoff": 4.0,
    },
    "mini": {
        "channels": 8,
        "max_L": 1,
        "correlation": 2,
        "num_interactions": 2,
        "max_ell": 2,
        "radial_mlp": (16,),
        "readout_mlp": 16,
        "cutoff": 4.5,
    },
    "xxs": {
        "channels": 14,  # 114k with odd-parity l=1 hidden irreps (pet xxs: 108k)
        "max_L": 1,
        "correlation": 3,
        "num_interactions": 2,
        "max_ell": 2,
        "radial_mlp": (32,),
        "readout_mlp": 16,
        "cutoff": 5.0,
    },
    "xs": {
        "channels": 128,
        "max_L": 1,
        "correlation": 3,
        "num_interactions": 2,
        "max_ell": 3,
        "radial_mlp": (64, 64, 64),
        "cutoff": 6.0,
    },
    "s": {
        "channels": 320,
        "max_L": 2,
        "correlation": 3,
        "num_interactions": 2,
        "max_ell": 3,
        "radial_mlp": (64, 64, 64),
        "cutoff": 6.0,
    },
    "m": {
        "channels": 432,
        "max_L": 2,
        "correlation": 3,
        "num_interactions": 3,
        "max_ell": 3,
        "radial_mlp": (128, 128, 128),
        "cutoff": 6.0,
    },
    "l": {
        "channels": 688,
        "max_L": 2,
        "correlation": 3,
        "num_interactions": 3,
        "max_ell": 3,
        "radial_mlp": (128, 128, 128),
        "cutoff": 6.0,
    },
    "xl": {
        "channels": 1184,
        "max_L": 2,
        "correlation": 3,
        "num_interactions": 3,
        "max_ell": 3,
        "radial_mlp": (128, 128, 128),
        "cutoff": 6.0,
    },
}



def mace_channel_shape(c: int) -> dict[str, Any]:
    """Knobs of MACE's channel-only ladder at `c` channels."""
    if c < 1:
        raise ValueError(f"channel ladder: channels must be positive, got {c}")
    return {
        "channels": c,
        "max_L": 1,
        "correlation": 3,
        "num_interactions": 2,
        "max_ell": 2,
        "radial_mlp": (32,),
        "readout_mlp": 16,
        "cutoff": 5.0,
    }


# Channel counts of MACE's channel-only ladder (presets `c4` ... `c32`).
MACE_CHANNEL_LADDER = (4, 8, 12, 16, 24, 32)
MACE_PRESETS.update({f"c{c}": mace_channel_shape(c) for c in MACE_CHANNEL_LADDER})

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"pet": PET_PRESETS, "mace": MACE_PRESETS}
