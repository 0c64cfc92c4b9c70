"""Validation errors and inference speed of any ASE calculator, on extended XYZ files.

Standalone on purpose: the peers benchmark (analysis/bench/peers.py) runs this
file with the peers' own interpreter (runs/peers-venv), where neither this
project nor its dependencies are installed, so it imports only numpy and ASE at
module level and the peer's package inside ``load``.

    runs/peers-venv/bin/python analysis/bench/peer_eval.py --tool metatomic \\
        --model model.pt --val val.xyz --cell cell.xyz --out eval.json

Reference labels are read from the keys the benchmark writes: ``REF_energy``
(eV, atoms.info), ``REF_forces`` (eV/A, atoms.arrays) and ``REF_stress``
(eV/A^3, ASE sign, atoms.info, 9 numbers row by row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"
STRESS_KEY = "REF_stress"
TOOLS = ("metatomic", "mace")


def reference(atoms) -> tuple[float, np.ndarray, np.ndarray | None]:
    """(energy eV, forces (num_atoms, 3) eV/A, stress (3, 3) eV/A^3 or None) of a frame."""
    missing = [k for k in (ENERGY_KEY,) if k not in atoms.info]
    missing += [k for k in (FORCES_KEY,) if k not in atoms.arrays]
    if missing:
        raise KeyError(f"frame {atoms.get_chemical_formula()}: no {', '.join(missing)}")
    stress = atoms.info.get(STRESS_KEY)
    stress = None if stress is None else np.asarray(stress, dtype=np.float64).reshape(3, 3)
    return float(atoms.info[ENERGY_KEY]), np.asarray(atoms.arrays[FORCES_KEY]), stress


def voigt(stress_33: np.ndarray) -> np.ndarray:
    """(3, 3) -> ASE's Voigt order xx yy zz yz xz xy."""
    s = stress_33
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def errors(calc, frames: list) -> dict:
    """Mean absolute errors of ``calc`` over ``frames``: energy per atom (meV/atom),
    force components (meV/A), Voigt stress components (meV/A^3, periodic frames
    with a reference stress only)."""
    e_err, f_err, s_err = [], [], []
    for i, ref_atoms in enumerate(frames):
        energy, forces, stress = reference(ref_atoms)
        atoms = ref_atoms.copy()
        atoms.calc = calc
        try:
            e_err.append(abs(atoms.get_potential_energy() - energy) / len(atoms))
            f_err.append(np.abs(atoms.get_forces() - forces).ravel())
            if stress is not None and atoms.pbc.all():
                s_err.append(np.abs(atoms.get_stress(voigt=True) - voigt(stress)))
        except Exception as err:  # name the frame, then let it fail
            raise RuntimeError(f"evaluating validation frame {i}: {err}") from err
    return {
        "num_structures": len(frames),
        "num_atoms": int(sum(len(a) for a in frames)),
        "energy_mae_mev_per_atom": 1e3 * float(np.mean(e_err)),
        "forces_mae_mev_per_A": 1e3 * float(np.mean(np.concatenate(f_err))),
        "stress_mae_mev_per_A3": 1e3 * float(np.mean(np.concatenate(s_err))) if s_err else None,
    }


def inference_us_per_atom(calc, atoms, repeats: int = 10, warmup: int = 3) -> dict:
    """Median wall time of one energy+forces call through ``calc.calculate``
    (neighbour list included, as a user of the calculator pays it), per atom,
    and the median process CPU time of a call, per atom."""
    from ase.calculators.calculator import all_changes

    atoms = atoms.copy()
    atoms.calc = calc
    times, cpu = [], []
    for k in range(warmup + repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    n = len(atoms)
    # CPU time (all threads) moves less than wall time when other jobs share the cores.
    return {"num_atoms": n, "repeats": repeats,
            "us_per_atom": 1e6 * statistics.median(times) / n,
            "us_per_atom_min": 1e6 * min(times) / n,
            "cpu_us_per_atom": 1e6 * statistics.median(cpu) / n}


def load(tool: str, model: str):
    """The peer's own ASE calculator for its exported model file, and its
    parameter count (None where the tool does not expose the module)."""
    if tool == "metatomic":
        from metatomic_ase import MetatomicCalculator

        return MetatomicCalculator(model, device="cpu"), None
    if tool == "mace":
        from mace.calculators import MACECalculator

        calc = MACECalculator(model_paths=model, device="cpu", default_dtype="float32")
        return calc, int(sum(p.numel() for p in calc.models[0].parameters()))
    raise ValueError(f"--tool {tool!r}: choose from {', '.join(TOOLS)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tool", required=True, choices=TOOLS)
    p.add_argument("--model", required=True)
    p.add_argument("--val", default=None, help="extended XYZ with REF_* labels (none: "
                   "inference only)")
    p.add_argument("--cell", required=True, help="extended XYZ, the cell to time")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import torch
    from ase.io import read

    torch.set_num_threads(args.threads)
    calc, num_params = load(args.tool, args.model)
    res = {"tool": args.tool, "num_params": num_params,
           "val": errors(calc, read(args.val, ":")) if args.val else None,
           "inference": inference_us_per_atom(calc, read(args.cell), args.repeats)}
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
