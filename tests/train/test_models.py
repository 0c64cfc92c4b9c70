"""Physics contract of every model family and force mode (tiny presets, float64).

Measured (not asserted-zero) quantities of the unconstrained model, i.e. PET's
rotation error and the force-Jacobian asymmetry of its direct forces, are
printed as `REPORT ...` lines (`pytest -rP` shows them) and recorded as test
properties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipelines import schema as K
from data_pipelines.batching import batch_structures
from data_pipelines.schema import Structure
from train.models import DIRECT_FORCES, DIRECT_STRESS, build_model
from train.models.geometry import adaptive_cutoffs

BASELINE = {1: -1.1, 6: -5.3, 8: -4.2, 13: -3.7, 29: -3.6, 79: -3.2}

# (family, forces mode, overrides); "pet-adaptive" exercises the adaptive cutoff.
MODES = {
    "pet-direct": ("pet", "direct", {}),
    "pet-conservative": ("pet", "conservative", {}),
    "pet-both": ("pet", "both", {}),
    "pet-adaptive": (
        "pet",
        "both",
        {"adaptive_cutoff": True, "target_neighbours": 3.0, "adaptive_min_cutoff": 2.0},
    ),
    "mace": ("mace", "conservative", {}),
}
GRADIENT_MODES = [m for m in MODES if MODES[m][1] != "direct"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and robust when the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(MODES))
def case(request):
    family, forces, overrides = MODES[request.param]
    torch.manual_seed(0)
    model = build_model(
        family,
        "tiny",
        forces=forces,
        # mace starts with tiny outputs; scale them to O(1) so tolerances mean something
        energy_scale=300.0 if family == "mace" else 1.0,
        **overrides,
    ).double()
    model.set_composition_baseline(BASELINE)  # after .double(): no float32 rounding
    return request.param, model.eval()


def gradient_case(case):
    name, model = case
    if model.forces == "direct":
        pytest.skip("direct forces are not gradients")
    return name, model


def fcc(species, a, rng, rattle=0.1, skew=0.1) -> Structure:
    frac = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    cell = a * np.eye(3) + skew * rng.normal(size=(3, 3))
    pos = frac @ cell + rattle * rng.normal(size=(4, 3))
    return Structure("fcc", species, pos, cell, [True] * 3)


def structures() -> dict[str, Structure]:
    rng = np.random.default_rng(42)
    prim = 4.05 / 2 * np.array([[0.0, 1, 1], [1, 0, 1], [1, 1, 0]])
    cell = prim * np.array([[2.0], [1.0], [1.0]])
    al = Structure(
        "al",
        [13, 13],
        np.array([[0, 0, 0], prim[0]]) + 0.1 * rng.normal(size=(2, 3)),
        cell,
        [True] * 3,
    )
    mol_pos = np.array(
        [[0, 0, 0], [1.09, 0, 0], [-0.4, 1.0, 0.1], [-0.3, -0.6, 1.2], [2.2, 1.3, 0.4]]
    )
    mol = Structure("mol", [6, 1, 1, 8, 29], mol_pos, np.zeros((3, 3)), [False] * 3)
    return {
        "cuau": fcc([29, 79, 29, 79], 3.9, rng),
        "cual": fcc([29, 13, 13, 29], 3.85, rng),
        "al": al,
        "mol": mol,
    }


def run(model, structs: list[Structure]) -> dict:
    out = model(batch_structures(structs, cutoff=model.cutoff))
    return {k: v.detach().numpy() for k, v in out.items()}


def with_positions(s: Structure, pos, cell=None) -> Structure:
    return Structure(s.source_id, s.numbers, pos, s.cell if cell is None else cell, s.pbc)


def assert_close(a, b, rel=1e-9, what=""):
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-3)
    err = np.abs(np.asarray(a) - np.asarray(b)).max() / scale
    assert err < rel, f"{what}: relative difference {err:.3e} > {rel:.1e}"


def report(record_property, name, **values):
    for key, value in values.items():
        record_property(f"{name}.{key}", value)
    print("REPORT", name, " ".join(f"{k}={v:.3e}" for k, v in values.items()))


# ---- invariances ---------------------------------------------------------------------


def test_translation_invariance(case):
    _, model = case
    for s in structures().values():
        moved = with_positions(s, s.positions + np.array([0.31, -0.72, 1.13]))
        a, b = run(model, [s]), run(model, [moved])
        for key in a:
            assert_close(a[key], b[key], what=key)


def test_permutation_of_atoms(case):
    _, model = case
    rng = np.random.default_rng(1)
    for s in structures().values():
        perm = rng.permutation(s.num_atoms)
        permuted = Structure(s.source_id, s.numbers[perm], s.positions[perm], s.cell, s.pbc)
        a, b = run(model, [s]), run(model, [permuted])
        for key, value in a.items():
            expected = value[perm] if value.shape[0] == s.num_atoms and key != K.ENERGY else value
            assert_close(expected, b[key], what=key)


def test_batch_equals_one_by_one(case):
    _, model = case
    structs = list(structures().values())
    together = run(model, structs)
    alone = [run(model, [s]) for s in structs]
    for key, value in together.items():
        per_atom = value.shape[0] == sum(s.num_atoms for s in structs) and key != K.ENERGY
        joined = np.concatenate([a[key] for a in alone]) if per_atom else None
        assert_close(
            value, joined if per_atom else np.concatenate([a[key] for a in alone]), what=key
        )


def test_supercell_consistency(case):
    _, model = case
    s = structures()["cuau"]
    cell2 = s.cell.copy()
    cell2[0] *= 2
    big = Structure(
        "big",
        np.tile(s.numbers, 2),
        np.concatenate([s.positions, s.positions + s.cell[0]]),
        cell2,
        s.pbc,
    )
    a, b = run(model, [s]), run(model, [big])
    assert_close(2 * a[K.ENERGY], b[K.ENERGY], what="energy")
    for key in a:
        if key in (K.FORCES, DIRECT_FORCES):
            assert_close(np.tile(a[key], (2, 1)), b[key], what=key)
        if key in (K.STRESS, DIRECT_STRESS):
            assert_close(a[key], b[key], what=key)


def test_isolated_atom_gives_its_reference_energy(case):
    _, model = case
    for z in (1, 29, 79):
        for pbc in (False, True):
            cell = 30.0 * np.eye(3) if pbc else np.zeros((3, 3))
            out = run(model, [Structure("atom", [z], [[0.3, 0.2, 0.1]], cell, [pbc] * 3)])
            assert abs(out[K.ENERGY][0] - BASELINE[z]) < 1e-12
            for key, value in out.items():
                if key != K.ENERGY:
                    assert np.abs(value).max() < 1e-12, key


# ---- smoothness ------------------------------------------------------------------------


def cluster(offset: float) -> Structure:
    """Five atoms; the last sits `offset` A along +x from the first."""
    pos = np.array(
        [[0, 0, 0], [-2.4, 0.3, 0.1], [-0.5, 2.3, -0.4], [-0.3, -0.9, 2.4], [offset, 0.2, 0.1]]
    )
    return Structure("cluster", [29, 79, 13, 29, 79], pos, np.zeros((3, 3)), [False] * 3)


def crossing_offset(model) -> float:
    """Offset where the moving atom crosses atom 0's cutoff (adaptive: by bisection)."""
    cfg = model.config
    if not cfg.__dict__.get("adaptive_cutoff", False):
        return float(np.hypot(np.sqrt(cfg.cutoff**2 - 0.2**2 - 0.1**2), 0.0))

    def excess(offset: float) -> float:
        s = cluster(offset)
        b = batch_structures([s], cutoff=cfg.cutoff)
        i, j = b[K.EDGE_INDEX]
        r = (b[K.POSITIONS][j] - b[K.POSITIONS][i]).norm(dim=1)
        radius = adaptive_cutoffs(
            r,
            i,
            s.num_atoms,
            cfg.cutoff,
            cfg.adaptive_min_cutoff,
            cfg.cutoff_width,
            cfg.target_neighbours,
            cfg.adaptive_candidates,
            cfg.adaptive_softness,
        )
        return float(np.linalg.norm(s.positions[4]) - radius[0])

    lo, hi = 1.5, cfg.cutoff - 1e-3
    assert excess(lo) < 0 < excess(hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def test_smooth_across_the_cutoff(case, record_property):
    name, model = case
    x = crossing_offset(model)
    # eps small enough that the slope (the force on the moving atom) adds < 1e-9 eV.
    eps = 1e-9
    inside, outside = run(model, [cluster(x - eps)]), run(model, [cluster(x + eps)])
    deeper = run(model, [cluster(x - 0.3)])
    # Continuity is only meaningful if the neighbour matters when inside.
    assert abs(deeper[K.ENERGY][0] - outside[K.ENERGY][0]) > 1e-6
    jump = abs(inside[K.ENERGY][0] - outside[K.ENERGY][0])
    assert jump < 1e-8, f"energy jumps by {jump:.2e} eV across the cutoff"
    for key in inside:
        if key != K.ENERGY:
            assert np.abs(inside[key] - outside[key]).max() < 1e-5, key
    report(record_property, name, cutoff_crossing_A=x, energy_jump_eV=jump)


# ---- gradients -------------------------------------------------------------------------


def test_forces_and_stress_equal_finite_differences(case):
    _, model = gradient_case(case)
    h = 1e-5
    for s in (structures()["cuau"], structures()["mol"]):
        out = run(model, [s])
        fd_forces = np.zeros_like(s.positions)
        for a in range(s.num_atoms):
            for c in range(3):
                plus, minus = s.positions.copy(), s.positions.copy()
                plus[a, c] += h
                minus[a, c] -= h
                e_plus = run(model, [with_positions(s, plus)])[K.ENERGY][0]
                e_minus = run(model, [with_positions(s, minus)])[K.ENERGY][0]
                fd_forces[a, c] = -(e_plus - e_minus) / (2 * h)
        assert_close(out[K.FORCES], fd_forces, rel=1e-6, what="forces")
        if not s.pbc.all():
            assert np.abs(out[K.STRESS]).max() == 0.0
            continue
        volume = abs(np.linalg.det(s.cell))
        fd_stress = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                strain = np.zeros((3, 3))
                strain[a, b] += h / 2
                strain[b, a] += h / 2
                energies = []
                for sign in (1, -1):
                    deform = np.eye(3) + sign * strain
                    moved = with_positions(s, s.positions @ deform, s.cell @ deform)
                    energies.append(run(model, [moved])[K.ENERGY][0])
                fd_stress[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
        assert_close(out[K.STRESS][0], fd_stress, rel=1e-6, what="stress")


def force_jacobian(model, s: Structure, key: str, h: float = 1e-5) -> np.ndarray:
    """J[a, b] = d F_a / d x_b by central differences, (3N, 3N)."""
    n = 3 * s.num_atoms
    jac = np.zeros((n, n))
    for b in range(n):
        plus, minus = s.positions.copy(), s.positions.copy()
        plus.reshape(-1)[b] += h
        minus.reshape(-1)[b] -= h
        f_plus = run(model, [with_positions(s, plus)])[key].reshape(-1)
        f_minus = run(model, [with_positions(s, minus)])[key].reshape(-1)
        jac[:, b] = (f_plus - f_minus) / (2 * h)
    return jac


def asymmetry(jac: np.ndarray) -> float:
    return float(np.linalg.norm(0.5 * (jac - jac.T)) / np.linalg.norm(jac))


def test_jacobian_asymmetry(case, record_property):
    name, model = case
    s = structures()["cuau"]
    keys = [K.FORCES] + ([DIRECT_FORCES] if model.forces == "both" else [])
    for key in keys:
        lam = asymmetry(force_jacobian(model, s, key))
        gradient = key == K.FORCES and model.forces != "direct"
        if gradient:
            assert lam < 1e-6, f"gradient forces must have a symmetric Jacobian, lambda={lam}"
        else:
            assert lam > 1e-6, "direct forces are not expected to be exactly conservative"
        report(record_property, f"{name}.{key}", lambda_=lam)


# ---- rotations -------------------------------------------------------------------------


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_rotation(case, record_property):
    """Energy error in eV/atom; forces and stresses relative to their max magnitude."""
    name, model = case
    errors: dict[str, float] = {}
    for s in (structures()["cuau"], structures()["mol"]):
        out = run(model, [s])
        for seed in range(3):
            rot = random_rotation(seed)
            rotated = run(model, [with_positions(s, s.positions @ rot.T, s.cell @ rot.T)])
            diff = abs(out[K.ENERGY][0] - rotated[K.ENERGY][0]) / s.num_atoms
            errors["energy_eV_per_atom"] = max(errors.get("energy_eV_per_atom", 0.0), diff)
            for key in out:
                if key in (K.FORCES, DIRECT_FORCES):
                    expected, got = out[key] @ rot.T, rotated[key]
                elif key in (K.STRESS, DIRECT_STRESS) and s.pbc.all():
                    expected, got = rot @ out[key][0] @ rot.T, rotated[key][0]
                else:
                    continue
                err = float(np.abs(expected - got).max() / max(np.abs(expected).max(), 1e-12))
                errors[key] = max(errors.get(key, 0.0), err)
    if name == "mace":
        assert errors["energy_eV_per_atom"] < 1e-12, errors
        assert max(errors.values()) < 1e-9, errors
    else:
        assert errors["energy_eV_per_atom"] > 1e-9, "PET is not built to be exactly invariant"
        assert all(np.isfinite(v) for v in errors.values())
    report(record_property, f"{name}.rotation", **errors)
