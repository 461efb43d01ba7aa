"""Who we are in a distributed run, and the few collectives the trainer needs.

One `init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or, under a bare
`srun` without torchrun, Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), and falls back to a single process.
nccl on CUDA, gloo on CPU, so every multi-process test runs on a laptop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_INFO = DistInfo()


def _env_int(*names: str, default: int) -> int:
    for n in names:
        if n in os.environ:
            return int(os.environ[n])
    return default


def init_distributed(device: str = "auto", timeout_s: int = 600) -> DistInfo:
    """Join the process group (if there is more than one process) and pick this rank's device.

    `device`: "auto" (CUDA if available, else CPU), "cpu" or "cuda".
    """
    global _INFO
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device "
                           "(see: python -m deepj.launch doctor)")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "none"
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        if not dist.is_initialized():
            dist.init_process_group(
                backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s),
                device_id=dev if use_cuda else None,
            )
    _INFO = DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev, backend=backend)
    return _INFO


def info() -> DistInfo:
    return _INFO


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only, flushed (logs of preempted jobs must not lose their tail)."""
    if _INFO.rank == 0:
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_max(value: float) -> float:
    """Max over ranks; used for flags (a stop request seen by any rank stops all) and for peak figures."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_max_list(values: list[float]) -> list[float]:
    """Max over ranks of a few flags in one collective: the loop's per-step agreement (stop requested, a non-finite
    loss or gradient) costs one all-reduce, however many flags it carries."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a small float tensor (losses for logging)."""
    if not dist.is_initialized():
        return values
    t = values.detach().to(_collective_device(), torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).cpu()


def broadcast_object(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device() -> torch.device:
    return _INFO.device if _INFO.backend == "nccl" else torch.device("cpu")


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
