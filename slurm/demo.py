"""The main job: a small scaling study end to end, on data made here.

    python -m slurm.demo [--out runs/demo] [--study demo]

1. builds EMT data with the built-in generator (runs/demo/data),
2. trains the study's grid through the sweep command with cluster=local
   (configs/study/demo.yaml: WSD ladders, several data sizes per run),
3. evaluates the largest model of each family (relaxation, Cu phonons with a
   band-structure plot, symmetry diagnostics; with and without rotational
   averaging) under runs/demo/eval/, and copies the metrics into each run's
   eval/ folder so the scaling analysis can read them,
4. fits the scaling laws and writes runs/demo/report/report.md with figures,
5. prints where the report is, the headline numbers and, target by target,
   what the report shows against what the demo promises (slurm/demo_checks.py,
   also written to runs/demo/report/checks.json).

Every step keeps its outputs, so running it again resumes instead of restarting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from analysis.workflows.model import ModelOptions
from data_pipelines.atomic import write_json

REPO = Path(__file__).resolve().parents[1]


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def largest_runs(study_dir: Path) -> dict[str, Path]:
    """The finished run with the most parameters (then most data) per family; a
    WSD ladder's main run never cooled down, so its longest branch stands for it."""
    best: dict[str, tuple] = {}
    for summary_path in sorted((study_dir / "runs").glob("*/summary.json")):
        s = json.loads(summary_path.read_text())
        if s.get("status") != "finished" or (s.get("budget") or {}).get("role") == "main":
            continue
        key = (s["num_params"], s["data"]["num_train_structures"], s.get("atoms_seen", 0))
        if s["family"] not in best or key > best[s["family"]][0]:
            best[s["family"]] = (key, summary_path.parent)
    return {family: run for family, (_, run) in sorted(best.items())}


def _done(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def evaluate_model(family: str, run_dir: Path, eval_dir: Path) -> dict:
    """Relaxation, phonons and symmetry diagnostics of one trained model."""
    from analysis.workflows import phonons, relax, symmetry

    relax_settings = relax.RelaxSettings(max_steps=150, fmax=0.02, reference_model="emt")
    phonon_settings = phonons.PhononSettings(
        supercell=(2, 2, 2), relax_fmax=1e-3, mesh=(8, 8, 8), reference_model="emt"
    )
    symmetry_settings = symmetry.SymmetrySettings(
        num_rotations=6, jacobian_atoms=4, md_steps=60, grid_l_max=2, min_atoms=32
    )
    model_file = str(run_dir / "model.pt")
    modes = ["direct", "conservative"] if family.endswith(("direct", "both")) else ["conservative"]
    out: dict[str, dict] = {}
    for mode in modes:
        tag = f"{family}/{mode}"
        # mace is exactly equivariant: averaging cannot change it. The averaged
        # variants skip the symmetry diagnostics, whose grid spread already
        # measures what averaging removes.
        variants = [("plain", ModelOptions(model_file, forces=mode))]
        if family != "mace" and mode == modes[0]:
            variants.append(("rotavg", ModelOptions(model_file, forces=mode, rotational_average=2)))
        for name, model in variants:
            target = eval_dir / family / mode / name
            parts = [
                (
                    relax,
                    "relax",
                    "builtin:metals" if name == "plain" else "builtin:cu-fcc",
                    relax_settings,
                ),
                (phonons, "phonons", "builtin:cu-fcc", phonon_settings),
            ]
            if name == "plain":
                parts.append((symmetry, "symmetry", "builtin:cu-fcc", symmetry_settings))
            for workflow, part, structures, settings in parts:
                if not _done(target / part / "metrics.json"):
                    result = workflow.run(model, structures, settings, target / part)
                    print(workflow.summary(model, settings, result, target / part), flush=True)
            metrics = {}
            for part in ("relax", "phonons", "symmetry"):
                if (target / part / "metrics.json").exists():
                    metrics.update(json.loads((target / part / "metrics.json").read_text()))
            out[f"{tag}/{name}"] = metrics
            # next to the run, so `analysis scaling --metric ...` can fit them too
            tagged = {
                f"{k}[{mode},{name}]" if name != "plain" or mode != modes[0] else k: v
                for k, v in metrics.items()
            }
            write_json(run_dir / "eval" / f"{mode}-{name}.json", tagged, indent=1)
    return out


def speed_ratio(run_dir: Path, eval_dir: Path) -> dict:
    """Inference time per atom of the same pet weights, direct vs conservative."""
    from analysis.workflows import speed

    target = eval_dir / "speed"
    if not _done(target / "metrics.json"):
        model = ModelOptions(str(run_dir / "model.pt"))
        settings = speed.SpeedSettings(sizes=(64, 256), repeats=3, rot_l_max=())
        result = speed.run(model, None, settings, target)
        print(speed.summary(model, settings, result, target), flush=True)
    return json.loads((target / "metrics.json").read_text())


def headline(report_dir: Path, speed_metrics: dict) -> list[str]:
    fits = json.loads((report_dir / "fits.json").read_text())
    lines = []
    for family, per_metric in sorted(fits.get("fits", fits).items()):
        if not isinstance(per_metric, dict):
            continue
        metric = per_metric.get("val/forces_mae") or next(iter(per_metric.values()), {})
        if not isinstance(metric, dict):
            continue
        # the joint law L(N, D) uses every run of the family; the one-axis laws only
        # a slice of three, too few for intervals
        for law in ("ND", "N", "D"):
            fit = metric.get(law)
            if not fit or "params" not in fit:
                continue
            parts = []
            for key in ("alpha", "beta") if law == "ND" else ("alpha" if law == "N" else "beta",):
                p = fit["params"].get(key)
                if p:
                    ci = (
                        f" [{p['ci'][0]:.3g}, {p['ci'][1]:.3g}]"
                        if p.get("ci")
                        else " (no interval: too few runs)"
                    )
                    parts.append(f"{key} = {p['value']:.3g}{ci}")
            verdict = fit.get("quality", {}).get("verdict", "?")
            name = {"ND": "L(N, D)", "N": "L(N)", "D": "L(D)"}[law]
            lines.append(
                f"{family}: force-error exponents {', '.join(parts)} ({name}, fit {verdict})"
            )
            break

    def per_atom(config: str) -> list[float]:
        return [
            v
            for k, v in speed_metrics.items()
            if k.split("/")[1:2] == [config] and k.endswith("/us_per_atom")
        ]

    direct, conservative = per_atom("direct"), per_atom("conservative")
    if direct and conservative:
        ratio = (sum(conservative) / len(conservative)) / (sum(direct) / len(direct))
        lines.append(
            f"pet inference: direct forces {ratio:.2f}x faster than conservative "
            f"(same weights, mean over sizes)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m slurm.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=str(REPO / "runs" / "demo"))
    p.add_argument("--study", default="demo", help="a study of configs/study/")
    p.add_argument("--bootstrap", type=int, default=100)
    args = p.parse_args(argv)
    study_dir = Path(args.out).resolve()
    t0 = time.time()

    banner(f"1-2. data and training (python -m slurm.sweep study={args.study} cluster=local)")
    from slurm.sweep import SweepStopped, sweep

    try:
        sweep([f"study={args.study}", "cluster=local", f"study_dir={study_dir}"])
    except SweepStopped as stopped:
        print(f"demo {stopped} (make demo)", flush=True)
        return 128 + stopped.signum
    best = largest_runs(study_dir)
    if not best:
        print("no run finished; see python -m slurm.status " + str(study_dir), file=sys.stderr)
        return 1

    banner("3. evaluation of the largest model of each family")
    eval_dir = study_dir / "eval"
    evaluations = {}
    for family, run_dir in best.items():
        print(f"{family}: {run_dir.name}", flush=True)
        evaluations.update(evaluate_model(family, run_dir, eval_dir))
    pet_runs = [r for f, r in best.items() if f.startswith("pet-direct")]
    speed_metrics = speed_ratio(pet_runs[0], eval_dir) if pet_runs else {}
    write_json(
        eval_dir / "evaluation.json",
        {
            "models": {f: str(r) for f, r in best.items()},
            "metrics": evaluations,
            "speed": speed_metrics,
        },
        indent=1,
    )

    banner("4. scaling-law fits and report (python -m analysis scaling)")
    from analysis.scaling.command import main as scaling_main

    report_dir = study_dir / "report"
    scaling_main([str(study_dir), "--out", str(report_dir), "--bootstrap", str(args.bootstrap)])

    banner(f"done in {time.time() - t0:.0f} s")
    print(f"report:      {report_dir / 'report.md'}")
    print(f"evaluation:  {eval_dir}")
    print(f"study runs:  python -m slurm.status {study_dir}")
    for line in headline(report_dir, speed_metrics):
        print(f"  {line}")
    from slurm.demo_checks import checks, lines

    rows = checks(study_dir, report_dir)
    write_json(report_dir / "checks.json", rows, indent=1)
    print(f"targets of the demo ({report_dir / 'checks.json'}):")
    for line in lines(rows):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
