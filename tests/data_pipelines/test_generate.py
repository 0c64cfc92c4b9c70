"""The built-in EMT source: reproducible, prefix-stable, varied, and correctly labelled."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from data_pipelines.dataset import iter_split
from data_pipelines.generate import ELEMENTS, KINDS, generate_structures, main
from data_pipelines.schema import Structure

SEED = 3
NUM = 150  # enough for every kind, lattice and element to appear with this seed


@pytest.fixture(scope="module")
def structures() -> list[Structure]:
    return list(generate_structures(NUM, seed=SEED))


def assert_same(a: Structure, b: Structure) -> None:
    """Bit-for-bit equality of every field."""
    assert a.source_id == b.source_id
    for name in ("numbers", "positions", "cell", "pbc", "forces", "stress"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), (a.source_id, name)
    assert a.energy == b.energy
    assert a.info == b.info


def to_atoms(s: Structure) -> Atoms:
    return Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)


def test_same_seed_is_bit_identical(structures):
    again = list(generate_structures(40, seed=SEED))
    for a, b in zip(structures, again):
        assert_same(a, b)
    other = next(iter(generate_structures(1, seed=SEED + 1)))
    assert not np.array_equal(other.positions, structures[0].positions)


def test_prefix_stable_and_resumable(structures):
    for a, b in zip(structures, generate_structures(7, seed=SEED)):
        assert_same(a, b)
    # A stream made in pieces (start=...) is the same stream.
    for a, b in zip(structures[100:110], generate_structures(10, seed=SEED, start=100)):
        assert_same(a, b)


def test_worker_processes_do_not_change_the_stream(structures):
    parallel = list(generate_structures(64, seed=SEED, num_workers=2))
    assert len(parallel) == 64
    for a, b in zip(structures, parallel):
        assert_same(a, b)


def test_ids_are_stable_and_unique(structures):
    assert structures[7].source_id == f"emt-s{SEED}-0000007"
    assert len({s.source_id for s in structures}) == NUM


def test_mix_of_kinds_elements_and_sizes(structures):
    kinds = Counter(s.info["kind"] for s in structures)
    assert set(kinds) == set(KINDS)
    assert {s.info["lattice"] for s in structures} == {"fcc", "bcc", "hcp"}
    present = {int(z) for s in structures for z in s.numbers}
    assert present == {int(Atoms(e).numbers[0]) for e in ELEMENTS}
    num_species = Counter(len(set(s.numbers.tolist())) for s in structures)
    assert num_species[1] > 0 and num_species[2] > 0 and num_species[3] > 0

    surfaces = [s for s in structures if s.info["kind"] == "surface"]
    assert {tuple(s.pbc.tolist()) for s in surfaces} == {(True, True, False), (True, True, True)}
    for s in surfaces:  # a vacuum gap along z: no atom anywhere near the top of the cell
        assert s.cell[2, 2] - np.ptp(s.positions[:, 2]) > 7.0, s.source_id
    md = [s for s in structures if s.info["kind"] == "md"]
    assert len({s.info["temperature_K"] for s in md}) == 3
    assert {s.info["integrator"] for s in md} == {"langevin", "verlet"}
    strained = [s for s in structures if s.info["kind"] == "strained"]
    assert max(np.abs(s.stress[[1, 0, 0], [2, 2, 1]]).max() for s in strained) > 1e-3

    sizes = np.array([s.num_atoms for s in structures])
    assert sizes.min() >= 2 and sizes.max() <= 64
    assert np.mean((sizes >= 4) & (sizes <= 32)) > 0.75


def test_labels_are_finite_and_match_a_fresh_calculator(structures):
    for s in structures:
        s.validate()
        assert s.forces is not None and s.stress is not None  # every cell has a volume
        json.dumps(s.info)  # goes into the shard header
        atoms = to_atoms(s)
        atoms.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(s.energy, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(atoms.get_forces(), s.forces, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(atoms.get_stress(voigt=False), s.stress, atol=1e-12)
        np.testing.assert_allclose(s.stress, s.stress.T, atol=1e-14)


def test_forces_sum_to_zero(structures):
    # No fixed atoms and no external field: translation invariance, slabs included.
    for s in structures:
        np.testing.assert_allclose(s.forces.sum(axis=0), 0.0, atol=1e-9, err_msg=s.source_id)


def test_forces_and_stress_are_energy_derivatives(structures):
    """Finite differences pin the signs: F = -dE/dr, stress = (1/V) dE/dstrain."""
    h = 1e-5
    picked = [next(s for s in structures if s.info["kind"] == k) for k in KINDS]
    for s in picked:
        atoms = to_atoms(s)
        atoms.calc = EMT()
        i = s.num_atoms // 2
        for axis in range(3):
            e = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.calc = EMT()
                moved.positions[i, axis] += sign * h
                e.append(moved.get_potential_energy())
            assert -(e[0] - e[1]) / (2 * h) == pytest.approx(s.forces[i, axis], abs=1e-5)
        for a, b in ((0, 0), (1, 2)):
            e = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = sign * h
                strained = atoms.copy()
                strained.calc = EMT()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                e.append(strained.get_potential_energy())
            dE = (e[0] - e[1]) / (2 * h) / (1 if a == b else 2)
            assert dE / atoms.get_volume() == pytest.approx(s.stress[a, b], abs=1e-6)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="unknown calculator 'dft'; valid names: emt"):
        generate_structures(3, calculator="dft")
    with pytest.raises(ValueError, match="non-negative"):
        generate_structures(3, seed=-1)
    with pytest.raises(SystemExit):
        main(["--calculator", "dft", "--num-structures", "3", "--out", "x"])


def test_cli_writes_shards_that_read_back_bit_exact(tmp_path, structures):
    out = tmp_path / "emt"
    argv = ["--num-structures", "40", "--seed", str(SEED), "--out", str(out)]
    assert main([*argv, "--shard-size", "16", "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_structures"] == 40
    assert manifest["level_of_theory"] == "EMT (ASE)"
    assert manifest["sources"][0]["path"] == "generate:emt"
    assert manifest["sources"][0]["options"]["seed"] == SEED
    by_id = {s.source_id: s for s in iter_split(str(out))}
    assert len(by_id) == 40
    for s in structures[:40]:
        assert_same(by_id[s.source_id], s)
