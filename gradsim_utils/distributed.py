"""Several processes through torch.distributed (DESIGN.md section 5c): who am I, my share, merge.

Every helper here works unchanged in one process (no process group: rank 0 of 1, collectives are
no-ops), so library code calls them unconditionally and a plain ``python`` run is the one-process
case. Under ``torchrun`` :func:`init_from_env` joins the process group torchrun describes in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` or its
rendezvous, which also spans several nodes).

Backend: ``"gloo"`` without CUDA; with CUDA ``"cpu:gloo,cuda:nccl"``, so CUDA tensors go through
NCCL and CPU tensors (the float64 class statistics, pickled objects) through gloo, and each
process uses the GPU ``LOCAL_RANK``. What is merged: sums with ``all_reduce`` (exact for integer
counts; float64 sums differ from one process's only by summation order), everything else is
computed once from gathered data (percentiles, rankings and fitted models do not merge).

Sharding: :func:`shard` gives rank r of w the items ``r, r + w, r + 2w, ...`` (strided; rank 0
gets item 0 first) or the ``r``-th of w contiguous runs of near-equal length (``contiguous=True``;
concatenating the ranks' shares in rank order restores the original order). The heavy steps run
on N processes with ``torchrun --nproc_per_node=N -m gradsim_utils.scale_out ...``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["default_backend", "init_from_env", "rank_and_world", "is_main", "shard", "all_reduce_sum",
           "broadcast_object", "all_gather_object", "gather_object", "barrier"]

T = TypeVar("T")


def default_backend() -> str:
    """``"cpu:gloo,cuda:nccl"`` when CUDA is available (NCCL for GPU tensors, gloo for CPU ones), else ``"gloo"``."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (else nothing); return (rank, world size).

    With CUDA, each process first selects GPU ``LOCAL_RANK``, so ``device="auto"`` means its own GPU.
    ``backend``: None for :func:`default_backend`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend or default_backend())
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes shared files and reports)."""
    return rank_and_world()[0] == 0


def shard(items: Sequence[T] | torch.Tensor | int, contiguous: bool = False):
    """This rank's share of ``items`` (a sequence or tensor, sliced along its first axis) or of ``range(n)``.

    Strided (default): positions ``rank::world``. ``contiguous=True``: positions
    ``[n * rank // world, n * (rank + 1) // world)``. Both depend only on (n, rank, world), and the
    shares of all ranks partition the positions.
    """
    if isinstance(items, bool) or (isinstance(items, int) and items < 0):
        raise ValueError(f"items must be a sequence, a tensor or a count >= 0, got {items!r}")
    seq = range(items) if isinstance(items, int) else items
    rank, world = rank_and_world()
    if contiguous:
        n = len(seq)
        return seq[n * rank // world:n * (rank + 1) // world]
    return seq[rank::world]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place (a no-op in one process); return it."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (others pass anything, e.g. None)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list | None:
    """Every rank's picklable ``obj`` in rank order on rank ``dst``; None on the other ranks."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out = [None] * world if rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()
