"""Inference speed of the TorchScript models against the eager ones, same weights.

    python -m analysis.bench.scripted --out runs/bench/scripted.json
        [--sizes 64 256 1024] [--threads 2] [--repeats 5] [--no-metatomic]
        [--models pet-direct,pet-conservative,mace]

For PET (direct and gradient forces, one set of weights) and MACE at the xxs
presets, on rattled Cu/Au cells of each size, times one energy + forces +
stress call of: the eager model (``model(batch)``, isolated-atom energies
cached as the calculator does), its TorchScript twin
(``train.scripted.scripted_potential``, the code inside every metatomic
export) on the same batch tensors, and, unless ``--no-metatomic``, the
exported metatomic ``AtomisticModel`` called the way an engine calls it
(neighbour lists built beforehand, autograd for gradient forces). Neighbour
lists are never timed. Reported per model and size: microseconds per atom
(best of the rounds, run round robin), scripted/eager and metatomic/eager
time ratios (wall and process CPU time, the steadier on a shared machine), the
first scripted call (TorchScript's profiling run), and the
largest difference of the outputs from eager's (a check, not a timing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from analysis.bench.models import cu_au_cell, time_call
from data_pipelines.batching import batch_structures
from train.models import build_model

MODELS = (("pet-direct", "pet", "direct"), ("pet-conservative", "pet", "conservative"),
          ("mace", "mace", "conservative"))  # fmt: skip
REPEATS = {64: (2, 2, 4), 128: (2, 4, 4), 256: (4, 4, 4), 512: (4, 4, 8), 1024: (4, 8, 8)}


def _eager_call(model, batch):
    def call():
        with torch.no_grad():  # gradient forces switch grad back on inside
            return model(batch)

    return call


def _scripted_call(scripted, batch, gradient: bool):
    args = [batch[k] for k in ("species", "positions", "cell", "pbc", "batch")]
    args += [batch["edge_index"], batch["cell_shifts"]]

    def call():
        if gradient:  # autograd.grad inside the script needs grad mode on
            return scripted(*args, gradient=True, direct=False)
        with torch.no_grad():
            return scripted(*args, gradient=False, direct=True)

    return call


def _metatomic_call(exported, atoms, gradient: bool):
    """(prepare, evaluate) of an engine's call: ``prepare`` (not timed) makes the
    system and its neighbour lists, ``evaluate`` runs the model (and autograd)."""
    from metatomic.torch import ModelEvaluationOptions, ModelOutput, System
    from vesin.metatomic import NeighborList

    dtype = torch.float32 if exported.capabilities().dtype == "float32" else torch.float64
    outputs = {"energy": ModelOutput(unit="eV", sample_kind="system")}
    if not gradient:
        outputs["non_conservative_force"] = ModelOutput(unit="eV/Angstrom", sample_kind="atom")
        outputs["non_conservative_stress"] = ModelOutput(unit="eV/Angstrom^3")
    options = ModelEvaluationOptions(length_unit="angstrom", outputs=outputs)
    neighbour_lists = [NeighborList(o, "angstrom") for o in exported.requested_neighbor_lists()]
    types = torch.tensor(atoms.numbers, dtype=torch.int32)
    pbc = torch.tensor(atoms.pbc)

    def prepare():
        positions = torch.tensor(atoms.positions, dtype=dtype, requires_grad=gradient)
        strain = torch.eye(3, dtype=dtype, requires_grad=gradient)
        cell = torch.tensor(atoms.cell.array, dtype=dtype)
        system = System(types, positions @ strain, cell @ strain, pbc)
        for calculator in neighbour_lists:
            calculator.add_neighbor_list(system)
        return system, positions, strain

    def evaluate(prepared):
        system, positions, strain = prepared
        out = exported([system], options, check_consistency=False)
        if gradient:
            torch.autograd.grad(out["energy"].block().values.sum(), [positions, strain])
        return out

    return prepare, evaluate


def _timed(prepare, run) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``run(prepare())`` without the prepare step,
    or of ``run()``."""
    if prepare is None:
        return time_call(run, torch.device("cpu"))
    ready = prepare()
    return time_call(lambda: run(ready), torch.device("cpu"))


def run_benchmark(
    sizes: list[int], threads: int, repeats: int, metatomic: bool, models: list[str]
) -> dict:
    from train.scripted import scripted_potential

    torch.set_num_threads(threads)
    results: dict = {"sizes": sizes, "threads": threads, "rows": []}
    for name, family, forces in (m for m in MODELS if m[0] in models):
        torch.manual_seed(0)
        model = build_model(family, "xxs", forces=forces).eval().requires_grad_(False)
        model.cache_isolated = True
        scripted = scripted_potential(model)
        exported = None
        if metatomic:
            from train.metatomic import atomistic_model

            payload = {"forces": forces, "family": family, "size": "xxs",
                       "elements": ["Cu", "Au"]}  # fmt: skip
            exported = torch.jit.script(atomistic_model(model, payload))
        gradient = forces != "direct"
        for size in sizes:
            cell = cu_au_cell(REPEATS[size])
            batch = batch_structures([cell], cutoff=model.cutoff, dtype=torch.float32)
            calls = {"eager": (None, _eager_call(model, batch)),
                     "scripted": (None, _scripted_call(scripted, batch, gradient))}  # fmt: skip
            first = _timed(*calls["scripted"])[0]
            reference, check = calls["eager"][1](), calls["scripted"][1]()
            difference = max(
                float((reference[k] - check[k]).abs().max()) for k in ("energy", "forces", "stress")
            )
            if exported is not None:
                from ase import Atoms

                atoms = Atoms(cell.numbers, cell.positions, cell=cell.cell, pbc=True)
                calls["metatomic"] = _metatomic_call(exported, atoms, gradient)
            for _ in range(2):  # warm-up: TorchScript profiles, then optimises
                for prepare, run in calls.values():
                    _timed(prepare, run)
            best = dict.fromkeys(calls, float("inf"))
            best_cpu = dict.fromkeys(calls, float("inf"))
            for _ in range(repeats):
                for key, (prepare, run) in calls.items():
                    wall, cpu = _timed(prepare, run)
                    best[key], best_cpu[key] = min(best[key], wall), min(best_cpu[key], cpu)
            row = {"model": name, "num_atoms": cell.num_atoms, "first_scripted_s": first,
                   "max_abs_difference": difference}  # fmt: skip
            for key, seconds in best.items():
                row[f"{key}_us_per_atom"] = 1e6 * seconds / cell.num_atoms
                row[f"{key}_vs_eager"] = seconds / best["eager"]
                # CPU time of this process: steadier than wall time on a shared machine
                row[f"{key}_cpu_us_per_atom"] = 1e6 * best_cpu[key] / cell.num_atoms
                row[f"{key}_cpu_vs_eager"] = best_cpu[key] / best_cpu["eager"]
            results["rows"].append(row)
            print(
                f"{name:17s} n={cell.num_atoms:5d}: "
                + ", ".join(f"{k} {row[f'{k}_us_per_atom']:7.1f} us/atom" for k in best)
                + f"; scripted/eager {row['scripted_vs_eager']:.2f} "
                + f"(cpu time {row['scripted_cpu_vs_eager']:.2f})"
                + (
                    f", metatomic/eager {row['metatomic_vs_eager']:.2f}"
                    if "metatomic" in best
                    else ""
                )
                + f" (max |diff| {difference:.1e})",
                flush=True,
            )

    def geomean(key: str) -> float:
        return float(np.exp(np.mean(np.log([r[key] for r in results["rows"]]))))

    results["summary"] = {
        "scripted_vs_eager_geomean": geomean("scripted_vs_eager"),
        "scripted_cpu_vs_eager_geomean": geomean("scripted_cpu_vs_eager"),
    }
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.scripted", description=__doc__)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], choices=sorted(REPEATS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-metatomic", action="store_true", help="skip the metatomic model")
    names = [m[0] for m in MODELS]
    p.add_argument("--models", default=",".join(names), help=f"some of {','.join(names)}")
    args = p.parse_args(argv)
    models = args.models.split(",")
    if unknown := sorted(set(models) - set(names)):
        p.error(f"--models: unknown {','.join(unknown)}; choose from {','.join(names)}")
    result = run_benchmark(args.sizes, args.threads, args.repeats, not args.no_metatomic, models)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"scripted/eager time, geometric mean: {result['summary']['scripted_vs_eager_geomean']:.2f}"
    )


if __name__ == "__main__":
    main()
