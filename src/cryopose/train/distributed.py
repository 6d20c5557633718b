"""Data-parallel training with ``torch.distributed``: process group, particle shards, merged per-particle state.

Launch with PyTorch's own launcher, one process per GPU (or per CPU socket)::

    torchrun --nproc-per-node N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] -m cryopose reconstruct ...

Every rank holds the whole model; :class:`~torch.nn.parallel.DistributedDataParallel` averages the encoder's and
the decoder's gradients (NCCL on GPUs, gloo on CPU). Each batch of the job is shared out among the ranks
(:class:`~cryopose.train.loop.EpochBatches`): the rank that reads a particle in an epoch alone updates its
per-particle state (poses, pose-optimiser moments). Before a checkpoint or an evaluation the ranks merge those
rows, so every rank — and rank 0's checkpoint — holds all of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world`` processes (``world == 1``: no process group)."""

    rank: int = 0
    world: int = 1

    @property
    def first(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` itself, or a DDP wrapper whose backward averages its gradients over the ranks.

        Its BatchNorm layers are changed in place to normalise by the statistics of the job's whole batch, as
        one process would: :class:`torch.nn.SyncBatchNorm` on GPUs, :class:`AllReduceBatchNorm` on CPU."""
        if self.world == 1:
            return module
        device = next(module.parameters()).device
        if device.type != "cuda":
            return DistributedDataParallel(AllReduceBatchNorm.convert(module))
        return DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(module), device_ids=[device.index])

    def merge_rows_(self, tensors: list[Tensor], owner: Tensor | None) -> None:
        """In place, on every rank: row ``i`` of each ``(N, ...)`` tensor becomes that of rank ``owner[i]``.

        Valid when every row not updated by its owner since the last merge is equal on all ranks."""
        if self.world == 1:
            return
        for t in tensors:
            mine = (owner.to(t.device) == self.rank).view(-1, *[1] * (t.ndim - 1))
            work = torch.where(mine, t, torch.zeros_like(t)).to(torch.uint8 if t.dtype == torch.bool else t.dtype)
            dist.all_reduce(work)
            t.copy_(work.bool() if t.dtype == torch.bool else work)

    def collect_(self, tensors: list[Tensor]) -> None:
        """In place: rank 0 gets the sum over ranks of each running counter, the other ranks restart from 0."""
        if self.world == 1:
            return
        for t in tensors:
            dist.reduce(t, dst=0)
            if not self.first:
                t.zero_()

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (decisions that lead to collective calls must be shared)."""
        if self.world == 1:
            return flag
        out = [flag]
        dist.broadcast_object_list(out, src=0)
        return bool(out[0])

    def on_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and give its result to every rank; an :class:`InputError` it raises is raised
        on every rank (so no rank waits for one that has stopped)."""
        if self.world == 1:
            return fn()
        out: list = [None]
        if self.first:
            try:
                out[0] = fn()
            except InputError as err:
                out[0] = err
        dist.broadcast_object_list(out, src=0)
        if isinstance(out[0], InputError):
            raise out[0]
        return out[0]

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the batch of the whole job (summed over the ranks with
    a differentiable all-reduce): :class:`torch.nn.SyncBatchNorm` for CPU, where PyTorch has none."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"expected at least 2D input, got {x.ndim}D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        channels, dims = x.shape[1], [0, *range(2, x.ndim)]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        totals = dist_nn.all_reduce(torch.cat([x.sum(dims), x.square().sum(dims), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean.square()).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        shape = (1, channels) + (1,) * (x.ndim - 2)
        return (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps) * self.weight.view(shape) \
            + self.bias.view(shape)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace, in place, every BatchNorm layer of ``module`` by one of these sharing its parameters and
        running statistics."""
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, cls):
                new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                new.weight, new.bias = child.weight, child.bias
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
                new.train(child.training)
                setattr(module, name, new)
            else:
                cls.convert(child)
        return module


def init(device: torch.device) -> tuple[Context, torch.device]:
    """Join the job torchrun describes in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), if any.

    Returns the context and this rank's device: ``cuda:LOCAL_RANK`` when ``device`` is CUDA (NCCL backend),
    else ``device`` (gloo backend). Without torchrun: a one-process context and ``device`` unchanged.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size()), device


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[tuple[Context, torch.device]]:
    """:func:`init`, and leave the process group when the block ends (normally or not)."""
    ctx, device = init(device)
    try:
        yield ctx, device
    finally:
        ctx.close()
