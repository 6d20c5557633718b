"""The one training loop every method runs in: batching, progress, logging, checkpoints and resume.

A method (see :class:`Method`) supplies ``begin_epoch`` (stage switches), ``step`` (one batch), ``end_epoch``
and its state, and optionally a pre-training stage before the epochs (``pretrain_plan``: steps on random
batches, e.g. a denoiser); the loop owns the order of particles, the clock, the log and the checkpoints of both.
Particle order is a pure function of (seed, epoch), so a resumed run replays the same batches from where the
checkpoint was taken.
In a distributed run (:mod:`cryopose.train.distributed`) each rank trains on its own shard of the particles
with the same number of batches per epoch; rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from ..io.dataset import ParticleDataset, make_loader
from ..io.run_files import CHECKPOINT
from ..physics.ctf import CTFParams
from ..progress import progress
from .distributed import Context
from .run_dir import MetricsLog, load_checkpoint, save_checkpoint


class Method(Protocol):
    """What a reconstruction method provides to the loop. ``distribute(wrap)``: train through ``wrap(module)``
    (gradients averaged over the ranks); ``pretrain_plan()``: (steps, batch) of pre-training still to do,
    ``(0, 0)`` for none; ``kept()``: boolean ``(N,)``, the particles not left out of training as junk."""

    def stage(self, epoch: int) -> str: ...

    def begin_epoch(self, epoch: int) -> None: ...

    def step(self, batch: dict) -> dict[str, float]: ...

    def end_epoch(self, epoch: int) -> dict[str, float]: ...

    def density(self) -> Tensor: ...

    def poses(self) -> tuple[np.ndarray, np.ndarray | None]: ...

    def kept(self) -> np.ndarray: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None: ...

    def pretrain_plan(self) -> tuple[int, int]: ...

    def begin_pretrain(self, dataset: ParticleDataset, seed: int) -> None: ...

    def pretrain_step(self, batch: dict) -> dict[str, float]: ...

    def end_pretrain(self) -> dict[str, float]: ...

    def particle_state(self) -> list[Tensor]: ...

    def counters(self) -> list[Tensor]: ...


@dataclass
class LoopConfig:
    epochs: int
    batch: int = 32
    seed: int = 0
    checkpoint_minutes: float = 5.0
    log_every: int = 20
    num_workers: int = 0


class EpochBatches(Sampler[list[int]]):
    """This rank's batches for one epoch, from batch ``start`` on.

    The epoch's order is a function of (seed, epoch) only and is cut into ``ceil(n / batch)`` batches of the
    whole job; rank ``r`` of ``world`` takes every ``world``-th particle of each. A job of any size therefore
    sees the same batches as a single process, and DDP's averaged gradient is the single process's gradient.
    """

    def __init__(self, n: int, batch: int, epoch: int, seed: int, start: int = 0, ctx: Context = Context()):
        if batch < ctx.world:
            raise ValueError(f"a batch of {batch} cannot be shared by {ctx.world} processes")
        self.n, self.world = n, ctx.world
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        self.sizes = [len(b) for b in torch.tensor_split(self.order, -(-n // batch))]
        self.count = len(self.sizes)
        self.batches = [b[ctx.rank::ctx.world].tolist() for b in torch.split(self.order, self.sizes)][start:]

    def owner(self) -> Tensor:
        """``(N,)`` the rank that processes each particle this epoch (it alone updates the particle's state)."""
        sizes = torch.tensor(self.sizes)
        starts = torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
        owner = torch.empty(self.n, dtype=torch.long)
        owner[self.order] = (torch.arange(self.n) - starts) % self.world
        return owner

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process so far (MB; Linux reports KiB), and of the GPU on CUDA."""
    out = {"peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_gpu_MB"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a :class:`ParticleDataset` batch to ``device`` (tensors and :class:`CTFParams`)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, (Tensor, CTFParams)):
            value = value.to(device=device)
        out[key] = value
    return out


def train(method: Method, dataset: ParticleDataset, run: Path, cfg: LoopConfig, device: torch.device,
          log: MetricsLog, *, resume: bool = False, ctx: Context = Context(),
          on_epoch_end: Callable[[int, Method], dict] | None = None) -> None:
    """Run ``method`` over ``dataset`` for ``cfg.epochs`` epochs, resuming from ``run/checkpoint.pt`` if asked.

    Checkpoints are written every ``cfg.checkpoint_minutes`` and at the end of every epoch (only rank 0
    writes), so a killed run loses at most one interval. ``on_epoch_end(epoch, method)`` may return extra
    metrics (map writing, evaluation against a reference) that go to the log; it runs on rank 0 only.
    ``cfg.batch`` is the batch of the whole job: each of the ``ctx.world`` ranks takes ``batch / world`` of it.
    """
    loop = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "loss_sum": 0.0, "pretrain_step": 0}
    if resume:
        ckpt = load_checkpoint(run / CHECKPOINT, device)
        method.load_state_dict(ckpt["method"])
        loop = {**loop, **ckpt["loop"]}
        torch.set_rng_state(ckpt["rng"])
        if ctx.first:
            log.write(kind="resume", **loop)
        else:  # rank 0's checkpoint holds the job's running sums
            loop["loss_sum"] = 0.0
            for counter in method.counters():
                counter.zero_()
    method.distribute(ctx.wrap)

    def synchronise(owner: Tensor | None) -> None:
        """Merge the ranks' per-particle rows (``owner``: the rank that updated each since the last merge; None:
        none did) and running sums (collective: every rank calls it)."""
        if owner is not None:
            ctx.merge_rows_(method.particle_state(), owner)
        sums = method.counters() + [torch.tensor([loop["loss_sum"]], dtype=torch.float64, device=device)]
        ctx.collect_(sums)
        loop["loss_sum"] = float(sums[-1])

    def checkpoint(owner: Tensor | None = None) -> None:
        synchronise(owner)
        if ctx.first:
            save_checkpoint(run / CHECKPOINT, {"method": method.state_dict(), "loop": dict(loop),
                                               "rng": torch.get_rng_state()})

    def owners() -> Tensor | None:
        """This epoch's owner of each particle, for the merge; None in a single process (nothing to merge)."""
        return sampler.owner() if ctx.world > 1 else None

    last_save = time.time()
    steps, size = method.pretrain_plan()
    if loop["pretrain_step"] < steps:
        if loop["pretrain_step"] == 0:
            method.begin_pretrain(dataset, cfg.seed)
        draws = torch.randint(len(dataset), (steps, size), generator=torch.Generator().manual_seed(cfg.seed))
        batches = draws[loop["pretrain_step"]:, ctx.rank::ctx.world].tolist()  # each rank its share of a batch
        bar = progress(make_loader(dataset, batch_sampler=batches, num_workers=cfg.num_workers), show=ctx.first,
                       total=steps, initial=loop["pretrain_step"], desc="pre-training", unit="step")
        for batch in bar:
            metrics = method.pretrain_step(to_device(batch, device))
            loop["pretrain_step"] += 1
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4g}")
            if ctx.agree(time.time() - last_save > 60 * cfg.checkpoint_minutes):
                checkpoint()
                last_save = time.time()
        bar.close()
        if ctx.first:
            log.write(kind="pretrain", steps=loop["pretrain_step"], **method.end_pretrain())
        checkpoint()
        last_save = time.time()
    last_save = time.time()
    while loop["epoch"] < cfg.epochs:
        epoch = loop["epoch"]
        method.begin_epoch(epoch)
        sampler = EpochBatches(len(dataset), cfg.batch, epoch, cfg.seed, loop["batch"], ctx)
        loader = make_loader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers)
        bar = progress(loader, show=ctx.first, total=sampler.count, initial=loop["batch"],
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        t_epoch, seen = time.time(), 0
        for batch in bar:
            t0 = time.time()
            metrics = method.step(to_device(batch, device))
            n = len(batch["index"])
            seen += n
            loop["batch"] += 1
            loop["step"] += 1
            loop["seconds"] += time.time() - t0
            loop["loss_sum"] += metrics.get("loss", 0.0)
            rate = seen * ctx.world / max(time.time() - t_epoch, 1e-9)
            bar.set_postfix(stage=method.stage(epoch), loss=f"{metrics.get('loss', float('nan')):.4g}",
                            img_s=f"{rate:.0f}")
            if loop["step"] % cfg.log_every == 0 and ctx.first:
                log.write(kind="step", epoch=epoch, step=loop["step"], stage=method.stage(epoch),
                          images_per_s=rate, **metrics)
            if ctx.agree(time.time() - last_save > 60 * cfg.checkpoint_minutes):
                checkpoint(owners())
                last_save = time.time()
        bar.close()
        synchronise(owners())
        record = {"kind": "epoch", "epoch": epoch, "stage": method.stage(epoch), "step": loop["step"],
                  "loss": loop["loss_sum"] / max(loop["batch"] * ctx.world, 1),
                  "train_seconds": round(loop["seconds"], 2),
                  "images_per_s": seen * ctx.world / max(time.time() - t_epoch, 1e-9), **peak_memory(device)}
        record.update(method.end_epoch(epoch))
        loop["epoch"] += 1
        loop["batch"] = 0
        loop["loss_sum"] = 0.0
        if ctx.first:
            if on_epoch_end is not None:
                record.update(on_epoch_end(epoch, method))
            log.write(**record)
        checkpoint()
        last_save = time.time()
