"""Inference-time corrections benchmark, each cost against plain inference measured
in this run.

    python -m analysis.bench.corrections --out runs/bench/corrections.json
        [--sizes 64 256 1024] [--l-max 1 2 3] [--threads 2]

Builds a pet `xxs` with direct and with gradient forces (the speed of a forward
pass does not depend on training) and times, on rattled fcc Cu cells of each
size: plain inference, rotational averaging at each l_max through the
calculator's batched path, and space-group projection. The target (issue:
practical evaluation) is averaged cost <= 1.2 x (number of rotations) x one
plain evaluation; the JSON says per size and grid whether it is met.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET_PER_ROTATION = 1.2


def run_benchmark(sizes: list[int], l_max: list[int], threads: int, repeats: int) -> dict:
    import torch

    from analysis.workflows.speed import fcc_supercell, time_calculator
    from train.calculator import ModelCalculator
    from train.corrections import RotationalAverage, SpaceGroupProjection, rotation_grid
    from train.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    results: dict = {"sizes": sizes, "l_max": l_max, "threads": threads, "timings": {}}
    summary: dict = {}
    for forces in ("direct", "conservative"):
        model = build_model("pet", "xxs", forces=forces).eval()
        plain = ModelCalculator(model, ["Cu"], forces=forces)
        for size in sizes:
            atoms = fcc_supercell(size, "Cu")
            base = time_calculator(plain, atoms, repeats)
            rows = {"plain": base}
            for ell in l_max:
                avg = RotationalAverage(plain, l_max=ell, batch_fn=plain.evaluate)
                t = time_calculator(avg, atoms, repeats)
                rotations = len(rotation_grid(ell))
                t["num_rotations"] = rotations
                t["cost_per_rotation"] = t["seconds"] / base["seconds"] / rotations
                t["target_met"] = t["cost_per_rotation"] <= TARGET_PER_ROTATION
                rows[f"rot{ell}"] = t
                summary[f"{forces}/rot{ell}/n{size}/cost_per_rotation"] = t["cost_per_rotation"]
            spg = time_calculator(SpaceGroupProjection(plain), atoms, repeats)
            spg["cost_vs_plain"] = spg["seconds"] / base["seconds"]
            rows["spacegroup"] = spg
            summary[f"{forces}/spacegroup/n{size}/cost_vs_plain"] = spg["cost_vs_plain"]
            results["timings"][f"{forces}/n{size}"] = rows
            print(
                f"{forces} n={size}: plain {base['us_per_atom']:.0f} us/atom; "
                + ", ".join(
                    f"rot{ell} {rows[f'rot{ell}']['cost_per_rotation']:.2f}x/rotation"
                    for ell in l_max
                )
                + f"; space group {spg['cost_vs_plain']:.2f}x",
                flush=True,
            )
    per_rotation = [v for k, v in summary.items() if k.endswith("cost_per_rotation")]
    summary["worst_cost_per_rotation"] = max(per_rotation)
    summary["target_per_rotation"] = TARGET_PER_ROTATION
    summary["target_met"] = max(per_rotation) <= TARGET_PER_ROTATION
    results["summary"] = summary
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.corrections", description=__doc__)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--l-max", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    result = run_benchmark(args.sizes, args.l_max, args.threads, args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    s = result["summary"]
    print(
        f"worst averaged cost {s['worst_cost_per_rotation']:.2f}x per rotation "
        f"(target <= {TARGET_PER_ROTATION}): {'met' if s['target_met'] else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
