"""Where jobs run: typed cluster presets and the executor factory.

A preset (``configs/cluster/<name>.yaml``) is data; ``make_executor`` turns it
into something with submitit's submission API. ``kind: slurm`` gives a real
``submitit.AutoExecutor``; ``kind: local`` gives :class:`InProcessExecutor`,
which runs each submitted function in this process, one after another, so a
study also runs on a workstation without SLURM.

The single-node test cluster is brought up by ``slurm/local_cluster.sh``;
:func:`ensure_local_slurm` starts it on demand for tests and for
``cluster=local-slurm``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import shutil
import subprocess
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import submitit

REPO = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO / "configs" / "cluster"
LOCAL_CLUSTER_SCRIPT = REPO / "slurm" / "local_cluster.sh"
# Must match CLUSTER_NAME in local_cluster.sh: tells our test cluster apart
# from a real one answering on the same machine (e.g. a login node).
LOCAL_CLUSTER_NAME = "mliplocal"

R = TypeVar("R")


@dataclass
class ClusterConfig:
    """Where and with what resources jobs run.

    Field names follow submitit's generic parameters where one exists; units
    are in the names. ``None`` means "leave it to the cluster's default".
    """

    name: str = "local"
    kind: Literal["local", "slurm"] = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    # One process per GPU for multi-GPU jobs; submitit's srun starts them.
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    constraint: str | None = None
    # How long before the time limit SLURM sends submitit's USR2, i.e. the
    # time a job has to write its checkpoint and requeue itself.
    signal_delay_s: int = 90
    # Most array tasks of one sweep that may run at once.
    array_parallelism: int = 256
    # Any other sbatch option, without the leading dashes: {"exclusive": True}.
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    # Shell lines run in the sbatch script before srun (module load, venv, ...).
    setup: list[str] = field(default_factory=list)
    # Bring up the single-node test cluster (slurm/local_cluster.sh) if no
    # SLURM answers; only the local-slurm preset sets this.
    start_local_cluster: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("local", "slurm"):
            raise ValueError(
                f"cluster '{self.name}': kind must be 'local' or 'slurm', got {self.kind!r}"
            )
        for count in ("time_limit_min", "nodes", "tasks_per_node", "cpus_per_task"):
            if int(getattr(self, count)) < 1:
                raise ValueError(
                    f"cluster '{self.name}': {count} must be >= 1, got {getattr(self, count)!r}"
                )
        if self.gpus_per_node < 0:
            raise ValueError(f"cluster '{self.name}': gpus_per_node must be >= 0")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError(f"cluster '{self.name}': mem_gb must be > 0 or null")

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], source: str = "cluster config"
    ) -> ClusterConfig:
        """Builds a config from a plain mapping (a YAML preset, a DictConfig).

        Raises:
            KeyError: for an unknown key, naming the closest valid one.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = (
                    f"; did you mean '{close[0]}'?"
                    if close
                    else f"; valid keys: {', '.join(known)}"
                )
                raise KeyError(f"{source}: unknown key '{key}'{hint}")
        plain = {k: _to_plain(v) for k, v in values.items()}
        return cls(**plain)


def _to_plain(value: Any) -> Any:
    """Turns OmegaConf containers into dicts/lists so the dataclass owns plain data."""
    with contextlib.suppress(ImportError):
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    return value


def load_preset(name: str, preset_dir: Path = PRESET_DIR) -> ClusterConfig:
    """Reads ``configs/cluster/<name>.yaml`` without going through Hydra."""
    from omegaconf import OmegaConf

    path = preset_dir / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in preset_dir.glob("*.yaml"))
        raise FileNotFoundError(
            f"no cluster preset '{name}' in {preset_dir}; available: {available}"
        )
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of cluster settings")
    return ClusterConfig.from_mapping(raw, source=str(path))


# ---------------------------------------------------------------- executors


class Job(Protocol[R]):
    """What callers may rely on from a submitted job, local or SLURM."""

    job_id: str

    def result(self) -> R: ...

    def done(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    @property
    def state(self) -> str: ...


class Executor(Protocol):
    """The part of submitit's executor API the sweep uses."""

    def submit(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> Job[R]: ...

    def batch(self) -> contextlib.AbstractContextManager[None]: ...

    def update_parameters(self, **kwargs: Any) -> None: ...


class InProcessJob(Generic[R]):
    """A function call run in this process; mirrors submitit's Job surface.

    Unlike submitit's DebugJob it never drops into pdb, and a failure is kept
    on the job (raised from ``result()``) so one failed run does not stop the
    others.
    """

    def __init__(self, fn: Callable[..., R], args: tuple, kwargs: dict) -> None:
        self.job_id = f"local-{uuid.uuid4().hex[:8]}"
        self._call = (fn, args, kwargs)
        self._state = "PENDING"
        self._result: R | None = None
        self._error: BaseException | None = None
        self.traceback: str | None = None

    def _run(self) -> None:
        fn, args, kwargs = self._call
        self._state = "RUNNING"
        try:
            self._result = fn(*args, **kwargs)
            self._state = "COMPLETED"
        except Exception as error:  # kept on the job, raised by result()
            self._error = error
            self.traceback = traceback.format_exc()
            self._state = "FAILED"

    @property
    def state(self) -> str:
        return self._state

    def done(self) -> bool:
        return self._state in ("COMPLETED", "FAILED")

    def exception(self) -> BaseException | None:
        return self._error

    def result(self) -> R:
        if not self.done():
            raise RuntimeError(f"job {self.job_id} has not run (submitted inside an open batch?)")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def results(self) -> list[R]:
        return [self.result()]


class InProcessExecutor:
    """Runs submitted functions here, one after another (``cluster=local``).

    Outside ``batch()`` a job runs during ``submit``; inside it, the jobs run in
    submission order when the ``with`` block exits, like a SLURM array.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.parameters: dict[str, Any] = {}
        self._pending: list[InProcessJob[Any]] | None = None

    def update_parameters(self, **kwargs: Any) -> None:
        # Resource requests mean nothing in-process; kept for inspection only.
        self.parameters.update(kwargs)

    def submit(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> InProcessJob[R]:
        job = InProcessJob(fn, args, kwargs)
        if self._pending is None:
            job._run()
        else:
            self._pending.append(job)
        return job

    def map_array(self, fn: Callable[..., R], *iterables: Any) -> list[InProcessJob[R]]:
        with self.batch():
            return [self.submit(fn, *args) for args in zip(*iterables)]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if self._pending is not None:
            raise RuntimeError("batch() is already open on this executor")
        self._pending = []
        try:
            yield
        except BaseException:
            self._pending = None
            raise
        jobs, self._pending = self._pending, None
        for job in jobs:
            job._run()


def slurm_parameters(cfg: ClusterConfig, job_name: str = "mlip") -> dict[str, Any]:
    """The ``update_parameters`` arguments for a submitit AutoExecutor."""
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": int(cfg.time_limit_min),
        "nodes": int(cfg.nodes),
        "tasks_per_node": int(cfg.tasks_per_node),
        "cpus_per_task": int(cfg.cpus_per_task),
        "slurm_signal_delay_s": int(cfg.signal_delay_s),
        "slurm_array_parallelism": int(cfg.array_parallelism),
    }
    # --gpus-per-node=0 is rejected by clusters without GPU GRES: omit it.
    if cfg.gpus_per_node:
        params["gpus_per_node"] = int(cfg.gpus_per_node)
    if cfg.mem_gb is not None:
        params["mem_gb"] = cfg.mem_gb
    optional = {
        "slurm_partition": cfg.partition,
        "slurm_account": cfg.account,
        "slurm_qos": cfg.qos,
        "slurm_constraint": cfg.constraint,
    }
    params.update({k: v for k, v in optional.items() if v})
    if cfg.additional_parameters:
        params["slurm_additional_parameters"] = dict(cfg.additional_parameters)
    if cfg.setup:
        params["slurm_setup"] = list(cfg.setup)
    return params


def make_executor(
    cfg: ClusterConfig, folder: str | Path, job_name: str = "mlip"
) -> submitit.AutoExecutor | InProcessExecutor:
    """Returns an executor for ``cfg`` that writes its logs and pickles under ``folder``.

    Args:
        cfg: the cluster preset.
        folder: submitit's working folder; ``%j`` in it becomes the job id.
        job_name: the SLURM job name (shown by squeue).
    """
    if cfg.kind == "local":
        executor = InProcessExecutor(folder)
        executor.update_parameters(name=job_name)
        return executor
    if cfg.start_local_cluster:
        ensure_local_slurm()
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**slurm_parameters(cfg, job_name))
    return executor


# ---------------------------------------------------------------- local SLURM


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
