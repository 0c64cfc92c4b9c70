"""Small labelled structures made on the spot (EMT), for pipeline tests."""

from __future__ import annotations

import numpy as np
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from data_pipelines.schema import Structure


def emt_structures(num: int, seed: int = 0, prefix: str = "t", molecules: bool = True
                   ) -> list[Structure]:
    """Varied cells (1-32 atoms), one molecule without stress every 7th."""
    out = []
    for k in range(num):
        rng = np.random.default_rng([seed, k])
        if molecules and k % 7 == 6:
            atoms = molecule("CH4" if k % 2 else "H2O")
            atoms.numbers[:] = rng.choice([13, 29], size=len(atoms))
            atoms.positions *= 1.8
            atoms.rattle(0.05, seed=k)
            atoms.calc = EMT()
            out.append(Structure(f"{prefix}#{k}", atoms.numbers, atoms.positions, np.zeros((3, 3)),
                                 atoms.pbc, energy=atoms.get_potential_energy(),
                                 forces=atoms.get_forces()))
            continue
        el = str(rng.choice(["Cu", "Al", "Au", "Ni"]))
        atoms = bulk(el, "fcc", cubic=bool(k % 2)) * tuple(int(v) for v in rng.integers(1, 3, 3))
        if len(atoms) > 1:
            atoms.numbers[rng.integers(len(atoms))] = 46
        atoms.rattle(0.08, seed=k)
        atoms.calc = EMT()
        out.append(Structure(f"{prefix}#{k}", atoms.numbers, atoms.positions, atoms.cell.array,
                             atoms.pbc, energy=atoms.get_potential_energy(),
                             forces=atoms.get_forces(), stress=atoms.get_stress(voigt=False)))
    return out
