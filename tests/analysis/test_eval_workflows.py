"""Evaluation workflows on EMT: relaxation, phonons, symmetry diagnostics, speed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from ase.phonons import Phonons
from scipy.optimize import minimize_scalar

from analysis.workflows import phonons, relax, speed, symmetry
from analysis.workflows.command import main as command
from analysis.workflows.model import (
    ModelOptions,
    check_species,
    get_calculator,
    reference_options,
)
from analysis.workflows.phonons import PhononSettings, compute_phonons, symmetrize_force_constants
from analysis.workflows.relax import RelaxSettings, relax_structure, structure_rmsd
from analysis.workflows.structures import load_structures
from analysis.workflows.symmetry import (
    force_jacobian,
    jacobian_asymmetry,
    nve_drift,
    working_cell,
)
from tests.analysis.test_eval_corrections import ToyCalculator
from train.corrections import RotationalAverage, SpaceGroupProjection

EV_TO_THZ = units._e / units._hplanck / 1e12  # photon energy 1 eV <-> 241.8 THz


def _openblas_thread_setters() -> list[tuple[object, object]]:
    """(get, set) num-threads functions of the OpenBLAS copies numpy/scipy loaded."""
    import ctypes

    import scipy

    found = []
    for pkg in (np, scipy):
        for lib in (Path(pkg.__file__).parents[1] / f"{pkg.__name__}.libs").glob("*openblas*.so*"):
            handle = ctypes.CDLL(str(lib))  # already loaded: same instance, no reload
            for prefix, suffix in (
                ("scipy_openblas", ""),
                ("scipy_openblas", "64_"),
                ("openblas", ""),
            ):
                get = getattr(handle, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(handle, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    found.append((get, put))
                    break
    return found


@pytest.fixture(autouse=True, scope="module")
def single_threaded_blas():
    """Relaxations do 3x3 expm/logm per step (FrechetCellFilter); on a loaded
    2-core runner OpenBLAS thread hand-offs make each ~100x slower, so these
    tests pin BLAS to one thread and restore it afterwards. The lasting fix is
    OPENBLAS_NUM_THREADS=1 (or threadpoolctl) for the test run."""
    setters = _openblas_thread_setters()
    before = [get() for get, _ in setters]
    for _, put in setters:
        put(1)
    yield
    for (_, put), value in zip(setters, before):
        put(value)


@pytest.fixture(scope="module")
def emt_cu_lattice_constant() -> float:
    """EMT's own fcc Cu lattice constant, by a 1D minimisation independent of ASE filters."""

    def energy(a: float) -> float:
        atoms = bulk("Cu", "fcc", a=a)
        atoms.calc = EMT()
        return atoms.get_potential_energy()

    return float(minimize_scalar(energy, bounds=(3.4, 3.8), method="bounded").x)


# --------------------------------------------------------------- inputs


def test_builtin_and_file_structures(tmp_path):
    metals = load_structures("builtin:metals")
    assert [n for n, _ in metals] == [
        "cu-fcc",
        "al-fcc",
        "ni-fcc",
        "au-fcc",
        "cu3au-l12",
        "cu-strained",
    ]
    assert len(load_structures("builtin:cu-fcc")) == 1
    frames = [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.05)]
    frames[1].info["name"] = "my al/cell"
    write(tmp_path / "s.extxyz", frames)
    named = load_structures(str(tmp_path / "s.extxyz"))
    assert [n for n, _ in named] == ["s-0", "my_al_cell"]
    with pytest.raises(ValueError, match="builtin"):
        load_structures("builtin:nope")
    with pytest.raises(FileNotFoundError, match="missing.xyz"):
        load_structures(str(tmp_path / "missing.xyz"))


def test_get_calculator_and_clear_errors(tmp_path):
    assert isinstance(get_calculator("emt"), EMT)
    calc = get_calculator("emt", rotational_average=2, space_group=True)
    assert isinstance(calc, SpaceGroupProjection)
    assert isinstance(calc.base_calculator, RotationalAverage)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        get_calculator(str(tmp_path / "nope.pt"))
    si = bulk("Si", "diamond", a=5.43)
    with pytest.raises(ValueError, match=r"'si'.*Si.*'emt'"):
        check_species(calc, si, "si", "emt")
    assert reference_options(ModelOptions(), None) == ModelOptions()
    assert reference_options(ModelOptions("m.pt"), None).forces == "conservative"
    assert reference_options(ModelOptions("m.pt"), "none") is None


# ------------------------------------------------------------ relaxation


def test_strained_cu_relaxes_to_emt_lattice_constant(emt_cu_lattice_constant):
    start = bulk("Cu", "fcc", a=3.75)
    res = relax_structure(start, EMT(), RelaxSettings(fmax=1e-4, max_steps=300))
    assert res.converged
    a = np.sqrt(2) * res.atoms.cell.lengths()[0]  # primitive fcc vector = a / sqrt(2)
    assert a == pytest.approx(emt_cu_lattice_constant, abs=1e-3)
    # same answer with BFGS and with FixSymmetry
    res_b = relax_structure(
        start, EMT(), RelaxSettings(optimizer="bfgs", fix_symmetry=True, fmax=1e-4)
    )
    assert np.sqrt(2) * res_b.atoms.cell.lengths()[0] == pytest.approx(a, abs=1e-3)


def test_structure_rmsd_ignores_rigid_motion_and_measures_displacement():
    ref = bulk("Cu", "fcc", a=3.6, cubic=True)
    moved = ref.copy()
    moved.positions += [1.0, -3.0, 0.2]  # translation + wrapping
    moved.wrap()
    assert structure_rmsd(moved, ref) == pytest.approx(0.0, abs=1e-12)
    displaced = ref.copy()
    displaced.positions[0] += [0.1, 0.0, 0.0]
    # one atom by 0.1 A, minus the mean shift of 0.025 A carried by all four
    expected = np.sqrt((0.075**2 + 3 * 0.025**2) / 4)
    assert structure_rmsd(displaced, ref) == pytest.approx(expected, abs=1e-12)
    mol = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    rotated = Atoms("Cu2", positions=[[1, 1, 1], [1, 3.5, 1]])
    assert structure_rmsd(rotated, mol) == pytest.approx(0.0, abs=1e-12)


def test_relax_cli_fix_symmetry_keeps_space_groups(tmp_path, capsys):
    result = command(
        "relax",
        [
            "--model",
            "emt",
            "--structures",
            "builtin:metals",
            "--out",
            str(tmp_path),
            "--fix-symmetry",
            "--reference-model",
            "emt",
        ],
    )
    assert "relax emt" in capsys.readouterr().out
    with open(tmp_path / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert {"name", "converged", "steps", "energy", "rmsd", "symprec"} <= set(rows[0])
    by_name = {r["name"]: r for r in rows}
    assert by_name["cu-fcc"]["spacegroup_after"] == "225"
    assert by_name["cu3au-l12"]["spacegroup_after"] == "221"
    for r in rows:
        assert r["converged"] == "True"
        assert float(r["rmsd"]) == 0.0  # reference == model
        assert r["spacegroup_before"] == r["spacegroup_after"]
        if r["name"] != "cu-strained":
            assert r["spacegroup_before_loose"] == r["spacegroup_after_loose"]
    # the rattled cell is P1 even at symprec 1e-2; relaxing lets it reach fcc
    assert by_name["cu-strained"]["spacegroup_after_loose"] == "225"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # the P1 start (cu-strained) is counted apart: it has no symmetry to keep
    assert metrics["relax/spacegroup_kept_fraction"] == 1.0
    assert metrics["relax/spacegroup_kept_fraction_loose"] == 1.0
    assert metrics["relax/num_p1_starts"] == metrics["relax/num_p1_starts_loose"] == 1
    assert metrics["relax/p1_symmetry_found_fraction_loose"] == 1.0
    assert metrics["relax/converged_fraction"] == 1.0
    assert result["metrics"] == metrics


def test_fix_symmetry_keeps_bcc_hcp_rocksalt():
    structures = load_structures("builtin:prototypes")
    for _, atoms in structures:  # strain so that the cell has to move
        atoms.set_cell(atoms.cell.array * 1.03, scale_atoms=True)
    out = relax.run(
        ModelOptions(),
        structures,
        RelaxSettings(fix_symmetry=True, fmax=1e-3, reference_model="none"),
    )
    groups = {r["name"]: (r["spacegroup_before"], r["spacegroup_after"]) for r in out["rows"]}
    assert groups == {"cu-bcc": (229, 229), "cu-hcp": (194, 194), "cuau-rocksalt": (225, 225)}
    assert out["metrics"]["relax/spacegroup_kept_fraction_loose"] == 1.0


def test_relax_runs_a_separate_reference_relaxation():
    # A different spec triggers a second relaxation; for a P1 cell the
    # projection is the identity, so both relaxations agree.
    structures = [("cu", bulk("Cu", "fcc", a=3.6, cubic=True))]
    structures[0][1].rattle(0.05, seed=0)
    out = relax.run(
        ModelOptions("emt", space_group=True),
        structures,
        RelaxSettings(fmax=1e-3, reference_model="emt"),
    )
    assert out["metrics"]["relax/rmsd_mean"] < 1e-3  # P1: projection is the identity


# --------------------------------------------------------------- phonons


@pytest.fixture(scope="module")
def cu_phonons() -> dict:
    return compute_phonons(bulk("Cu", "fcc", a=3.6), EMT(), PhononSettings(mesh=(8, 8, 8)))


def test_emt_cu_phonons_physical(cu_phonons):
    gamma = np.asarray(cu_phonons["gamma_frequencies_thz"])
    assert gamma.shape == (3,)
    assert np.abs(gamma).max() < 1e-3  # acoustic modes at Gamma after the sum rule
    path = np.asarray(cu_phonons["path_frequencies_thz"])
    kpts = np.asarray(cu_phonons["path_kpts"])
    away = np.linalg.norm(kpts, axis=1) > 1e-6
    assert path[away].min() > 0.0
    assert cu_phonons["num_imaginary"] == 0
    assert 7.5 < cu_phonons["max_frequency_thz"] < 8.8  # EMT Cu: ~8.1 THz (expt. ~7.2)
    assert cu_phonons["asr_violation"] < 1e-10
    assert cu_phonons["relax"]["converged"]


def test_emt_cu_phonons_match_ase_phonons(cu_phonons, tmp_path):
    """Independent finite-displacement code (ASE) on the same relaxed cell.

    Compared at the q-points commensurate with the 2x2x2 supercell (Gamma, X,
    L), where both are exact; in between, ASE does not share force constants
    among equivalent periodic images as phonopy does, so its interpolation
    differs (it even breaks the Gamma-X transverse degeneracy).
    """
    atoms = bulk("Cu", "fcc")
    atoms.set_cell(cu_phonons["cell"], scale_atoms=True)
    ph = Phonons(atoms, EMT(), supercell=(2, 2, 2), delta=0.01, name=str(tmp_path / "ph"))
    ph.run()
    ph.read(acoustic=True)
    kpts = np.asarray(cu_phonons["path_kpts"])
    commensurate = np.all(np.abs(2 * kpts - np.round(2 * kpts)) < 1e-9, axis=1)
    assert commensurate.sum() >= 4
    ase_thz = np.sort(ph.band_structure(kpts[commensurate]).real, axis=1) * EV_TO_THZ
    ours = np.sort(np.asarray(cu_phonons["path_frequencies_thz"])[commensurate], axis=1)
    np.testing.assert_allclose(ours, ase_thz, atol=1e-3)


def test_emt_cu_phonons_match_plain_phonopy(cu_phonons):
    """Phonopy's own pipeline and symmetrisation on the same relaxed cell, whole path."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(symbols=["Cu"], cell=cu_phonons["cell"], scaled_positions=[[0, 0, 0]])
    phonon = Phonopy(unit, supercell_matrix=np.diag([2, 2, 2]), primitive_matrix="P")
    phonon.generate_displacements(distance=0.01)
    forces = []
    for sc in phonon.supercells_with_displacements:
        cell = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        cell.calc = EMT()
        forces.append(cell.get_forces())
    phonon.forces = forces
    phonon.produce_force_constants(show_drift=False)
    phonon.symmetrize_force_constants(level=3, show_drift=False)
    direct = phonon.run_qpoints(np.asarray(cu_phonons["path_kpts"])).frequencies
    np.testing.assert_allclose(cu_phonons["path_frequencies_thz"], direct, atol=1e-3)


def test_phonons_converged_in_displacement(cu_phonons):
    fine = compute_phonons(
        bulk("Cu", "fcc", a=3.6), EMT(), PhononSettings(displacement=0.003, mesh=(4, 4, 4))
    )
    diff = np.abs(
        np.asarray(fine["path_frequencies_thz"]) - cu_phonons["path_frequencies_thz"]
    ).max()
    assert diff < 0.01


def test_force_constant_symmetrisation():
    rng = np.random.default_rng(0)
    fc = rng.normal(size=(4, 4, 3, 3))
    sym = symmetrize_force_constants(fc)
    np.testing.assert_allclose(sym, sym.transpose(1, 0, 3, 2), atol=1e-10)
    np.testing.assert_allclose(sym.sum(axis=1), 0.0, atol=1e-10)
    np.testing.assert_allclose(symmetrize_force_constants(sym), sym, atol=1e-12)


def test_phonons_cli_outputs_and_bad_input(tmp_path):
    command(
        "phonons",
        [
            "--structures",
            "builtin:cu-fcc",
            "--supercell",
            "2",
            "2",
            "2",
            "--out",
            str(tmp_path),
            "--mesh",
            "4",
            "4",
            "4",
        ],
    )
    data = json.loads((tmp_path / "cu-fcc" / "phonons.json").read_text())
    assert len(data["gamma_frequencies_thz"]) == 3
    assert np.asarray(data["path_frequencies_thz"]).shape[1] == 3
    assert (tmp_path / "cu-fcc" / "bands.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["phonon/freq_mae_THz"] == 0.0
    slab = bulk("Cu", "fcc", a=3.6)
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="3D periodic"):
        phonons.run(ModelOptions(), [("slab", slab)], PhononSettings())


# --------------------------------------------------- symmetry diagnostics


def test_lambda_zero_for_emt_positive_for_direct_toy():
    cell = working_cell(bulk("Cu", "fcc", a=3.6, cubic=True), min_atoms=8, rattle=0.02, seed=0)
    block = list(range(4))
    lam_emt = jacobian_asymmetry(force_jacobian(EMT(), cell, block, step=5e-3))
    lam_toy = jacobian_asymmetry(force_jacobian(ToyCalculator(), cell, block, step=5e-3))
    assert lam_emt < 1e-4
    assert lam_toy > 1e-3


def test_nve_drift_small_for_emt_large_for_non_conservative_toy():
    cell = working_cell(bulk("Cu", "fcc", a=3.6, cubic=True), min_atoms=32, rattle=0.0, seed=0)
    emt = nve_drift(EMT(), cell, steps=60, timestep_fs=1.0, temperature_K=300.0, seed=0)
    toy = nve_drift(
        ToyCalculator(b=0.5), cell, steps=60, timestep_fs=1.0, temperature_K=300.0, seed=0
    )
    assert abs(emt["nve_drift_meV_per_atom_per_ps"]) < 0.5
    assert emt["nve_max_dev_meV_per_atom"] < 0.1
    assert toy["nve_max_dev_meV_per_atom"] > 10 * emt["nve_max_dev_meV_per_atom"]


def test_symmetry_cli_with_labels(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=0)
    atoms.calc = EMT()
    forces = atoms.get_forces() + 0.01  # labels offset by 0.01 eV/A per component
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=forces)
    write(tmp_path / "labelled.extxyz", atoms)
    result = command(
        "symmetry",
        [
            "--structures",
            str(tmp_path / "labelled.extxyz"),
            "--num-rotations",
            "3",
            "--grid-l-max",
            "1",
            "--jacobian-atoms",
            "2",
            "--min-atoms",
            "4",
            "--md-steps",
            "10",
            "--out",
            str(tmp_path / "sym"),
        ],
    )
    m = json.loads((tmp_path / "sym" / "metrics.json").read_text())
    assert m == pytest.approx(result["metrics"], nan_ok=True)
    assert m["symmetry/force_mae"] == pytest.approx(0.01, abs=1e-9)
    assert m["symmetry/energy_mae_per_atom"] == pytest.approx(0.0, abs=1e-9)
    assert m["symmetry/rot_error_forces"] < 1e-10
    assert m["symmetry/grid_std_forces"] < 1e-10
    assert m["symmetry/lambda"] < 1e-4


def test_toy_rotational_error_drops_with_averaging():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=0)
    plain = symmetry.rotational_spread(ToyCalculator(), atoms, 3)
    averaged = symmetry.rotational_spread(RotationalAverage(ToyCalculator(), 3), atoms, 3)
    assert averaged["rot_error_forces"] < 0.1 * plain["rot_error_forces"]
    assert averaged["rot_error_stress"] < 1e-10  # a constant anisotropy is degree 2: exact
    grid = symmetry.grid_spread(ToyCalculator(), atoms, 3)
    assert grid["grid_std_forces"] > 0.1 * plain["rot_error_forces"]


# ------------------------------------------------------------------ speed


def test_speed_reports_every_configuration(tmp_path):
    result = command(
        "speed", ["--sizes", "32", "--rot-l-max", "1", "--repeats", "1", "--out", str(tmp_path)]
    )
    m = json.loads((tmp_path / "metrics.json").read_text())
    for config in ("plain", "rot1", "spacegroup"):
        assert m[f"speed/{config}/n32/us_per_atom"] > 0
    assert m["speed/plain/n32/cost_vs_plain"] == 1.0
    assert result["timings"]["rot1"][32]["num_rotations"] == 18
    # serial averaging costs about one plain evaluation per rotation
    assert 0.1 < m["speed/rot1/n32/cost_vs_plain_per_rotation"] < 10.0  # timing noise on CI
    assert len(speed.fcc_supercell(256)) == 256


def test_rotational_error_of_conservative_model_on_a_bravais_lattice():
    """Gradient forces vanish in a perfect 1-atom lattice for any model, so the
    diagnostic must measure on the rattled working cell, not report 0."""
    import torch

    from train.calculator import ModelCalculator
    from train.models import build_model

    torch.manual_seed(0)
    model = build_model("pet", "tiny", forces="conservative").double().eval()
    calc = ModelCalculator(model, ["Cu"], forces="conservative")
    primitive = bulk("Cu", "fcc", a=3.6)
    forces = calc.evaluate([primitive])[0]["forces"]
    assert np.abs(forces).max() < 1e-10  # the trap the working cell avoids
    settings = symmetry.SymmetrySettings(
        num_rotations=2, grid_l_max=None, jacobian_atoms=0, md_steps=0, min_atoms=8
    )
    out = symmetry.diagnose(calc, None, primitive, settings)
    assert out["work_num_atoms"] >= 8
    assert out["rot_error_forces"] > 1e-6  # pet is not equivariant
    emt = symmetry.diagnose(EMT(), None, primitive, settings)
    assert emt["rot_error_forces"] < 1e-10
