"""python -m slurm.status STUDY_DIR [--running-within SECONDS]: every run's state,
step and latest validation errors (with units), and how many of the study's
evaluation stages it has done (failed ones named).

States:
  finished  summary.json says so
  failed    error.txt holds the error (its last line is shown)
  running   SLURM says RUNNING, or the run wrote to metrics.jsonl or a checkpoint
            within the last --running-within seconds (default 120; runs of an
            in-process sweep have no SLURM job, their log is the heartbeat)
  queued    SLURM says PENDING (also after a requeue)
  stopped   has progress, but no job and no recent log: re-run the sweep to resume
  new       not started
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from slurm.stages import parse_stages, stage_done, stage_failed
from slurm.study import run_state

# A training loop writes a metrics row every few steps; quiet for longer than
# this, and without a SLURM job that says otherwise, the run is not running.
RUNNING_WITHIN_S = 120.0
_QUEUED = ("PENDING", "REQUEUED", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED")
_RUNNING = ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")
UNITS = {"val/forces_mae": "eV/A", "val/energy_per_atom_mae": "eV/atom"}


def _last_metrics(run_dir: Path) -> tuple[int | None, dict, float | None]:
    """The last step, the last validation row and the last row's unix time."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None, {}, None
    step, val, last_time = None, {}, None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        step = row.get("step", step)
        if isinstance(row.get("time"), int | float):
            last_time = float(row["time"])
        if "val/forces_mae" in row:
            val = row
    return step, val, last_time


def last_activity(run_dir: Path, last_row_time: float | None) -> float | None:
    """Unix time the run last showed life: its last metrics row, or the newest
    write to metrics.jsonl or checkpoints/ (a checkpoint may take a while)."""
    times = [last_row_time] if last_row_time is not None else []
    for path in (run_dir / "metrics.jsonl", run_dir / "checkpoints"):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        times.extend(p.stat().st_mtime for p in checkpoints.iterdir())
    return max(times) if times else None


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _slurm_state(job_id: str) -> str:
    from slurm.slurmctl import job_state

    try:
        return job_state(job_id)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"  # no squeue here (a copied study folder) or a controller that hangs


def study_status(
    study_dir: str | Path, running_within_s: float = RUNNING_WITHIN_S, now: float | None = None
) -> list[dict]:
    """One row per run: name, state (see the module docstring), step, errors, eval, detail."""
    study_dir = Path(study_dir)
    now = time.time() if now is None else now
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
        step, val, last_time = _last_metrics(run_dir)
        details = []
        if state == "failed":
            lines = (run_dir / "error.txt").read_text().strip().splitlines()
            details.append(lines[-1] if lines else "")
        elif state != "finished":
            slurm_state = _slurm_state(jobs[name]) if name in jobs else None
            if slurm_state in _QUEUED:
                state = "queued"
            elif slurm_state in _RUNNING:
                state = "running"
            if slurm_state is not None:
                details.append(f"job {jobs[name]} {slurm_state.lower()}")
            active = last_activity(run_dir, last_time)
            if active is not None:
                if state in ("stopped", "new") and now - active <= running_within_s:
                    state = "running"
                details.append(f"last log {_ago(max(now - active, 0.0))}")
            if state == "stopped":
                details.append("re-run the sweep to resume")
        if state == "finished":
            summary = json.loads((run_dir / "summary.json").read_text())
            step = summary["steps"]
            val = summary
        done = [s.name for s in stages if stage_done(run_dir, s)]
        failed = [s.name for s in stages if stage_failed(run_dir, s)]
        if failed:
            details.append(f"eval failed: {', '.join(failed)}")
        rows.append(
            {
                "name": name,
                "state": state,
                "step": step,
                "val/forces_mae": val.get("val/forces_mae"),
                "val/energy_per_atom_mae": val.get("val/energy_per_atom_mae"),
                "eval": f"{len(done)}/{len(stages)}" if stages else "-",
                "detail": "; ".join(d for d in details if d),
            }
        )
    return rows


def format_status(rows: list[dict]) -> str:
    """The table `main` prints: units in the headers, a count of runs per state."""
    f_head = f"val F MAE ({UNITS['val/forces_mae']})"
    e_head = f"val E MAE ({UNITS['val/energy_per_atom_mae']})"
    width = max([len(r["name"]) for r in rows] + [4])
    lines = [
        f"{'run':<{width}}  {'state':<9} {'step':>6}  {f_head:>16}  {e_head:>19}  {'eval':>5}"
    ]
    for r in rows:
        f = f"{r['val/forces_mae']:.4g}" if r["val/forces_mae"] is not None else "-"
        e = r["val/energy_per_atom_mae"]
        e = f"{e:.4g}" if e is not None else "-"
        step = r["step"] if r["step"] is not None else "-"
        lines.append(
            f"{r['name']:<{width}}  {r['state']:<9} {step:>6}  {f:>16}  {e:>19}  {r['eval']:>5}"
            f"  {r['detail']}".rstrip()
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m slurm.status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study_dir", help="the study directory a sweep wrote")
    p.add_argument(
        "--running-within",
        type=float,
        default=RUNNING_WITHIN_S,
        metavar="SECONDS",
        help="a run that logged within this many seconds counts as running (default 120)",
    )
    args = p.parse_args(argv)
    folder = Path(args.study_dir)
    if not (folder / "study.json").exists() and not (folder / "runs").is_dir():
        p.error(f"{folder}: not a study directory (no study.json, no runs/)")
    print(format_status(study_status(args.study_dir, args.running_within)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
