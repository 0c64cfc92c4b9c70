"""Diagnostics of broken constraints: rotational error, non-conservativeness, NVE drift.

    python -m analysis symmetry --model emt --structures builtin:metals \
        [--num-rotations 8] [--grid-l-max 3] [--out DIR] [--forces direct]

Per structure:

- rotational error: spread of the back-rotated predictions over random
  rotations (identity included), and the weighted standard deviation over the
  rotational-averaging grid of the uncorrected model; next to the model's
  error against the labels when the structures file has energies/forces;
- Jacobian asymmetry lambda = ||J_anti||_F / ||J||_F with J = dF/dr by central
  finite differences on a block of atoms (0 up to O(step^2) for gradient forces);
- NVE energy drift of a short velocity-Verlet run.

Rotational errors, lambda and MD use a "working cell": the structure repeated
to at least ``--min-atoms`` atoms and rattled, so a 1-atom cell still has a
Jacobian to measure and no accidental symmetry hides asymmetry (in a perfect
Bravais lattice gradient forces vanish identically, so their rotational error
would read exactly 0). Label errors use the structure as given.

Writes ``DIR/results.json`` and ``DIR/metrics.json`` (flat ``symmetry/...`` names).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.md import velocitydistribution
from ase.md.verlet import VelocityVerlet
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from analysis.workflows.model import ModelOptions, check_species
from analysis.workflows.results import nanmean, write_results
from analysis.workflows.settings import setting
from analysis.workflows.structures import Structures, as_structures
from train.corrections import RotationalAverage, transform_atoms


@dataclass(frozen=True)
class SymmetrySettings:
    """Diagnostic settings; each field's help and unit are its metadata
    (``python -m analysis symmetry --help`` lists them)."""

    num_rotations: int = setting(8, "random rotations for the rotational error (plus identity)")
    grid_l_max: int | None = setting(
        3, "l_max of the grid whose std is reported; -1 skips it", none_at_or_below=-1
    )
    # Large enough for float32 models, small enough for the O(step^2)
    # truncation to stay ~1e-5.
    fd_step: float = setting(5e-3, "finite-difference step of the force Jacobian", "A")
    jacobian_atoms: int = setting(
        8, "atoms in the block whose Jacobian is measured; 0 skips lambda"
    )
    min_atoms: int = setting(32, "atoms of the working cell for the Jacobian and MD")
    rattle: float = setting(0.02, "Gaussian rattle of the working cell", "A")
    md_steps: int = setting(200, "velocity-Verlet steps; 0 skips the NVE run")
    md_timestep: float = setting(1.0, "MD time step", "fs")
    md_temperature: float = setting(300.0, "initial Maxwell-Boltzmann temperature", "K")
    seed: int = setting(0, "seed for rotations, rattle and velocities")


def _predict(calc: Calculator, atoms: Atoms) -> dict[str, NDArray | float]:
    work = atoms.copy()
    work.calc = calc
    out: dict[str, NDArray | float] = {
        "energy": float(work.get_potential_energy()),
        "forces": np.array(work.get_forces()),
    }
    if work.pbc.all():
        out["stress"] = np.array(work.get_stress())
    return out


def _rms(x: NDArray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def rotational_spread(
    calc: Calculator, atoms: Atoms, num_rotations: int, seed: int = 0
) -> dict[str, float]:
    """Spread of back-rotated predictions over random rotations.

    Returns:
        ``rot_error_energy`` (eV/atom, std over rotations), ``rot_error_forces``
        (eV/A) and ``rot_error_stress`` (eV/A^3): RMS deviation from the mean
        over rotations, atoms and components. Zero for an equivariant model.
    """
    rots = np.concatenate(
        [np.eye(3)[None], Rotation.random(num_rotations, random_state=seed).as_matrix()]
    )
    energies, forces, stresses = [], [], []
    for rot in rots:
        pred = _predict(calc, transform_atoms(atoms, rot))
        energies.append(pred["energy"])
        forces.append(pred["forces"] @ rot)  # R^T f for row vectors
        if "stress" in pred:
            full = rot.T @ voigt_6_to_full_3x3_stress(pred["stress"]) @ rot
            stresses.append(full_3x3_to_voigt_6_stress(full))
    forces_arr = np.array(forces)
    out = {
        "rot_error_energy": float(np.std(energies)) / len(atoms),
        "rot_error_forces": _rms(forces_arr - forces_arr.mean(axis=0)),
        "rot_error_stress": math.nan,
    }
    if stresses:
        s = np.array(stresses)
        out["rot_error_stress"] = _rms(s - s.mean(axis=0))
    return out


def grid_spread(calc: Calculator, atoms: Atoms, l_max: int) -> dict[str, float]:
    """Weighted std over the averaging grid of ``calc`` (the free error estimate)."""
    work = atoms.copy()
    work.calc = RotationalAverage(calc, l_max=l_max)
    work.get_forces()
    res = work.calc.results
    return {
        "grid_std_energy": res["energy_rot_std"] / len(atoms),
        "grid_std_forces": _rms(res["forces_rot_std"]),
        "grid_std_stress": _rms(res["stress_rot_std"]) if "stress_rot_std" in res else math.nan,
    }


def label_errors(pred: dict, labels: dict, num_atoms: int) -> dict[str, float]:
    """Errors against reference labels (energy per atom, force components)."""
    out = {"energy_mae_per_atom": math.nan, "force_mae": math.nan, "force_rmse": math.nan}
    if "energy" in labels:
        out["energy_mae_per_atom"] = abs(pred["energy"] - float(labels["energy"])) / num_atoms
    if "forces" in labels:
        diff = pred["forces"] - np.asarray(labels["forces"])
        out["force_mae"] = float(np.abs(diff).mean())
        out["force_rmse"] = _rms(diff)
    return out


def working_cell(atoms: Atoms, min_atoms: int, rattle: float, seed: int) -> Atoms:
    """Repeat a periodic cell (shortest axis first) to >= min_atoms atoms and rattle it."""
    reps = np.ones(3, dtype=int)
    if atoms.pbc.all():
        lengths = atoms.cell.lengths()
        while len(atoms) * reps.prod() < min_atoms:
            reps[np.argmin(lengths * reps)] += 1
    work = atoms.repeat(tuple(int(r) for r in reps))
    work.calc = None
    rng = np.random.default_rng(seed)
    work.positions += rng.normal(0.0, rattle, work.positions.shape)
    return work


def force_jacobian(
    calc: Calculator, atoms: Atoms, indices: list[int] | None = None, step: float = 5e-3
) -> NDArray[np.float64]:
    """J[(i,a),(j,b)] = dF_ia / dr_jb by central differences over ``indices``.

    Args:
        calc: any ASE calculator.
        atoms: structure.
        indices: atoms of the block (default all).
        step: displacement in A.

    Returns:
        Array of shape (3 k, 3 k), eV/A^2, for k = len(indices).
    """
    idx = list(range(len(atoms))) if indices is None else list(indices)
    work = atoms.copy()
    work.calc = calc
    base = work.positions.copy()
    cols = []
    for j in idx:
        for b in range(3):
            plus, minus = base.copy(), base.copy()
            plus[j, b] += step
            minus[j, b] -= step
            work.positions = plus
            f_plus = work.get_forces()[idx].ravel()
            work.positions = minus
            f_minus = work.get_forces()[idx].ravel()
            cols.append((f_plus - f_minus) / (2 * step))
    return np.array(cols).T


def jacobian_asymmetry(jacobian: NDArray[np.float64]) -> float:
    """lambda = ||J_anti||_F / ||J||_F with J_anti = (J - J^T) / 2."""
    return float(np.linalg.norm(0.5 * (jacobian - jacobian.T)) / np.linalg.norm(jacobian))


def nve_drift(
    calc: Calculator, atoms: Atoms, steps: int, timestep_fs: float, temperature_K: float, seed: int
) -> dict[str, float]:
    """Total-energy drift of a velocity-Verlet run.

    Returns:
        ``nve_drift_meV_per_atom_per_ps``: slope of a linear fit of E_total/N
        against time; ``nve_max_dev_meV_per_atom``: largest |E_total - E_0|/N.
    """
    work = atoms.copy()
    work.calc = calc
    # thermalize_momenta replaces MaxwellBoltzmannDistribution from ASE 3.29 on.
    thermalize = getattr(
        velocitydistribution,
        "thermalize_momenta",
        velocitydistribution.MaxwellBoltzmannDistribution,
    )
    thermalize(work, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    velocitydistribution.Stationary(work)
    dyn = VelocityVerlet(work, timestep=timestep_fs * units.fs, logfile=None)
    totals: list[float] = []
    # ASE calls observers before the first step too: steps + 1 samples.
    dyn.attach(lambda: totals.append(work.get_total_energy()), interval=1)
    dyn.run(steps)
    per_atom_mev = 1e3 * np.array(totals) / len(work)
    time_ps = np.arange(len(per_atom_mev)) * timestep_fs * 1e-3
    slope = np.polyfit(time_ps, per_atom_mev, 1)[0] if len(per_atom_mev) > 1 else math.nan
    return {
        "nve_drift_meV_per_atom_per_ps": float(slope),
        "nve_max_dev_meV_per_atom": float(np.abs(per_atom_mev - per_atom_mev[0]).max()),
    }


def diagnose(
    calc: Calculator,
    plain_calc: Calculator | None,
    atoms: Atoms,
    settings: SymmetrySettings,
) -> dict[str, float]:
    """All diagnostics for one structure (see the module docstring).

    Args:
        calc: the model as configured (force mode and corrections).
        plain_calc: the same model without corrections, whose grid std is
            reported; None skips the grid std.
        atoms: the structure; labels are read from its attached calculator
            (e.g. energies/forces of an extxyz file) when present.
        settings: diagnostic settings.
    """
    labels = dict(atoms.calc.results) if atoms.calc is not None else {}
    atoms = atoms.copy()
    atoms.calc = None
    out: dict[str, float] = {"num_atoms": len(atoms)}
    out.update(label_errors(_predict(calc, atoms), labels, len(atoms)))
    # Rotational errors are measured on the rattled working cell: in a perfect
    # one-atom lattice translation invariance makes every gradient force zero
    # (each atom sees the same surroundings and the forces sum to zero), so the
    # given cell would report a rotational error of exactly 0 for any
    # conservative model, equivariant or not.
    work = working_cell(atoms, settings.min_atoms, settings.rattle, settings.seed)
    out["work_num_atoms"] = len(work)
    out.update(rotational_spread(calc, work, settings.num_rotations, settings.seed))
    if plain_calc is not None and settings.grid_l_max is not None:
        out.update(grid_spread(plain_calc, work, settings.grid_l_max))
    if settings.jacobian_atoms > 0 or settings.md_steps > 0:
        if settings.jacobian_atoms > 0:
            block = list(range(min(settings.jacobian_atoms, len(work))))
            out["lambda"] = jacobian_asymmetry(force_jacobian(calc, work, block, settings.fd_step))
        if settings.md_steps > 0:
            out.update(
                nve_drift(
                    calc,
                    work,
                    settings.md_steps,
                    settings.md_timestep,
                    settings.md_temperature,
                    settings.seed,
                )
            )
    if out["force_mae"] > 0:
        out["rot_error_over_force_mae"] = out["rot_error_forces"] / out["force_mae"]
    return out


METRIC_KEYS = (
    "rot_error_energy",
    "rot_error_forces",
    "rot_error_stress",
    "grid_std_energy",
    "grid_std_forces",
    "grid_std_stress",
    "energy_mae_per_atom",
    "force_mae",
    "force_rmse",
    "rot_error_over_force_mae",
    "lambda",
    "nve_drift_meV_per_atom_per_ps",
    "nve_max_dev_meV_per_atom",
)


def run(
    model: ModelOptions,
    structures: Structures,
    settings: SymmetrySettings,
    out: Path | None = None,
) -> dict:
    """Diagnostics for every structure; metrics are means over structures.

    Args:
        model: model and corrections to diagnose.
        structures: (name, atoms) pairs or a structures spec; labels (energies,
            forces) are read from the structures' attached calculators.
        settings: diagnostic settings.
        out: output directory for results.json and metrics.json.

    Returns:
        ``{"settings", "structures": {name: diagnostics}, "metrics"}`` with flat
        ``symmetry/<key>`` metric names (energies per atom in eV, forces eV/A,
        stress eV/A^3).
    """
    structures = as_structures(structures)
    calc = model.build()
    plain_calc = model.plain().build() if settings.grid_l_max is not None else None
    per_structure = {}
    for name, atoms in structures:
        check_species(calc, atoms, name, model.spec)
        per_structure[name] = diagnose(calc, plain_calc, atoms, settings)
    metrics: dict[str, float] = {"symmetry/num_structures": len(per_structure)}
    for key in METRIC_KEYS:
        metrics[f"symmetry/{key}"] = nanmean([r.get(key, math.nan) for r in per_structure.values()])
    result = {
        "settings": {"model": model.as_dict(), **asdict(settings)},
        "structures": per_structure,
        "metrics": metrics,
    }
    return write_results(out, result)


def summary(model: ModelOptions, settings: SymmetrySettings, result: dict, out: Path | None) -> str:
    """The command's one line: rotational error, label error, lambda, NVE drift."""
    m = result["metrics"]
    return (
        f"symmetry {model.describe()}: rot error forces {m['symmetry/rot_error_forces']:.2e} eV/A "
        f"(grid std {m['symmetry/grid_std_forces']:.2e}), force MAE vs labels "
        f"{m['symmetry/force_mae']:.2e} eV/A, lambda {m['symmetry/lambda']:.2e}, NVE drift "
        f"{m['symmetry/nve_drift_meV_per_atom_per_ps']:.2e} meV/atom/ps"
        + (f" -> {out}" if out else "")
    )
