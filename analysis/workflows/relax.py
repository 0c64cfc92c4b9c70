"""Geometry optimisation benchmark: relax positions and cell, compare with a reference.

    python -m analysis relax --model emt --structures builtin:metals --out runs/relax \
        [--fix-symmetry [--symprec 1e-2]] [--cell-filter frechet|none] [--optimizer fire|bfgs] \
        [--fmax 0.01] [--max-steps 500] [--reference-model emt|none|FILE]

Per structure: converged, steps, final energy, RMSD of the relaxed structure
against a reference relaxation (by default the same model with conservative
forces and no corrections, which measures what the corrections and the force
mode change, not accuracy; ``--reference-model emt`` for a model trained on
EMT data, or a DFT-quality model file), and the space group before and after
at symprec 1e-5 and 1e-2. The summary names the reference.

Space groups: a start with no symmetry (P1, e.g. a rattled cell) trivially
"keeps" it, so P1 starts are left out of ``spacegroup_kept_fraction`` and
reported apart: ``num_p1_starts`` and ``p1_symmetry_found_fraction`` (the
share of them that relaxed into a group above P1). Progress lines go to stderr.

Writes ``DIR/results.csv`` (one row per structure), ``DIR/results.json``
(settings, rows, metrics) and ``DIR/metrics.json`` (flat ``relax/...`` names).
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE

from analysis.workflows.model import REFERENCE_HELP, ModelOptions, check_species, reference_options
from analysis.workflows.results import Progress, fmt, nanmean, write_results
from analysis.workflows.settings import setting
from analysis.workflows.structures import Structures, as_structures, spacegroup

SYMPREC_STRICT = 1e-5
SYMPREC_LOOSE = 1e-2
CSV_COLUMNS = (
    "name",
    "converged",
    "steps",
    "energy",
    "energy_per_atom",
    "rmsd",
    "rmsd_normalized",
    "volume_change",
    "volume_error",
    "ref_converged",
    "spacegroup_before",
    "spacegroup_after",
    "symprec",
    "spacegroup_before_loose",
    "spacegroup_after_loose",
    "symprec_loose",
)


@dataclass(frozen=True)
class RelaxSettings:
    """How to relax, and what to compare with; each field's help and unit are its
    metadata (``python -m analysis relax --help`` lists them)."""

    fix_symmetry: bool = setting(False, "constrain to the starting space group (FixSymmetry)")
    symprec: float = setting(1e-2, "tolerance FixSymmetry uses to find the group", "A")
    cell_filter: Literal["frechet", "none"] = setting(
        "frechet", "frechet relaxes the cell too (periodic structures only)"
    )
    optimizer: Literal["fire", "bfgs"] = setting("fire", "the optimiser")
    fmax: float = setting(
        0.01,
        "force convergence threshold (the cell filter's generalised forces include "
        "the stress times the volume)",
        "eV/A",
    )
    max_steps: int = setting(500, "optimiser step limit")
    reference_model: str | None = setting(None, "the RMSD's " + REFERENCE_HELP)


@dataclass
class Relaxed:
    """Outcome of one relaxation: the final structure (no calculator attached)."""

    atoms: Atoms
    converged: bool
    steps: int
    energy: float
    collapsed: bool = False  # stopped: the cell volume left [1/3, 3] x its start


# A relaxation that shrinks or swells the cell past these factors is a model
# failing, not a structure relaxing: stop before neighbour lists explode.
VOLUME_LIMITS = (1 / 3, 3.0)


LOGM_WARNING = "logm result may be inaccurate"


def relax_structure(atoms: Atoms, calc: Calculator, settings: RelaxSettings) -> Relaxed:
    """Relax a copy of ``atoms`` with ``calc``.

    Args:
        atoms: starting structure (left untouched).
        calc: any ASE calculator.
        settings: optimiser, filter and symmetry options.

    Returns:
        The relaxed structure and convergence information.
    """
    work = atoms.copy()
    work.calc = calc
    if settings.fix_symmetry:
        work.set_constraint(FixSymmetry(work, symprec=settings.symprec))
    use_filter = settings.cell_filter == "frechet" and bool(work.pbc.all())
    target = FrechetCellFilter(work) if use_filter else work
    optimizer_cls = {"fire": FIRE, "bfgs": BFGS}[settings.optimizer]
    opt = optimizer_cls(target, logfile=None)
    start = work.get_volume() if work.pbc.all() else None
    converged, collapsed = False, False
    with warnings.catch_warnings():
        # the Frechet filter's matrix logarithm warns at ~1e-12 relative error on
        # every step of a strained cell: one line per step, none of them news
        warnings.filterwarnings("ignore", LOGM_WARNING, RuntimeWarning)
        for converged in opt.irun(fmax=settings.fmax, steps=settings.max_steps):
            if start and not VOLUME_LIMITS[0] <= work.get_volume() / start <= VOLUME_LIMITS[1]:
                collapsed, converged = True, False
                break
    energy = float(work.get_potential_energy())
    final = work.copy()
    final.calc = None
    final.set_constraint()
    return Relaxed(final, bool(converged), int(opt.nsteps), energy, collapsed)


def _kabsch_aligned(pos: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``pos`` rigidly rotated/translated onto ``ref`` (molecules have no cell to align)."""
    p, q = pos - pos.mean(0), ref - ref.mean(0)
    u, _, vt = np.linalg.svd(p.T @ q)
    d = np.sign(np.linalg.det(u @ vt))
    return p @ (u @ np.diag([1.0, 1.0, d]) @ vt) + ref.mean(0)


def structure_rmsd(atoms: Atoms, reference: Atoms) -> float:
    """RMS atomic displacement (A) between two relaxations of the same structure.

    Periodic cells are aligned by comparing fractional coordinates (so cell
    shape and orientation drop out), with minimum-image wrapping and the mean
    (rigid translation) removed, then measured in the reference cell.
    Non-periodic structures use a Kabsch alignment.
    """
    if len(atoms) != len(reference) or (atoms.numbers != reference.numbers).any():
        raise ValueError("RMSD needs the same atoms in the same order")
    if atoms.pbc.all():
        diff = atoms.get_scaled_positions(wrap=False) - reference.get_scaled_positions(wrap=False)
        diff -= np.round(diff)
        diff -= diff.mean(axis=0)
        diff -= np.round(diff)  # an atom near the half-cell boundary after centring
        disp = diff @ reference.cell.array
    else:
        disp = _kabsch_aligned(atoms.positions, reference.positions) - reference.positions
    return float(np.sqrt(np.mean(np.sum(disp**2, axis=1))))


def _relax_all(
    options: ModelOptions,
    structures: list[tuple[str, Atoms]],
    settings: RelaxSettings,
    progress: Progress | None = None,
    role: str = "model",
) -> list[Relaxed]:
    calc = options.build()
    results = []
    for k, (name, atoms) in enumerate(structures, start=1):
        check_species(calc, atoms, name, options.spec)
        try:
            results.append(relax_structure(atoms, calc, settings))
        except Exception as exc:  # name the structure; the traceback keeps the cause
            raise RuntimeError(
                f"relaxing {name!r} with {options.describe()} failed: {exc}"
            ) from exc
        if progress is not None:
            res = results[-1]
            state = "converged" if res.converged else "NOT converged"
            progress(
                f"{role} {options.describe()} [{k}/{len(structures)}] {name}: {state} "
                f"after {res.steps} steps"
            )
    return results


def reference_label(model: ModelOptions, settings: RelaxSettings) -> str:
    """What the RMSD is measured against, in words."""
    reference = reference_options(model, settings.reference_model)
    if reference is None:
        return "no reference (--reference-model none)"
    if settings.reference_model is None:
        what = (
            "the model itself, so RMSD 0 by construction"
            if reference == model
            else "the same model with conservative forces, no corrections"
        )
        return (
            f"{reference.describe()} (the default reference: {what}; "
            "--reference-model emt|FILE for another)"
        )
    return reference.describe()


def run(
    model: ModelOptions,
    structures: Structures,
    settings: RelaxSettings,
    out: Path | None = None,
) -> dict:
    """Relax every structure with ``model`` (and the reference) and compare.

    Args:
        model: model and corrections to benchmark.
        structures: (name, atoms) pairs or a structures spec.
        settings: relaxation settings, shared by the reference relaxation;
            ``reference_model="none"`` skips the reference and the RMSD.
        out: output directory for results.csv / results.json / metrics.json.

    Returns:
        ``{"settings", "rows", "metrics"}``; metrics use flat ``relax/`` names.
    """
    structures = as_structures(structures)
    reference = reference_options(model, settings.reference_model)
    progress = Progress("relax")
    progress(f"reference: {reference_label(model, settings)}")
    relaxed = _relax_all(model, structures, settings, progress)
    if reference is None:
        ref_relaxed = None
    elif reference == model:
        ref_relaxed = relaxed  # the same deterministic calculation: RMSD 0 by construction
    else:
        ref_relaxed = _relax_all(reference, structures, settings, progress, "reference")

    rows = []
    for k, ((name, start), res) in enumerate(zip(structures, relaxed)):
        ref = ref_relaxed[k] if ref_relaxed is not None else None
        rmsd = structure_rmsd(res.atoms, ref.atoms) if ref is not None else math.nan
        periodic = bool(start.pbc.all())
        scale = (res.atoms.get_volume() / len(start)) ** (1 / 3) if periodic else 1.0
        rows.append(
            {
                "name": name,
                "converged": res.converged,
                "steps": res.steps,
                "energy": res.energy,
                "energy_per_atom": res.energy / len(start),
                "ref_energy_per_atom": ref.energy / len(start) if ref else math.nan,
                "rmsd": rmsd,
                # Matbench-style: RMSD in units of (V/N)^(1/3)
                "rmsd_normalized": rmsd / scale,
                "volume_change": res.atoms.get_volume() / start.get_volume() - 1.0
                if periodic
                else math.nan,
                "volume_error": res.atoms.get_volume() / ref.atoms.get_volume() - 1.0
                if periodic and ref is not None
                else math.nan,
                "ref_converged": ref.converged if ref else None,
                "spacegroup_before": spacegroup(start, SYMPREC_STRICT)[0],
                "spacegroup_after": spacegroup(res.atoms, SYMPREC_STRICT)[0],
                "symprec": SYMPREC_STRICT,
                "spacegroup_before_loose": spacegroup(start, SYMPREC_LOOSE)[0],
                "spacegroup_after_loose": spacegroup(res.atoms, SYMPREC_LOOSE)[0],
                "symprec_loose": SYMPREC_LOOSE,
                "cell": res.atoms.cell.array,
            }
        )
    metrics = summarize(rows)
    how = {k: v for k, v in asdict(settings).items() if k != "reference_model"}
    result = {
        "settings": {
            "model": model.as_dict(),
            "reference": reference.as_dict() if reference else None,
            "reference_label": reference_label(model, settings),
            **how,
        },
        "rows": rows,
        "metrics": metrics,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return write_results(out, result)


def _symmetry_counts(rows: list[dict], suffix: str) -> dict[str, float]:
    """Space groups kept by starts above P1; P1 starts (nothing to keep) apart."""
    before, after = f"spacegroup_before{suffix}", f"spacegroup_after{suffix}"
    ordered = [r for r in rows if r[before] != 1]
    p1 = [r for r in rows if r[before] == 1]
    return {
        f"relax/spacegroup_kept_fraction{suffix}": (
            sum(r[before] == r[after] for r in ordered) / len(ordered) if ordered else math.nan
        ),
        f"relax/num_p1_starts{suffix}": len(p1),
        f"relax/p1_symmetry_found_fraction{suffix}": (
            sum(r[after] != 1 for r in p1) / len(p1) if p1 else math.nan
        ),
    }


def summarize(rows: list[dict]) -> dict[str, float]:
    """Flat ``relax/...`` metrics over the per-structure rows."""
    num = len(rows)
    energy_err = [abs(r["energy_per_atom"] - r["ref_energy_per_atom"]) for r in rows]
    return {
        "relax/num_structures": num,
        "relax/converged_fraction": sum(r["converged"] for r in rows) / num,
        "relax/steps_mean": float(np.mean([r["steps"] for r in rows])),
        "relax/rmsd_mean": nanmean([r["rmsd"] for r in rows]),
        "relax/rmsd_max": max((r["rmsd"] for r in rows), default=math.nan),
        "relax/rmsd_normalized_mean": nanmean([r["rmsd_normalized"] for r in rows]),
        "relax/energy_mae_per_atom": nanmean(energy_err),
        # |V / V_ref - 1| of the relaxed cells: what RMSD misses when only the cell moves
        "relax/volume_error_mean_abs": nanmean([abs(r["volume_error"]) for r in rows]),
        **_symmetry_counts(rows, ""),
        **_symmetry_counts(rows, "_loose"),
    }


def _kept(m: dict, suffix: str, symprec: float) -> str:
    n = m["relax/num_structures"]
    p1 = m[f"relax/num_p1_starts{suffix}"]
    kept = m[f"relax/spacegroup_kept_fraction{suffix}"]
    text = f"{round(kept * (n - p1))}/{n - p1}" if p1 < n else "n/a"
    text += f" (symprec {symprec:g}"
    if p1:
        found = m[f"relax/p1_symmetry_found_fraction{suffix}"]
        text += f"; {p1} P1 start{'s' if p1 > 1 else ''} apart, {round(found * p1)} found symmetry"
    return text + ")"


def summary(model: ModelOptions, settings: RelaxSettings, result: dict, out: Path | None) -> str:
    """The command's one line: convergence, RMSD against the named reference, space
    groups kept (P1 starts apart)."""
    m = result["metrics"]
    n = m["relax/num_structures"]
    return (
        f"relax {model.describe()}: {n} structures, converged "
        f"{round(m['relax/converged_fraction'] * n)}/{n}, mean steps {m['relax/steps_mean']:.0f}, "
        f"RMSD mean {fmt(m['relax/rmsd_mean'])} A vs {reference_label(model, settings)}, "
        f"space group kept {_kept(m, '', SYMPREC_STRICT)}, {_kept(m, '_loose', SYMPREC_LOOSE)}"
        f" -> {out}"
    )
