"""python -m slurm.status STUDY_DIR: every run's state, step and latest validation,
and how many of the study's evaluation stages it has done (failed ones named).

States: finished, failed (with the last error line), running / pending (from
SLURM when the run was submitted there), stopped (has progress but no job:
re-run the sweep to resume) and new.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from slurm.stages import parse_stages, stage_done, stage_failed
from slurm.study import run_state


def _last_metrics(run_dir: Path) -> tuple[int | None, dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None, {}
    step, val = None, {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        step = row.get("step", step)
        if "val/forces_mae" in row:
            val = row
    return step, val


def study_status(study_dir: str | Path) -> list[dict]:
    study_dir = Path(study_dir)
    study = (
        json.loads((study_dir / "study.json").read_text())
        if (study_dir / "study.json").exists()
        else {"runs": {}}
    )
    jobs = (
        json.loads((study_dir / "jobs.json").read_text())
        if (study_dir / "jobs.json").exists()
        else {}
    )
    names = list(study["runs"]) or sorted(p.name for p in (study_dir / "runs").glob("*"))
    stages = parse_stages(study.get("evaluate"))
    rows = []
    for name in names:
        run_dir = study_dir / "runs" / name
        state = run_state(run_dir)
        detail = ""
        if state == "failed":
            lines = (run_dir / "error.txt").read_text().strip().splitlines()
            detail = lines[-1] if lines else ""
        elif name in jobs and state != "finished":
            from slurm.slurmctl import job_state

            slurm_state = job_state(jobs[name])
            if slurm_state in ("PENDING", "REQUEUED", "CONFIGURING"):
                state = "pending"
            elif slurm_state in ("RUNNING", "COMPLETING"):
                state = "running"
            detail = f"job {jobs[name]} {slurm_state.lower()}"
        step, val = _last_metrics(run_dir)
        if state == "finished":
            summary = json.loads((run_dir / "summary.json").read_text())
            step = summary["steps"]
            val = summary
        done = [s.name for s in stages if stage_done(run_dir, s)]
        failed = [s.name for s in stages if stage_failed(run_dir, s)]
        if failed:
            detail = (detail + "; " if detail else "") + f"eval failed: {', '.join(failed)}"
        rows.append(
            {
                "name": name,
                "state": state,
                "step": step,
                "val/forces_mae": val.get("val/forces_mae"),
                "val/energy_per_atom_mae": val.get("val/energy_per_atom_mae"),
                "eval": f"{len(done)}/{len(stages)}" if stages else "-",
                "detail": detail,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    rows = study_status(args[0])
    width = max([len(r["name"]) for r in rows] + [4])
    print(
        f"{'run':<{width}}  {'state':<9} {'step':>6}  {'val F MAE':>10}  {'val E MAE':>10}"
        f"  {'eval':>5}"
    )
    for r in rows:
        f = f"{r['val/forces_mae']:.4g}" if r["val/forces_mae"] is not None else "-"
        e = (
            f"{r['val/energy_per_atom_mae']:.4g}"
            if r["val/energy_per_atom_mae"] is not None
            else "-"
        )
        step = r["step"] if r["step"] is not None else "-"
        print(
            f"{r['name']:<{width}}  {r['state']:<9} {step:>6}  {f:>10}  {e:>10}  {r['eval']:>5}"
            f"  {r['detail']}"
        )
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
