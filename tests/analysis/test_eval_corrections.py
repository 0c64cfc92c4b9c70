"""Inference-time corrections: exactness of the rotation grid, averaging and projection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixSymmetry
from scipy.spatial.transform import Rotation

from train.corrections import (
    RotationalAverage,
    SpaceGroupProjection,
    evaluate_serially,
    rotation_grid,
    symmetry_operations,
    transform_atoms,
)

ANTISYMMETRIC = np.array([[0.0, 1.0, -0.5], [-1.0, 0.0, 0.3], [0.5, -0.3, 0.0]])


class ToyCalculator(Calculator):
    """EMT plus terms that break rotational equivariance and conservativeness.

    - energy + a * sum_i cos(k . r_i) with a fixed wave vector k (absolute
      positions: every angular degree appears, decaying fast for small |k r|);
    - forces: the matching gradient plus b * A r_i with A antisymmetric, a
      curl that no energy has (non-conservative, lambda > 0) and that is not
      equivariant;
    - stress + c * S0 with a fixed anisotropic S0.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, a: float = 0.2, b: float = 0.05, c: float = 0.002, **kwargs) -> None:
        super().__init__(**kwargs)
        self.a, self.b, self.c = a, b, c
        self.k = np.array([0.2, 0.12, -0.08])
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.emt
        pos = work.positions
        phase = pos @ self.k
        energy = work.get_potential_energy() + self.a * np.cos(phase).sum()
        forces = work.get_forces() + self.a * np.sin(phase)[:, None] * self.k
        forces = forces + self.b * pos @ ANTISYMMETRIC.T
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if work.pbc.all():
            self.results["stress"] = work.get_stress() + self.c * np.array(
                [1.0, -0.5, 0.2, 0.3, 0.0, -0.1]
            )


def rattled_cu(seed: int = 1) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def predict(calc: Calculator, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    work = atoms.copy()
    work.calc = calc
    return work.get_potential_energy(), work.get_forces(), work.get_stress()


def levi_civita() -> np.ndarray:
    eps = np.zeros((3, 3, 3))
    for perm in itertools.permutations(range(3)):
        eps[perm] = np.linalg.det(np.eye(3)[list(perm)])
    return eps


# ------------------------------------------------------------------ the grid


def test_grid_sizes_and_weights():
    assert len(rotation_grid(3)) == 42  # 6-point Lebedev x 7 in-plane angles
    assert len(rotation_grid(3, inversion=True)) == 84
    assert len(rotation_grid(3, lebedev_order=7)) == 182  # 26-point rule
    for grid in (rotation_grid(2), rotation_grid(3, True), rotation_grid(6)):
        assert grid.weights.sum() == pytest.approx(1.0, abs=1e-14)
        np.testing.assert_allclose(
            np.einsum("gij,gkj->gik", grid.matrices, grid.matrices),
            np.broadcast_to(np.eye(3), grid.matrices.shape),
            atol=1e-12,
        )
    assert np.allclose(np.linalg.det(rotation_grid(3).matrices), 1.0)
    with pytest.raises(ValueError, match="lebedev_order"):
        rotation_grid(5, lebedev_order=3)


@pytest.mark.parametrize("l_max", [1, 2, 3, 4])
def test_grid_integrates_rotation_moments_exactly(l_max):
    """Haar moments of the matrix entries up to degree l_max, known in closed form."""
    grid = rotation_grid(l_max)
    w, R = grid.weights, grid.matrices
    eye = np.eye(3)
    np.testing.assert_allclose(np.einsum("g,gij->ij", w, R), 0.0, atol=1e-14)
    if l_max >= 2:
        second = np.einsum("g,gij,gkl->ijkl", w, R, R)
        np.testing.assert_allclose(second, np.einsum("ik,jl->ijkl", eye, eye) / 3, atol=1e-14)
    if l_max >= 3:
        # <R_ij R_kl R_mn> = eps_ikm eps_jln / 6 (its trace part is <det R> = 1)
        eps = levi_civita()
        third = np.einsum("g,gij,gkl,gmn->ijklmn", w, R, R, R)
        np.testing.assert_allclose(third, np.einsum("ikm,jln->ijklmn", eps, eps) / 6, atol=1e-14)


@pytest.mark.parametrize("l_max", [2, 3, 4])
def test_grid_averages_polynomials_of_a_rotated_vector(l_max):
    """Polynomials in u = R v of degree <= l_max average to their sphere means."""
    grid = rotation_grid(l_max)
    v = np.array([0.3, -1.1, 0.7])
    u = grid.matrices @ v
    r2 = v @ v
    a = np.array([0.2, 0.5, -0.4])
    checks = [(u[:, 0] * u[:, 1], 0.0), ((u @ a) ** 2, r2 * (a @ a) / 3), (u[:, 2] ** 3, 0.0)]
    if l_max >= 4:
        checks += [(u[:, 0] ** 4, r2**2 / 5), (u[:, 0] ** 2 * u[:, 1] ** 2, r2**2 / 15)]
    for values, exact in checks:
        assert grid.weights @ values == pytest.approx(exact, abs=1e-13)


def test_grid_is_not_exact_beyond_its_degree():
    """The checks above have teeth: the 42-point grid misses a degree-4 moment."""
    grid = rotation_grid(3)
    u = grid.matrices @ np.array([0.3, -1.1, 0.7]) / np.linalg.norm([0.3, -1.1, 0.7])
    assert abs(grid.weights @ u[:, 0] ** 4 - 1 / 5) > 1e-3


def test_grid_with_inversion_covers_o3():
    grid = rotation_grid(3, inversion=True)
    assert grid.weights @ np.linalg.det(grid.matrices) == pytest.approx(0.0, abs=1e-14)
    third = np.einsum("g,gij,gkl,gmn->ijklmn", grid.weights, *(grid.matrices,) * 3)
    np.testing.assert_allclose(third, 0.0, atol=1e-14)  # odd moments vanish on O(3)


def test_grid_average_is_invariant_for_polynomial_energy():
    """Degree <= l_max anisotropy is removed exactly: E_avg(Q x) = E_avg(x) for any Q."""

    class Quadratic(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            pos = self.atoms.positions
            m = np.diag([1.0, 2.0, -0.5])
            self.results = {
                "energy": float(np.einsum("ni,ij,nj->", pos, m, pos)),
                "forces": -2 * pos @ m,
            }

    mol = Atoms("Cu3", positions=[[0.1, 0.2, 0.3], [1.5, -0.2, 0.4], [0.3, 1.1, -0.9]])
    avg = RotationalAverage(Quadratic(), l_max=2)
    ref_e, ref_f = predict_molecule(avg, mol)
    for q in Rotation.random(3, random_state=0).as_matrix():
        e, f = predict_molecule(avg, transform_atoms(mol, q))
        assert e == pytest.approx(ref_e, abs=1e-12)
        np.testing.assert_allclose(f, ref_f @ q.T, atol=1e-12)
    # sum_n |r_n|^2 tr(M) / 3: the analytic rotational average
    assert ref_e == pytest.approx((mol.positions**2).sum() * 2.5 / 3, abs=1e-12)


def predict_molecule(calc: Calculator, atoms: Atoms) -> tuple[float, np.ndarray]:
    work = atoms.copy()
    work.calc = calc
    return work.get_potential_energy(), work.get_forces()


# ------------------------------------------------------ rotational averaging


def test_average_of_invariant_calculator_is_plain():
    atoms = rattled_cu()
    e0, f0, s0 = predict(EMT(), atoms)
    calc = RotationalAverage(EMT(), l_max=3, inversion=True)
    e, f, s = predict(calc, atoms)
    assert e == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(f, f0, atol=1e-10)
    np.testing.assert_allclose(s, s0, atol=1e-10)
    assert calc.results["energy_rot_std"] < 1e-10
    assert calc.results["forces_rot_std"].shape == f0.shape
    assert calc.results["forces_rot_std"].max() < 1e-10
    assert calc.results["stress_rot_std"].max() < 1e-10


def _spread_over_rotations(calc: Calculator, atoms: Atoms, num: int = 4) -> tuple[float, float]:
    forces, energies = [], []
    for q in Rotation.random(num, random_state=3).as_matrix():
        e, f, _ = predict(calc, transform_atoms(atoms, q))
        energies.append(e)
        forces.append(f @ q)
    forces = np.array(forces)
    return float(np.std(energies)), float(np.sqrt(((forces - forces.mean(0)) ** 2).mean()))


def test_average_makes_toy_calculator_more_equivariant():
    atoms = rattled_cu()
    plain_e, plain_f = _spread_over_rotations(ToyCalculator(), atoms)
    avg = RotationalAverage(ToyCalculator(), l_max=3)
    avg_e, avg_f = _spread_over_rotations(avg, atoms)
    assert plain_f > 1e-2 and plain_e > 1e-2  # the toy really is non-equivariant
    assert avg_f < 0.05 * plain_f
    assert avg_e < 0.05 * plain_e
    # the grid std flags what the average removed
    predict(avg, atoms)
    assert avg.results["forces_rot_std"].max() > 1e-3


def test_batch_fn_is_called_once_with_all_rotations():
    calls = []

    def batch_fn(structures):
        calls.append(len(structures))
        return evaluate_serially(ToyCalculator(), structures, with_stress=True)

    atoms = rattled_cu()
    e, f, s = predict(RotationalAverage(None, l_max=2, batch_fn=batch_fn), atoms)
    e_ref, f_ref, s_ref = predict(RotationalAverage(ToyCalculator(), l_max=2), atoms)
    assert calls == [len(rotation_grid(2))]
    assert e == pytest.approx(e_ref, abs=1e-12)
    np.testing.assert_allclose(f, f_ref, atol=1e-12)
    np.testing.assert_allclose(s, s_ref, atol=1e-12)


# -------------------------------------------------- space-group projection


def distorted_cu() -> Atoms:
    """8-atom fcc Cu with one atom moved along [111]: R3m, nonzero forces."""
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.positions[0] += 0.04
    return atoms


def test_projection_finds_the_expected_group():
    ops = symmetry_operations(distorted_cu())
    assert (ops.number, ops.international) == (160, "R3m")
    assert len(ops.rotations) == 6
    big = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    ops = symmetry_operations(big)
    assert ops.number == 225 and len(ops.rotations) == 48
    # 8 cells x 4 fcc centrings = 32 pure translations: one orbit of all atoms
    assert (ops.translation_orbits == ops.translation_orbits[0]).all()


def test_projection_is_invariant_under_the_crystal_operations():
    atoms = distorted_cu()
    calc = SpaceGroupProjection(ToyCalculator())
    e, f, s = predict(calc, atoms)
    e_raw, f_raw, _ = predict(ToyCalculator(), atoms)
    assert e == pytest.approx(e_raw)
    assert np.abs(f - f_raw).max() > 1e-3  # the toy forces were not symmetric
    ops = symmetry_operations(atoms)
    full = _voigt_to_full(s)
    for rot, perm in zip(ops.rotations, ops.permutations):
        np.testing.assert_allclose(f[perm], f @ rot.T, atol=1e-12)
        np.testing.assert_allclose(rot @ full @ rot.T, full, atol=1e-12)
    for orbit in np.unique(ops.translation_orbits):  # the 8 fcc cells are equivalent
        members = f[ops.translation_orbits == orbit]
        np.testing.assert_allclose(members, np.broadcast_to(members[0], members.shape), atol=1e-12)
    # idempotent, and the same projection as ASE's FixSymmetry
    e2, f2, _ = predict(SpaceGroupProjection(calc), atoms)
    np.testing.assert_allclose(f2, f, atol=1e-12)
    ase_forces = f_raw.copy()
    FixSymmetry(atoms.copy(), symprec=1e-5).adjust_forces(atoms, ase_forces)
    np.testing.assert_allclose(f, ase_forces, atol=1e-10)


def test_projection_leaves_symmetric_calculator_unchanged():
    atoms = distorted_cu()
    e0, f0, s0 = predict(EMT(), atoms)
    e, f, s = predict(SpaceGroupProjection(EMT()), atoms)
    assert np.abs(f0).max() > 1e-2
    assert e == pytest.approx(e0, abs=1e-12)
    np.testing.assert_allclose(f, f0, atol=1e-12)
    np.testing.assert_allclose(s, s0, atol=1e-12)


def _voigt_to_full(s: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
