"""Launch a whole study: python -m slurm.sweep study=<study> cluster=<preset>
study_dir=DIR [study.* overrides] [train overrides for every run]

The grid is expanded into named runs under STUDY_DIR/runs/<name>/. With
`cluster=local` the runs train in this process, one after another, each with a
progress bar and a one-line result; with a SLURM preset they are submitted as
one job array through submitit. Re-running the same command skips finished
runs, resumes stopped ones and submits only what is missing.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from data_pipelines.atomic import write_text
from slurm.stages import missing_stages
from slurm.study import RunSpec, StudyConfig, check_study_name, expand, run_state
from slurm.study_data import prepare_data

REPO = Path(__file__).resolve().parents[1]
SWEEP_KEYS = ("study", "cluster", "study_dir")


@dataclass
class SweepConfig:
    study: StudyConfig = field(default_factory=StudyConfig)
    cluster: dict[str, Any] = field(default_factory=dict)
    study_dir: str | None = None


def compose_sweep(args: list[str]) -> tuple[SweepConfig, list[str]]:
    """Splits args into sweep settings and per-run train overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    sweep_args, train_args = [], []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("study.axes.") and not arg.startswith(("+", "~")):
            arg = "++" + arg  # an axis may be new to the study: add or replace it
        ours = key in SWEEP_KEYS or key.startswith(("study.", "cluster."))
        (sweep_args if ours else train_args).append(arg)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from train.config import ConfigError

    ConfigStore.instance().store(name="sweep_schema", node=SweepConfig)
    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose(config_name="sweep", overrides=sweep_args)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err)) from None
    merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), cfg)
    return OmegaConf.to_object(merged), train_args


def _one_line(spec: RunSpec, result: dict, seconds: float) -> str:
    status = result.get("status", "?")
    if status == "finished":
        metrics = ", ".join(
            f"{k.split('/')[-1]}={result[k]:.4g} {unit}"
            for k, unit in (("val/energy_per_atom_mae", "eV/atom"), ("val/forces_mae", "eV/A"))
            if k in result
        )
        line = (
            f"{spec.name}: finished in {seconds:.0f}s, {result.get('num_params')} params, "
            f"{result.get('atoms_seen')} atoms seen, {metrics}"
        )
        stages = result.get("eval") or {}
        if stages:
            failed = sorted(k for k, v in stages.items() if v.get("status") != "finished")
            line += f"; eval {len(stages) - len(failed)} done" + (
                f", failed: {', '.join(failed)}" if failed else ""
            )
        return line
    return f"{spec.name}: {status} {result.get('error', '')}".rstrip()


# Signals that stop an in-process sweep: the run in progress checkpoints and
# ends (its training loop catches them too), then no further run starts.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


class SweepStopped(RuntimeError):
    """A signal stopped an in-process sweep; the next sweep command resumes it."""

    def __init__(self, signum: int, after: str, results: dict[str, dict]):
        self.signum, self.after, self.results = signum, after, results
        super().__init__(
            f"stopped by {signal.Signals(signum).name} during {after}; "
            "re-run the same command to resume"
        )


def branch_args(spec: RunSpec, extra: list[str]) -> list[dict]:
    """A WSD-ladder run's branches as plain data (jobs pickle them)."""
    return [
        {
            "overrides": [*b.overrides, *extra],
            "run_dir": str(b.run_dir),
            "stages": b.stages,
            "start_step": b.start_step,
        }
        for b in spec.branches
    ]


def run_local(runs: list[RunSpec]) -> dict[str, dict]:
    """Trains and evaluates each run in this process, one after another.

    Raises:
        SweepStopped: a stop signal arrived; the run it hit saved a checkpoint.
    """
    from slurm.task import train_and_evaluate

    asked: list[int] = []
    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name)
        previous[sig] = signal.signal(sig, lambda signum, frame: asked.append(signum))
    stop_override = f"trainer.stop_signals=[{','.join(STOP_SIGNALS)}]"
    results = {}
    try:
        for k, spec in enumerate(runs, 1):
            print(f"[{k}/{len(runs)}] {spec.name}", flush=True)
            t0 = time.time()
            result = train_and_evaluate(
                [*spec.overrides, stop_override],
                spec.run_dir,
                spec.stages,
                progress=True,
                branches=branch_args(spec, [stop_override]),
            )
            results[spec.name] = result
            print("  " + _one_line(spec, result, time.time() - t0), flush=True)
            for branch in spec.branches:
                done = (result.get("branches") or {}).get(branch.name)
                if done is not None:
                    results[branch.name] = done
                    print("  " + _one_line(branch, done, time.time() - t0), flush=True)
            signum = result.get("signal") if result.get("status") == "preempted" else None
            if signum is not None or asked:
                raise SweepStopped(signum or asked[0], spec.name, results)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return results


def submit_slurm(runs: list[RunSpec], cluster_cfg, study_dir: Path, name: str) -> dict:
    from slurm.cluster import make_executor
    from slurm.job import TrainJob

    executor = make_executor(cluster_cfg, study_dir / "submitit" / "%j", job_name=name)
    with executor.batch():
        jobs = [
            executor.submit(
                TrainJob(), spec.overrides, str(spec.run_dir), spec.stages, branch_args(spec, [])
            )
            for spec in runs
        ]
    ids = {spec.name: job.job_id for spec, job in zip(runs, jobs)}
    path = study_dir / "jobs.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update(ids)
    write_text(path, json.dumps(known, indent=1))
    for spec in runs:
        print(f"submitted {spec.name} as job {ids[spec.name]}")
    return ids


def _needs_work(spec: RunSpec) -> list[str]:
    """What is left of a run (and its branches): training or evaluation stages."""
    left = []
    for run in spec.all_runs():
        if run_state(run.run_dir) != "finished":
            left.append(f"{run.name} to train")
        else:
            left += [f"{run.name} eval {s.name}" for s in missing_stages(run.run_dir, run.stages)]
    return left


def sweep(args: list[str], _pass: int = 1) -> dict:
    from slurm.cluster import ClusterConfig, _to_plain
    from slurm.slurmctl import job_state

    cfg, train_args = compose_sweep(args)
    study = cfg.study
    check_study_name(study.name)
    study_dir = Path(cfg.study_dir or REPO / "runs" / study.name).resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    cluster_cfg = ClusterConfig.from_mapping(_to_plain(cfg.cluster))
    data_root = prepare_data(study, study_dir)
    runs = expand(study, study_dir, data_root, train_args)
    every = [r for spec in runs for r in spec.all_runs()]
    write_text(
        study_dir / "study.json",
        json.dumps(
            {
                "name": study.name,
                "axes": study.axes,
                "grids": [dict(g) for g in study.grids],
                "budget": OmegaConf.to_container(OmegaConf.structured(study.budget)),
                "tune": dict(study.tune),
                "tune_at": dict(study.tune_at),
                "data_root": data_root,
                "evaluate": [vars(s) for s in (runs[0].stages if runs else [])],
                "runs": {r.name: {"axes": r.axes, "overrides": r.overrides} for r in every},
            },
            indent=1,
            default=str,
        ),
    )
    jobs = (
        json.loads((study_dir / "jobs.json").read_text())
        if (study_dir / "jobs.json").exists()
        else {}
    )
    todo, waiting = [], []
    for spec in runs:
        left = _needs_work(spec)
        if not left:
            print(f"{spec.name}: finished, skipped")
            continue
        if spec.waiting:
            print(f"{spec.name}: {spec.waiting}")
            waiting.append(spec)
            continue
        if run_state(spec.run_dir) == "finished":
            stages = [s.name for s in missing_stages(spec.run_dir, spec.stages)]
            rest = [x for x in left if not x.startswith(f"{spec.name} eval ")]
            print(
                f"{spec.name}: finished"
                + (f"; evaluation stages to run: {', '.join(stages)}" if stages else "")
                + (f"; still to do: {', '.join(rest)}" if rest else "")
            )
        if (
            cluster_cfg.kind == "slurm"
            and spec.name in jobs
            and job_state(jobs[spec.name]) in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING")
        ):
            print(f"{spec.name}: job {jobs[spec.name]} still queued or running, skipped")
            continue
        todo.append(spec)
    print(
        f"study {study.name}: {len(every)} runs, {len(todo)} to run"
        + (f", {len(waiting)} waiting for tuning runs" if waiting else "")
        + f", in {study_dir}",
        flush=True,
    )
    if not todo:
        return {}
    next_steps = (
        f"next: python -m slurm.status {study_dir}   (what ran, what failed)\n"
        f"      python -m analysis scaling {study_dir} --out {study_dir}/report   (the laws)"
    )
    if cluster_cfg.kind != "local":
        if waiting:
            print("re-run this command once the tuning runs finish, to submit the rest")
        submitted = submit_slurm(todo, cluster_cfg, study_dir, study.name)
        print(next_steps, flush=True)
        return submitted
    results = run_local(todo)
    if waiting and _pass == 1:  # the tuned values are known now: run the rest
        results.update(sweep(args, _pass=2))
    elif _pass == 1 or not waiting:
        print(next_steps, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from train.config import ConfigError

    try:
        results = sweep(args)
    except SweepStopped as stopped:
        print(f"sweep {stopped}", flush=True)
        return 128 + stopped.signum
    except (ConfigError, ValueError) as err:
        print(f"sweep error: {err}", file=sys.stderr)
        return 2
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("status") == "failed"]
    failed += [  # a failed branch of a WSD ladder
        k
        for k, v in results.items()
        if isinstance(v, dict)
        and any(b.get("status") == "failed" for b in (v.get("branches") or {}).values())
    ]
    failed += [  # a failed evaluation stage also fails the command (its error file says why)
        k
        for k, v in results.items()
        if isinstance(v, dict)
        and any(s.get("status") != "finished" for s in (v.get("eval") or {}).values())
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
