"""Harmonic phonons by finite displacements (phonopy), with a reference comparison.

    python -m analysis phonons --model emt --structures builtin:cu-fcc \
        --supercell 2 2 2 [--displacement 0.01] --out runs/phonons [--reference-model emt]

Per structure: a tight symmetry-constrained relaxation (FixSymmetry + Frechet
cell filter), phonopy displacements in the supercell, raw force constants
(their acoustic-sum-rule violation and asymmetry are reported), force
constants symmetrised (symmetric part + acoustic sum rule), frequencies at
Gamma, along the band path of the cell (ASE's special points) and on a mesh
(DOS), and a band-structure + DOS PNG. With a reference model the same is
done for it and frequency errors are reported.

Writes ``DIR/<name>/phonons.json`` (``gamma_frequencies_thz`` (3N,) ascending,
``path_frequencies_thz`` (num_q, 3N), path, DOS, metrics), ``DIR/<name>/bands.png``,
``DIR/results.json`` and ``DIR/metrics.json`` (flat ``phonon/...`` names).
Frequencies in THz; imaginary modes are negative numbers.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from numpy.typing import NDArray
from phonopy import Phonopy
from phonopy.structure.atoms import PhonopyAtoms

from analysis.workflows.bandplot import model_label, plot_bands, structure_title
from analysis.workflows.model import REFERENCE_HELP, ModelOptions, check_species, reference_options
from analysis.workflows.relax import RelaxSettings, relax_structure
from analysis.workflows.results import nanmean, write_results
from analysis.workflows.settings import setting
from analysis.workflows.structures import Structures, as_structures
from data_pipelines.atomic import write_json


@dataclass(frozen=True)
class PhononSettings:
    """Finite-displacement and analysis settings; each field's help and unit are
    its metadata (``python -m analysis phonons --help`` lists them)."""

    supercell: tuple[int, int, int] = setting(
        (2, 2, 2), "diagonal supercell multiples of the input cell"
    )
    displacement: float = setting(0.01, "displacement amplitude", "A")
    relax_fmax: float | None = setting(
        1e-4,
        "force threshold of the tight symmetry-constrained pre-relaxation; <=0 skips it",
        "eV/A",
        none_at_or_below=0.0,
    )
    relax_max_steps: int = setting(1000, "step limit of the pre-relaxation")
    # A fixed count, not a density, so a model and its reference, relaxed to
    # slightly different cells, are compared point by point on the same path.
    path_points: int = setting(150, "q-points along the band path")
    mesh: tuple[int, int, int] = setting((16, 16, 16), "q-mesh for the DOS")
    imaginary_tol: float = setting(0.05, "frequencies below minus this count as imaginary", "THz")
    # The undisplaced supercell's forces vanish for an exactly relaxed structure;
    # they do not for direct forces or a loosely relaxed one.
    subtract_residual: bool = setting(True, "subtract the forces of the undisplaced supercell")
    reference_model: str | None = setting(None, "the frequency errors' " + REFERENCE_HELP)


class CellCollapsed(ValueError):
    """The model's relaxation took a cell far from its start (see relax.VOLUME_LIMITS)."""


def asr_violation(fc: NDArray[np.float64]) -> float:
    """Largest |sum_j Phi_ij| entry (eV/A^2): zero when translations cost no energy."""
    return float(np.abs(fc.sum(axis=1)).max())


def fc_asymmetry(fc: NDArray[np.float64]) -> float:
    """||Phi - Phi^T||_F / ||Phi||_F with Phi^T_ij,ab = Phi_ji,ba (0 for a true Hessian)."""
    norm = np.linalg.norm(fc)
    return float(np.linalg.norm(fc - fc.transpose(1, 0, 3, 2)) / norm) if norm > 0 else 0.0


def symmetrize_force_constants(
    fc: NDArray[np.float64], max_iterations: int = 200, tol: float = 1e-12
) -> NDArray[np.float64]:
    """Project full force constants onto the symmetric, translation-invariant set.

    Alternates the two orthogonal projections (onto Phi_ij = Phi_ji^T, and onto
    sum_j Phi_ij = 0 by subtracting the row mean), which converges to their
    intersection. Both commute with the space group, so crystal symmetry is kept.

    Args:
        fc: full force constants, shape (num_atoms, num_atoms, 3, 3), eV/A^2.
        max_iterations: iteration limit.
        tol: stop when both violations fall below this (eV/A^2).

    Returns:
        The symmetrised force constants.
    """
    fc = np.array(fc, dtype=float)
    num = fc.shape[0]
    for _ in range(max_iterations):
        fc = 0.5 * (fc + fc.transpose(1, 0, 3, 2))
        fc -= fc.sum(axis=1, keepdims=True) / num
        if np.abs(fc - fc.transpose(1, 0, 3, 2)).max() < tol and asr_violation(fc) < tol:
            break
    return fc


def _to_phonopy(atoms: Atoms) -> PhonopyAtoms:
    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(),
        masses=atoms.get_masses(),
    )


def _supercell_forces(calc: Calculator, cells: list[PhonopyAtoms]) -> NDArray[np.float64]:
    forces = []
    for sc in cells:
        atoms = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        atoms.calc = calc
        forces.append(np.array(atoms.get_forces()))
    return np.array(forces)


def compute_phonons(atoms: Atoms, calc: Calculator, settings: PhononSettings) -> dict:
    """Relax, displace, build and symmetrise force constants, and get frequencies.

    Args:
        atoms: a 3D periodic unit cell, used as the primitive cell.
        calc: any ASE calculator.
        settings: displacement and analysis settings.

    Returns:
        JSON-ready dict: relaxed cell, raw force-constant diagnostics,
        ``gamma_frequencies_thz``, ``path_frequencies_thz``, path axis and labels,
        DOS, and the symmetrised force constants under ``"_fc"`` (not written).

    Raises:
        ValueError: for a structure that is not a 3D periodic crystal.
    """
    if not atoms.pbc.all() or atoms.cell.rank < 3 or abs(atoms.get_volume()) < 1e-6:
        raise ValueError(
            f"phonons need a 3D periodic cell; got pbc={atoms.pbc.tolist()} and cell "
            f"rank {atoms.cell.rank} for {atoms.get_chemical_formula()}"
        )
    relax_info = None
    if settings.relax_fmax is not None:
        relaxed = relax_structure(
            atoms,
            calc,
            RelaxSettings(
                fix_symmetry=True,
                symprec=1e-5,
                fmax=settings.relax_fmax,
                max_steps=settings.relax_max_steps,
            ),
        )
        if relaxed.collapsed:
            raise CellCollapsed(
                f"the pre-relaxation of {atoms.get_chemical_formula()} took the cell volume "
                f"from {atoms.get_volume():.3g} to {relaxed.atoms.get_volume():.3g} A^3 in "
                f"{relaxed.steps} steps: the model does not hold this structure together, "
                "so its phonons are meaningless"
            )
        atoms = relaxed.atoms
        relax_info = {"converged": relaxed.converged, "steps": relaxed.steps}

    # 'P': the input cell is the primitive cell, so q-points are fractional in
    # its reciprocal basis, the same basis as ASE's band path below.
    phonon = Phonopy(
        _to_phonopy(atoms), supercell_matrix=np.diag(settings.supercell), primitive_matrix="P"
    )
    phonon.generate_displacements(distance=settings.displacement)
    forces = _supercell_forces(calc, phonon.supercells_with_displacements)
    residual = _supercell_forces(calc, [phonon.supercell])[0]
    if not (np.isfinite(forces).all() and np.isfinite(residual).all()):
        raise ValueError(
            "the calculator returned non-finite forces on the displaced supercells "
            f"of {atoms.get_chemical_formula()} (relaxed cell volume {atoms.get_volume():.3g} A^3)"
        )
    if settings.subtract_residual:
        forces = forces - residual
    phonon.forces = forces
    phonon.produce_force_constants(show_drift=False)
    raw = np.array(phonon.force_constants)
    fc = symmetrize_force_constants(raw)
    phonon.force_constants = fc

    gamma = np.sort(phonon.run_qpoints([[0.0, 0.0, 0.0]]).frequencies[0])
    path = atoms.cell.bandpath(npoints=settings.path_points)
    path_freqs = np.array(phonon.run_qpoints(path.kpts).frequencies)
    x, special_x, labels = path.get_linear_kpoint_axis()
    dos = {"frequency_points": np.zeros(0), "total_dos": np.zeros(0)}
    if np.ptp(path_freqs) > 1e-6:  # phonopy's DOS needs a frequency range (a flat
        # spectrum, e.g. a model with zero force constants, has none)
        phonon.run_mesh(list(settings.mesh), is_gamma_center=True)
        phonon.run_total_dos()
        dos = {
            "frequency_points": phonon.total_dos.frequency_points,
            "total_dos": phonon.total_dos.dos,
        }
    num_acoustic = 3
    return {
        "formula": atoms.get_chemical_formula(),
        "cell": atoms.cell.array,
        "relax": relax_info,
        "supercell": list(settings.supercell),
        "displacement": settings.displacement,
        "num_displacements": len(forces),
        "residual_force_max": float(np.abs(residual).max()),
        "asr_violation_raw": asr_violation(raw),
        "fc_asymmetry_raw": fc_asymmetry(raw),
        "asr_violation": asr_violation(fc),
        "gamma_frequencies_thz": gamma,
        "acoustic_gamma_max_abs_thz": float(np.abs(gamma[:num_acoustic]).max()),
        "path_kpts": path.kpts,
        "path_x": x,
        "path_special_x": special_x,
        "path_labels": labels,
        "path_frequencies_thz": path_freqs,
        "max_frequency_thz": float(path_freqs.max()),
        "num_imaginary": int((path_freqs < -settings.imaginary_tol).sum()),
        "dos_frequencies_thz": dos["frequency_points"],
        "dos": dos["total_dos"],
        "_fc": fc,
    }


def compare(result: dict, reference: dict) -> dict[str, float]:
    """Frequency errors of ``result`` against ``reference`` (same structure and path)."""
    path_err = np.abs(result["path_frequencies_thz"] - reference["path_frequencies_thz"])
    gamma_err = np.abs(result["gamma_frequencies_thz"] - reference["gamma_frequencies_thz"])
    return {
        "freq_mae_thz": float(path_err.mean()),
        "freq_max_error_thz": float(path_err.max()),
        "gamma_freq_mae_thz": float(gamma_err.mean()),
    }


def run(
    model: ModelOptions,
    structures: Structures,
    settings: PhononSettings,
    out: Path | None = None,
) -> dict:
    """Phonons of every structure with ``model`` (and the reference).

    Args:
        model: model and corrections to evaluate.
        structures: (name, atoms) pairs of 3D periodic cells, or a structures spec.
        settings: displacement and analysis settings, shared by the reference;
            ``reference_model="none"`` skips the reference and the errors.
        out: output directory for DIR/<name>/phonons.json, bands.png,
            results.json and metrics.json.

    Returns:
        ``{"settings", "structures": {name: per-structure metrics}, "metrics"}``.
    """
    structures = as_structures(structures)
    reference = reference_options(model, settings.reference_model)
    out = Path(out) if out is not None else None
    calc = model.build()
    ref_calc = reference.build() if reference is not None and reference != model else None
    per_structure: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for name, atoms in structures:
        check_species(calc, atoms, name, model.spec)
        try:
            res = compute_phonons(atoms, calc, settings)
        except CellCollapsed as exc:  # this model on this structure: count it, go on
            failed[name] = str(exc)
            print(f"phonons: {name}: skipped, {exc}", file=sys.stderr, flush=True)
            continue
        except ValueError as exc:
            raise ValueError(f"structure {name!r}: {exc}") from exc
        ref = None
        if reference is not None:
            ref = res if ref_calc is None else compute_phonons(atoms, ref_calc, settings)
            res.update(compare(res, ref))
        res.pop("_fc")
        if ref is not None:
            ref.pop("_fc", None)
        per_structure[name] = {
            k: res[k]
            for k in (
                "max_frequency_thz",
                "num_imaginary",
                "asr_violation_raw",
                "fc_asymmetry_raw",
                "acoustic_gamma_max_abs_thz",
                "freq_mae_thz",
                "gamma_freq_mae_thz",
            )
            if k in res
        }
        if out is not None:
            write_json(out / name / "phonons.json", res)
            if ref is not None and ref is not res:
                write_json(out / name / "reference_phonons.json", ref)
            plot_bands(
                res,
                out / name / "bands.png",
                ref,
                structure_title(name, res.get("formula")),
                model_label(model.spec, model.describe()),
                model_label(reference.spec, reference.describe()) if reference else "",
            )
    metrics = _summarize(per_structure)
    metrics["phonon/num_failed"] = len(failed)
    result = {
        "settings": {
            "model": model.as_dict(),
            "reference": reference.as_dict() if reference else None,
            "supercell": list(settings.supercell),
            "displacement": settings.displacement,
            "relax_fmax": settings.relax_fmax,
            "imaginary_tol_thz": settings.imaginary_tol,
        },
        "structures": per_structure,
        "failed": failed,
        "metrics": metrics,
    }
    return write_results(out, result)


def _summarize(per_structure: dict[str, dict]) -> dict[str, float]:
    rows = list(per_structure.values())

    def col(key: str) -> list[float]:
        return [r.get(key, math.nan) for r in rows]

    def top(key: str) -> float:
        values = col(key)
        return max(values) if values else math.nan  # no structure made it through

    return {
        "phonon/num_structures": len(rows),
        "phonon/freq_mae_THz": nanmean(col("freq_mae_thz")),
        "phonon/gamma_freq_mae_THz": nanmean(col("gamma_freq_mae_thz")),
        "phonon/max_freq_THz": top("max_frequency_thz"),
        # no structure through: not measured (n/a in tables), not "0 imaginary modes"
        "phonon/num_imaginary": int(sum(col("num_imaginary"))) if rows else math.nan,
        "phonon/asr_violation": top("asr_violation_raw"),
        "phonon/fc_asymmetry": top("fc_asymmetry_raw"),
        "phonon/acoustic_gamma_max_THz": top("acoustic_gamma_max_abs_thz"),
    }


def summary(model: ModelOptions, settings: PhononSettings, result: dict, out: Path | None) -> str:
    """The command's one line: frequencies, imaginary modes, ASR, errors."""
    reference = reference_options(model, settings.reference_model)
    m = result["metrics"]
    return (
        f"phonons {model.describe()}: {m['phonon/num_structures']} structures, max freq "
        f"{m['phonon/max_freq_THz']:.3f} THz, imaginary modes {m['phonon/num_imaginary']}, "
        f"ASR violation (raw) {m['phonon/asr_violation']:.2e} eV/A^2, freq MAE "
        f"{m['phonon/freq_mae_THz']:.2e} THz vs {reference.describe() if reference else 'none'} "
        f"-> {out}"
    )
