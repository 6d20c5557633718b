"""The one training loop every method runs in: batching, progress, logging, checkpoints and resume.

A method (see :class:`Method`) supplies ``begin_epoch`` (stage switches), ``step`` (one batch), ``end_epoch``
and its state; the loop owns the order of particles, the clock, the log and the checkpoints. Particle order is a
pure function of (seed, epoch), so a resumed run replays the same batches from where the checkpoint was taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from ..io.dataset import ParticleDataset, make_loader
from ..physics.ctf import CTFParams
from .run_dir import CHECKPOINT, MetricsLog, load_checkpoint, save_checkpoint


class Method(Protocol):
    """What a reconstruction method provides to the loop."""

    def stage(self, epoch: int) -> str: ...

    def begin_epoch(self, epoch: int) -> None: ...

    def step(self, batch: dict) -> dict[str, float]: ...

    def end_epoch(self, epoch: int) -> dict[str, float]: ...

    def density(self) -> Tensor: ...

    def poses(self) -> tuple[np.ndarray, np.ndarray | None]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class LoopConfig:
    epochs: int
    batch: int = 32
    seed: int = 0
    checkpoint_minutes: float = 5.0
    log_every: int = 20
    num_workers: int = 0
    rank: int = 0
    world: int = 1


class EpochSampler(Sampler[int]):
    """This rank's particles for one epoch, in a (seed, epoch)-determined order, from position ``start``."""

    def __init__(self, n: int, epoch: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        self.indices = order[rank::world][start:].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a :class:`ParticleDataset` batch to ``device`` (tensors and :class:`CTFParams`)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, (Tensor, CTFParams)):
            value = value.to(device=device)
        out[key] = value
    return out


def train(method: Method, dataset: ParticleDataset, run: Path, cfg: LoopConfig, device: torch.device,
          log: MetricsLog, *, resume: bool = False,
          on_epoch_end: Callable[[int, Method], dict] | None = None) -> None:
    """Run ``method`` over ``dataset`` for ``cfg.epochs`` epochs, resuming from ``run/checkpoint.pt`` if asked.

    Checkpoints are written every ``cfg.checkpoint_minutes`` and at the end of every epoch (only rank 0
    writes), so a killed run loses at most one interval. ``on_epoch_end(epoch, method)`` may return extra
    metrics (map writing, evaluation against a reference) that go to the log.
    """
    loop = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "loss_sum": 0.0}
    if resume:
        ckpt = load_checkpoint(run / CHECKPOINT, device)
        method.load_state_dict(ckpt["method"])
        loop = ckpt["loop"]
        torch.set_rng_state(ckpt["rng"])
        log.write(kind="resume", **loop)

    def checkpoint() -> None:
        if cfg.rank == 0:
            save_checkpoint(run / CHECKPOINT, {"method": method.state_dict(), "loop": dict(loop),
                                               "rng": torch.get_rng_state()})

    last_save = time.time()
    while loop["epoch"] < cfg.epochs:
        epoch = loop["epoch"]
        method.begin_epoch(epoch)
        sampler = EpochSampler(len(dataset), epoch, cfg.seed, loop["batch"] * cfg.batch, cfg.rank, cfg.world)
        loader = make_loader(dataset, cfg.batch, sampler=sampler, num_workers=cfg.num_workers)
        total = -(-len(dataset) // cfg.world // cfg.batch)
        bar = tqdm(loader, total=total, initial=loop["batch"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=cfg.rank != 0, leave=False)
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
            rate = seen / max(time.time() - t_epoch, 1e-9)
            bar.set_postfix(stage=method.stage(epoch), loss=f"{metrics.get('loss', float('nan')):.4g}",
                            img_s=f"{rate:.0f}")
            if loop["step"] % cfg.log_every == 0 and cfg.rank == 0:
                log.write(kind="step", epoch=epoch, step=loop["step"], stage=method.stage(epoch),
                          images_per_s=rate, **metrics)
            if time.time() - last_save > 60 * cfg.checkpoint_minutes:
                checkpoint()
                last_save = time.time()
        bar.close()
        record = {"kind": "epoch", "epoch": epoch, "stage": method.stage(epoch), "step": loop["step"],
                  "loss": loop["loss_sum"] / max(loop["batch"], 1), "train_seconds": round(loop["seconds"], 2),
                  "images_per_s": seen / max(time.time() - t_epoch, 1e-9)}
        record.update(method.end_epoch(epoch))
        loop["epoch"] += 1
        loop["batch"] = 0
        loop["loss_sum"] = 0.0
        if on_epoch_end is not None and cfg.rank == 0:
            record.update(on_epoch_end(epoch, method))
        if cfg.rank == 0:
            log.write(**record)
        checkpoint()
        last_save = time.time()
