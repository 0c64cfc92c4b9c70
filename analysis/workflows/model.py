"""The model a workflow evaluates: a spec plus inference-time corrections.

A *model spec* is ``"emt"`` (ASE's EMT, the reference used in tests and demos),
a path to one of our exported model files, which goes to
``train.calculator.load_calculator`` (imported lazily so the workflows run
without torch models), or a foreign model (:mod:`analysis.workflows.foreign`):
a metatomic model file, a mace-torch model file, or ``module:factory`` naming
any ASE calculator. Inference-time corrections (``train.corrections``) are
options of the model and work on every kind (batched for our files and
metatomic, one structure at a time otherwise), so every workflow that takes
them has the same flags, made from :class:`ModelOptions`: ``--model``,
``--forces direct|conservative``, ``--rotational-average L``, ``--inversion``,
``--space-group``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from analysis.workflows.foreign import foreign_calculator, model_kind
from analysis.workflows.settings import setting
from train.corrections import RotationalAverage, SpaceGroupProjection

ForceMode = Literal["direct", "conservative"]
# the ModelOptions fields a workflow with corrections takes besides the spec
CORRECTIONS = ("forces", "rotational_average", "inversion", "space_group")


@dataclass(frozen=True)
class ModelOptions:
    """A model spec plus the inference-time corrections to apply.

    Attributes:
        spec: ``"emt"``, a model file path (ours, metatomic, mace-torch) or
            ``module:factory`` (flag ``--model``).
        forces: force mode for models with both heads; None keeps the model's
            default. EMT forces are always the energy gradient.
        rotational_average: l_max of the averaging grid, None for no averaging.
        inversion: include the inversion in the averaging grid (O(3)).
        space_group: symmetrise forces and stress with the structure's space group.
        symprec: spglib tolerance (A) for the space-group projection (no flag).
    """

    spec: str = setting(
        "emt",
        "'emt', a model file (ours, metatomic or mace-torch) or an ASE calculator "
        "factory as module:function",
        flag="--model",
        metavar="MODEL",
    )
    forces: ForceMode | None = setting(
        None, "force mode of a model with both heads (default: the model's own)"
    )
    rotational_average: int | None = setting(
        None,
        "average over a rotation grid exact to degree L (42 rotations for L=3)",
        metavar="L",
    )
    inversion: bool = setting(False, "add inversion to the grid")
    space_group: bool = setting(False, "symmetrise forces/stress with spglib")
    symprec: float = setting(1e-5, "spglib tolerance of the projection", "A", cli=False)

    def build(self) -> Calculator:
        """A fresh calculator for these options."""
        return get_calculator(
            self.spec,
            forces=self.forces,
            rotational_average=self.rotational_average,
            inversion=self.inversion,
            space_group=self.space_group,
            symprec=self.symprec,
        )

    def plain(self) -> ModelOptions:
        """The same model without corrections (force mode kept)."""
        return replace(self, rotational_average=None, inversion=False, space_group=False)

    def describe(self) -> str:
        """A short human-readable label, e.g. ``emt`` or ``model.pt[conservative,rot3]``."""
        tags = [self.forces] if self.forces else []
        if self.rotational_average is not None:
            tags.append(f"rot{self.rotational_average}{'i' if self.inversion else ''}")
        if self.space_group:
            tags.append("spg")
        return self.spec + (f"[{','.join(tags)}]" if tags else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_calculator(
    spec: str,
    *,
    forces: ForceMode | None = None,
    rotational_average: int | None = None,
    inversion: bool = False,
    space_group: bool = False,
    symprec: float = 1e-5,
    **kwargs: Any,
) -> Calculator:
    """Build an ASE calculator from a model spec and correction options.

    Args:
        spec: ``"emt"``, a model file (ours, metatomic, mace-torch) or
            ``module:factory`` (see :mod:`analysis.workflows.foreign`).
        forces: ``"direct"`` or ``"conservative"``; None keeps the default.
        rotational_average: l_max of the rotational-averaging grid, or None.
        inversion: pair each grid rotation with its inversion.
        space_group: project forces and stress onto the space group.
        symprec: spglib tolerance for ``space_group``.
        **kwargs: passed to ``load_calculator`` for our model files (device,
            dtype); device (and dtype for mace-torch) for foreign models.

    Returns:
        The calculator.

    Raises:
        FileNotFoundError: no such model file (or factory spec).
        ValueError: direct forces asked of a model that has none.
    """
    kind = model_kind(spec)
    if kind != "ours":
        if kind == "emt":
            from ase.calculators.emt import EMT

            calc: Calculator = EMT()
        else:
            calc = foreign_calculator(spec, kind, forces, kwargs.get("device"), kwargs.get("dtype"))
        species = getattr(calc, "supported_species", None)
        if rotational_average is not None:
            calc = RotationalAverage(
                calc,
                l_max=rotational_average,
                inversion=inversion,
                batch_fn=getattr(calc, "batch_fn", None),
            )
        if space_group:
            calc = SpaceGroupProjection(calc, symprec=symprec)
        if species is not None:
            calc.supported_species = species
        return calc
    from train.calculator import load_calculator  # lazy: pulls in torch and the models

    options: dict[str, Any] = {"inversion": inversion, "space_group": space_group, **kwargs}
    if forces is not None:
        options["forces"] = forces
    if rotational_average is not None:
        options["rotational_average"] = rotational_average
    return load_calculator(spec, **options)


def supported_symbols(calc: Calculator) -> set[str] | None:
    """Element symbols ``calc`` can evaluate, or None when it does not say.

    Unwraps correction wrappers. EMT lists its parameter table; a model
    calculator may expose ``supported_species`` (symbols or atomic numbers).
    """
    from ase.calculators.emt import EMT, parameters
    from ase.data import chemical_symbols

    while hasattr(calc, "base_calculator"):
        calc = calc.base_calculator
    if isinstance(calc, EMT):
        return set(parameters)
    species = getattr(calc, "supported_species", None)
    if species is None:
        return None
    return {chemical_symbols[s] if isinstance(s, int | np.integer) else str(s) for s in species}


def check_species(calc: Calculator, atoms: Atoms, name: str, model: str) -> None:
    """Fail with a clear message when ``atoms`` holds an element the model lacks."""
    known = supported_symbols(calc)
    if known is None:
        return
    missing = sorted(set(atoms.get_chemical_symbols()) - known)
    if missing:
        raise ValueError(
            f"structure {name!r} contains {', '.join(missing)}, which model {model!r} does not "
            f"know (supported: {', '.join(sorted(known))})"
        )


REFERENCE_HELP = (
    "reference: 'emt', a model file, module:factory, or 'none' "
    "(default: the same model, conservative forces, no corrections)"
)


def reference_options(model: ModelOptions, reference: str | None) -> ModelOptions | None:
    """The reference calculation: ``reference`` if given ('none' disables it),
    else the same model with conservative forces and no corrections.

    Args:
        model: the model being evaluated.
        reference: ``"emt"``, a model file, ``"none"`` or None (the default).
    """
    if reference is not None and reference.lower() == "none":
        return None
    if reference is not None:
        return ModelOptions(spec=reference)
    return ModelOptions(spec=model.spec, forces=None if model.spec == "emt" else "conservative")
