"""The GPU path: collectives on the backend's device, peak memory, TF32 and
torch.compile options, and the GPU check's CPU-runnable parts. Tests marked
``cuda`` need a CUDA device and run in bench/gpu_check.sh."""

from __future__ import annotations

import ast
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data_pipelines.batching import batch_structures
from data_pipelines.schema import Structure
from tests.train.conftest import REPO, train_cli
from train import dist as tdist
from train.models import build_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reduce_worker(rank, world, port, backend, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    host = torch.tensor([1.5 * (rank + 1), 2.0], dtype=torch.float64)  # stays on the host
    ints = torch.tensor([rank + 1], dtype=torch.int64, device=device)
    tdist.all_reduce_(host)
    tdist.all_reduce_(ints, op=dist.ReduceOp.MAX)
    out[rank] = (host.tolist(), str(host.device), host.dtype == torch.float64,
                 ints.tolist(), str(ints.device))
    dist.destroy_process_group()


def _reduce(world: int, backend: str) -> dict:
    out = mp.Manager().dict()
    mp.spawn(_reduce_worker, args=(world, _port(), backend, out), nprocs=world, join=True)
    return dict(out)


def test_all_reduce_sums_in_place_and_leaves_each_tensor_where_it_was():
    out = _reduce(2, "gloo")
    for rank in (0, 1):
        values, device, is_f64, ints, int_device = out[rank]
        assert values == [4.5, 4.0] and device == "cpu" and is_f64
        assert ints == [2] and int_device == "cpu"


def test_a_one_member_group_still_runs_the_collective(monkeypatch):
    # a single-GPU run must go through the same NCCL code path as a multi-GPU one
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None, group=None: calls.append(t.device))
    tdist.all_reduce_(torch.zeros(3))
    assert calls == [torch.device("cpu")]


def test_the_collective_device_follows_the_backend(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert tdist.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert tdist.collective_device() == torch.device("cpu")


def test_no_collective_bypasses_the_device_aware_helpers():
    """Every torch.distributed collective outside train/dist.py is named here,
    with the reason its tensor is on the backend's device."""
    allowed = {("train/dist.py", "all_reduce"), ("data_pipelines/loader.py", "all_reduce")}
    collectives = {"all_reduce", "all_gather", "all_gather_object", "broadcast", "reduce",
                   "gather", "scatter", "broadcast_object_list", "all_to_all"}
    found = set()
    for folder in ("train", "data_pipelines", "slurm", "analysis"):
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in collectives
                        and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "dist"):
                    found.add((str(path.relative_to(REPO)), node.func.attr))
    assert found <= allowed, found - allowed
    # the loader's flag is created on the backend's device
    loader = (REPO / "data_pipelines/loader.py").read_text()
    assert 'dist.get_backend(group) == "nccl"' in loader
    assert "dtype=torch.int64, device=device)" in loader


def test_host_peak_memory_is_the_resident_set():
    from train.trainer import peak_memory_mb

    before = peak_memory_mb(torch.device("cpu"))
    block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    after = peak_memory_mb(torch.device("cpu"))
    assert block.sum() > 0
    assert after >= before and after > 64


# ---- torch.compile ------------------------------------------------------------------------


def _cells(n: int, seed: int) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(2, 6))
        cell = (3.6 + 0.3 * rng.random()) * np.eye(3)
        out.append(Structure(f"s{i}", [29] * k, rng.random((k, 3)) @ cell, cell, [True] * 3))
    return out


def test_compiled_model_matches_eager_and_does_not_recompile_per_shape():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = build_model("pet", "tiny", forces="direct")
    compiled = build_model("pet", "tiny", forces="direct")
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    torch._dynamo.reset()
    counters.clear()
    compiled.compile(dynamic=True, backend="eager")
    assert list(compiled.state_dict()) == keys  # checkpoints keep their keys
    graphs = []
    for n, seed in [(3, 0), (4, 1), (6, 2), (7, 3), (5, 4)]:
        batch = batch_structures(_cells(n, seed), cutoff=eager.cutoff, dtype=torch.float32)
        ref, out = eager(batch), compiled(batch)
        for key, value in ref.items():
            assert torch.allclose(out[key], value, atol=1e-5, rtol=1e-5), key
        graphs.append(int(counters["stats"]["unique_graphs"]))
    # after the first two shapes (static, then dynamic), new shapes reuse the graphs
    assert graphs[1] == graphs[-1], graphs
    torch._dynamo.reset()


def test_unknown_compile_backend_fails_naming_the_choices(emt_shards, tmp_path):
    proc = train_cli(f"data.root={emt_shards}", "engine.compile=fast", f"run_dir={tmp_path}/r",
                     check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "engine.compile" in text and "inductor" in text
    assert not Path(tmp_path, "r").exists()


# ---- the GPU check's CPU path -------------------------------------------------------------


def test_gpu_check_runs_its_path_on_cpu(tmp_path):
    from analysis.bench import gpu

    result = gpu.run(tmp_path, "cpu", steps=6, quick=True)
    assert set(result["training"]) == {"pet-direct", "pet-conservative", "mace",
                                       "pet-direct-compiled"}
    for label, row in result["training"].items():
        assert "error" not in row, (label, row.get("error"))
        assert row["atoms_per_s"] > 0 and row["flops_per_atom"] > 0
        assert np.isfinite(row["final_train_loss"])
    assert result["training"]["pet-direct-compiled"]["compile"]["graphs"] > 0
    assert result["compiled_over_eager"] > 0
    models = {r["model"] for r in result["inference"]}
    assert models == {"pet-tiny-direct", "pet-tiny-conservative"}
    assert all(r["us_per_atom"] > 0 for r in result["inference"])
    assert json.loads((tmp_path / "gpu.json").read_text())["device"] == "cpu"


def test_card_peaks_know_the_lent_card():
    from analysis.bench.gpu import card_peaks

    assert card_peaks("NVIDIA H200")["bf16"] == 989.0
    assert card_peaks("some other card") is None


# ---- on a GPU -----------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
def test_nccl_collectives_take_host_and_device_tensors():
    out = _reduce(1, "nccl")
    values, device, is_f64, ints, int_device = out[0]
    assert values == [1.5, 2.0] and device == "cpu" and is_f64
    assert ints == [1] and int_device.startswith("cuda")


@pytest.mark.cuda
@needs_cuda
def test_training_on_cuda_with_nccl_validates_and_reports_gpu_memory(emt_shards, tmp_path):
    run = tmp_path / "run"
    train_cli(f"data.root={emt_shards}", "model=pet", "size=tiny", "forces=conservative",
              "trainer.device=cuda", "engine.precision=bf16", "engine.tf32=true",
              "trainer.max_steps=6", "trainer.val_every=3", "logger=none",
              "trainer.progress=none", f"run_dir={run}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    peaks = [r["peak_memory_mb"] for r in rows if "peak_memory_mb" in r]
    # GPU memory of a tiny model: far below a process's host resident set (~500 MiB)
    assert peaks and 0 < max(peaks) < 400
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["val/forces_mae"])


# what the GPU machine brings itself (bench/gpu_wheels.sh skips them)
MACHINE_BRINGS = {"torch", "triton", "e3nn", "numpy", "scipy", "sympy", "mpmath", "networkx",
                  "jinja2", "markupsafe", "filelock", "fsspec", "typing-extensions",
                  "opt-einsum", "opt-einsum-fx", "setuptools", "mlip-scaling"}


def test_the_carried_wheels_cover_what_the_gpu_check_imports():
    import re
    import subprocess
    import sys

    code = (
        "import importlib.metadata as md, sys, json\n"
        "import train.run, train.models.mace, train.models.pet, data_pipelines.generate\n"
        "import analysis.bench.gpu, analysis.bench.models, deepspeed, deepspeed.runtime.engine\n"
        "import mace.modules, tests.train.conftest, pytest\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "d = md.packages_distributions()\n"
        "print(json.dumps(sorted({x for t in top for x in d.get(t, [])})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    used = {name.lower().replace("_", "-") for name in json.loads(proc.stdout.splitlines()[-1])}
    script = (REPO / "bench/gpu_wheels.sh").read_text()
    skip = re.compile(re.search(r"SKIP='([^']+)'", script).group(1))
    dropped = {name for name in used if skip.match(name)} - MACHINE_BRINGS
    assert not dropped, f"imported by the GPU check but not carried: {sorted(dropped)}"
