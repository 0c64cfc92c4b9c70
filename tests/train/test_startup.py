"""Start-up work a run does not need: a lone CPU process skips DeepSpeed's
shared-memory all-reduce op (a C++ build on a fresh machine), and DeepSpeed's
accelerator warning is not printed on a CPU machine."""

from __future__ import annotations

import subprocess
import sys

from tests.train.conftest import REPO

CODE = (
    "from train.engine import skip_shared_memory_kernel\n"
    "import deepspeed.comm.torch as c\n"
    "skipped = skip_shared_memory_kernel()\n"
    "print(skipped, c.build_shm_op() is None if skipped else 'kept')\n"
)


def _run(world: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "WORLD_SIZE": world, "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True, timeout=300)
    # DeepSpeed is told it runs on the CPU: no "unable to detect" warning per run
    assert "unable to detect" not in proc.stderr + proc.stdout
    return proc.stdout.strip().splitlines()[-1]


def test_a_lone_cpu_process_skips_the_shared_memory_op():
    assert _run("1") == "True True"


def test_several_processes_keep_it():
    assert _run("2") == "False kept"
