"""The peers benchmark's set-up: where things live, the matched models and
hyper-parameters, the peers' environment, the shared data subset exported to
extended XYZ, and each tool's command line (analysis.bench.peers runs them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "data" / "crystals" / "maml-MoNbTaW"
PEER_VENV = REPO / "runs" / "peers-venv"
WORK = REPO / "runs" / "peers"
EVAL_SCRIPT = Path(__file__).with_name("peer_eval.py")
SKIP_ENV = "BENCH_SKIP_PEERS"

# The peers' environment: torch alone first (its wheel decides CPU or CUDA; the
# +cpu local version exists only on PyTorch's CPU index and in local wheel
# stores), then the peers, which keep that torch (pinned again).
TORCH_PIN = "torch==2.13.0+cpu"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
PEER_REQUIREMENTS = ("torch==2.13.0", "metatrain==2026.4.*", "mace-torch")

BATCH_STRUCTURES = 8
CUTOFF_A = 5.0
THREADS = 2
DEFAULT_STRUCTURES = 240  # 5% of the 4 735 training structures (30 steps); ~25 min, 2 cores
DEFAULT_VAL_STRUCTURES = 64  # the first 64 of the 290 validation structures, in file order

# metatrain PET (about 731k parameters on four elements).
MTT_PET_MODEL = {"cutoff": CUTOFF_A, "d_pet": 64, "d_head": 64, "d_node": 128,
                 "d_feedforward": 128, "num_heads": 4, "num_gnn_layers": 2,
                 "num_attention_layers": 2}
MTT_LR = 3e-4
# Our pet at the same widths and depth (716 744 parameters: within 10%).
OUR_PET_KNOBS = {"d_edge": 64, "d_head": 64, "d_node": 128, "d_ff": 128, "d_node_ff": 256,
                 "num_heads": 4, "num_gnn_layers": 2, "num_attention_layers": 2,
                 "cutoff": CUTOFF_A, "adaptive_cutoff": False}
# mace_run_train's model; the rest is its defaults (max_ell 3, radial MLP
# [64, 64, 64], 8 Bessel functions, 16x0e readout MLP).
MACE_PEER_MODEL = {"hidden_irreps": "64x0e+64x1o", "correlation": 3, "num_interactions": 2,
                   "r_max": CUTOFF_A}
# Our mace with the same irreps, depth, radial basis and elements.
# mace_run_train builds its first layer with the plain (non-residual) block
# whatever --interaction_first says; so does ours here: 269 136 parameters each.
OUR_MACE_KNOBS = {"channels": 64, "max_L": 1, "correlation": 3, "num_interactions": 2,
                  "max_ell": 3, "radial_mlp": [64, 64, 64], "num_bessel": 8, "readout_mlp": 16,
                  "cutoff": CUTOFF_A, "elements": [41, 42, 73, 74],
                  "first_interaction": "RealAgnosticInteractionBlock"}
PARAM_TOLERANCE = 0.10
TARGETS = {"pet_train_speedup": 2.0, "pet_direct_inference_speedup": 2.0,
           "mace_train_speedup": 1.0, "startup_s": 10.0}


def skip_reason(source: Path = SOURCE, environ: dict | None = None) -> str | None:
    """Why the benchmark cannot or should not run here, or None."""
    environ = os.environ if environ is None else environ
    if environ.get(SKIP_ENV, "") not in ("", "0"):
        return f"skipped: {SKIP_ENV}={environ[SKIP_ENV]} is set"
    if not source.is_dir():
        return (f"skipped: the Mo-Nb-Ta-W set is not at {source} "
                "(../shared/data is absent on this machine)")
    if not sorted(source.glob("*.json.gz")):
        return f"skipped: no *.json.gz files in {source}"
    return None


# ---------------------------------------------------------------- environment

def peer_env(venv: Path = PEER_VENV, log=print) -> dict:
    """The peers' interpreter and package versions; builds the venv when its
    stamp is missing or names other requirements."""
    stamp = venv / ".peers-stamp.json"
    wanted = [TORCH_PIN, *PEER_REQUIREMENTS]
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("requirements") == wanted and (venv / "bin" / "python").exists():
            return info
    log(f"building the peers' environment at {venv} (minutes; once)")
    if venv.exists():
        shutil.rmtree(venv)
    py = str(venv / "bin" / "python")
    index = os.environ.get("TORCH_INDEX", TORCH_INDEX)
    steps = [
        [_base_python(), "-m", "venv", str(venv)],
        [py, "-m", "pip", "install", "--quiet", TORCH_PIN,
         *(["--extra-index-url", index] if index else [])],
        [py, "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"building {venv}: `{' '.join(cmd)}` failed:\n"
                               f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    versions = subprocess.run(
        [py, "-c", "import torch, metatrain, mace, metatomic.torch as m, json; print(json.dumps("
         "{'torch': torch.__version__, 'metatrain': metatrain.__version__,"
         " 'mace-torch': mace.__version__, 'metatomic-torch': m.__version__}))"],
        capture_output=True, text=True, check=True).stdout
    info = {"requirements": wanted, "python": py, "versions": json.loads(versions)}
    stamp.write_text(json.dumps(info, indent=1))
    return info


def _base_python() -> str:
    """The interpreter our venv was made from (a venv of a venv would share nothing)."""
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"


# ----------------------------------------------------------------------- data

def prepare_data(source: Path, work: Path) -> Path:
    """Shards of the source set under ``work`` (converted once, then reused)."""
    data = work / "data"
    if not (data / "manifest.json").exists():
        files = sorted(str(p) for p in source.glob("*.json.gz"))
        subprocess.run([sys.executable, "-m", "data_pipelines.convert", *files, "--out",
                        str(data), "--level-of-theory", "PBE (VASP)"],
                       cwd=REPO, check=True, capture_output=True)
    return data


def labelled_atoms(s):
    """An ASE Atoms with the labels under the REF_* keys both peers read
    (plain "energy"/"forces" would collide with ASE's calculator results)."""
    from ase import Atoms

    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    missing = [k for k in ("energy", "forces") if getattr(s, k) is None]
    if missing:
        raise ValueError(f"structure {s.source_id}: no {' or '.join(missing)} label")
    atoms.info["REF_energy"] = s.energy
    atoms.arrays["REF_forces"] = s.forces
    if s.stress is not None:
        atoms.info["REF_stress"] = s.stress.reshape(9)  # row by row; both peers read 9 numbers
    atoms.info["source_id"] = s.source_id
    return atoms


def training_subset(data, num_structures: int) -> tuple[float, list]:
    """The ``data.fraction`` holding ``num_structures`` training structures, and
    those structures, chosen exactly as our loader chooses them."""
    from data_pipelines.dataset import open_dataset
    from data_pipelines.subsets import subset_threshold, subset_u

    ds = open_dataset(str(data))
    total = ds.split("train")["num_structures"]
    if not 0 < num_structures <= total:
        raise ValueError(f"--structures {num_structures}: the training split of {data} "
                         f"holds {total}")
    fraction = num_structures / total
    threshold = subset_threshold(ds, "train", fraction)["threshold"]
    chosen = [s for s in ds.iter_split("train") if subset_u(s.source_id) <= threshold]
    return fraction, chosen


def export(structures, path: Path) -> int:
    """Writes structures as extended XYZ with REF_* labels; returns the atom count."""
    from ase.io import write

    frames = [labelled_atoms(s) for s in structures]
    path.parent.mkdir(parents=True, exist_ok=True)
    write(str(path), frames, format="extxyz")
    return sum(len(a) for a in frames)


# --------------------------------------------------------------- the commands

def _target_section(xyz: str) -> dict:
    return {"systems": {"read_from": xyz, "length_unit": "angstrom"},
            "targets": {"energy": {"key": "REF_energy", "unit": "eV",
                                   "forces": {"key": "REF_forces"},
                                   "stress": {"key": "REF_stress"}}}}


def mtt_options(train_xyz: str, val_xyz: str, seed: int = 0) -> dict:
    """metatrain's options.yaml: PET at the issue's hyper-parameters, one pass."""
    return {
        "seed": seed,
        "architecture": {
            "name": "pet",
            "model": dict(MTT_PET_MODEL),
            "training": {"batch_size": BATCH_STRUCTURES, "num_epochs": 1,
                         "learning_rate": MTT_LR, "log_interval": 1,
                         "checkpoint_interval": 1000, "num_workers": 0},
        },
        "training_set": _target_section(train_xyz),
        "validation_set": _target_section(val_xyz),
        "test_set": 0.0,
    }


def mace_args(train_xyz: str, val_xyz: str, seed: int = 0,
              weights: tuple[float, float, float] | None = None) -> list[str]:
    """mace_run_train's arguments: the issue's model, one pass, energy+forces+stress.
    ``weights``: its energy, force and stress loss weights (None: its own defaults,
    1, 100 and 1)."""
    m = MACE_PEER_MODEL
    extra = [] if weights is None else [
        "--energy_weight", str(weights[0]), "--forces_weight", str(weights[1]),
        "--stress_weight", str(weights[2])]
    return ["--name", "peer", "--train_file", train_xyz, "--valid_file", val_xyz,
            "--model", "MACE", "--hidden_irreps", m["hidden_irreps"],
            "--correlation", str(m["correlation"]),
            "--num_interactions", str(m["num_interactions"]), "--r_max", str(m["r_max"]),
            "--batch_size", str(BATCH_STRUCTURES), "--valid_batch_size", str(BATCH_STRUCTURES),
            "--max_num_epochs", "1", "--device", "cpu", "--E0s", "average",
            "--energy_key", "REF_energy", "--forces_key", "REF_forces",
            "--stress_key", "REF_stress", "--loss", "stress", "--default_dtype", "float32",
            "--seed", str(seed), *extra]


def our_args(family: str, forces: str, data: Path, run_dir: Path, fraction: float,
             num_structures: int, max_atoms: int) -> list[str]:
    """``python -m train`` overrides: one pass over the subset, 8 structures a batch
    (``max_atoms``: an atom budget that 8 of the largest structures fit; it also
    sizes the batch our FLOPs count is measured on at start-up)."""
    knobs = OUR_PET_KNOBS if family == "pet" else OUR_MACE_KNOBS
    over = [f"model.knobs.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in knobs.items()]
    return [f"data.root={data}", f"model={family}", "size=xxs", f"forces={forces}", *over,
            f"data.fraction={fraction!r}", f"data.max_structures={BATCH_STRUCTURES}",
            f"data.max_atoms={max_atoms}", "data.val_max_structures=8",
            f"trainer.max_steps={-(-num_structures // BATCH_STRUCTURES)}",
            "trainer.val_every=0", "trainer.checkpoint_every=0", f"trainer.threads={THREADS}",
            "trainer.progress=none", "logger=none", f"run_dir={run_dir}", "seed=0"]


# ------------------------------------------------------------------ the runs
