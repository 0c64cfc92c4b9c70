"""MACE (mace-torch) behind the common model interface: equivariant and conservative.

The network is `mace.modules.MACE` built from scratch with random weights. It
only supplies per-atom energies; geometry (with the strain used for the stress),
the composition baseline and the gradients come from the shared base class, so
MACE and PET are compared on exactly the same inputs and outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from train.models.base import (
    NUM_ELEMENT_SLOTS,
    AtomisticModel,
    AtomOutputs,
    ForcesMode,
    check_heads,
)
from train.models.geometry import ModelGraph

# mace must be imported before e3nn.o3 on torch >= 2.6: it registers what e3nn's
# pickled constants need under torch.load(weights_only=True). It also prints a
# notice about optional CUDA kernels on import; keep our CLIs' stdout clean.
with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter("ignore")
    import e3nn
    import mace.modules as mace_modules
    from e3nn import o3
    from mace.modules import symmetric_contraction

DEFAULT_ELEMENTS = tuple(range(1, 90))  # H..Ac, as in the MACE-MP family


@dataclass
class MACEConfig:
    """Every knob of the MACE baseline.

    Attributes:
        channels: multiplicity of every hidden irrep.
        max_L: highest angular momentum of the hidden node features (even parity).
        correlation: body order of the symmetric product (correlation + 1 body).
        num_interactions: message-passing layers.
        max_ell: highest spherical harmonic of the edge directions.
        num_bessel: radial Bessel basis size.
        num_polynomial_cutoff: exponent of the polynomial cutoff envelope.
        radial_mlp: hidden widths of the radial MLP.
        readout_mlp: hidden width of the final nonlinear readout.
        cutoff: radial cutoff, Angstrom.
        avg_num_neighbours: normalisation of the neighbour sum; a knob, not derived
            from the data (mace_run_train measures it; 38 at 5 A on the EMT data).
        elements: atomic numbers the model accepts (one-hot width).
        interaction: mace interaction block class name of every layer after the first.
        first_interaction: block of the first layer. The default, the residual
            block, is MACE-MP-0's (with alternating parity our ``xs`` then has
            4 688 400 parameters, MACE-MP-0 medium's published count);
            ``RealAgnosticInteractionBlock`` is mace_run_train's command-line
            default (about twice the parameters at 89 elements: its first skip
            connection is a per-element channel mix). None: as ``interaction``.
        parity: parity of the hidden irreps. "alternating" gives l-th irreps the
            parity (-1)^l (128x0e+128x1o for MACE-MP-0 medium), mace-torch's
            standard; "even" makes every hidden irrep even (0e+1e+...), what this
            project built before 2026-12 (model files without the knob load so).
        heads: names of the energy heads, one per level of theory; None: one head.
            mace-torch's own multi-head readouts (one output per head in every
            readout block, chosen by each structure's head).
    """

    channels: int = 128
    max_L: int = 1
    correlation: int = 3
    num_interactions: int = 2
    max_ell: int = 3
    num_bessel: int = 8
    num_polynomial_cutoff: int = 5
    radial_mlp: tuple[int, ...] = (64, 64, 64)
    readout_mlp: int = 16
    cutoff: float = 6.0
    avg_num_neighbours: float = 20.0
    elements: tuple[int, ...] = DEFAULT_ELEMENTS
    interaction: str = "RealAgnosticResidualInteractionBlock"
    first_interaction: str | None = "RealAgnosticResidualInteractionBlock"
    parity: str = "alternating"
    heads: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.heads = check_heads(self.heads)
        self.radial_mlp = tuple(int(w) for w in self.radial_mlp)
        self.elements = tuple(sorted(int(z) for z in self.elements))
        if not self.elements or not all(0 < z < NUM_ELEMENT_SLOTS for z in self.elements):
            raise ValueError(f"elements must be atomic numbers in 1..118, got {self.elements}")
        for knob in ("interaction", "first_interaction"):
            block = getattr(self, knob)
            if block is not None and block not in mace_modules.interaction_classes:
                raise ValueError(
                    f"unknown MACE {knob} '{block}'; "
                    f"choose from {sorted(mace_modules.interaction_classes)}"
                )
        if self.parity not in ("alternating", "even"):
            raise ValueError(f"MACE parity '{self.parity}': choose alternating or even")


_U_MATRICES: dict[tuple, list] = {}


@contextlib.contextmanager
def _memoised_coupling_matrices():
    """Reuses mace's symmetric-contraction coupling matrices across builds.

    They depend on the irreps and correlation order but not on the channel
    count, and computing them dominates build time at max_L = 2 (tens of
    seconds); parameter counting builds three models per configuration.
    """
    original = symmetric_contraction.U_matrix_real

    def cached(irreps_in, irreps_out, correlation, **kwargs):
        key = (str(irreps_in), str(irreps_out), correlation, repr(sorted(kwargs.items())))
        if key not in _U_MATRICES:
            _U_MATRICES[key] = original(irreps_in, irreps_out, correlation, **kwargs)
        return [t.clone() if isinstance(t, torch.Tensor) else t for t in _U_MATRICES[key]]

    symmetric_contraction.U_matrix_real = cached
    try:
        yield
    finally:
        symmetric_contraction.U_matrix_real = original


def build_mace_network(cfg: MACEConfig) -> torch.nn.Module:
    """The bare mace-torch network for a config (random weights)."""
    def parity(ell: int) -> str:
        return "o" if cfg.parity == "alternating" and ell % 2 else "e"

    hidden = o3.Irreps(
        "+".join(f"{cfg.channels}x{ell}{parity(ell)}" for ell in range(cfg.max_L + 1))
    )
    block = mace_modules.interaction_classes[cfg.interaction]
    first = mace_modules.interaction_classes[cfg.first_interaction or cfg.interaction]
    with warnings.catch_warnings(), _memoised_coupling_matrices():
        warnings.simplefilter("ignore")  # TorchScript annotation chatter from e3nn
        return mace_modules.MACE(
            r_max=cfg.cutoff,
            num_bessel=cfg.num_bessel,
            num_polynomial_cutoff=cfg.num_polynomial_cutoff,
            max_ell=cfg.max_ell,
            interaction_cls=block,
            interaction_cls_first=first,
            num_interactions=cfg.num_interactions,
            num_elements=len(cfg.elements),
            hidden_irreps=hidden,
            MLP_irreps=o3.Irreps(f"{cfg.readout_mlp}x0e"),
            # Zero: the composition baseline lives in the shared base class.
            atomic_energies=np.zeros(
                (len(cfg.heads), len(cfg.elements)) if cfg.heads else len(cfg.elements)
            ),
            avg_num_neighbors=cfg.avg_num_neighbours,
            atomic_numbers=list(cfg.elements),
            correlation=cfg.correlation,
            gate=torch.nn.functional.silu,
            radial_MLP=list(cfg.radial_mlp),
            heads=list(cfg.heads) if cfg.heads else None,
        )


def _count(cfg: MACEConfig) -> int:
    # Compiling e3nn's generated code is most of the build time and changes no
    # parameter, so counting builds skip it.
    defaults = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(optimize_einsums=False, jit_script_fx=False)
    try:
        return sum(p.numel() for p in build_mace_network(cfg).parameters())
    finally:
        e3nn.set_optimization_defaults(**defaults)


@functools.lru_cache(maxsize=32)
def _channel_polynomial(knobs: tuple) -> tuple[int, int, int]:
    """(a, b, d) with count = a c^2 + b c + d, from builds at c = 8, 16, 24."""
    base = MACEConfig(**dict(knobs))
    f8, f16, f24 = (_count(replace(base, channels=c)) for c in (8, 16, 24))
    a = (f24 - 2 * f16 + f8) // 128  # the second difference is 2 a 8^2
    b = (f16 - f8 - a * (16**2 - 8**2)) // 8
    return a, b, f8 - a * 64 - b * 8


def count_mace_parameters(cfg: MACEConfig, max_built_channels: int = 64) -> int:
    """Exact parameter count without building a huge model.

    With every other knob fixed, MACE's count is a quadratic polynomial in
    `channels` (linear maps are channels^2, per-element and radial weights are
    linear in channels). Above `max_built_channels` the polynomial is fitted on
    three small builds and evaluated exactly (integer arithmetic).
    """
    if cfg.channels <= max_built_channels:
        return _count(cfg)
    knobs = tuple((k, v) for k, v in dataclasses.asdict(cfg).items() if k != "channels")
    a, b, d = _channel_polynomial(knobs)
    return a * cfg.channels**2 + b * cfg.channels + d


# Knobs whose default changed, and the value files written without them meant.
LEGACY_KNOBS = {
    "parity": "even",
    "first_interaction": "RealAgnosticResidualInteractionBlock",
}


class MACEModel(AtomisticModel):
    """mace-torch MACE with the shared batch format and outputs."""

    family = "mace"
    supported_forces = ("conservative",)
    Config = MACEConfig

    def __init__(self, config: MACEConfig, forces: ForcesMode = "conservative"):
        super().__init__(config, forces)
        self.network = build_mace_network(config)
        table = torch.full((NUM_ELEMENT_SLOTS,), -1, dtype=torch.int64)
        table[list(config.elements)] = torch.arange(len(config.elements))
        self.register_buffer("element_index", table, persistent=False)

    def embedding_parameter_names(self) -> set[str]:
        """mace's species embedding is a linear map of the one-hot element vector:
        a lookup table in all but name."""
        return {n for n, _ in self.named_parameters() if ".node_embedding." in f".{n}"}

    def atom_outputs(
        self, graph: ModelGraph, direct: bool, head: Tensor | None = None
    ) -> AtomOutputs:
        index = self.element_index[graph.species]
        if bool((index < 0).any()):
            missing = sorted(set(graph.species[index < 0].tolist()))
            raise ValueError(
                f"MACE model built for elements {self.config.elements} got atomic numbers "
                f"{missing}; rebuild it with elements=... covering the dataset"
            )
        dtype = graph.positions.dtype
        positions = graph.positions
        if not positions.requires_grad:
            # mace marks its input positions as requiring grad; keep that off the
            # caller's tensor.
            positions = positions.detach().clone()
        counts = torch.bincount(graph.batch, minlength=graph.num_structures)
        ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        data = {
            "positions": positions,
            "node_attrs": torch.nn.functional.one_hot(index, len(self.config.elements)).to(dtype),
            "edge_index": torch.stack([graph.edge_i, graph.edge_j]),
            "shifts": graph.shift_vectors,
            "unit_shifts": graph.shifts.to(dtype),
            "cell": positions.new_zeros(3 * graph.num_structures, 3),
            "batch": graph.batch,
            "ptr": ptr,
        }
        if head is not None:
            data["head"] = head
        # mace's symmetric contraction mixes dtypes under autocast (tensordot of a
        # bf16 and a float32 operand fails), so MACE always runs in the model dtype.
        with torch.autocast(positions.device.type, enabled=False):
            out = self.network(data, training=self.training, compute_force=False)
        return AtomOutputs(out["node_energy"])
