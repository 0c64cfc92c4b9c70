"""The interface every model family implements, and what they share.

A family only maps a `ModelGraph` to per-atom energies (and, for direct
forces, per-atom force vectors and virials). This base class turns that into
the common outputs: it builds differentiable geometry, subtracts the energy of
each atom alone (so an isolated atom returns exactly its composition baseline),
adds the per-element composition baseline, takes gradient forces and stress,
and counts parameters and FLOPs.

Heads per level of theory (``heads`` knob of a family's config, e.g.
``("PBE", "r2SCAN")``): each structure names its head by an index in the
batch (``data_pipelines.batching.HEAD``; absent: the first head). Each head
has its own energy readout on the shared representation (the family's
business: it returns one energy column per head) and its own per-element
composition baseline (``composition_baseline`` is then (num_heads, 119)).
The energy scale and the direct force and stress outputs are shared by all
heads: forces are differences of energies, and the levels of theory a model
mixes agree on them far better than on total energies. Without the knob a
model has one head and exactly the buffers and outputs it always had.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from data_pipelines import schema as K
from data_pipelines.batching import HEAD
from train.models.geometry import ModelGraph, build_graph, gradient_outputs, periodic_volume

ForcesMode = Literal["direct", "conservative", "both"]
FORCES_MODES: tuple[str, ...] = ("direct", "conservative", "both")

NUM_ELEMENT_SLOTS = 119  # tables indexed directly by atomic number (0 unused)

# Output keys (besides schema.ENERGY, FORCES, STRESS).
DIRECT_FORCES = "direct_forces"  # (num_atoms, 3) eV/A, from the force head ("both" mode)
DIRECT_STRESS = "direct_stress"  # (num_structures, 3, 3) eV/A^3, from the stress head


def check_heads(heads) -> tuple[str, ...] | None:
    """The ``heads`` knob as a tuple of distinct names (None or empty: one head).

    Raises:
        ValueError: a repeated or empty head name.
    """
    if not heads:
        return None
    if isinstance(heads, str):
        heads = [heads]
    names = tuple(str(h) for h in heads)
    repeated = sorted({h for h in names if names.count(h) > 1})
    if repeated or not all(names):
        raise ValueError(f"model.knobs.heads must be distinct non-empty names, got {list(names)}")
    return names


class AtomOutputs(NamedTuple):
    """What a family computes on a graph.

    Attributes:
        energy: (num_atoms,) per-atom energies, model units (before scale/baseline).
        forces: (num_atoms, 3) direct forces, or None.
        virial: (num_atoms, 3, 3) per-atom direct virials (eV), or None; the
            direct stress is their sum over a structure divided by its volume.
    """

    energy: Tensor
    forces: Tensor | None = None
    virial: Tensor | None = None


class AtomisticModel(nn.Module):
    """Base class: batch dict in, `energy`, `forces`, `stress` (+ direct keys) out.

    Subclasses set `family`, `supported_forces`, a `Config` dataclass, and
    implement `atom_outputs`.
    """

    family: ClassVar[str] = "?"
    supported_forces: ClassVar[tuple[str, ...]] = FORCES_MODES

    def __init__(self, config: Any, forces: ForcesMode):
        super().__init__()
        if forces not in self.supported_forces:
            raise ValueError(
                f"model family '{self.family}' supports forces in {self.supported_forces}, "
                f"got '{forces}'"
            )
        self.config = config
        self.forces = forces
        self.head_names: tuple[str, ...] = tuple(getattr(config, "heads", None) or ())
        # eV per atom by atomic number (one row per head with heads); set from
        # dataset statistics.
        shape = (len(self.head_names),) if self.head_names else ()
        self.register_buffer("composition_baseline", torch.zeros(*shape, NUM_ELEMENT_SLOTS))
        # Multiplies the learned part (energies, direct forces and stresses) so the
        # network works with O(1) numbers; set from dataset statistics.
        self.register_buffer("energy_scale", torch.ones(()))

    @property
    def cutoff(self) -> float:
        """Neighbour-list radius the batches must be built with, Angstrom."""
        return float(self.config.cutoff)

    def atom_outputs(
        self, graph: ModelGraph, direct: bool, head: Tensor | None = None
    ) -> AtomOutputs:
        """Per-atom energies (and direct outputs when `direct`) of a graph.

        Args:
            head: (num_structures,) int64 head index of each structure; given
                only to a model with heads (each atom's energy is then its
                structure's head's).
        """
        raise NotImplementedError

    # ---- heads --------------------------------------------------------------------

    @property
    def num_heads(self) -> int:
        """Energy heads (1 for a model built without the ``heads`` knob)."""
        return max(1, len(self.head_names))

    def head_index(self, head: str | None) -> int:
        """The index of head ``head`` (None: the first, or only, head).

        Raises:
            ValueError: an unknown head (naming the valid ones), or a head name
                given to a model built without heads.
        """
        if head is None:
            return 0
        if not self.head_names:
            raise ValueError(
                f"this model has a single energy head (built without model.knobs.heads); "
                f"head={head!r} cannot be chosen: leave head unset"
            )
        if head not in self.head_names:
            raise ValueError(
                f"unknown head {head!r}; this model's heads: {', '.join(self.head_names)}"
            )
        return self.head_names.index(head)

    def single_head(self, head: str | None = None) -> AtomisticModel:
        """A model without heads that computes exactly head ``head`` of this one
        (its readout rows and baseline), for exports that know no heads; a model
        without heads is returned as it is."""
        index = self.head_index(head)
        if not self.head_names:
            return self
        config = dataclasses.replace(self.config, heads=None)
        one = type(self)(config, self.forces)
        state = self.head_state(self.state_dict(), index)
        state["composition_baseline"] = self.composition_baseline[index].clone()
        one.load_state_dict(state)
        if hasattr(self, "forces_requested"):  # set by train.export.load_model
            one.forces_requested = self.forces_requested
        param = next(self.parameters())
        return one.to(param.device, param.dtype).train(self.training)

    def head_state(self, state: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        """``state`` (this model's) with only head ``index``'s readout rows: the
        state of the same family built without heads."""
        raise ValueError(f"model family '{self.family}' cannot export one head of several")

    # ---- statistics ---------------------------------------------------------------

    def set_composition_baseline(
        self, baseline: dict[int, float] | Tensor | list, head: str | None = None
    ) -> None:
        """Sets the per-element reference energies (eV per atom).

        Args:
            baseline: {atomic number: eV}, or a sequence indexed by atomic number.
            head: the head whose baseline this is (a model with heads); None sets
                every head's.
        """
        values = torch.zeros(NUM_ELEMENT_SLOTS, dtype=torch.float64)
        if isinstance(baseline, dict):
            for z, e in baseline.items():
                if not 0 < int(z) < NUM_ELEMENT_SLOTS:
                    raise ValueError(f"composition baseline: atomic number {z} out of 1..118")
                values[int(z)] = float(e)
        else:
            given = torch.as_tensor(baseline, dtype=torch.float64).reshape(-1)
            if given.numel() > NUM_ELEMENT_SLOTS:
                raise ValueError(
                    f"composition baseline has {given.numel()} entries, at most "
                    f"{NUM_ELEMENT_SLOTS} (index = atomic number)"
                )
            values[: given.numel()] = given
        if not self.head_names:
            self.head_index(head)  # a head name here is an error: say so
            self.composition_baseline.copy_(values.to(self.composition_baseline))
        elif head is None:
            self.composition_baseline[:] = values.to(self.composition_baseline)
        else:
            self.composition_baseline[self.head_index(head)] = values.to(self.composition_baseline)

    def set_energy_scale(self, scale: float) -> None:
        """Sets the scale of the learned energy (eV), e.g. the per-atom energy std."""
        self.energy_scale.fill_(float(scale))

    # ---- forward ------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _weights_key(self) -> tuple:
        # storage and in-place version of every parameter: changes with optimiser
        # steps, load_state_dict and weight swaps (EMA), so a stale cache is impossible
        return tuple((p.data_ptr(), p._version) for p in self.parameters())

    def _isolated_energies(
        self, species: Tensor, dtype: torch.dtype, head_atom: Tensor | None = None
    ) -> Tensor:
        """(num_atoms,) learned energy each atom would have with no neighbours.

        With ``cache_isolated`` set (inference: `train.calculator` sets it) and in
        eval mode, the per-element values are cached for the current weights;
        rotated copies and MD steps would otherwise run the network on isolated
        atoms at every call (6% of a 256-atom forward pass). Training never
        caches: sharded (ZeRO-3) parameters need not change storage or version.
        """
        # with heads, one isolated atom per (element, head) pair: key = Z * H + head
        codes = species if head_atom is None else species * self.num_heads + head_atom
        unique, inverse = torch.unique(codes, return_inverse=True)
        if self.training or not getattr(self, "cache_isolated", False):
            return self._isolated_values(unique, dtype, head_atom is not None)[inverse]
        key = (self._weights_key(), dtype, unique.device, tuple(unique.tolist()))
        cache = self.__dict__.setdefault("_isolated_cache", {})
        if key not in cache:
            cache.clear()
            with torch.no_grad():
                cache[key] = self._isolated_values(unique, dtype, head_atom is not None).detach()
        return cache[key][inverse]

    def _isolated_values(self, unique: Tensor, dtype: torch.dtype, heads: bool = False) -> Tensor:
        head = None
        if heads:
            unique, head = unique // self.num_heads, unique % self.num_heads
        num = int(unique.shape[0])
        device = unique.device
        no_edges = torch.zeros(0, dtype=torch.int64, device=device)
        alone = ModelGraph(
            species=unique,
            batch=torch.arange(num, device=device),
            num_structures=num,
            edge_i=no_edges,
            edge_j=no_edges,
            shifts=torch.zeros(0, 3, dtype=torch.int64, device=device),
            positions=torch.zeros(num, 3, dtype=dtype, device=device),
            shift_vectors=torch.zeros(0, 3, dtype=dtype, device=device),
            vectors=torch.zeros(0, 3, dtype=dtype, device=device),
        )
        if head is None:
            return self.atom_outputs(alone, direct=False).energy
        return self.atom_outputs(alone, direct=False, head=head).energy

    def forward(self, batch: dict, compute_forces: bool = True) -> dict[str, Tensor]:
        """Energies, forces and stresses of a batch.

        Args:
            batch: batch dict (data_pipelines.schema keys), on the model's device,
                with neighbour lists built with a radius of at least `self.cutoff`.
            compute_forces: False gives the energy only (no heads, no autograd).

        Returns:
            `energy` (num_structures,) eV, `forces` (num_atoms, 3) eV/A, `stress`
            (num_structures, 3, 3) eV/A^3 (zero where not periodic in 3D). In
            `direct` mode forces and stress come from the heads; in `conservative`
            mode from autograd; in `both` mode the gradient ones are under
            `forces`/`stress` and the head ones under `direct_forces`/`direct_stress`.
        """
        gradient = compute_forces and self.forces != "direct"
        direct = compute_forces and self.forces != "conservative"
        dtype = self.dtype
        with contextlib.ExitStack() as grad_context:
            if gradient:  # gradient forces work under no_grad and inference_mode too
                grad_context.enter_context(torch.inference_mode(False))
                grad_context.enter_context(torch.enable_grad())
                # Tensors made under inference_mode cannot enter an autograd graph.
                batch = {
                    k: v.clone() if isinstance(v, Tensor) and v.is_inference() else v
                    for k, v in batch.items()
                }
            # Geometry stays in full precision under autocast: bf16 edge vectors
            # would cost about three significant digits in every distance.
            device_type = batch[K.POSITIONS].device.type
            with torch.autocast(device_type, enabled=False):
                graph, displacement = build_graph(batch, dtype, differentiable=gradient)
            if self.head_names:
                head = self._batch_heads(batch, graph.num_structures, graph.batch.device)
                head_atom = head[graph.batch]
                out = self.atom_outputs(graph, direct=direct, head=head)
                isolated = self._isolated_energies(graph.species, dtype, head_atom)
                reference = self.composition_baseline.to(dtype)[head_atom, graph.species]
            else:
                out = self.atom_outputs(graph, direct=direct)
                isolated = self._isolated_energies(graph.species, dtype)
                reference = self.composition_baseline.to(dtype)[graph.species]
            learned = out.energy - isolated
            atom_energy = learned.to(dtype) * self.energy_scale.to(dtype)
            atom_energy = atom_energy + reference
            energy = atom_energy.new_zeros(graph.num_structures).index_add(
                0, graph.batch, atom_energy
            )
            result = {K.ENERGY: energy}
            if gradient:
                assert displacement is not None
                forces, stress = gradient_outputs(energy, displacement, self.training)
                result[K.FORCES], result[K.STRESS] = forces, stress
        if direct:
            scale = self.energy_scale.to(dtype)
            assert out.forces is not None and out.virial is not None
            forces = out.forces.to(dtype) * scale
            virial = out.virial.to(dtype).new_zeros(graph.num_structures, 3, 3)
            virial = virial.index_add(0, graph.batch, out.virial.to(dtype)) * scale
            volume = periodic_volume(batch[K.CELL].to(dtype), batch[K.PBC])
            safe = torch.where(volume > 0, volume, torch.ones_like(volume))
            stress = torch.where(volume[:, None, None] > 0, virial / safe[:, None, None], 0.0)
            if self.forces == "direct":
                result[K.FORCES], result[K.STRESS] = forces, stress
            else:
                result[DIRECT_FORCES], result[DIRECT_STRESS] = forces, stress
        return result

    def _batch_heads(self, batch: dict, num_structures: int, device) -> Tensor:
        """(num_structures,) head index of each structure (absent: the first head)."""
        head = batch.get(HEAD)
        if head is None:
            return torch.zeros(num_structures, dtype=torch.int64, device=device)
        head = torch.as_tensor(head, dtype=torch.int64, device=device).reshape(-1)
        if head.numel() != num_structures:
            raise ValueError(
                f"batch['{HEAD}'] has {head.numel()} entries for {num_structures} structures"
            )
        bad = (head < 0) | (head >= self.num_heads)
        if bool(bad.any()):
            raise ValueError(
                f"batch['{HEAD}'] holds head indices {sorted(set(head[bad].tolist()))}; this "
                f"model's heads are 0..{self.num_heads - 1} ({', '.join(self.head_names)})"
            )
        return head

    # ---- accounting ---------------------------------------------------------------

    def num_parameters(self) -> int:
        """Exact number of parameters (frozen ones included)."""
        return sum(p.numel() for p in self.parameters())

    def embedding_parameter_names(self) -> set[str]:
        """Parameters that are per-species lookup tables (one row per element),
        which scaling laws leave out of N: most rows never see data. By default
        the weights of every ``nn.Embedding``; a family adds its own tables."""
        return {
            f"{name}.{pname}" if name else pname
            for name, module in self.named_modules()
            if isinstance(module, torch.nn.Embedding)
            for pname, _ in module.named_parameters(recurse=False)
        }

    def num_parameters_non_embedding(self) -> int:
        """Parameters without the per-species tables (the N of scaling laws);
        per-element baselines are buffers, never parameters."""
        skip = self.embedding_parameter_names()
        return sum(p.numel() for n, p in self.named_parameters() if n not in skip)

    def describe(self) -> dict[str, Any]:
        """Every knob of this model, for run records."""
        return {
            "family": self.family,
            "forces": self.forces,
            "num_parameters": self.num_parameters(),
            **dataclasses.asdict(self.config),
        }

    def flops_per_atom(self, batch: dict) -> dict[str, float]:
        """Measured FLOPs per atom on a reference batch.

        Counts matrix products, convolutions and attention (torch's
        FlopCounterMode); elementwise work is not counted.

        Args:
            batch: a reference batch (its size and density set the per-atom cost).

        Returns:
            `energy`: energy-only forward; `forward`: one inference call in this
            model's force mode (for gradient forces this includes their backward);
            `forward_backward`: a training step, i.e. the call with a graph kept for
            force/stress losses plus the backward to the parameters.
        """
        num_atoms = int(batch[K.SPECIES].shape[0])
        was_training = self.training
        params = list(self.parameters())
        # backward() (autograd.grad clashes with the counter's module hooks) writes
        # .grad: keep the caller's gradients (and frozen flags) aside meanwhile.
        saved_grads = [p.grad for p in params]
        saved_flags = [p.requires_grad for p in params]
        counts: dict[str, float] = {}
        try:
            self.eval()
            with FlopCounterMode(display=False) as counter:
                self(batch, compute_forces=False)
            counts["energy"] = counter.get_total_flops() / num_atoms
            with FlopCounterMode(display=False) as counter:
                self(batch)
            counts["forward"] = counter.get_total_flops() / num_atoms
            self.train()
            for p in params:
                p.requires_grad_(True)
            with FlopCounterMode(display=False) as counter:
                out = self(batch)
                for p in params:
                    p.grad = None
                sum(v.float().square().sum() for v in out.values()).backward()
            counts["forward_backward"] = counter.get_total_flops() / num_atoms
        finally:
            self.train(was_training)
            for p, grad, flag in zip(params, saved_grads, saved_flags):
                p.grad = grad
                p.requires_grad_(flag)
        return counts
