"""Streaming statistics against the same numbers computed in one shot."""

from __future__ import annotations

import numpy as np

from data_pipelines.graph import structure_edges
from data_pipelines.stats import StatsAccumulator
from tests.data_pipelines.helpers import emt_structures


def test_stats_match_a_direct_computation():
    structures = emt_structures(60)
    acc = StatsAccumulator(cutoff=4.0)
    for s in structures:
        acc.add(s)
    got = acc.result()
    zs = sorted({int(z) for s in structures for z in s.numbers})
    a = np.array([[np.sum(s.numbers == z) for z in zs] for s in structures], dtype=float)
    y = np.array([s.energy for s in structures])
    w = np.linalg.lstsq(a, y, rcond=None)[0]
    ref = got["element_reference_energies_by_z"]
    assert np.allclose([ref[z] for z in zs], w, rtol=1e-8, atol=1e-8)
    n = a.sum(1)
    resid = (y - a @ w) / n
    assert np.isclose(got["residual_energy_per_atom_mean"], resid.mean(), atol=1e-10)
    assert np.isclose(got["residual_energy_per_atom_rms"], np.sqrt(np.mean(resid**2)), rtol=1e-6)
    f = np.concatenate([s.forces for s in structures])
    assert np.isclose(got["force_rms"], np.sqrt(np.mean(f**2)))
    edges = sum(len(structure_edges(s, 4.0)[0]) for s in structures)
    assert np.isclose(got["mean_num_neighbours"], edges / n.sum())


def test_reference_energies_recovered_exactly():
    structures = emt_structures(40)
    true = {13: -3.1, 28: -5.2, 29: -4.0, 46: -6.5, 79: -3.3, 1: -13.6, 6: -1.0, 8: -2.0}
    for s in structures:
        s.energy = float(sum(true[int(z)] for z in s.numbers))
    acc = StatsAccumulator(cutoff=None)
    for s in structures:
        acc.add(s)
    got = acc.result()
    for z, e in got["element_reference_energies_by_z"].items():
        assert abs(e - true[z]) < 1e-8
    assert got["residual_energy_per_atom_rms"] < 1e-6
