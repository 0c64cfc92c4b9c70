"""The main job: a small scaling study end to end, on data made here.

    python -m analysis.demo [--out runs/demo] [--experiment demo]

1. builds EMT data with the built-in generator (runs/demo/data),
2. trains the study's grid through the sweep command with cluster=local; each
   trained model then relaxes the built-in metal cells against EMT (the
   study's evaluation stage), so relaxation errors get scaling fits too,
3. fits the scaling laws and writes runs/demo/report/report.md with figures,
4. evaluates the largest model of each family (relaxation, Cu phonons with a
   band-structure plot, symmetry diagnostics; with and without rotational
   averaging) under runs/demo/eval/, and copies the metrics into each run's
   eval/ folder so the scaling analysis can read them,
5. prints where the report is and the headline numbers.

Every step keeps its outputs, so running it again resumes instead of restarting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def largest_runs(study_dir: Path) -> dict[str, Path]:
    """The finished run with the most parameters (then most data) per family."""
    best: dict[str, tuple] = {}
    for summary_path in sorted((study_dir / "runs").glob("*/summary.json")):
        s = json.loads(summary_path.read_text())
        if s.get("status") != "finished":
            continue
        key = (s["num_params"], s["data"]["num_train_structures"])
        if s["family"] not in best or key > best[s["family"]][0]:
            best[s["family"]] = (key, summary_path.parent)
    return {family: run for family, (_, run) in sorted(best.items())}


def _done(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def evaluate_model(family: str, run_dir: Path, eval_dir: Path) -> dict:
    """Relaxation, phonons and symmetry diagnostics of one trained model."""
    from analysis import phonons, relax, symmetry

    model = str(run_dir / "model.pt")
    modes = ["direct", "conservative"] if family.endswith(("direct", "both")) else [
        "conservative"]
    out: dict[str, dict] = {}
    for mode in modes:
        tag = f"{family}/{mode}"
        base = ["--model", model, "--forces", mode]
        # mace is exactly equivariant: averaging cannot change it. The averaged
        # variants skip the symmetry diagnostics, whose grid spread already
        # measures what averaging removes.
        variants = [("plain", [])]
        if family != "mace" and mode == modes[0]:
            variants.append(("rotavg", ["--rotational-average", "2"]))
        for name, extra in variants:
            target = eval_dir / family / mode / name
            if not _done(target / "relax" / "metrics.json"):
                relax.main([*base, *extra, "--structures",
                            "builtin:metals" if name == "plain" else "builtin:cu-fcc",
                            "--out", str(target / "relax"), "--max-steps", "150",
                            "--fmax", "0.02", "--reference-model", "emt"])
            if not _done(target / "phonons" / "metrics.json"):
                phonons.main([*base, *extra, "--structures", "builtin:cu-fcc", "--supercell",
                              "2", "2", "2", "--out", str(target / "phonons"),
                              "--relax-fmax", "1e-3", "--mesh", "8", "8", "8",
                              "--reference-model", "emt"])
            if name == "plain" and not _done(target / "symmetry" / "metrics.json"):
                symmetry.main([*base, *extra, "--structures", "builtin:cu-fcc",
                               "--out", str(target / "symmetry"), "--num-rotations", "6",
                               "--jacobian-atoms", "4", "--md-steps", "60",
                               "--grid-l-max", "2", "--min-atoms", "32"])
            metrics = {}
            for part in ("relax", "phonons", "symmetry"):
                if (target / part / "metrics.json").exists():
                    metrics.update(json.loads((target / part / "metrics.json").read_text()))
            out[f"{tag}/{name}"] = metrics
            # next to the run, so `analysis.scaling --metric ...` can fit them too
            (run_dir / "eval").mkdir(exist_ok=True)
            (run_dir / "eval" / f"{mode}-{name}.json").write_text(json.dumps(
                {f"{k}[{mode},{name}]" if name != "plain" or mode != modes[0] else k: v
                 for k, v in metrics.items()}, indent=1))
    return out


def speed_ratio(run_dir: Path, eval_dir: Path) -> dict:
    """Inference time per atom of the same pet weights, direct vs conservative."""
    from analysis import speed

    target = eval_dir / "speed"
    if not _done(target / "metrics.json"):
        speed.main(["--model", str(run_dir / "model.pt"), "--sizes", "64", "256",
                    "--repeats", "3", "--rot-l-max", "--out", str(target)])
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
                    ci = (f" [{p['ci'][0]:.3g}, {p['ci'][1]:.3g}]" if p.get("ci")
                          else " (no interval: too few runs)")
                    parts.append(f"{key} = {p['value']:.3g}{ci}")
            verdict = fit.get("quality", {}).get("verdict", "?")
            name = {"ND": "L(N, D)", "N": "L(N)", "D": "L(D)"}[law]
            lines.append(f"{family}: force-error exponents {', '.join(parts)} ({name}, "
                         f"fit {verdict})")
            break
    def per_atom(config: str) -> list[float]:
        return [v for k, v in speed_metrics.items()
                if k.split("/")[1:2] == [config] and k.endswith("/us_per_atom")]

    direct, conservative = per_atom("direct"), per_atom("conservative")
    if direct and conservative:
        ratio = (sum(conservative) / len(conservative)) / (sum(direct) / len(direct))
        lines.append(f"pet inference: direct forces {ratio:.2f}x faster than conservative "
                     f"(same weights, mean over sizes)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "demo"))
    p.add_argument("--experiment", default="demo")
    p.add_argument("--bootstrap", type=int, default=300)
    args = p.parse_args(argv)
    study_dir = Path(args.out).resolve()
    t0 = time.time()

    banner("1-2. data and training (python -m slurm.sweep experiment=demo cluster=local)")
    from slurm.sweep import sweep

    sweep([f"experiment={args.experiment}", "cluster=local", f"study_dir={study_dir}"])
    best = largest_runs(study_dir)
    if not best:
        print("no run finished; see python -m slurm.status " + str(study_dir), file=sys.stderr)
        return 1

    banner("4. evaluation of the largest model of each family")
    eval_dir = study_dir / "eval"
    evaluations = {}
    for family, run_dir in best.items():
        print(f"{family}: {run_dir.name}", flush=True)
        evaluations.update(evaluate_model(family, run_dir, eval_dir))
    pet_runs = [r for f, r in best.items() if f.startswith("pet-direct")]
    speed_metrics = speed_ratio(pet_runs[0], eval_dir) if pet_runs else {}
    (eval_dir / "evaluation.json").write_text(json.dumps(
        {"models": {f: str(r) for f, r in best.items()}, "metrics": evaluations,
         "speed": speed_metrics}, indent=1))

    banner("3. scaling-law fits and report (python -m analysis scaling)")
    from analysis.scaling.command import main as scaling_main

    report_dir = study_dir / "report"
    scaling_main([str(study_dir), "--out", str(report_dir), "--bootstrap",
                  str(args.bootstrap)])

    banner(f"done in {time.time() - t0:.0f} s")
    print(f"report:      {report_dir / 'report.md'}")
    print(f"evaluation:  {eval_dir}")
    print(f"study runs:  python -m slurm.status {study_dir}")
    for line in headline(report_dir, speed_metrics):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
