"""Data-parallel helpers: the process group under torchrun / accelerate launch, and the few collectives the loop needs.

    torchrun --nproc-per-node 2 -m lorakit train --task sst2 ...      # or: accelerate launch -m lorakit train ...

Both launchers set WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `setup(device)` then starts the
process group (gloo on CPU, nccl on CUDA with each process on cuda:LOCAL_RANK) and `cleanup()` ends it. Without
a launcher (WORLD_SIZE unset or 1) every helper is a no-op: world 1, rank 0, main process.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from lorakit.training.launch import env_local_rank, env_rank, env_world_size


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0, or no distributed run: the process that writes files."""
    return rank() == 0


def setup(device: torch.device) -> tuple[torch.device, bool]:
    """Start the process group when launched with WORLD_SIZE > 1. Returns (this process's device, whether this call
    started the group; the caller then ends it with cleanup()).

    CUDA: nccl, and the device becomes cuda:LOCAL_RANK (one GPU per process). CPU: gloo. MPS cannot be used.
    """
    if env_world_size() <= 1:
        return device, False
    if device.type == "mps":
        raise ValueError("data-parallel training needs CPU (gloo) or CUDA (nccl) devices, not mps")
    if device.type == "cuda":
        device = torch.device("cuda", env_local_rank())
        torch.cuda.set_device(device)
    if dist.is_initialized():  # e.g. started by the caller (accelerate's state, a test harness)
        return device, False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, rank=env_rank(), world_size=env_world_size(), **kwargs)
    return device, True


def cleanup(started: bool) -> None:
    if started and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...]; [obj] without a process group. Picklable objects (numpy arrays...)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_across(value: float) -> float:
    """The sum of a float over all ranks (float64; NaN anywhere gives NaN everywhere)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard(indices: list[int], world: int, rank_: int) -> list[int]:
    """This rank's contiguous part of a global batch (sizes differ by at most one; may be empty)."""
    n = len(indices)
    start, stop = n * rank_ // world, n * (rank_ + 1) // world
    return indices[start:stop]
