"""Streaming dataset statistics (one pass, memory independent of dataset size).

Per-element reference energies come from least squares of total energy on
composition, E_s ~ sum_Z n_sZ e_Z. Everything the residual statistics need is
accumulated as sums, so no structure is held after it is seen.
"""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from data_pipelines.graph import structure_edges
from data_pipelines.schema import Structure

_NUM_Z = 119


class StatsAccumulator:
    """Accumulates one split's statistics; call `add` per structure, then `result`."""

    def __init__(self, cutoff: float | None = 5.0):
        self.cutoff = cutoff
        self.num_structures = 0
        self.num_atoms = 0
        self.num_with_energy = 0
        self.element_counts = np.zeros(_NUM_Z, dtype=np.int64)
        # sums for least squares on totals (a = composition, y = energy, n = atoms)
        self._ata = np.zeros((_NUM_Z, _NUM_Z))
        self._aty = np.zeros(_NUM_Z)
        # sums for per-atom residuals r/n = (y - a.w)/n
        self._c = np.zeros((_NUM_Z, _NUM_Z))  # sum a a^T / n^2
        self._d = np.zeros(_NUM_Z)  # sum a y / n^2
        self._e = 0.0  # sum y^2 / n^2
        self._f = np.zeros(_NUM_Z)  # sum a / n
        self._g = 0.0  # sum y / n
        self._force_sq = 0.0
        self._force_atoms = 0
        self._stress_sq = 0.0
        self._stress_count = 0
        self._edges = 0
        self._edge_atoms = 0

    def add(self, s: Structure) -> None:
        n = s.num_atoms
        self.num_structures += 1
        self.num_atoms += n
        a = np.bincount(s.numbers, minlength=_NUM_Z).astype(np.float64)
        self.element_counts += a.astype(np.int64)
        if s.energy is not None:
            y = s.energy
            self.num_with_energy += 1
            self._ata += np.outer(a, a)
            self._aty += a * y
            self._c += np.outer(a, a) / n**2
            self._d += a * y / n**2
            self._e += y * y / n**2
            self._f += a / n
            self._g += y / n
        if s.forces is not None:
            self._force_sq += float(np.sum(s.forces**2))
            self._force_atoms += n
        if s.stress is not None:
            self._stress_sq += float(np.sum(s.stress**2))
            self._stress_count += 1
        if self.cutoff is not None:
            i, _, _ = structure_edges(s, self.cutoff)
            self._edges += len(i)
            self._edge_atoms += n

    def result(self) -> dict:
        present = np.nonzero(self.element_counts)[0]
        out: dict = {
            "num_structures": self.num_structures,
            "num_atoms": self.num_atoms,
            "elements": [chemical_symbols[z] for z in present],
            "element_counts": {chemical_symbols[z]: int(self.element_counts[z]) for z in present},
        }
        if self.num_with_energy:
            idx = np.ix_(present, present)
            # lstsq gives the minimum-norm answer when compositions are collinear
            w_present = np.linalg.lstsq(self._ata[idx], self._aty[present], rcond=None)[0]
            w = np.zeros(_NUM_Z)
            w[present] = w_present
            m = self.num_with_energy
            mean = (self._g - w @ self._f) / m
            mean_sq = (self._e - 2 * w @ self._d + w @ self._c @ w) / m
            out["element_reference_energies"] = {chemical_symbols[z]: float(w[z]) for z in present}
            out["element_reference_energies_by_z"] = {int(z): float(w[z]) for z in present}
            out["residual_energy_per_atom_mean"] = float(mean)
            out["residual_energy_per_atom_rms"] = float(np.sqrt(max(mean_sq, 0.0)))
            out["residual_energy_per_atom_std"] = float(np.sqrt(max(mean_sq - mean**2, 0.0)))
        if self._force_atoms:
            out["force_rms"] = float(np.sqrt(self._force_sq / (3 * self._force_atoms)))
        if self._stress_count:
            out["stress_rms"] = float(np.sqrt(self._stress_sq / (9 * self._stress_count)))
        if self.cutoff is not None and self._edge_atoms:
            out["neighbour_cutoff"] = self.cutoff
            out["mean_num_neighbours"] = self._edges / self._edge_atoms
        out["units"] = {
            "energies": "eV",
            "force_rms": "eV/Angstrom",
            "stress_rms": "eV/Angstrom^3",
            "neighbour_cutoff": "Angstrom",
        }
        return out
