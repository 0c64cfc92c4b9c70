"""Peers, measured side by side: metatrain's PET and mace-torch's trainer against ours.

    python -m analysis.bench.peers --out runs/bench/peers.json \\
        [--structures 240] [--val-structures 64]
    python -m analysis.bench --only peers
    BENCH_SKIP_PEERS=1 make bench        # every other benchmark; peers.json says why

On the Mo-Nb-Ta-W set of ../shared/data (converted to shards once, under
runs/peers/), the same nested training subset (``data.fraction``: the
structures our loader keeps) and the whole validation split are exported to
extended XYZ. Each tool then trains from scratch, one after the other, on those
structures for one pass at 8 structures per batch, so every tool sees the same
structures the same number of times:

- ours: pet direct and pet conservative at metatrain PET's width and depth
  (within 10% of its parameters); mace at mace_run_train's irreps and depth;
- metatrain's PET (``mtt train``; d_pet 64, d_head 64, d_node 128,
  d_feedforward 128, 4 heads, 2 GNN x 2 attention layers, cutoff 5 A, lr 3e-4);
- mace-torch's ``mace_run_train`` (64x0e+64x1o, correlation 3, 2 interactions,
  r_max 5 A).

For each: training atoms/s (atoms of the pass over the wall time from the first
step to the end of the pass), start-up (process launch to the first training
step), validation energy/force/stress MAE after the pass, and inference
us/atom on one 128-atom cell, every one of them through the tool's own ASE
calculator (ours: train.calculator; metatrain: metatomic_ase; mace:
mace.calculators); inference is timed again after all training, in 3 rounds
that visit every model in turn, keeping each model's fastest. The peers run
in their own environment, built here on first use (runs/peers-venv: torch
2.13.0+cpu first, then metatrain 2026.4.* and mace-torch) and reused while its
stamp matches. ``uptime``'s load average is
recorded beside every run: on a shared machine absolute speeds are rough.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from analysis.bench.peer_setup import (  # noqa: F401 - also this module's API
    BATCH_STRUCTURES,
    CUTOFF_A,
    DEFAULT_STRUCTURES,
    DEFAULT_VAL_STRUCTURES,
    EVAL_SCRIPT,
    MACE_PEER_MODEL,
    MTT_LR,
    MTT_PET_MODEL,
    OUR_MACE_KNOBS,
    OUR_PET_KNOBS,
    PARAM_TOLERANCE,
    PEER_REQUIREMENTS,
    PEER_VENV,
    REPO,
    SKIP_ENV,
    SOURCE,
    TARGETS,
    THREADS,
    TORCH_INDEX,
    TORCH_PIN,
    WORK,
    _base_python,
    _target_section,
    export,
    labelled_atoms,
    mace_args,
    mtt_options,
    our_args,
    peer_env,
    prepare_data,
    skip_reason,
    training_subset,
)


def load_average() -> float:
    return os.getloadavg()[0]


def run_stamped(cmd: list[str], cwd: Path, log: Path) -> tuple[float, list[tuple[float, str]]]:
    """Runs cmd with unbuffered output; (launch time, [(arrival time, line)])."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1"}
    env.pop(SKIP_ENV, None)
    lines = []
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines.append((time.time(), f"# process CPU seconds: "
                  f"{cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime:.2f}"))
    log.write_text("\n".join(f"{t - t0:9.3f} {x}" for t, x in lines))
    if proc.returncode:
        tail = "\n".join(x for _, x in lines[-30:])
        raise RuntimeError(f"`{' '.join(cmd[:3])} ...` exited {proc.returncode} "
                           f"(full log {log}):\n{tail}")
    return t0, lines


def first_stamp(lines: list[tuple[float, str]], pattern: str, last: bool = False) -> float:
    hits = [t for t, x in lines if re.search(pattern, x)]
    if not hits:
        raise ValueError(f"no line matching {pattern!r} in the peer's output")
    return hits[-1] if last else hits[0]


def timing(t_launch: float, t_first: float, t_end: float, atoms: int,
           lines: list[tuple[float, str]]) -> dict:
    """Start-up (launch to first step) and training rate (first step to the end
    of the pass) from wall-clock stamps; the whole process's CPU seconds."""
    cpu = float(lines[-1][1].rsplit(" ", 1)[1])
    return {"startup_s": t_first - t_launch, "train_s": t_end - t_first,
            "atoms_per_s": atoms / (t_end - t_first), "process_cpu_s": cpu}


def run_ours(name: str, family: str, forces: str, data: Path, fraction: float,
             num_structures: int, max_atoms: int, work: Path) -> dict:
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    load = load_average()
    cmd = [sys.executable, "-m", "train",
           *our_args(family, forces, data, run_dir, fraction, num_structures, max_atoms)]
    t0, lines = run_stamped(cmd, REPO, work / f"{name}.log")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "atoms_per_s" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    first = steps[0]["time"] - steps[0]["step_time_s"]
    res = {"tool": "ours", "family": family, "forces": forces, "load_average": load,
           "num_params": summary["num_params"], "structures_seen": summary["structures_seen"],
           "atoms_seen": summary["atoms_seen"], "steps": summary["steps"],
           **timing(t0, first, steps[-1]["time"], summary["atoms_seen"], lines),
           "startup_phases_s": summary.get("startup_s", {}),
           "startup_line": next((x for _, x in lines if x.startswith("start-up:")), None),
           "model": str(run_dir / "model.pt")}
    if res["atoms_seen"] != summary["data"]["num_train_atoms"]:
        raise RuntimeError(f"{name}: saw {res['atoms_seen']} atoms, not the subset's "
                           f"{summary['data']['num_train_atoms']} once")
    return res


def run_mtt(py: Path, train_xyz: Path, val_xyz: Path, atoms: int, work: Path) -> dict:
    import yaml

    wd = work / "metatrain-pet"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    (wd / "options.yaml").write_text(yaml.safe_dump(mtt_options(str(train_xyz), str(val_xyz))))
    load = load_average()
    t0, lines = run_stamped([str(py.with_name("mtt")), "train", "options.yaml", "-o", "model.pt"],
                            wd, work / "metatrain-pet.log")
    params = next((int(m.group(1)) for _, x in lines
                   if (m := re.search(r"actual number: (\d+)", x))), None)
    return {"tool": "metatrain", "family": "pet", "forces": "conservative", "load_average": load,
            "num_params": params, "atoms_seen": atoms,
            **timing(t0, first_stamp(lines, r"Starting training"),
                     first_stamp(lines, r"Epoch:\s+\d+ \|", last=True), atoms, lines),
            "model": str(wd / "model.pt")}


def run_mace(py: Path, train_xyz: Path, val_xyz: Path, atoms: int, work: Path,
             weights: tuple[float, float, float] | None = None) -> dict:
    wd = work / "mace-run-train"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    load = load_average()
    t0, lines = run_stamped([str(py.with_name("mace_run_train")),
                             *mace_args(str(train_xyz), str(val_xyz), weights=weights)],
                            wd, work / "mace-run-train.log")
    # Its first step follows the validation it runs before training ("Initial:").
    return {"tool": "mace-torch", "family": "mace", "forces": "conservative",
            "load_average": load, "atoms_seen": atoms,
            "loss_weights": "defaults (energy 1, forces 100, stress 1)" if weights is None
            else dict(zip(("energy", "forces", "stress"), weights)),
            **timing(t0, first_stamp(lines, r"Initial: "),
                     first_stamp(lines, r"Epoch 0: "), atoms, lines),
            "model": str(wd / "peer.model")}


def evaluate_peer(py: Path, tool: str, model: str, val_xyz: Path | None, cell_xyz: Path,
                  work: Path) -> dict:
    out = work / f"eval-{tool}.json"
    cmd = [str(py), str(EVAL_SCRIPT), "--tool", tool, "--model", model,
           *(["--val", str(val_xyz)] if val_xyz else []),
           "--cell", str(cell_xyz), "--threads", str(THREADS), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    if done.returncode:
        raise RuntimeError(f"evaluating {model} with {tool}: {done.stderr[-3000:]}")
    return json.loads(out.read_text())


def evaluate_ours(model: str, forces: str, val_xyz: Path | None, cell_xyz: Path) -> dict:
    import torch
    from ase.io import read

    from analysis.bench.peer_eval import errors, inference_us_per_atom
    from train.calculator import load_calculator

    torch.set_num_threads(THREADS)
    calc = load_calculator(model, forces=forces)
    return {"val": errors(calc, read(str(val_xyz), ":")) if val_xyz else None,
            "inference": inference_us_per_atom(calc, read(str(cell_xyz)))}


def inference_rounds(runs: dict, py: Path, cell: Path, work: Path, rounds: int = 3) -> None:
    """Times every trained model on the cell again, all of them in turn, ``rounds``
    times, and keeps each one's fastest round: a burst of load on the shared
    machine then slows one round, not one tool. Replaces ``inference``; the
    first measurement (right after training) stays as ``inference_first``."""
    timings: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, r in runs.items():
            if r["tool"] == "ours":
                t = evaluate_ours(r["model"], r["forces"], None, cell)["inference"]
            else:
                tool = "metatomic" if r["tool"] == "metatrain" else "mace"
                t = evaluate_peer(py, tool, r["model"], None, cell, work)["inference"]
            timings[name].append({**t, "load_average": load_average()})
    for name, r in runs.items():
        r.setdefault("inference_first", r.get("inference"))
        best = min(timings[name], key=lambda t: t["us_per_atom"])
        r["inference"] = {**best, "rounds": timings[name]}


def cell_file(path: Path) -> Path:
    """The 128-atom Mo-Nb-Ta-W cell of analysis.bench.models, as extended XYZ."""
    from ase import Atoms
    from ase.io import write

    from analysis.bench.models import high_entropy_cell

    s = high_entropy_cell()
    write(str(path), Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc),
          format="extxyz")
    return path


# ------------------------------------------------------------------- verdicts

def verdicts(runs: dict) -> dict:
    """Ratios against the issue's targets (a ratio > 1 means ours is faster)."""
    out: dict = {"ratios": {}, "targets": {}}
    r, t = out["ratios"], out["targets"]
    mtt, mace = runs.get("metatrain-pet"), runs.get("mace-run-train")
    for name in ("pet-direct", "pet-conservative"):
        ours = runs.get(name)
        if not (ours and mtt):
            continue
        r[f"{name}_train_speedup"] = ours["atoms_per_s"] / mtt["atoms_per_s"]
        r[f"{name}_inference_speedup"] = (mtt["inference"]["us_per_atom"]
                                          / ours["inference"]["us_per_atom"])
        r[f"{name}_params_ratio"] = ours["num_params"] / mtt["num_params"]
        lower = all(ours["val"][k] <= mtt["val"][k] for k in
                    ("energy_mae_mev_per_atom", "forces_mae_mev_per_A"))
        t[f"{name} trains >= 2x metatrain PET"] = (
            r[f"{name}_train_speedup"] >= TARGETS["pet_train_speedup"])
        t[f"{name} energy and force errors <= metatrain PET's"] = lower
    if "pet-direct_inference_speedup" in r:
        t["pet direct infers >= 2x metatrain PET"] = (
            r["pet-direct_inference_speedup"] >= TARGETS["pet_direct_inference_speedup"])
    if runs.get("mace") and mace:
        r["mace_train_speedup"] = runs["mace"]["atoms_per_s"] / mace["atoms_per_s"]
        r["mace_params_ratio"] = runs["mace"]["num_params"] / mace["num_params"]
        if runs["mace"].get("val") and mace.get("val"):
            ours, theirs = runs["mace"]["val"], mace["val"]
            for k, key in (("energy", "energy_mae_mev_per_atom"),
                           ("forces", "forces_mae_mev_per_A")):
                r[f"mace_{k}_mae_ratio"] = ours[key] / theirs[key]
            t["our mace energy and force MAE within 20% of mace_run_train's or lower"] = all(
                r[f"mace_{k}_mae_ratio"] <= 1.2 for k in ("energy", "forces"))
        t["our mace loop >= mace_run_train"] = (
            r["mace_train_speedup"] >= TARGETS["mace_train_speedup"])
    for name in ("pet-direct", "pet-conservative", "mace"):
        if runs.get(name):
            t[f"{name} start-up <= 10 s"] = runs[name]["startup_s"] <= TARGETS["startup_s"]
    for key, ratio in r.items():
        if key.endswith("params_ratio") and abs(ratio - 1) > PARAM_TOLERANCE:
            t[f"{key[:-13]} parameters within 10% of the peer"] = False
    return out


# ----------------------------------------------------------------------- main

def run(num_structures: int = DEFAULT_STRUCTURES, work: Path = WORK,
        only: tuple[str, ...] | None = None,
        num_val: int | None = DEFAULT_VAL_STRUCTURES,
        mace_weights: tuple[float, float, float] | None = None) -> dict:
    reason = skip_reason()
    if reason:
        return {"skipped": reason}
    work.mkdir(parents=True, exist_ok=True)
    env = peer_env()
    py = Path(env["python"])
    data = prepare_data(SOURCE, work)
    fraction, chosen = training_subset(data, num_structures)
    from data_pipelines.dataset import iter_split

    seen = {int(z) for s in chosen for z in s.numbers}
    if not seen >= set(OUR_MACE_KNOBS["elements"]):
        # the peers model only the elements they trained on, and the timed cell has all four
        raise ValueError(f"--structures {num_structures}: the subset holds elements "
                         f"{sorted(seen)}, not all of {OUR_MACE_KNOBS['elements']}; take more")
    train_xyz, val_xyz = work / "train.xyz", work / "val.xyz"
    atoms = export(chosen, train_xyz)
    val = list(iter_split(str(data), "val"))
    val_atoms = export(val[:num_val], val_xyz)
    # The peers' own validation during training: a few structures, so it costs
    # about as little as ours (which validates only after the pass).
    tiny_val = work / "val-8.xyz"
    export(val[:BATCH_STRUCTURES], tiny_val)
    cell = cell_file(work / "cell-128.xyz")
    res: dict = {"num_structures": len(chosen), "num_atoms": atoms, "fraction": fraction,
                 "num_val_structures": len(val[:num_val]), "num_val_atoms": val_atoms,
                 "batch_structures": BATCH_STRUCTURES, "threads": THREADS,
                 "peer_versions": env.get("versions"), "runs": {}}
    max_atoms = BATCH_STRUCTURES * max(s.num_atoms for s in chosen)
    n = len(chosen)
    # Ours and the peers alternate, so a change in the machine's load hits both.
    plan = [
        ("pet-direct", lambda: run_ours("pet-direct", "pet", "direct", data, fraction, n,
                                        max_atoms, work)),
        ("metatrain-pet", lambda: run_mtt(py, train_xyz, tiny_val, atoms, work)),
        ("pet-conservative", lambda: run_ours("pet-conservative", "pet", "conservative", data,
                                              fraction, n, max_atoms, work)),
        ("mace-run-train", lambda: run_mace(py, train_xyz, tiny_val, atoms, work,
                                                    weights=mace_weights)),
        ("mace", lambda: run_ours("mace", "mace", "conservative", data, fraction, n,
                                  max_atoms, work)),
    ]
    for name, fn in plan:
        if only and name not in only:
            continue
        t = time.time()
        r = fn()
        if r["tool"] == "ours":
            r.update(evaluate_ours(r["model"], r["forces"], val_xyz, cell))
        else:
            tool = "metatomic" if r["tool"] == "metatrain" else "mace"
            ev = evaluate_peer(py, tool, r["model"], val_xyz, cell, work)
            r["num_params"] = r.get("num_params") or ev["num_params"]
            r.update(val=ev["val"], inference=ev["inference"])
        r["bench_seconds"] = time.time() - t
        res["runs"][name] = r
        print(f"{name:18s} {r['num_params']:>8} params  {r['atoms_per_s']:7.1f} atoms/s  "
              f"start-up {r['startup_s']:5.1f} s  E {r['val']['energy_mae_mev_per_atom']:6.1f} "
              f"meV/atom  F {r['val']['forces_mae_mev_per_A']:6.1f} meV/A  "
              f"{r['inference']['us_per_atom']:6.0f} us/atom  (load {r['load_average']:.2f})",
              flush=True)
    inference_rounds(res["runs"], py, cell, work)
    res.update(verdicts(res["runs"]))
    return res


def rerun_inference(path: Path, work: Path = WORK) -> dict:
    """The inference rounds again on the models of an earlier run's JSON."""
    res = json.loads(path.read_text())
    py = Path(peer_env()["python"])
    inference_rounds(res["runs"], py, work / "cell-128.xyz", work)
    res.update(verdicts(res["runs"]))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/peers.json")
    p.add_argument("--structures", type=int, default=DEFAULT_STRUCTURES,
                   help="training structures each tool sees once")
    p.add_argument("--val-structures", type=int, default=DEFAULT_VAL_STRUCTURES,
                   help="validation structures (file order) behind the error columns; 0: all")
    p.add_argument("--only", default=None, help="comma-separated run names")
    p.add_argument("--work", default=str(WORK),
                   help="folder for the exported data, the runs and their logs (a longer "
                        "comparison beside the default one: a folder of its own)")
    p.add_argument("--mace-weights", default=None, metavar="E,F,S",
                   help="mace_run_train's energy, force and stress loss weights (default: "
                        "its own, 1,100,1; our mace trains with 10,1,1)")
    p.add_argument("--inference-only", action="store_true",
                   help="redo only the inference rounds on the models of --out's runs")
    args = p.parse_args(argv)
    if args.inference_only:
        res = rerun_inference(Path(args.out))
    else:
        res = run(args.structures, work=Path(args.work).resolve(),
                  only=tuple(args.only.split(",")) if args.only else None,
                  num_val=args.val_structures or None,
                  mace_weights=(tuple(float(w) for w in args.mace_weights.split(","))
                                if args.mace_weights else None))
        if args.only and Path(args.out).exists() and "runs" in res:
            # redo some runs: keep the others of the earlier file beside them
            old = json.loads(Path(args.out).read_text())
            res["runs"] = {**old.get("runs", {}), **res["runs"]}
            res.update(verdicts(res["runs"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    if "skipped" in res:
        print(f"peers benchmark {res['skipped']}")
        return 0
    for k, v in res["targets"].items():
        print(f"{'PASS' if v else 'MISS'}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
