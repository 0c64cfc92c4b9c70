"""Diagnostics of broken constraints: rotational error, non-conservativeness, NVE drift.

    python -m analysis symmetry --model emt --structures builtin:metals \
        [--num-rotations 8] [--grid-l-max 3] [--out DIR] [--forces direct]

Rotational errors, lambda and MD use a "working cell": the structure repeated
to at least ``--min-atoms`` atoms and rattled, so a 1-atom cell still has a
Jacobian to measure and no accidental symmetry hides asymmetry (in a perfect
Bravais lattice gradient forces vanish identically, so their rotational error
would read exactly 0). Label errors use the structure as given. Progress lines
go to stderr; "n/a" means not measured (no labels, no stress, a skipped part).

Glossary (metric names as in metrics.json, ``symmetry/<name>``, means over structures):

  rot_error_energy / _forces / _stress  eV/atom, eV/A, eV/A^3
      RMS deviation of the back-rotated predictions from their mean over
      --num-rotations random rotations plus the identity. How far the model is
      from rotational equivariance. Exactly equivariant models (MACE, EMT):
      round-off only (about 1e-6 in float32, 1e-12 in float64); an unconstrained
      one: judge it against its force error (rot_error_over_force_mae).
  grid_std_energy / _forces / _stress   same units
      Weighted standard deviation of the uncorrected model over the
      rotational-averaging grid of degree --grid-l-max: the same quantity on a
      quadrature grid, the error that averaging on that grid removes.
  energy_mae_per_atom, force_mae, force_rmse   eV/atom, eV/A, eV/A
      Error against the labels of the structures file (n/a without labels).
  rot_error_over_force_mae   dimensionless
      rot_error_forces / force_mae: is the broken symmetry small next to the
      error the model makes anyway? Well below 1 (say < 0.1) is good.
  lambda   dimensionless, 0..1
      Jacobian asymmetry ||J - J^T||_F / (2 ||J||_F) with J = dF/dr by central
      finite differences (step --fd-step) on a block of atoms: how far the
      forces are from being the gradient of any energy. Gradient forces: 1e-7
      to 1e-4 (finite differences and float32 round-off); direct forces of a
      trained model: about 1e-3 to 1e-2; above 0.1 they are far from conservative.
  nve_drift_meV_per_atom_per_ps   meV/atom/ps
      Slope of the total energy per atom in a velocity-Verlet NVE run
      (--md-steps, --md-timestep, --md-temperature): energy a simulation gains
      or loses. Conservative forces: close to 0 (well under 1 meV/atom/ps for
      metals at 1 fs); non-conservative forces heat or cool the system steadily.
  nve_max_dev_meV_per_atom   meV/atom
      Largest |E_total - E_0| per atom during that run (includes the bounded
      oscillation of any integrator): a few meV/atom or less is good.
  num_atoms, work_num_atoms   the given and the working cell's atom counts.

Cost: the Jacobian takes 6 evaluations per block atom, MD one per step. A
rotationally averaged model (--rotational-average L) costs a grid of
evaluations each (42 for L = 3), so by default (--num-rotations,
--jacobian-atoms and --md-steps left unset) a plain model gets 8 rotations, an
8-atom block and 100 MD steps, and an averaged one 2 rotations, a 2-atom block
and no MD run (the amounts divided by the grid size, MD only if 50 steps or
more are left), which keeps a 64-atom cell to a minute or two on 2 cores; set
them to measure more.

Writes ``DIR/results.json`` and ``DIR/metrics.json`` (flat ``symmetry/...`` names).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
from analysis.workflows.results import Progress, fmt, nanmean, write_results
from analysis.workflows.settings import setting
from analysis.workflows.structures import Structures, as_structures
from train.corrections import RotationalAverage, rotation_grid, transform_atoms


@dataclass(frozen=True)
class SymmetrySettings:
    """Diagnostic settings; each field's help and unit are its metadata
    (``python -m analysis symmetry --help`` lists them)."""

    num_rotations: int | None = setting(
        None,
        "random rotations for the rotational error (plus identity); unset: 8, or 2 for a "
        "rotationally averaged model",
    )
    grid_l_max: int | None = setting(
        3, "l_max of the grid whose std is reported; -1 skips it", none_at_or_below=-1
    )
    # Large enough for float32 models, small enough for the O(step^2)
    # truncation to stay ~1e-5.
    fd_step: float = setting(5e-3, "finite-difference step of the force Jacobian", "A")
    jacobian_atoms: int | None = setting(
        None,
        "atoms in the block whose Jacobian is measured; 0 skips lambda; unset: 8, or 2 "
        "for a rotationally averaged model",
    )
    min_atoms: int = setting(32, "atoms of the working cell for the Jacobian and MD")
    rattle: float = setting(0.02, "Gaussian rattle of the working cell", "A")
    md_steps: int | None = setting(
        None,
        "velocity-Verlet steps; 0 skips the NVE run; unset: 100, fewer or none for a "
        "rotationally averaged model (each step costs a grid of evaluations)",
    )
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


# Work of a plain model; an averaged one scales it down by its grid size (see
# the module docstring): 2 block atoms at least, no MD below this many steps.
PLAIN_ROTATIONS = 8
PLAIN_JACOBIAN_ATOMS = 8
PLAIN_MD_STEPS = 100
MIN_ROTATIONS = 2
MIN_JACOBIAN_ATOMS = 2
MIN_MD_STEPS = 50


def evaluations_per_call(model: ModelOptions) -> int:
    """Model evaluations behind one call of the configured calculator (its grid size)."""
    if model.rotational_average is None:
        return 1
    return len(rotation_grid(model.rotational_average, inversion=model.inversion))


def planned_work(settings: SymmetrySettings, cost: int) -> tuple[int, int, int]:
    """(random rotations, Jacobian block atoms, MD steps): the settings, or when
    unset the plain model's amounts divided by ``cost`` (evaluations per call)."""
    rotations = settings.num_rotations
    if rotations is None:
        rotations = max(MIN_ROTATIONS, PLAIN_ROTATIONS // cost)
    atoms = settings.jacobian_atoms
    if atoms is None:
        atoms = max(MIN_JACOBIAN_ATOMS, PLAIN_JACOBIAN_ATOMS // cost)
    steps = settings.md_steps
    if steps is None:
        steps = PLAIN_MD_STEPS // cost
        steps = steps if steps >= MIN_MD_STEPS else 0
    return rotations, atoms, steps


def _quiet(message: str) -> None:
    pass


def diagnose(
    calc: Calculator,
    plain_calc: Calculator | None,
    atoms: Atoms,
    settings: SymmetrySettings,
    cost: int = 1,
    progress: Callable[[str], None] = _quiet,
) -> dict[str, float]:
    """All diagnostics for one structure (see the module docstring).

    Args:
        calc: the model as configured (force mode and corrections).
        plain_calc: the same model without corrections, whose grid std is
            reported; None skips the grid std.
        atoms: the structure; labels are read from its attached calculator
            (e.g. energies/forces of an extxyz file) when present.
        settings: diagnostic settings.
        cost: model evaluations per call of ``calc`` (sizes the unset work).
        progress: called with a line before each part.
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
    rotations, block_atoms, md_steps = planned_work(settings, cost)
    out["num_rotations"], out["jacobian_atoms"], out["md_steps"] = rotations, block_atoms, md_steps
    each = f" x {cost} grid evaluations" if cost > 1 else ""
    progress(f"rotational error: {rotations + 1} calls{each}, {len(work)} atoms")
    out.update(rotational_spread(calc, work, rotations, settings.seed))
    if plain_calc is not None and settings.grid_l_max is not None:
        progress(f"grid std (l_max {settings.grid_l_max}) of the uncorrected model")
        out.update(grid_spread(plain_calc, work, settings.grid_l_max))
    if block_atoms > 0:
        block = list(range(min(block_atoms, len(work))))
        progress(f"lambda: Jacobian of {len(block)} atoms, {6 * len(block)} calls{each}")
        out["lambda"] = jacobian_asymmetry(force_jacobian(calc, work, block, settings.fd_step))
    if md_steps > 0:
        progress(f"NVE: {md_steps} steps of {settings.md_timestep:g} fs, one call each{each}")
        out.update(
            nve_drift(
                calc, work, md_steps, settings.md_timestep, settings.md_temperature, settings.seed
            )
        )
    elif settings.md_steps is None:
        progress(f"NVE skipped: {cost} evaluations per step; --md-steps N runs it")
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
    cost = evaluations_per_call(model)
    progress = Progress("symmetry")
    per_structure = {}
    for k, (name, atoms) in enumerate(structures, start=1):
        check_species(calc, atoms, name, model.spec)
        where = f"[{k}/{len(structures)}] {name}"

        def say(line: str, at: str = where) -> None:
            progress(f"{at}: {line}")

        per_structure[name] = diagnose(calc, plain_calc, atoms, settings, cost, say)
    progress(f"done: {len(structures)} structures")
    labelled = any(math.isfinite(r["force_mae"]) for r in per_structure.values())
    metrics: dict[str, float] = {"symmetry/num_structures": len(per_structure)}
    for key in METRIC_KEYS:
        metrics[f"symmetry/{key}"] = nanmean([r.get(key, math.nan) for r in per_structure.values()])
    result = {
        "settings": {"model": model.as_dict(), **asdict(settings), "evaluations_per_call": cost},
        "structures": per_structure,
        "metrics": metrics,
        "labelled": labelled,
    }
    return write_results(out, result)


def summary(model: ModelOptions, settings: SymmetrySettings, result: dict, out: Path | None) -> str:
    """The command's one line: rotational error, label error, lambda, NVE drift ("n/a":
    not measured; the module docstring explains each)."""
    m = result["metrics"]
    labels = (
        f"{fmt(m['symmetry/force_mae'])} eV/A"
        if result.get("labelled", True)
        else "n/a (the structures carry no force labels)"
    )
    return (
        f"symmetry {model.describe()}: rot error forces {fmt(m['symmetry/rot_error_forces'])} "
        f"eV/A (grid std {fmt(m['symmetry/grid_std_forces'])}), force MAE vs labels {labels}, "
        f"lambda {fmt(m['symmetry/lambda'])} (Jacobian asymmetry, 0 = conservative), NVE drift "
        f"{fmt(m['symmetry/nve_drift_meV_per_atom_per_ps'])} meV/atom/ps"
        + (f" -> {out}" if out else "")
    )
