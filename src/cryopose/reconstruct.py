"""``cryopose reconstruct``: ab initio reconstruction of a particle data set into a run directory."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .backproject import backproject_dataset
from .errors import InputError
from .evaluate.align import align_maps
from .evaluate.fsc import fsc, fsc_resolution, soft_sphere_mask
from .evaluate.poses import pose_error
from .evaluate.run import reference_on_grid
from .io import read_particles
from .io.dataset import ParticleDataset
from .io.mrc import write_map
from .io.star import write_star
from .methods.losses import noise_sigma, signal_shell_rms
from .methods.pseudo_symmetry import relax_pseudo_symmetry
from .methods.search_supervised import SearchSupervised, SearchSupervisedConfig
from .methods.semi_amortized import SemiAmortized, SemiAmortizedConfig
from .train import distributed
from .train.loop import LoopConfig, peak_memory, train
from .train.run_dir import MetricsLog, prepare_run_dir, resolve_device

METHODS = {"semi-amortized": (SemiAmortized, SemiAmortizedConfig),
           "search-supervised": (SearchSupervised, SearchSupervisedConfig)}


def evaluator(apix: float, reference: torch.Tensor | None, truth_rotations: np.ndarray | None,
              truth_shifts: np.ndarray | None = None):
    """``measure(density, rotations, shifts=None) -> dict``: with a reference / true poses, the FSC-0.5
    resolution of the map ``(D, D, D)`` after alignment and the error of the poses ``(N, 3, 3)``; with a
    reference and true shifts too, the error of the shifts ``(N, 2)`` Å once moved with the map's alignment
    (its translation included); empty without either."""
    mask = None if reference is None else soft_sphere_mask(reference.shape[-1])

    def measure(density: torch.Tensor, rotations: np.ndarray, shifts: np.ndarray | None = None) -> dict:
        record, moved = {}, None
        if reference is not None:
            aligned, alignment = align_maps(density, reference, voxel_size_A=apix)
            record["resolution_0.5_A"] = fsc_resolution(*fsc(aligned, reference, apix, mask), 0.5)
            record["map_mirrored"] = alignment.mirrored
            if shifts is not None and truth_shifts is not None:
                moved = alignment.transform_poses(rotations, shifts)[1]
        if truth_rotations is not None:
            err = pose_error(rotations, truth_rotations, moved, truth_shifts)
            record.update(pose_error_mean_deg=err.rotation_mean_deg, pose_error_median_deg=err.rotation_median_deg,
                          pose_within_10deg=err.rotation_within_10deg)
            if err.shift_median_A is not None:
                record["shift_error_median_A"] = err.shift_median_A
        return record

    return measure


def epoch_evaluator(run: Path, apix: float, measure):
    """``on_epoch_end`` hook: writes ``maps/epoch_NNN.mrc`` and returns ``measure`` of the map and poses."""

    def hook(epoch: int, method) -> dict:
        density = method.density().cpu()
        write_map(run / "maps" / f"epoch_{epoch + 1:03d}.mrc", density.numpy(), apix)
        return measure(density, *method.poses())

    return hook


def reconstruct(particles: str | os.PathLike, out: str | os.PathLike, *, method: str = "semi-amortized",
                epochs: int = 20, batch: int = 32, box: int | None = None, datadir=None, apix: float | None = None,
                invert: bool = False, shifts: str = "auto", device: str = "auto", seed: int = 0,
                resume: bool = False, force: bool = False, ref: str | os.PathLike | None = None,
                checkpoint_minutes: float = 5.0, num_workers: int = 0, halves: bool = False,
                relax_symmetry: bool = True, options: dict | None = None) -> dict:
    """Run ab initio reconstruction; returns a summary (also in the log). See ``cryopose reconstruct --help``.

    ``options`` are settings of the method's config (:class:`SemiAmortizedConfig`,
    :class:`SearchSupervisedConfig`); anything not given keeps the method's default. Started by ``torchrun``,
    it runs data-parallel (:mod:`cryopose.train.distributed`); ``batch`` is then the batch of the whole job, and
    ranks other than 0 return an empty summary.

    ``relax_symmetry``: after training, when the map is pseudo-symmetric, let each particle choose between its
    pose and its mate (:mod:`cryopose.methods.pseudo_symmetry`); ``map.mrc`` is then reconstructed from the
    chosen poses.
    """
    if method not in METHODS:
        raise InputError(None, f"unknown --method {method!r} (choose from {', '.join(METHODS)})")
    with distributed.session(resolve_device(device)) as (ctx, dev):
        table = read_particles(particles, datadir=datadir, apix=apix)
        dataset = ParticleDataset(table, box=box, invert=invert)
        if shifts == "auto":  # centred data (shift columns all zero) need no shift search; anything else does
            shifts = "off" if table.shifts_A is not None and not np.any(table.shifts_A) else "on"
        method_cls, config_cls = METHODS[method]
        try:
            method_cfg = replace(config_cls(**(options or {})), shifts=shifts == "on")
        except TypeError as err:
            raise InputError(None, f"--method {method}: {err}") from None
        config = {"particles": str(Path(particles).resolve()), "method": method, "epochs": epochs, "batch": batch,
                  "box": dataset.box, "apix_A": dataset.pixel_size_A, "invert": invert, "seed": seed,
                  "device": str(dev), "num_workers": num_workers, "checkpoint_minutes": checkpoint_minutes,
                  "reference": None if ref is None else str(Path(ref).resolve()), "datadir": datadir,
                  "options": asdict(method_cfg), "processes": ctx.world,
                  "relax_symmetry": relax_symmetry}
        switch = (options or {}).get("switch_epoch") if resume else None  # a resume may move the switch
        config = ctx.on_first(lambda: prepare_run_dir(out, config, resume=resume, force=force,
                                                      switch_epoch=switch)[1])
        run = Path(out)
        log = MetricsLog(run / "log.jsonl")
        t0 = time.time()

        sample = np.sort(np.random.default_rng(seed).choice(len(dataset), min(len(dataset), 512), replace=False))
        stats = dataset.__getitems__(sample)
        sigma = noise_sigma(stats["images"])
        init_rms = signal_shell_rms(stats["images"], stats["ctf"], dataset.pixel_size_A, sigma)
        model = method_cls(config_cls(**config["options"]), len(dataset), dataset.box, dataset.pixel_size_A, sigma,
                           dev, seed=seed, init_rms=init_rms)
        reference = None if config["reference"] is None else torch.tensor(
            reference_on_grid(config["reference"], dataset.box, dataset.pixel_size_A)[0])
        measure = evaluator(dataset.pixel_size_A, reference, table.rotations, table.shifts_A)
        hook = epoch_evaluator(run, dataset.pixel_size_A, measure)
        loop = LoopConfig(epochs=config["epochs"], batch=config["batch"], seed=config["seed"],
                          checkpoint_minutes=config["checkpoint_minutes"], num_workers=config["num_workers"])
        if isinstance(model, SearchSupervised) and not resume:  # a resumed run has it in its checkpoint
            record = model.pretrain(dataset, seed=seed, ctx=ctx)
            if ctx.first:
                log.write(kind="pretrain", **record)
        try:
            train(model, dataset, run, loop, dev, log, resume=resume, ctx=ctx, on_epoch_end=hook)
        finally:  # free the DDP wrappers while the process group lives: a gloo group destroyed last by a
            # wrapper's reducer is torn down holding the GIL and can deadlock (pytorch/pytorch#56297)
            model.distribute(distributed.Context())
        if not ctx.first:  # rank 0 writes the outputs; every rank holds the merged poses and the same map
            return {}

        density = model.density().cpu()
        rotations, shift_est = model.poses()
        final = None
        if config.get("relax_symmetry", True):
            rotations, shift_est, final = relax_pseudo_symmetry(dataset, density, rotations, shift_est, sigma,
                                                                device=dev)
            if final["relaxed"]:
                density, = backproject_dataset(dataset, rotations, shift_est, device=dev)
                final.update(measure(density, rotations, shift_est))
            log.write(kind="symmetry", **final)
        write_map(run / "map.mrc", density.numpy(), dataset.pixel_size_A)
        result = replace(table, rotations=rotations, shifts_A=shift_est if shift_est is not None
                         else np.zeros((len(table), 2)))
        write_star(run / "poses.star", result, comments=[f"cryopose reconstruct --method {method}: estimated poses"])
        summary = {"kind": "done", "seconds": round(time.time() - t0, 1), "map": str(run / "map.mrc"),
                   "poses": str(run / "poses.star")}
        if halves:  # even / odd particles reconstructed at the final poses, as in a gold-standard refinement
            _, *half_maps = backproject_dataset(dataset, rotations, shift_est, halves=True, device=dev)
            for i, volume in enumerate(half_maps, 1):
                write_map(run / f"map_half{i}.mrc", volume.numpy(), dataset.pixel_size_A)
            curve = fsc(*half_maps, dataset.pixel_size_A, soft_sphere_mask(dataset.box))
            summary["resolution_halves_0.143_A"] = fsc_resolution(*curve, 0.143)
        summary.update(peak_memory(dev))
        last = [r for r in log.records() if r.get("kind") == "epoch"]
        if final is not None and final["relaxed"]:
            last.append(final)
        if last:
            keys = ("resolution", "pose_", "shift_", "symmetry")
            summary.update({k: v for k, v in last[-1].items() if k.startswith(keys)})
        log.write(**summary)
        return summary
