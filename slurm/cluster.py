"""Where jobs run: typed cluster presets and the executor factory.

A preset (``configs/cluster/<name>.yaml``) is data; ``make_executor`` turns it
into something with submitit's submission API. ``kind: slurm`` gives a real
``submitit.AutoExecutor``; ``kind: local`` gives :class:`InProcessExecutor`,
which runs each submitted function in this process, one after another, so a
study also runs on a workstation without SLURM.

Talking to a SLURM controller (is one up, job states, the single-node test
cluster) lives in ``slurm/slurmctl.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import submitit

from slurm.slurmctl import ensure_local_slurm

REPO = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO / "configs" / "cluster"

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
