"""Multi-process training through ``torchrun`` (PyTorch DDP): the few helpers the trainer needs.

    torchrun --nproc_per_node=2 -m recsys.cli train recipes/beauty/sasrec_ce.toml          # one machine
    torchrun --nnodes=2 --node_rank=$RANK --master_addr=$HOST --master_port=29500 \\
             --nproc_per_node=8 -m recsys.cli train RECIPE                                  # two machines

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; the process group uses NCCL on GPUs and
gloo on CPUs. Each rank trains on its own shard of every epoch's shuffled users (global batch =
world size x batch_size), evaluates a shard of the users and the metric sums are all-reduced, so the
metrics equal a single-process evaluation; rank 0 alone writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (no-op for a plain single process). True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
