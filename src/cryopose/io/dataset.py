"""``ParticleDataset``: batches of images + CTF + optional poses, streamed from memory-mapped stacks."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import InputError
from ..physics.fourier import fourier_resize
from . import read_particles
from .mrc import StackReader, stack_info
from .particles import ParticleTable


def check_stacks(table: ParticleTable) -> None:
    """Check that every referenced stack exists, is a complete MRC file of the right box, and holds every index;
    warn when a stack's header pixel size disagrees with the metadata's.

    Reads one header per stack file (not per particle); raises :class:`InputError` naming the file.
    """
    files, inverse = np.unique(table.image_files.astype(str), return_inverse=True)
    top = np.zeros(len(files), dtype=np.int64)
    np.maximum.at(top, inverse, table.image_indices)
    for f, last in zip(files, top):
        path = Path(f)
        if not path.is_file():
            raise InputError(table.source, f"image stack {f} not found (use --datadir to say where stacks are)")
        info = stack_info(path)
        if last >= info.n_images:
            raise InputError(table.source, f"image {last + 1} of {f} requested but the stack has "
                                           f"{info.n_images} images")
        if table.box and info.box != table.box:
            raise InputError(path, f"box {info.box} px differs from the metadata's {table.box} px")
        apix = float(np.median(table.pixel_size_A)) if len(table) else 0.0
        if info.voxel_size_A > 0 and apix > 0 and abs(info.voxel_size_A / apix - 1) > 0.01:
            warnings.warn(f"{path}: header pixel size {info.voxel_size_A:.4g} Å differs from the particles' "
                          f"{apix:.4g} Å; using {apix:.4g} Å as RELION does (set it with --apix)", stacklevel=2)


class ParticleDataset(Dataset):
    """Particle images with their metadata, read a batch at a time.

    Items are dicts: ``images`` ``(B, d, d)`` float32, ``index`` ``(B,)`` int64 (row in the table), ``ctf``
    (:class:`~cryopose.physics.ctf.CTFParams`, float32) when the table has CTF, and ``rotations`` ``(B, 3, 3)`` /
    ``shifts_A`` ``(B, 2)`` when it has poses. Use :func:`make_loader` to batch it (``__getitems__`` reads a
    whole batch per stack file at once).

    Args:
        table: the particle metadata.
        box: Fourier-crop images to this even box (pixel size grows by ``table.box / box``); None keeps them.
        invert: multiply images by −1 (for data whose protein is dark).
        normalize: subtract the mean and divide by the standard deviation measured on up to 1,000 images.
        require_ctf: raise an InputError when the table has no CTF.
    """

    def __init__(self, table: ParticleTable, box: int | None = None, invert: bool = False,
                 normalize: bool = True, require_ctf: bool = True, seed: int = 0):
        check_stacks(table)
        if require_ctf:
            table.require_ctf()
        self.table = table
        self.source_box = table.box
        self.box = box or table.box
        if self.box > self.source_box or self.box % 2:
            raise InputError(table.source, f"--box {self.box} must be even and at most the images' "
                                           f"{self.source_box} px")
        self.pixel_size_A = table.apix * self.source_box / self.box
        self.sign = -1.0 if invert else 1.0
        self._reader = StackReader()
        self._ctf = None if table.ctf is None else table.ctf_params().to(dtype=torch.float32)
        self.mean, self.std = 0.0, 1.0
        if normalize:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(len(table), size=min(len(table), 1000), replace=False))
            images = self._images(sample)
            self.mean, self.std = float(images.mean()), float(images.std())

    def __len__(self) -> int:
        return len(self.table)

    def _images(self, index: np.ndarray) -> torch.Tensor:
        raw = self._reader.read(self.table.image_files[index], self.table.image_indices[index])
        images = torch.from_numpy(raw) * self.sign
        return fourier_resize(images, self.box, 2)

    def __getitems__(self, indices) -> dict:
        index = np.asarray(indices, dtype=np.int64)
        batch = {"images": (self._images(index) - self.mean) / self.std, "index": torch.from_numpy(index)}
        if self._ctf is not None:
            batch["ctf"] = self._ctf[torch.from_numpy(index)]
        if self.table.rotations is not None:
            batch["rotations"] = torch.from_numpy(self.table.rotations[index]).float()
        if self.table.shifts_A is not None:
            batch["shifts_A"] = torch.from_numpy(self.table.shifts_A[index]).float()
        return batch

    def __getitem__(self, i: int) -> dict:
        batch = self.__getitems__([i])
        return {k: v[0] for k, v in batch.items()}


def _keep_batch(batch: dict) -> dict:
    return batch


def make_loader(dataset: ParticleDataset, batch_size: int | None = None, shuffle: bool = False,
                num_workers: int = 0, seed: int = 0, sampler: Sampler | None = None, drop_last: bool = False,
                batch_sampler: Sampler[list[int]] | None = None) -> DataLoader:
    """A DataLoader yielding the batch dicts of :class:`ParticleDataset` (reproducible shuffling by ``seed``);
    ``batch_sampler`` gives the batches themselves instead of ``batch_size``/``sampler``."""
    generator = torch.Generator().manual_seed(seed)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=_keep_batch,
                          persistent_workers=num_workers > 0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, collate_fn=_keep_batch, generator=generator,
                      drop_last=drop_last, persistent_workers=num_workers > 0)


@dataclass(frozen=True)
class DataOptions:
    """How a job reads particles: ``datadir`` holds the image stacks (default: see :func:`read_particles`),
    ``apix`` (Å) overrides the file's pixel size, images are Fourier-cropped to ``box`` (px) and multiplied by
    −1 with ``invert``."""

    datadir: str | None = None
    apix: float | None = None
    box: int | None = None
    invert: bool = False


def open_dataset(path: str | os.PathLike, data: DataOptions = DataOptions(),
                 normalize: bool = True) -> tuple[ParticleTable, ParticleDataset]:
    """The particle table of a .star/.cs/.pkl file and its :class:`ParticleDataset`."""
    table = read_particles(path, datadir=data.datadir, apix=data.apix)
    return table, ParticleDataset(table, box=data.box, invert=data.invert, normalize=normalize)
