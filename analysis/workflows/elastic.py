"""Lattice constant and cubic elastic constants of a model, against the DFT
strain-stress data a data set ships (maml's ``<El>_Elastic`` sets).

    python -m analysis elastic --model MODEL.pt \\
        --elastic-sets ../shared/data/crystals/maml-MoNbTaW/{Mo,Nb,Ta,W}_Elastic.json.gz \\
        [--max-strain 0.02] [--out DIR]

As a study's evaluation stage (every cooled-down run gets it; metrics
``elastic/a_rel_error`` and ``elastic/C_mae_GPa``: the mean absolute relative error
over the elements of the lattice constant, mean absolute error of C11, C12, C44
in GPa, and the model's values per element and constant):

    evaluate: [{name: elastic, workflow: elastic,
                settings: {elastic_sets: [../shared/data/.../Mo_Elastic.json.gz, ...]}}]

The reference side needs no calculator: each set holds the DFT-relaxed cubic
cell (zero strain) and cells strained from it in six modes, each labelled with
its stress. The cubic constants C11, C12 and C44 (and a residual pressure) are
the least-squares fit of sigma = C epsilon over every cell with strain up to
``max_strain`` (linear regime; the sets reach 10%). The model side: relax the
same conventional cell with the model (cell and positions, ASE's
FrechetCellFilter), giving its lattice constant; then apply the very same
deformation gradients to that cell, take the model's stress, and fit the same
way. Stress is in ASE's sign (tension positive); constants in GPa.

Caveat a report should state: these cells usually sit in the model's training
split (as they did in the potentials published with such data), so the check
measures how well the fit reproduces them, not transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from analysis.workflows.model import ModelOptions
from analysis.workflows.results import write_results
from analysis.workflows.settings import setting
from data_pipelines.sources.options import ReaderOptions
from data_pipelines.sources.pymatgen_json import read_pymatgen_json

KEYS = ("a", "C11", "C12", "C44")
CONSTANTS = KEYS[1:]


@dataclass(frozen=True)
class StrainSet:
    """One element's strained cells: the zero-strain cell and, per strained
    cell, its deformation gradient from that cell and its stress (Voigt, eV/A^3,
    tension positive)."""

    element: str
    reference: Atoms
    deformations: np.ndarray  # (n, 3, 3)
    stresses: np.ndarray  # (n, 6)

    @property
    def lattice_constant(self) -> float:
        return cubic_lattice_constant(self.reference.cell[:])


def cubic_lattice_constant(cell: np.ndarray) -> float:
    """Edge of the cube with the cell's volume (the conventional cubic cell's a)."""
    return float(np.cbrt(abs(np.linalg.det(cell))))


def voigt_strain(deformation: np.ndarray) -> np.ndarray:
    """Small-strain Voigt vector (engineering shears) of a deformation gradient."""
    e = 0.5 * (deformation + deformation.T) - np.eye(3)
    return np.array([e[0, 0], e[1, 1], e[2, 2], 2 * e[1, 2], 2 * e[0, 2], 2 * e[0, 1]])


def deformation_of(cell: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """F with cell rows = reference rows @ F^T."""
    return (np.linalg.solve(reference, cell)).T


def read_strain_set(path: str | Path, max_strain: float = 0.02) -> StrainSet:
    """A maml ``*_Elastic.json.gz`` set (read by the data pipeline's maml reader,
    so units, sign and Voigt order are its own): cells whose largest strain
    component is at most ``max_strain``, as deformations of the zero-strain
    cubic cell.

    Raises:
        ValueError: no single zero-strain cubic cell, or a record without stress.
        DataError: a malformed record (from the reader, naming file, record, field).
    """
    structures = list(read_pymatgen_json(Path(path), ReaderOptions()))
    for s in structures:
        if s.stress is None:
            raise ValueError(f"{path}: record {s.source_id}: field outputs.stress missing")
    cubic = [
        s
        for s in structures
        if np.allclose(s.cell, np.diag(np.diag(s.cell)), atol=1e-6)
        and np.ptp(np.diag(s.cell)) < 1e-6
    ]
    if len(cubic) != 1:
        raise ValueError(f"{path}: expected one zero-strain cubic cell, found {len(cubic)}")
    ref = cubic[0]
    reference = Atoms(numbers=ref.numbers, positions=ref.positions, cell=ref.cell, pbc=ref.pbc)
    deformations, stresses = [], []
    for s in structures:
        f = deformation_of(s.cell, ref.cell)
        if np.abs(voigt_strain(f)).max() <= max_strain + 1e-6:
            deformations.append(f)
            stresses.append(full_3x3_to_voigt_6_stress(s.stress))
    element = reference.get_chemical_symbols()[0]
    return StrainSet(element, reference, np.array(deformations), np.array(stresses))


def fit_cubic(deformations: np.ndarray, stresses: np.ndarray) -> dict[str, float]:
    """Least-squares C11, C12, C44 (GPa) and residual stress p0 of sigma = C eps + p0.

    Needs normal and shear strains among the cells; returns the RMS misfit too.
    """
    rows, rhs = [], []
    for f, sigma in zip(deformations, stresses):
        e = voigt_strain(f)
        for i in range(3):
            others = e[0] + e[1] + e[2] - e[i]
            rows.append([e[i], others, 0.0, 1.0])
            rhs.append(sigma[i])
        for i in range(3, 6):
            rows.append([0.0, 0.0, e[i], 0.0])
            rhs.append(sigma[i])
    a, b = np.array(rows), np.array(rhs)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    misfit = float(np.sqrt(np.mean((a @ coef - b) ** 2)))
    c11, c12, c44, p0 = (float(v) / GPa for v in coef)
    return {"C11": c11, "C12": c12, "C44": c44, "p0": p0, "rms_misfit_GPa": misfit / GPa}


def relaxed_cell(atoms: Atoms, calc, fmax: float = 1e-4, steps: int = 200) -> Atoms:
    """The cell and positions relaxed with ``calc`` (cubic symmetry is kept by
    the starting cell's symmetry; hydrostatic freedom only)."""
    relaxed = atoms.copy()
    relaxed.calc = calc
    opt = BFGS(FrechetCellFilter(relaxed, hydrostatic_strain=True), logfile=None)
    opt.run(fmax=fmax, steps=steps)
    return relaxed


def model_constants(data: StrainSet, calc) -> dict:
    """The model's lattice constant and cubic constants on the data's strains."""
    relaxed = relaxed_cell(data.reference, calc)
    a = cubic_lattice_constant(relaxed.cell[:])
    stresses = []
    for f in data.deformations:
        atoms = relaxed.copy()
        atoms.set_cell(relaxed.cell[:] @ f.T, scale_atoms=True)
        atoms.calc = calc
        stresses.append(atoms.get_stress(voigt=True))
    return {"a": a, **fit_cubic(data.deformations, np.array(stresses))}


def compare(sets: list[StrainSet], calc) -> dict:
    """Per element: DFT and model values and the model's relative errors; and
    ``mean_abs_relative_error`` over the elements."""
    out = {}
    for data in sets:
        ref = {"a": data.lattice_constant, **fit_cubic(data.deformations, data.stresses)}
        mod = model_constants(data, calc)
        out[data.element] = {
            "num_cells": len(data.deformations),
            "dft": ref,
            "model": mod,
            "relative_error": {k: (mod[k] - ref[k]) / ref[k] for k in KEYS},
        }
    if out:
        out["mean_abs_relative_error"] = {
            k: float(np.mean([abs(r["relative_error"][k]) for r in out.values()])) for k in KEYS
        }
    return out


def elements(result: dict) -> dict:
    """The per-element entries of a :func:`compare` result."""
    return {el: r for el, r in result.items() if el != "mean_abs_relative_error"}


def table(result: dict) -> str:
    lines = ["element  a DFT/model (A)    C11 DFT/model   C12 DFT/model   C44 DFT/model (GPa)"]
    for el, r in elements(result).items():
        d, m = r["dft"], r["model"]
        lines.append(
            f"{el:7s}  {d['a']:.4f} / {m['a']:.4f}   "
            + "   ".join(f"{d[k]:6.0f} / {m[k]:6.0f}" for k in CONSTANTS)
        )
    mean = result.get("mean_abs_relative_error")
    if mean:
        lines.append("mean |relative error|: " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in mean.items()))
    return "\n".join(lines)


@dataclass(frozen=True)
class ElasticSettings:
    """Which strain-stress sets to check against (flags of ``python -m analysis elastic``)."""

    elastic_sets: tuple[str, ...] = setting(
        (), "maml <El>_Elastic.json(.gz) files, one per element", metavar="FILE"
    )
    max_strain: float = setting(
        0.02, "largest strain component of the cells fitted (the linear regime)"
    )


def stage_metrics(result: dict) -> dict[str, float]:
    """Flat metrics of a :func:`compare` result: ``elastic/a_rel_error`` (mean
    |relative error| of the lattice constant), ``elastic/C_mae_GPa`` (mean
    absolute error of C11, C12 and C44 over the elements: absolute, because a
    soft constant such as PBE Nb's C44 of ~2 GPa would dominate any relative
    mean) and ``elastic/<El>/<a|C11|C12|C44>`` (the model's values)."""
    per = elements(result)
    metrics = {
        "elastic/a_rel_error": result["mean_abs_relative_error"]["a"],
        "elastic/C_mae_GPa": float(np.mean(
            [abs(r["model"][k] - r["dft"][k]) for r in per.values() for k in CONSTANTS])),
    }
    for el, r in per.items():
        for k in KEYS:
            metrics[f"elastic/{el}/{k}"] = r["model"][k]
    return metrics


def run(model: ModelOptions, structures, settings: ElasticSettings, out: Path | None = None):
    """Lattice constant and cubic constants of the model against each set's DFT.

    Returns:
        ``{"settings", "elements": compare(...), "metrics": stage_metrics(...)}``.

    Raises:
        ValueError: no sets given, or a set without one zero-strain cell.
    """
    if not settings.elastic_sets:
        raise ValueError("elastic: give at least one set (--elastic-sets FILE ...)")
    sets = [read_strain_set(f, settings.max_strain) for f in settings.elastic_sets]
    result = compare(sets, model.build())
    metrics = stage_metrics(result)
    return write_results(out, {"settings": {"elastic_sets": list(settings.elastic_sets),
                                            "max_strain": settings.max_strain},
                               "elements": result, "metrics": metrics})


def summary(model: ModelOptions, settings: ElasticSettings, result: dict, out) -> str:
    return f"elastic {model.spec}\n" + table(result["elements"])
