"""Inference-time corrections as ASE calculator wrappers.

Both wrappers accept any ASE calculator as the base, so the workflows in
``analysis/`` can be built and tested with EMT before a trained model exists.

- :class:`RotationalAverage` averages the base predictions over a quadrature
  grid of rotations (a Lebedev rule for the direction of the rotated z axis
  times equally spaced in-plane angles, optionally paired with inversion),
  rotating forces and stress back before averaging. The weighted standard
  deviation over the grid is a free estimate of the remaining equivariance
  error.
- :class:`SpaceGroupProjection` symmetrises forces and stress with the
  crystal's own space-group operations (spglib).

Units follow ASE: energy in eV, forces in eV/A, stress in eV/A^3 (Voigt order
xx, yy, zz, yz, xz, xy, tension positive).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import spglib
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
from numpy.typing import NDArray
from scipy.integrate import lebedev_rule

# One dict per structure with "energy" (float), "forces" (num_atoms, 3) and,
# for periodic cells, "stress" (6,) Voigt.
BatchFn = Callable[[list[Atoms]], list[dict[str, np.ndarray | float]]]

# Orders scipy.integrate.lebedev_rule accepts (the polynomial degree each rule
# integrates exactly on the sphere).
LEBEDEV_ORDERS = (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 35, 41, 47, 53, 59)


@dataclass(frozen=True)
class RotationGrid:
    """A quadrature rule on SO(3) or O(3).

    Attributes:
        matrices: rotation (or rotoinversion) matrices, shape (num_rotations, 3, 3);
            a rotated structure has positions ``pos @ matrices[g].T``.
        weights: quadrature weights, shape (num_rotations,), summing to 1.
        l_max: every function of the rotation whose Wigner-D expansion stops at
            degree ``l_max`` (equivalently every polynomial of degree <= l_max in
            the matrix entries) is integrated exactly.
        lebedev_order: order of the Lebedev rule used for the z-axis direction.
        num_in_plane: number of equally spaced in-plane angles.
        inversion: whether each rotation is paired with its inversion (O(3)).
    """

    matrices: NDArray[np.float64]
    weights: NDArray[np.float64]
    l_max: int
    lebedev_order: int
    num_in_plane: int
    inversion: bool

    def __len__(self) -> int:
        return len(self.weights)


def _rot_z(angle: float) -> NDArray[np.float64]:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(angle: float) -> NDArray[np.float64]:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_grid(
    l_max: int = 3, inversion: bool = False, lebedev_order: int | None = None
) -> RotationGrid:
    """Build the Lebedev x in-plane quadrature grid on SO(3) (or O(3)).

    A rotation is written in ZYZ Euler angles, R = Rz(alpha) Ry(beta) Rz(gamma),
    so that R e_z = n(alpha, beta). A Wigner-D element factorises as
    D^l_mk = e^{-i m alpha} d^l_mk(beta) e^{-i k gamma}: summing over N equally
    spaced gamma kills every k != 0 with |k| < N, and what is left,
    D^l_m0, is a degree-l spherical harmonic of n, which a Lebedev rule of
    order >= l integrates exactly. Hence the default choice: the smallest
    Lebedev order >= l_max and N = 2 l_max + 1 in-plane angles (the extra
    angles beyond l_max + 1 keep the in-plane sum exact up to |k| = 2 l_max).
    For l_max = 3 this is the 6-point rule x 7 angles = 42 rotations.

    Args:
        l_max: degree up to which the grid is exact.
        inversion: pair every rotation with its inversion -R (half the weight
            each) so the average covers O(3).
        lebedev_order: override the Lebedev order (e.g. 7 for the 26-point rule);
            must be >= l_max to keep the exactness guarantee.

    Returns:
        The grid.

    Raises:
        ValueError: for a negative l_max or an order scipy does not provide.
    """
    if l_max < 0:
        raise ValueError(f"l_max must be >= 0, got {l_max}")
    if lebedev_order is None:
        lebedev_order = next(o for o in LEBEDEV_ORDERS if o >= max(l_max, 1))
    if lebedev_order not in LEBEDEV_ORDERS or lebedev_order < l_max:
        raise ValueError(
            f"lebedev_order {lebedev_order} must be one of {LEBEDEV_ORDERS} and >= l_max={l_max}"
        )
    points, sphere_weights = lebedev_rule(lebedev_order)
    sphere_weights = sphere_weights / sphere_weights.sum()  # scipy's sum to 4 pi
    num_in_plane = 2 * l_max + 1
    gammas = 2.0 * np.pi * np.arange(num_in_plane) / num_in_plane
    matrices, weights = [], []
    for n, w in zip(points.T, sphere_weights):
        beta = np.arccos(np.clip(n[2], -1.0, 1.0))
        alpha = np.arctan2(n[1], n[0])  # arbitrary at the poles; any value is exact
        tilt = _rot_z(alpha) @ _rot_y(beta)
        for gamma in gammas:
            matrices.append(tilt @ _rot_z(gamma))
            weights.append(w / num_in_plane)
    mats = np.array(matrices)
    wts = np.array(weights)
    if inversion:
        mats = np.concatenate([mats, -mats])
        wts = np.concatenate([wts, wts]) / 2.0
    return RotationGrid(mats, wts, l_max, lebedev_order, num_in_plane, inversion)


def transform_atoms(atoms: Atoms, matrix: NDArray[np.float64]) -> Atoms:
    """Copy of ``atoms`` with positions and cell transformed by ``matrix``.

    The cell rotates with the positions so the periodic images stay the same
    physical structure; under inversion the cell becomes left-handed, which
    ASE neighbour lists accept.
    """
    out = atoms.copy()
    out.calc = None
    out.constraints = []  # constraints hold indices/directions in the old frame
    out.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    out.positions = atoms.positions @ matrix.T
    return out


def evaluate_serially(
    calc: Calculator, structures: Sequence[Atoms], with_stress: bool
) -> list[dict[str, np.ndarray | float]]:
    """Default batch hook: evaluate ``structures`` one at a time with ``calc``."""
    results = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        res: dict[str, np.ndarray | float] = {
            "energy": float(atoms.get_potential_energy()),
            "forces": np.array(atoms.get_forces()),
        }
        if with_stress:
            res["stress"] = np.array(atoms.get_stress())
        results.append(res)
    return results


def _supports_stress(calc: Calculator) -> bool:
    return "stress" in getattr(calc, "implemented_properties", ["stress"])


def _weighted_mean_std(
    values: NDArray[np.float64], weights: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    mean = np.tensordot(weights, values, axes=1)
    var = np.tensordot(weights, (values - mean) ** 2, axes=1)
    return mean, np.sqrt(np.maximum(var, 0.0))


class RotationalAverage(Calculator):
    """Average a calculator over a quadrature grid of rotations.

    E = sum_g w_g E(g x), F = sum_g w_g R_g^T F(g x),
    sigma = sum_g w_g R_g^T sigma(g x) R_g. For an exactly equivariant base the
    average equals the plain prediction; for an unconstrained model every
    non-equivariant component up to degree ``l_max`` of the integrand is
    removed exactly. The back-rotation counts: R^T F(g x) has one degree more
    than F(g x), R^T sigma R two more, so a force error of angular degree L
    is removed exactly when l_max >= L + 1.

    Extra results (same shapes as the averaged quantity, per component):
    ``energy_rot_std`` (eV), ``forces_rot_std`` (num_atoms, 3) eV/A and
    ``stress_rot_std`` (6,) eV/A^3, the weighted standard deviations over the
    grid of the back-rotated predictions.

    Args:
        base_calculator: any ASE calculator providing energy and forces.
        l_max: exactness degree of the grid (see :func:`rotation_grid`).
        inversion: also average over the inversion (O(3) instead of SO(3)).
        batch_fn: ``batch_fn(list_of_atoms) -> list of result dicts`` evaluating
            several rotated copies at once (a model's batched forward pass);
            the default loops over ``base_calculator``.
        lebedev_order: optional override of the Lebedev order.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        base_calculator: Calculator | None,
        l_max: int = 3,
        inversion: bool = False,
        batch_fn: BatchFn | None = None,
        lebedev_order: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if base_calculator is None and batch_fn is None:
            raise ValueError("RotationalAverage needs a base_calculator or a batch_fn")
        self.base_calculator = base_calculator
        self.batch_fn = batch_fn
        self.grid = rotation_grid(l_max, inversion, lebedev_order)

    def reset(self) -> None:
        """Clear cached results here and in the base calculator."""
        super().reset()
        # getattr: Calculator.__init__ may reset before the base is attached.
        if getattr(self, "base_calculator", None) is not None:
            self.base_calculator.reset()

    def _evaluate(self, structures: list[Atoms], with_stress: bool) -> list[dict]:
        if self.batch_fn is not None:
            return self.batch_fn(structures)
        return evaluate_serially(self.base_calculator, structures, with_stress)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        # Stress whenever it is defined, so a later get_stress() does not rerun
        # the whole grid (ASE asks for energy, forces and stress separately).
        with_stress = bool(atoms.pbc.all()) and (
            self.batch_fn is not None or _supports_stress(self.base_calculator)
        )
        mats, wts = self.grid.matrices, self.grid.weights
        rotated = [transform_atoms(atoms, m) for m in mats]
        outputs = self._evaluate(rotated, with_stress)
        if len(outputs) != len(rotated):
            raise RuntimeError(f"batch_fn returned {len(outputs)} results for {len(rotated)}")

        energies = np.array([float(o["energy"]) for o in outputs])
        # Row-vector convention: a force f(gx) = R f(x) becomes f @ R.
        forces = np.einsum("gnj,gjk->gnk", np.array([o["forces"] for o in outputs]), mats)
        energy, energy_std = _weighted_mean_std(energies, wts)
        force, force_std = _weighted_mean_std(forces, wts)
        self.results = {
            "energy": float(energy),
            "free_energy": float(energy),
            "forces": force,
            "energy_rot_std": float(energy_std),
            "forces_rot_std": force_std,
        }
        if with_stress:
            if any("stress" not in o for o in outputs):
                raise RuntimeError("batch_fn did not return 'stress' for a periodic structure")
            full = np.array([voigt_6_to_full_3x3_stress(np.asarray(o["stress"])) for o in outputs])
            back = np.einsum("gji,gjk,gkl->gil", mats, full, mats)  # R^T sigma R
            voigt = np.array([full_3x3_to_voigt_6_stress(s) for s in back])
            stress, stress_std = _weighted_mean_std(voigt, wts)
            self.results["stress"] = stress
            self.results["stress_rot_std"] = stress_std


@dataclass(frozen=True)
class SymmetryOps:
    """Space-group operations of a structure in Cartesian form.

    The group G is stored as its pure-translation subgroup T (non-trivial for
    supercells) and one representative per point-group rotation (a coset
    transversal): mean over G = mean over representatives after mean over T,
    which keeps a 1000-atom supercell (16k operations) cheap. T acts freely on
    the atoms and its orbits are the atoms sharing a primitive-cell atom, so
    the mean over T is a mean over each orbit.

    Attributes:
        rotations: Cartesian rotations of the representatives, shape (num_reps, 3, 3).
        permutations: ``permutations[g, i]`` is the atom representative g maps atom
            i to, shape (num_reps, num_atoms).
        translation_orbits: ``translation_orbits[i]`` labels the orbit of atom i
            under the pure translations (spglib's mapping to the primitive cell),
            shape (num_atoms,).
        number: international space-group number.
        international: Hermann-Mauguin symbol.
    """

    rotations: NDArray[np.float64]
    permutations: NDArray[np.int64]
    translation_orbits: NDArray[np.int64]
    number: int
    international: str


def _wrap_unit(frac: NDArray[np.float64]) -> NDArray[np.float64]:
    """Fractional coordinates in [0, 1); np.mod alone can return 1.0 for -1e-17."""
    out = frac - np.floor(frac)
    out[out >= 1.0] = 0.0
    return out


def _atom_permutations(
    atoms: Atoms, rot_frac: NDArray, trans: NDArray, symprec: float
) -> NDArray[np.int64]:
    """Index of the atom each (rotation, translation) sends each atom to."""
    from scipy.spatial import cKDTree

    frac = atoms.get_scaled_positions(wrap=True)
    tree = cKDTree(_wrap_unit(frac), boxsize=1.0)  # periodic in fractional space
    mapped = np.einsum("gij,nj->gni", rot_frac, frac) + trans[:, None, :]
    dist, idx = tree.query(_wrap_unit(mapped.reshape(-1, 3)))
    idx = idx.reshape(len(rot_frac), len(atoms))
    # Rough Cartesian bound of the fractional mismatch; a true image sits at ~0.
    scale = np.linalg.norm(atoms.cell.array, axis=1).max()
    bad = (dist.reshape(idx.shape) * scale > 10 * symprec + 1e-8) | (
        atoms.numbers[idx] != atoms.numbers
    )
    if bad.any():
        raise ValueError(
            f"space-group op does not map the structure {atoms.get_chemical_formula()} onto "
            f"itself within symprec={symprec}: tighten or loosen symprec"
        )
    return idx


def symmetry_dataset(atoms: Atoms, symprec: float):
    """spglib's dataset for ``atoms``, or None when spglib finds no symmetry.

    spglib 2.7+ warns on every call until callers opt into exceptions; both
    the old (None) and new (SpglibError) failure modes mean "no symmetry" here.
    """
    cell = (atoms.cell.array, atoms.get_scaled_positions(wrap=True), atoms.numbers)
    error_type = getattr(getattr(spglib, "error", None), "SpglibError", RuntimeError)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Set OLD_ERROR_HANDLING", DeprecationWarning)
        try:
            return spglib.get_symmetry_dataset(cell, symprec=symprec)
        except error_type:
            return None


def symmetry_operations(atoms: Atoms, symprec: float = 1e-5) -> SymmetryOps:
    """Find the space-group operations of ``atoms`` and the atom permutations.

    Args:
        atoms: a periodic structure.
        symprec: spglib distance tolerance in A.

    Returns:
        The operations; only the identity if spglib finds no symmetry.

    Raises:
        ValueError: if an operation maps an atom onto no atom of the same
            species (an inconsistent tolerance).
    """
    cell = atoms.cell.array
    data = symmetry_dataset(atoms, symprec)
    if data is None:
        rot_frac, trans = np.eye(3, dtype=int)[None], np.zeros((1, 3))
        number, symbol = 1, "P1"
        orbits = np.arange(len(atoms))
    else:
        rot_frac, trans = np.asarray(data.rotations), np.asarray(data.translations)
        number, symbol = int(data.number), str(data.international)
        orbits = np.asarray(data.mapping_to_primitive)
    _, first = np.unique(rot_frac.reshape(len(rot_frac), 9), axis=0, return_index=True)
    reps = np.sort(first)
    perms = _atom_permutations(atoms, rot_frac[reps], trans[reps], symprec)
    lattice_t = cell.T  # columns are lattice vectors: r = L^T f
    rot_cart = lattice_t @ rot_frac[reps] @ np.linalg.inv(lattice_t)
    return SymmetryOps(rot_cart, perms, orbits, number, symbol)


def symmetrize_vectors(vectors: NDArray[np.float64], ops: SymmetryOps) -> NDArray[np.float64]:
    """Project per-atom vectors (num_atoms, 3) onto the symmetric subspace.

    v_sym[p_g(i)] = mean_g R_g v[i] over the whole space group: the result is
    invariant under every operation of the structure.
    """
    orbits = ops.translation_orbits
    sums = np.zeros((orbits.max() + 1, vectors.shape[1]))
    np.add.at(sums, orbits, vectors)
    averaged = sums[orbits] / np.bincount(orbits)[orbits, None]
    out = np.zeros_like(vectors)
    for rot, perm in zip(ops.rotations, ops.permutations):
        out[perm] += averaged @ rot.T
    return out / len(ops.rotations)


def symmetrize_tensor(tensor: NDArray[np.float64], ops: SymmetryOps) -> NDArray[np.float64]:
    """Project a rank-2 Cartesian tensor (3, 3): mean_g R_g T R_g^T."""
    return np.einsum("gij,jk,glk->il", ops.rotations, tensor, ops.rotations) / len(ops.rotations)


class SpaceGroupProjection(Calculator):
    """Symmetrise a calculator's forces and stress with the crystal's space group.

    The energy is passed through unchanged (it is a scalar already invariant
    under the structure's own operations). Extra results of the base (e.g.
    ``forces_rot_std``) are passed through untouched; ``spacegroup_number`` is
    added.

    Args:
        base_calculator: any ASE calculator.
        symprec: spglib tolerance in A for finding the operations.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, base_calculator: Calculator, symprec: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.base_calculator = base_calculator
        self.symprec = symprec

    def reset(self) -> None:
        """Clear cached results here and in the base calculator."""
        super().reset()
        if getattr(self, "base_calculator", None) is not None:
            self.base_calculator.reset()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.base_calculator
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces())
        with_stress = bool(work.pbc.all()) and _supports_stress(self.base_calculator)
        stress = np.array(work.get_stress()) if with_stress else None
        extra = {
            k: v
            for k, v in self.base_calculator.results.items()
            if k not in ("energy", "free_energy", "forces", "stress")
        }
        if not work.pbc.all():
            # Space groups need a 3D lattice; molecules pass through untouched.
            self.results = {"energy": energy, "free_energy": energy, "forces": forces, **extra}
            return
        ops = symmetry_operations(work, self.symprec)
        self.results = {
            **extra,
            "energy": energy,
            "free_energy": energy,
            "forces": symmetrize_vectors(forces, ops),
            "spacegroup_number": ops.number,
        }
        if stress is not None:
            full = symmetrize_tensor(voigt_6_to_full_3x3_stress(stress), ops)
            self.results["stress"] = full_3x3_to_voigt_6_stress(full)
