"""Asking the SLURM controller on this machine: is it up, what state a job is
in; and the single-node test cluster.

The test cluster is brought up by ``slurm/local_cluster.sh``;
:func:`ensure_local_slurm` starts it on demand for tests and for
``cluster=local-slurm``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER_SCRIPT = REPO / "slurm" / "local_cluster.sh"
# Must match CLUSTER_NAME in local_cluster.sh: tells our test cluster apart
# from a real one answering on the same machine (e.g. a login node).
LOCAL_CLUSTER_NAME = "mliplocal"


class SlurmUnavailable(RuntimeError):
    """No usable SLURM here, and the local test cluster cannot be started."""


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def slurm_answers(timeout_s: float = 15) -> bool:
    """True if a SLURM controller answers from this machine."""
    if shutil.which("scontrol") is None:
        return False
    try:
        # `scontrol ping` fails at once when slurmctld is down; sinfo retries
        # for about 10 s first.
        if _run(["scontrol", "ping"], timeout_s).returncode != 0:
            return False
        return _run(["sinfo", "-h"], timeout_s).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def cluster_name(timeout_s: float = 15) -> str | None:
    """ClusterName of the controller that answers here, or None."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = _run(["scontrol", "show", "config"], timeout_s)
    except subprocess.TimeoutExpired:
        return None
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ClusterName":
            return value.strip()
    return None


def ensure_local_slurm(install: bool = True, timeout_s: float = 600) -> str:
    """Makes sure the single-node test cluster answers; returns its node name.

    Starts it with ``slurm/local_cluster.sh`` when ``sinfo`` does not answer,
    first installing the packages if they are missing and ``install`` is set.

    Raises:
        SlurmUnavailable: SLURM is not running and cannot be started here (not
            root, no apt-get), the start failed (the message holds the script's
            log tail), or a different cluster answers on this machine.
    """
    if not slurm_answers():
        if os.geteuid() != 0:
            raise SlurmUnavailable(
                "SLURM is not running and starting the local test cluster needs root "
                f"(run `sudo bash {LOCAL_CLUSTER_SCRIPT.relative_to(REPO)} up`)"
            )
        commands = ["start"]
        if shutil.which("slurmctld") is None:
            if not install:
                raise SlurmUnavailable("SLURM is not installed (slurm/local_cluster.sh install)")
            if shutil.which("apt-get") is None:
                raise SlurmUnavailable(
                    "SLURM is not installed and there is no apt-get to install it"
                )
            commands.insert(0, "install")
        try:
            out = _run(["bash", str(LOCAL_CLUSTER_SCRIPT), *commands], timeout_s)
        except subprocess.TimeoutExpired as error:
            raise SlurmUnavailable(
                f"local_cluster.sh {' '.join(commands)} took over {timeout_s}s"
            ) from error
        if out.returncode != 0:
            tail = "\n".join((out.stdout + out.stderr).splitlines()[-30:])
            raise SlurmUnavailable(f"local_cluster.sh {' '.join(commands)} failed:\n{tail}")
    name = cluster_name()
    if name != LOCAL_CLUSTER_NAME:
        raise SlurmUnavailable(
            f"the SLURM cluster answering here is '{name}', not the local test cluster "
            f"'{LOCAL_CLUSTER_NAME}'; use a preset for that cluster instead of local-slurm"
        )
    nodes = _run(["sinfo", "-h", "-o", "%N"], 15).stdout.split()
    return nodes[0] if nodes else ""


def release_requeued(job_id: str) -> bool:
    """Lets a requeued job start now instead of after SLURM's hold.

    SLURM keeps a requeued job pending until its old credential expires
    (AuthInfo cred_expire: 30 s on the local cluster, 120 s by default). Only
    an operator (or root) may do this, and only while the job is pending.

    Returns:
        True if SLURM accepted the update.
    """
    out = _run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], 15)
    return out.returncode == 0


def job_state(job_id: str) -> str:
    """The job's state from the controller (``squeue``), e.g. PENDING, RUNNING.

    Asks squeue rather than sacct: it answers at once, without accounting.
    Returns "UNKNOWN" once the controller has forgotten the job.
    """
    out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], 15)
    states = out.stdout.split()
    return states[0] if out.returncode == 0 and states else "UNKNOWN"
