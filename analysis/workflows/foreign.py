"""Models that are not our model files: metatomic, mace-torch, any ASE calculator.

A model spec (``--model``) is, besides ``emt`` and our own model files:

- a metatomic model file (``python -m train.export --format metatomic``, or
  any other metatomic ``AtomisticModel``), run by metatomic-ase; ``--forces
  direct`` reads its ``non_conservative_force``/``_stress`` outputs;
- a mace-torch model file (``mace_run_train``'s ``*.model``, or ``python -m
  train.export --format mace``), run by ``mace.calculators.MACECalculator``;
- ``module:factory``, e.g. ``my_pkg.calc:make``: ``factory()`` is called with
  no arguments and must return an ASE calculator.

:func:`model_kind` tells them apart by reading the file as a zip archive and
the names its pickle refers to, without loading it. The rotated copies of
rotational averaging go through metatomic-ase in batches of structures;
mace-torch and other calculators evaluate them one at a time.
"""

from __future__ import annotations

import importlib
import pickletools
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

ModelKind = Literal["emt", "ours", "metatomic", "mace", "factory"]
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
PROJECT_PACKAGES = ("data_pipelines", "train", "analysis", "slurm")


def _pickle_globals(archive: zipfile.ZipFile) -> set[tuple[str, str]]:
    """(module, name) of every class or function the archive's pickle names.

    Read with pickletools, which decodes opcodes and runs nothing.
    """
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if not pickles:
        return set()
    found: set[tuple[str, str]] = set()
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(archive.read(pickles[0])):
        if opcode.name == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            found.add((module, name))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add((strings[-2], strings[-1]))
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def model_kind(spec: str) -> ModelKind:
    """What a model spec names (see the module docstring).

    Raises:
        FileNotFoundError: a spec that is neither a file nor ``emt`` nor
            ``module:factory``.
        ValueError: a TorchScript file that is not a metatomic model.
    """
    if spec.lower() == "emt":
        return "emt"
    path = Path(spec)
    if not path.is_file():
        if FACTORY.match(spec):
            return "factory"
        raise FileNotFoundError(
            f"model {spec!r}: no such file (use 'emt', a model file: ours, metatomic or "
            "mace-torch, or an ASE calculator factory as module:function)"
        )
    if not zipfile.is_zipfile(path):
        return "ours"  # a legacy torch file: load_model says what is wrong with it
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(n.endswith("extra/metatomic-version") for n in names):
            return "metatomic"
        if any("/code/__torch__" in n for n in names):
            raise ValueError(
                f"{spec}: a TorchScript file that is not a metatomic model (e.g. a mace "
                "LAMMPS model); give the metatomic or mace-torch file instead"
            )
        modules = {module for module, _ in _pickle_globals(archive)}
    return "mace" if any(m == "mace" or m.startswith("mace.") for m in modules) else "ours"


def load_user_factory(spec: str) -> Callable[[], Any]:
    """The function ``factory`` of ``module:factory``, imported from the user's code.

    This is the one place a module named at run time is imported; project
    modules are refused (they are never calculators factories, and importing
    them by name would hide an import from the architecture checks).

    Raises:
        ValueError: a project module, or no such function in the module.
        ModuleNotFoundError: no such module.
    """
    module_name, _, attribute = spec.partition(":")
    if module_name.split(".")[0] in PROJECT_PACKAGES:
        raise ValueError(
            f"model {spec!r}: {module_name} is part of this project, not a calculator "
            "factory; use a model file or your own module"
        )
    module = importlib.import_module(module_name)
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"model {spec!r}: {module_name} has no callable {attribute!r}")
    return factory


def _voigt(stress: np.ndarray) -> np.ndarray:
    """(3, 3) -> Voigt xx yy zz yz xz xy, symmetrising the off-diagonal pairs."""
    s = np.asarray(stress, dtype=np.float64).reshape(3, 3)
    return np.array(
        [s[0, 0], s[1, 1], s[2, 2], (s[1, 2] + s[2, 1]) / 2, (s[0, 2] + s[2, 0]) / 2,
         (s[0, 1] + s[1, 0]) / 2]
    )  # fmt: skip


def metatomic_batch(calc, max_atoms: int = 256) -> Callable[[list[Atoms]], list[dict]]:
    """A batch hook for RotationalAverage: several structures per forward pass.

    Args:
        calc: a ``metatomic_ase.MetatomicCalculator``.
        max_atoms: atoms per forward pass.
    """

    def evaluate(structures: list[Atoms]) -> list[dict]:
        results: list[dict] = []
        start = 0
        while start < len(structures):
            chunk, atoms = [], 0
            for a in structures[start:]:
                if chunk and atoms + len(a) > max_atoms:
                    break
                chunk.append(a)
                atoms += len(a)
            out = calc.compute_energy(chunk, compute_forces_and_stresses=True)
            for k, a in enumerate(chunk):
                res = {"energy": float(out["energy"][k]), "forces": np.asarray(out["forces"][k])}
                res["free_energy"] = res["energy"]
                if "stress" in out and a.pbc.all():
                    res["stress"] = _voigt(out["stress"][k])
                results.append(res)
            start += len(chunk)
        return results

    return evaluate


def _metatomic(spec: str, forces: str | None, device: str | None):
    from metatomic_ase import MetatomicCalculator

    probe = MetatomicCalculator(spec, device=device)
    capabilities = probe.model().capabilities()
    direct_available = any(k.startswith("non_conservative_force") for k in capabilities.outputs)
    if forces is None:  # as for our files: gradient forces unless trained direct only
        card = probe.metadata().extra.get("mlip-scaling::card", "")
        forces = "direct" if direct_available and '"forces": "direct"' in card else "conservative"
    if forces == "direct" and not direct_available:
        raise ValueError(
            f"{spec}: this metatomic model has no non_conservative_force output (no direct "
            "forces); use --forces conservative"
        )
    calc = probe if forces == "conservative" else MetatomicCalculator(
        spec, device=device, non_conservative=True
    )  # fmt: skip
    calc.supported_species = sorted(int(z) for z in capabilities.atomic_types)
    on_gpu = any(b.is_cuda for b in calc.model().buffers())
    calc.batch_fn = metatomic_batch(calc, 4096 if on_gpu else 256)  # as ModelCalculator
    return calc


def _mace(spec: str, device: str | None, dtype) -> Calculator:
    import contextlib
    import io
    import logging

    # mace prints a notice about optional CUDA kernels; keep the workflows' stdout clean
    with contextlib.redirect_stdout(io.StringIO()):
        from mace.calculators import MACECalculator
    with zipfile.ZipFile(spec) as archive:
        storages = {name for _, name in _pickle_globals(archive)}
    if dtype is None:
        default = "float32" if "FloatStorage" in storages else "float64"
    else:
        default = str(dtype).removeprefix("torch.")
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # mace logs its head and dtype choice
    try:
        calc = MACECalculator(model_paths=spec, device=device or "cpu", default_dtype=default)
    finally:
        logging.getLogger().setLevel(level)
    calc.supported_species = [int(z) for z in calc.z_table.zs]
    return calc


def foreign_calculator(
    spec: str, kind: ModelKind, forces: str | None = None, device: str | None = None, dtype=None
) -> Calculator:
    """The ASE calculator of a metatomic file, a mace-torch file or a factory.

    The result may carry ``supported_species`` (atomic numbers) and
    ``batch_fn`` (a batched evaluation for rotational averaging).

    Args:
        spec: the model spec.
        kind: :func:`model_kind` of the spec.
        forces: "direct" or "conservative"; None: the model's default.
        device: torch device for metatomic and mace-torch (None: their default).
        dtype: torch dtype for mace-torch (metatomic models fix their own).

    Raises:
        ValueError: direct forces asked of a model without them, or a factory
            that does not return an ASE calculator.
    """
    if kind == "metatomic":
        return _metatomic(spec, forces, device)
    if forces == "direct":
        raise ValueError(f"model {spec!r} ({kind}) has gradient forces only: use conservative")
    if kind == "mace":
        return _mace(spec, device, dtype)
    if kind == "factory":
        calc = load_user_factory(spec)()
        if not isinstance(calc, Calculator) and not hasattr(calc, "get_potential_energy"):
            raise ValueError(f"model {spec!r}: the factory returned {type(calc).__name__}, "
                             "not an ASE calculator")  # fmt: skip
        return calc
    raise ValueError(f"model {spec!r}: {kind} is not a foreign model kind")


def force_modes(spec: str) -> list[str | None]:
    """The force modes worth timing: both for a model with direct heads (our files
    are assumed to have them), the default only for the others."""
    kind = model_kind(spec)
    if kind == "ours":
        return ["direct", "conservative"]
    if kind == "metatomic":
        from metatomic.torch import load_atomistic_model

        outputs = load_atomistic_model(spec).capabilities().outputs
        direct = any(k.startswith("non_conservative_force") for k in outputs)
        return ["direct", "conservative"] if direct else ["conservative"]
    return [None]


def num_parameters(spec: str) -> int | None:
    """Parameters of a metatomic or mace-torch model (None for other calculators)."""
    kind = model_kind(spec)
    if kind not in ("metatomic", "mace"):
        return None
    calc = foreign_calculator(spec, kind, "conservative")
    module = calc.model() if kind == "metatomic" else calc.models[0]
    return int(sum(p.numel() for p in module.parameters()))


def label(spec: str) -> str:
    """A short name for tables: ``metatomic-<name>``, ``mace-torch-<file>``, the factory."""
    kind = model_kind(spec)
    if kind == "metatomic":
        from metatomic.torch import read_model_metadata

        name = read_model_metadata(spec).name.removeprefix("mlip-scaling ")
        return f"metatomic-{name or Path(spec).stem}"
    if kind == "mace":
        return f"mace-torch-{Path(spec).stem}"
    return spec
