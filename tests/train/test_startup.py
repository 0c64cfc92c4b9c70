"""Start-up work a run does not need: a lone CPU process does not build
DeepSpeed's shared-memory all-reduce op (a C++ build on a fresh machine), and
DeepSpeed's accelerator warning is not printed on a CPU machine."""

from __future__ import annotations

import subprocess
import sys

from tests.train.conftest import REPO

CODE = """
import os, torch, torch.distributed as dist
from train.engine import skip_shared_memory_kernel
import deepspeed
skipped = skip_shared_memory_kernel()
dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=1)
model = torch.nn.Linear(3, 3)
deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     config={"train_micro_batch_size_per_gpu": 1}, dist_init_required=False)
print("skipped", skipped)
"""


def _run(world: str, tmp_path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "WORLD_SIZE": world, "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0", "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": "", "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
           "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", CODE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_lone_cpu_process_builds_no_shared_memory_op(tmp_path):
    # an empty extensions folder: a build would compile here (and print so)
    proc = _run("1", tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-2000:]
    assert "skipped True" in proc.stdout
    assert "shm_comm" not in text and not list((tmp_path / "ext").rglob("*.so"))
    # DeepSpeed is told it runs on the CPU: no "unable to detect" warning per run
    assert "unable to detect" not in text


def test_several_processes_keep_it():
    import os

    from train.engine import skip_shared_memory_kernel

    before = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "2"
    try:
        assert skip_shared_memory_kernel() is False
    finally:
        if before is None:
            os.environ.pop("WORLD_SIZE")
        else:
            os.environ["WORLD_SIZE"] = before
