"""``cryopose reconstruct``: ab initio reconstruction of a particle data set into a run directory
(:mod:`cryopose.io.run_files`)."""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..evaluate.compare import reference_on_grid
from ..evaluate.measure import Measure, epoch_evaluator, evaluator
from ..evaluate.symmetry import find_symmetry, fit_symmetry
from ..geometry.symmetry import point_group
from ..io.dataset import DataOptions, ParticleDataset, open_dataset
from ..io.mrc import write_map
from ..io.particles import ParticleTable
from ..io.run_files import HALF_MAPS, KEPT, LEFT_OUT, LOG, MAP, POSES
from ..io.star import write_star
from ..methods.backprojection import backproject_dataset
from ..methods.config import METHOD_CONFIGS, NOISE_MODELS, MethodConfig, flag_settings, parse_value
from ..methods.fit_score import fit_scores, worst
from ..methods.half_maps import LocalRefineConfig, local_refine
from ..methods.losses import signal_shell_rms
from ..methods.noise import initial_model, reference_sigma, residual_model, shell_profile
from ..methods.pseudo_symmetry import relax_pseudo_symmetry
from ..methods.search_supervised import SearchSupervised
from ..methods.semi_amortized import SemiAmortized
from ..physics.fsc import fsc, fsc_resolution, soft_sphere_mask
from ..train import distributed
from ..train.loop import LoopConfig, peak_memory, train
from ..train.run_dir import MetricsLog, prepare_run_dir, resolve_device

METHODS = {"semi-amortized": SemiAmortized, "search-supervised": SearchSupervised}


@dataclass(frozen=True)
class ReconstructOptions:
    """What ``cryopose reconstruct`` runs (see its ``--help``). ``method_options`` are fields of the method's
    config (:class:`SemiAmortizedConfig`, :class:`SearchSupervisedConfig`); the rest keep the method's default.
    ``epochs`` and ``batch`` (of the whole job under torchrun) default to the method's (None)."""

    method: str = "semi-amortized"
    epochs: int | None = None
    batch: int | None = None
    shifts: str = "auto"
    device: str = "auto"
    seed: int = 0
    checkpoint_minutes: float = 5.0
    workers: int = 0
    halves: bool = False
    relax_symmetry: bool = True
    local_rounds: int = 5
    noise_model: str = "shell"
    symmetry: str = "C1"
    exclude_worst: float = 0.0
    ref: str | os.PathLike | None = None
    method_options: dict = field(default_factory=dict)


def reconstruct(particles: str | os.PathLike, out: str | os.PathLike,
                options: ReconstructOptions = ReconstructOptions(), data: DataOptions = DataOptions(), *,
                resume: bool = False, force: bool = False) -> dict:
    """Run ab initio reconstruction into the run directory ``out``; returns a summary (also in the log).

    Started by ``torchrun`` it runs data-parallel (:mod:`cryopose.train.distributed`); ranks other than 0
    return an empty summary. After training, a pseudo-symmetric map has each particle choose between its pose
    and its mate (``relax_symmetry``, :mod:`cryopose.methods.pseudo_symmetry`); every pose is then refined locally
    against the half maps for ``local_rounds`` rounds (:func:`cryopose.methods.half_maps.local_refine`) and
    ``map.mrc`` is reconstructed from the final poses. With a point group (``symmetry``) training stays C1; the map
    is then brought into RELION's frame for the group (as ``relion_align_symmetry``), the poses with it, before the
    local refinement, whose half maps, ``map.mrc`` and the half maps written have the group imposed.
    """
    if options.method not in METHODS:
        raise InputError(None, f"unknown --method {options.method!r} (choose from {', '.join(METHODS)})")
    point_group(options.symmetry)  # an unknown group fails here, before any work
    if options.noise_model not in NOISE_MODELS:
        raise InputError(None, f"--noise-model takes {' or '.join(NOISE_MODELS)}, not '{options.noise_model}'")
    if not 0 <= options.exclude_worst < 1:
        raise InputError(None, f"--exclude-worst must be in [0, 1), not {options.exclude_worst}")
    with distributed.session(resolve_device(options.device)) as (ctx, device):
        table, dataset = open_dataset(particles, data)
        config = _configuration(particles, options, data, dataset, device, ctx.world)
        switch = options.method_options.get("switch_epoch") if resume else None  # a resume may move the switch
        config, resume = ctx.on_first(lambda: prepare_run_dir(out, config, resume=resume, force=force,
                                                              switch_epoch=switch))
        run, start = Path(out), time.time()
        log = MetricsLog(run / LOG)
        torch.manual_seed(config["seed"])
        model, sigma = _build_method(config, dataset, device)
        log.write(kind="noise", model=config.get("noise_model", "white"), sigma_per_shell=shell_profile(sigma))
        reference = None if config["reference"] is None else torch.tensor(
            reference_on_grid(config["reference"], dataset.box, dataset.pixel_size_A)[0])
        symmetry = config.get("symmetry", "C1")
        group = None if symmetry == "C1" or reference is None else fit_symmetry(reference, symmetry).elements()
        measure = evaluator(dataset.pixel_size_A, reference, table.rotations, table.shifts_A, symmetry=group)
        loop = LoopConfig(epochs=config["epochs"], batch=config["batch"], seed=config["seed"],
                          checkpoint_minutes=config["checkpoint_minutes"], num_workers=config["num_workers"])
        try:
            train(model, dataset, run, loop, device, log, resume=resume, ctx=ctx,
                  on_epoch_end=epoch_evaluator(run, dataset.pixel_size_A, measure))
        finally:  # free the DDP wrappers while the process group lives: a gloo group destroyed last by a
            # wrapper's reducer is torn down holding the GIL and can deadlock (pytorch/pytorch#56297)
            model.distribute(lambda module: module)
        if not ctx.first:  # rank 0 writes the outputs; every rank holds the merged poses and the same map
            return {}
        kept = model.kept()  # the particles training did not leave out as junk
        if not kept.all():
            log.write(kind="junk", left_out=int((~kept).sum()), share=round(float((~kept).mean()), 4))
        if config.get("noise_model", "white") == "shell":  # from the residuals under the trained map and poses
            sigma = residual_model(dataset, model.density().cpu(), *model.poses(), sigma, seed=config["seed"],
                                   device=device, keep=kept)
            log.write(kind="noise", model="residuals", sigma_per_shell=shell_profile(sigma))
        density, rotations, shifts, moved = _final_poses(model, dataset, sigma, measure, log, device,
                                                         config.get("relax_symmetry", True),
                                                         config.get("local_rounds", 0), symmetry, kept)
        scores = fit_scores(dataset, density, rotations, shifts, sigma, device=device)
        keep = kept & ~worst(scores, config.get("exclude_worst", 0.0))
        if not (keep == kept).all():  # the map without the particles that fit worst (junk)
            density, = backproject_dataset(dataset, rotations, shifts, weights=keep.astype(np.float32), device=device,
                                           symmetry=_imposed(symmetry))
            log.write(kind="exclude", excluded=int((~keep).sum()), score_below=float(scores[keep].min()),
                      **measure(density, rotations, shifts))
        summary = {"kind": "done", **_write_outputs(run, config, table, dataset, density, rotations, shifts,
                                                    scores, keep, options.halves, device)}
        summary["left_out_as_junk"] = int((~kept).sum())
        summary["seconds"] = round(time.time() - start, 1)
        summary.update(peak_memory(device))
        summary.update(_last_figures(log, moved))
        log.write(**summary)
        return summary


def _configuration(particles, options: ReconstructOptions, data: DataOptions, dataset: ParticleDataset,
                   device: torch.device, processes: int) -> dict:
    """The run's resolved configuration (``config.json``), the method's settings included."""
    shifts = options.shifts
    if shifts == "auto":  # centred data (shift columns all zero) need no shift search; anything else does
        known = dataset.table.shifts_A
        shifts = "off" if known is not None and not np.any(known) else "on"
    kind = METHOD_CONFIGS[options.method]
    try:
        method_cfg = replace(kind(**options.method_options), shifts=shifts == "on")
    except TypeError as err:
        raise InputError(None, f"--method {options.method}: {err}") from None
    return {"particles": str(Path(particles).resolve()), "method": options.method,
            "epochs": kind.epochs if options.epochs is None else options.epochs,
            "batch": kind.batch if options.batch is None else options.batch, "box": dataset.box,
            "apix_A": dataset.pixel_size_A, "invert": data.invert,
            "seed": options.seed, "device": str(device), "num_workers": options.workers,
            "checkpoint_minutes": options.checkpoint_minutes,
            "reference": None if options.ref is None else str(Path(options.ref).resolve()),
            "datadir": data.datadir, "options": asdict(method_cfg), "processes": processes,
            "relax_symmetry": options.relax_symmetry, "local_rounds": options.local_rounds,
            "noise_model": options.noise_model, "symmetry": options.symmetry.strip().upper(),
            "exclude_worst": options.exclude_worst}


def _build_method(config: dict, dataset: ParticleDataset, device: torch.device):
    """The method of ``config`` and the images' noise model ``(D, D)`` (:mod:`cryopose.methods.noise`), both from
    512 images (runs from before the noise models have the white one)."""
    sample = np.sort(np.random.default_rng(config["seed"]).choice(len(dataset), min(len(dataset), 512),
                                                                  replace=False))
    stats = dataset.__getitems__(sample)
    sigma = initial_model(config.get("noise_model", "white"), stats["images"])
    init_rms = signal_shell_rms(stats["images"], stats["ctf"], dataset.pixel_size_A, sigma, reference_sigma(sigma))
    model = METHODS[config["method"]](stored_config(config), len(dataset), dataset.box, dataset.pixel_size_A, sigma,
                                      device, seed=config["seed"], init_rms=init_rms)
    return model, sigma.to(device)  # on the device once: the refinements after training index it per batch


def _imposed(symmetry: str) -> torch.Tensor | None:
    """The point group ``symmetry`` ``(G, 3, 3)`` to impose on a map, None for C1."""
    return None if symmetry == "C1" else point_group(symmetry)


def _final_poses(model, dataset: ParticleDataset, sigma: torch.Tensor, measure: Measure, log: MetricsLog,
                 device: torch.device, relax: bool, local_rounds: int, symmetry: str = "C1",
                 kept: np.ndarray | None = None):
    """The trained map and poses; in C1 the pseudo-symmetry relaxation when ``relax`` (an exact symmetry is reported
    instead, with a warning suggesting ``--symmetry``); with a point group ``symmetry``, the map and poses brought
    into RELION's frame for it instead; then ``local_rounds`` rounds of local refinement against the half maps (with
    the group imposed), and the map reconstructed from the final poses (with the group). Each step is logged, and
    measured when it moved the poses. Only the particles ``kept`` ``(N,)`` (default all) enter the maps. Returns
    density ``(D, D, D)``, rotations ``(N, 3, 3)``, shifts ``(N, 2)`` Å or None, and the last record that moved the
    poses (else None)."""
    weights = None if kept is None else kept.astype(np.float32)
    density = model.density().cpu()
    rotations, shifts = model.poses()
    moved = None
    if symmetry == "C1" and relax:
        rotations, shifts, record = relax_pseudo_symmetry(dataset, density, rotations, shifts, sigma, device=device,
                                                          keep=kept)
        if record["exact"]:
            found = find_symmetry(density)
            record.update(group=found.group, group_correlation=found.correlations.get(found.group))
            if found.group != "C1":
                warnings.warn(f"the map has point group {found.group} (correlation "
                              f"{found.correlations[found.group]:.3f}), a symmetry the data cannot break: reconstruct "
                              f"with --symmetry {found.group}")
        if record["relaxed"]:
            density, = backproject_dataset(dataset, rotations, shifts, weights=weights, device=device)
            record.update(measure(density, rotations, shifts))
            moved = record
        log.write(kind="symmetry", **record)
    group = _imposed(symmetry)
    if group is not None:  # the trained map's axes onto RELION's frame for the group, the poses with them
        fit = fit_symmetry(density, symmetry)
        rotations, shifts = fit.alignment(dataset.pixel_size_A).transform_poses(rotations, shifts)
        density, = backproject_dataset(dataset, rotations, shifts, weights=weights, symmetry=group, device=device)
        moved = {"group": symmetry, "group_correlation": fit.correlations[symmetry], "imposed": True,
                 **measure(density, rotations, shifts)}
        log.write(kind="symmetry", **moved)
    if local_rounds:
        rotations, shifts, record = local_refine(dataset, rotations, shifts, sigma, LocalRefineConfig(local_rounds),
                                                 device, symmetry=group, keep=kept)
        density, = backproject_dataset(dataset, rotations, shifts, weights=weights, symmetry=group, device=device)
        moved = {**record, **measure(density, rotations, shifts)}
        log.write(kind="local_refinement", **moved)
    return density, rotations, shifts, moved


def _write_outputs(run: Path, config: dict, table: ParticleTable, dataset: ParticleDataset,
                   density: torch.Tensor, rotations: np.ndarray, shifts: np.ndarray | None, scores: np.ndarray,
                   keep: np.ndarray, halves: bool, device: torch.device) -> dict:
    """Write ``map.mrc``, ``poses.star`` (with each particle's fit score, :mod:`cryopose.methods.fit_score`) and,
    with ``halves``, the maps of the even and odd particles kept (``keep`` ``(N,)``) at the final poses (as in a
    gold-standard refinement) with their FSC resolution; returns what was written."""
    write_map(run / MAP, density.numpy(), dataset.pixel_size_A)
    result = replace(table, rotations=rotations, shifts_A=shifts if shifts is not None else np.zeros((len(table), 2)),
                     extra={**table.extra, "rlnLogLikeliContribution": scores,
                            "rlnClassNumber": np.where(keep, KEPT, LEFT_OUT)})
    write_star(run / POSES, result, comments=[f"cryopose reconstruct --method {config['method']}: estimated poses; "
                                              f"rlnLogLikeliContribution: fit score (larger is better); "
                                              f"rlnClassNumber: {KEPT} in map.mrc, {LEFT_OUT} left out (junk)"])
    written = {"map": str(run / MAP), "poses": str(run / POSES)}
    if halves:
        _, *half_maps = backproject_dataset(dataset, rotations, shifts, halves=True, device=device,
                                            weights=keep.astype(np.float32),
                                            symmetry=_imposed(config.get("symmetry", "C1")))
        for name, volume in zip(HALF_MAPS, half_maps):
            write_map(run / name, volume.numpy(), dataset.pixel_size_A)
        curve = fsc(*half_maps, dataset.pixel_size_A, soft_sphere_mask(dataset.box))
        written["resolution_halves_0.143_A"] = fsc_resolution(*curve, 0.143)
    return written


def _last_figures(log: MetricsLog, moved: dict | None) -> dict:
    """The resolution, pose and symmetry figures of the last epoch, or of the last step after training that moved
    the poses."""
    last = [r for r in log.records() if r.get("kind") == "epoch"] + ([moved] if moved else [])
    keys = ("resolution", "pose_", "shift_", "symmetry")
    return {k: v for k, v in last[-1].items() if k.startswith(keys)} if last else {}


def stored_config(config: dict) -> MethodConfig:
    """The method settings of a run's ``config.json`` as its method's config: lists there are tuples in the config,
    and a run started before the denoiser's SNR was named ``denoiser_snr`` has it as ``snr``."""
    options = {("denoiser_snr" if k == "snr" else k): tuple(v) if isinstance(v, list) else v
               for k, v in config["options"].items()}
    return METHOD_CONFIGS[config["method"]](**options)


def method_options(args: argparse.Namespace) -> dict:
    """The method's settings given on the command line: its flags, then each ``--option key=value``."""
    config = METHOD_CONFIGS[args.method]

    def parse(name: str, value, given: str):
        try:
            return parse_value(config, name, value) if isinstance(value, str) else value
        except ValueError as err:
            raise InputError(None, f"{given}: {err} (--method {args.method})") from None

    options = {}
    for s in flag_settings():
        value = getattr(args, s.name)
        if value is None:
            continue
        if args.method not in s.defaults:
            raise InputError(None, f"{s.flag} does not apply to --method {args.method}")
        options[s.name] = tuple(value) if isinstance(value, list) else parse(s.name, value, f"{s.flag} {value}")
    for text in args.option or []:
        key, sep, value = text.partition("=")
        if not sep:
            raise InputError(None, f"--option {text}: expected KEY=VALUE")
        name = key.strip().replace("-", "_")
        options[name] = parse(name, value.strip(), f"--option {text}")
    return options


def run(args: argparse.Namespace) -> None:
    """The job of the parsed ``cryopose reconstruct`` arguments; prints the summary."""
    options = ReconstructOptions(method=args.method, epochs=args.epochs, batch=args.batch, shifts=args.shifts,
                                 device=args.device, seed=args.seed, checkpoint_minutes=args.checkpoint_minutes,
                                 workers=args.workers, halves=args.halves, relax_symmetry=args.relax_symmetry,
                                 local_rounds=args.local_rounds, noise_model=args.noise_model,
                                 symmetry=args.symmetry,
                                 exclude_worst=args.exclude_worst, ref=args.ref,
                                 method_options=method_options(args))
    data = DataOptions(datadir=args.datadir, apix=args.apix, box=args.box, invert=args.invert)
    summary = reconstruct(args.particles, args.output, options, data, resume=args.resume, force=args.force)
    if summary:  # empty on the ranks other than 0 of a torchrun job
        print("\n".join(f"{k}: {v}" for k, v in summary.items() if k != "kind"))
