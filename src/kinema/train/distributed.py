"""Data parallelism applied from outside the model files: process group, DDP, FSDP2, reductions.

Launched by `torchrun --nproc-per-node N -m kinema train ...`, each process finds
RANK, WORLD_SIZE and LOCAL_RANK in its environment; run plainly, it is rank 0 of 1
and nothing here touches torch.distributed. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes and its device."""

    rank: int
    size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False
    """Whether `init` created the process group (and `shutdown` should destroy it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device: str = "auto") -> World:
    """Join the process group torchrun set up (if any) and pick this rank's device.

    device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from kinema.errors import KinemaError

        raise KinemaError("device 'cuda' was asked for but torch sees no CUDA device; use --set device=cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    owns = size > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return World(rank=rank, size=size, local_rank=local_rank, device=dev, owns_group=owns)


def shutdown(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, *, parallel: str, bf16: bool) -> nn.Module:
    """The module to train: `model` itself on one process, else DDP or FSDP2 around it.

    parallel: "ddp" replicates the weights and averages gradients; "fsdp" shards weights,
    gradients and optimizer state over ranks with `fully_shard` on each block (every module
    held in a ModuleList: transformer blocks, U-Net levels' layers) and on the root, computing
    in bf16 when `bf16`, with fp32 master weights and fp32 gradient reduction.
    """
    if not world.distributed:
        return model
    if parallel == "ddp":
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    for module in reversed(list(model.modules())):  # inner blocks before the ones holding them
        if isinstance(module, nn.ModuleList):
            for block in module:
                if not isinstance(block, nn.ModuleList) and any(True for _ in block.parameters()):
                    fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (FSDP2 shards in place, so the module is itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole (unsharded) CPU weights of a plain, DDP or FSDP2 module; collective under FSDP2."""
    model = unwrap(model)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model = unwrap(model)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with whole tensors (collective under FSDP2)."""
    if is_sharded(unwrap(model)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if is_sharded(unwrap(model)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def all_gather_object(world: World, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (just [value] on one process)."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def any_true(world: World, flag: bool) -> bool:
    """True when `flag` is true on any rank (all ranks must call)."""
    if not world.distributed:
        return flag
    return bool(any_true_tensor(world, torch.tensor(flag, device=world.device)))


def any_true_tensor(world: World, flag: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor, true when `flag` is true on any rank, left on the device (all ranks must call)."""
    if not world.distributed:
        return flag
    t = flag.to(torch.float32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t[0] > 0


def mean(world: World, value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks."""
    if not world.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
