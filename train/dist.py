"""Process-group set-up from torchrun, the deepspeed launcher or SLURM."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind(("", int(port)))
        return True
    except (OSError, ValueError):
        return False


def environment() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment variables."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return (
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        return (
            int(os.environ["SLURM_PROCID"]),
            int(os.environ["SLURM_NTASKS"]),
            int(os.environ.get("SLURM_LOCALID", 0)),
        )
    return 0, 1, 0


def init_distributed(
    device: str = "auto", backend: str | None = None, need_group: bool = True
) -> DistInfo:
    """Initialises torch.distributed (gloo on CPU, NCCL on CUDA) if not yet done.

    A lone process gets a one-member group on a free local port, because the
    DeepSpeed engine always expects one.
    """
    rank, world, local = environment()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if need_group and not dist.is_initialized():
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        os.environ.setdefault("LOCAL_RANK", str(local))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if world == 1:
            # Nobody else joins a one-member group, so a port inherited from a
            # parent process that still listens on it is replaced, not fatal.
            given = os.environ.get("MASTER_PORT")
            if given is None or not _port_is_free(given):
                if given is not None:
                    print(f"[dist] MASTER_PORT={given} is in use; a lone process takes a free port",
                          flush=True)
                os.environ["MASTER_PORT"] = str(_free_port())
        elif "MASTER_PORT" not in os.environ:
            raise RuntimeError(
                f"rank {rank} of {world}: MASTER_PORT is not set; launch with torchrun, "
                "the deepspeed launcher or srun with MASTER_ADDR/MASTER_PORT exported"
            )
        dist.init_process_group(
            backend or ("nccl" if use_cuda else "gloo"), rank=rank, world_size=world
        )
    return DistInfo(rank, world, local, dev)


def collective_device(group=None) -> torch.device:
    """Where a collective's tensors must live: the current CUDA device for NCCL
    (which rejects host tensors), the host for gloo."""
    if dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_(tensor: torch.Tensor, op=None, group=None) -> torch.Tensor:
    """In-place all-reduce over the process group, wherever ``tensor`` lives.

    The tensor travels to the backend's device and back when they differ, so
    callers may keep small accumulators on the host or on the GPU. A one-member
    group still runs the collective: a single-GPU run goes through the same
    NCCL path as a multi-GPU one (on gloo it costs tens of microseconds).
    """
    if not dist.is_initialized():
        return tensor
    device = collective_device(group)
    work = tensor if tensor.device == device else tensor.to(device)
    dist.all_reduce(work, op=op or dist.ReduceOp.SUM, group=group)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
