"""``cryopose simulate``: particle images with known poses, CTF and noise, written as RELION 3.1 data.

Image formation (DESIGN §3): the ground-truth map is projected with RELION's padded projector (gridding
correction, 2× zero-padding, trilinear slices of the finer spectrum) — a more accurate operator than the
unpadded trilinear slices the reconstruction models use, so the data are not an "inverse crime". Then the CTF,
the shift, and white Gaussian noise of one level for the whole data set:
``SNR = mean_i var(clean_i) / σ²`` (variance over the full box).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import torch

from ..errors import InputError, OutputError
from ..io.atomic import atomic_path
from ..io.mrc import read_map, write_map
from ..io.particles import ParticleTable
from ..io.star import write_star
from ..io.structure import read_structure
from ..physics.density import model_to_map
from ..physics.projection import projection_volume, render
from ..physics.resample import resample_map
from ..progress import progress
from .molecule import demo_structure

_STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".cif.gz")


@dataclass
class SimulationConfig:
    """Parameters of a simulated data set (units in the names)."""

    source: str
    box: int = 64
    apix: float = 2.0
    n: int = 10000
    snr: float = 0.1
    shift_std_px: float = 0.0
    defocus_min_um: float = 1.0
    defocus_max_um: float = 2.5
    astigmatism_max_A: float = 200.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor_A2: float = 0.0
    seed: int = 0
    chains: list[str] = field(default_factory=list)
    map_apix: float | None = None
    noise_seed: int | None = None  # default: seed + 1
    batch: int = 256


def ground_truth_map(cfg: SimulationConfig) -> np.ndarray:
    """The ``(box, box, box)`` map to project: the demo molecule, an atomic model, or a resampled map."""
    if cfg.box % 2 or cfg.box < 8:
        raise InputError(None, f"--box {cfg.box} must be an even number of pixels >= 8")
    if cfg.source == "demo":
        return model_to_map(demo_structure(), cfg.box, cfg.apix, bfactor=cfg.bfactor_A2)
    path = Path(cfg.source)
    if path.name.lower().endswith(_STRUCTURE_SUFFIXES):
        return model_to_map(read_structure(path, cfg.chains or None), cfg.box, cfg.apix, bfactor=cfg.bfactor_A2)
    m = read_map(path, voxel_size_A=cfg.map_apix)
    if m.voxel_size_A <= 0:
        raise InputError(path, "the map header has no voxel size; pass --map-apix")
    return resample_map(torch.from_numpy(m.data).double(), m.voxel_size_A, cfg.box,
                        cfg.apix).float().numpy()


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    from ..geometry.so3_grid import quaternion_to_matrix

    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return quaternion_to_matrix(torch.from_numpy(q)).numpy()


def random_ctf(cfg: SimulationConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-particle CTF parameters: defocus U uniform in the range, V = U − uniform(0, astigmatism)."""
    n = cfg.n
    du = rng.uniform(cfg.defocus_min_um, cfg.defocus_max_um, n) * 1e4
    return {"defocus_u_A": du, "defocus_v_A": du - rng.uniform(0, cfg.astigmatism_max_A, n),
            "defocus_angle_rad": rng.uniform(0, np.pi, n), "voltage_kV": np.full(n, cfg.voltage_kV),
            "cs_mm": np.full(n, cfg.cs_mm), "amplitude_contrast": np.full(n, cfg.amplitude_contrast),
            "phase_shift_rad": np.zeros(n), "bfactor_A2": np.zeros(n), "scale": np.ones(n)}


def _clean_batches(volume: torch.Tensor, table: ParticleTable, cfg: SimulationConfig, desc: str):
    """Yield ``(start, clean images (B, D, D))`` over the data set (in the volume's dtype)."""
    ctf = table.ctf_params().to(dtype=volume.dtype)
    rotations = torch.from_numpy(table.rotations).to(volume.dtype)
    shifts = torch.from_numpy(table.shifts_A).to(volume.dtype)
    for start in progress(range(0, cfg.n, cfg.batch), desc=desc, unit="batch"):
        sel = slice(start, min(start + cfg.batch, cfg.n))
        yield start, render(volume, rotations[sel], cfg.apix, ctf=ctf[sel], shifts_A=shifts[sel], box=cfg.box)


def simulate(cfg: SimulationConfig, out_dir: str | os.PathLike, force: bool = False) -> dict:
    """Simulate a data set into ``out_dir``; returns the summary also written to ``simulation.json``.

    Writes ``particles.mrcs`` (streamed batch by batch, never held in memory), ``particles.star``
    (RELION 3.1 with the true poses, shifts and CTF; the SNR in its header), ``ground_truth.mrc`` and
    ``simulation.json``. The clean images go to the stack first; their mean variance then sets the one noise
    level that gives exactly the requested SNR, and the noise is added in a second pass over the stack.
    """
    out = Path(out_dir)
    if (out / "particles.star").exists() and not force:
        raise InputError(out, "already holds a simulated data set; pass --force to overwrite it")
    if cfg.n < 1 or cfg.snr <= 0:
        raise InputError(None, "--n must be >= 1 and --snr > 0")
    t0 = time.time()
    rng = np.random.default_rng(cfg.seed)
    truth = ground_truth_map(cfg)
    out.mkdir(parents=True, exist_ok=True)
    need = cfg.n * cfg.box * cfg.box * 4 + 2 * truth.nbytes
    if shutil.disk_usage(out).free < need:
        raise OutputError(out, f"not enough free disk space for {need / 2**30:.2f} GiB of particles")
    write_map(out / "ground_truth.mrc", truth, cfg.apix)

    stack = (out / "particles.mrcs").resolve()
    table = ParticleTable(
        source=out / "particles.star", image_files=np.full(cfg.n, str(stack), dtype=object),
        image_indices=np.arange(cfg.n), box=cfg.box, pixel_size_A=np.full(cfg.n, cfg.apix),
        ctf=random_ctf(cfg, rng), rotations=random_rotations(cfg.n, rng),
        shifts_A=rng.normal(scale=cfg.shift_std_px, size=(cfg.n, 2)) * cfg.apix)
    volume = projection_volume(torch.from_numpy(truth).double()).float()

    noise_rng = torch.Generator().manual_seed(cfg.seed + 1 if cfg.noise_seed is None else cfg.noise_seed)
    with atomic_path(stack) as tmp:
        with mrcfile.new_mmap(tmp, shape=(cfg.n, cfg.box, cfg.box), mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()  # header and a sparse file of the full size; the data go through plain I/O
            mrc.voxel_size = cfg.apix
            offset, dtype = mrc.header.nbytes + int(mrc.header.nsymbt), mrc.data.dtype
        row = cfg.box * cfg.box * dtype.itemsize
        stats = np.array([np.inf, -np.inf, 0.0, 0.0])  # min, max, sum, sum of squares (header statistics)
        with open(tmp, "r+b") as f:
            variance = 0.0  # pass 1: clean images into the stack, and their mean variance
            for start, images in _clean_batches(volume, table, cfg, "projecting"):
                f.seek(offset + start * row)
                f.write(images.numpy().astype(dtype).tobytes())
                variance += float(images.double().var(dim=(-2, -1)).sum())
            variance /= cfg.n
            sigma = float(np.sqrt(variance / cfg.snr))
            for start in range(0, cfg.n, cfg.batch):  # pass 2: one noise level for the whole data set
                count = min(cfg.batch, cfg.n - start) * cfg.box * cfg.box
                f.seek(offset + start * row)
                block = np.fromfile(f, dtype=dtype, count=count)
                block += (torch.randn(count, generator=noise_rng) * sigma).numpy()
                f.seek(offset + start * row)
                f.write(block.tobytes())
                wide = block.astype(np.float64)
                stats = np.array([min(stats[0], wide.min()), max(stats[1], wide.max()),
                                  stats[2] + wide.sum(), stats[3] + np.square(wide).sum()])
        total = cfg.n * cfg.box * cfg.box
        with mrcfile.mmap(tmp, mode="r+") as mrc:  # header only: the data pages are never touched
            mean = stats[2] / total
            mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = stats[0], stats[1], mean
            mrc.header.rms = np.sqrt(max(stats[3] / total - mean**2, 0.0))
    summary = {"config": asdict(cfg), "signal_variance": variance, "noise_sigma": sigma,
               "measured_snr": variance / sigma**2, "seconds": round(time.time() - t0, 2),
               "files": {"particles": "particles.mrcs", "star": "particles.star", "truth": "ground_truth.mrc"}}
    write_star(out / "particles.star", table, comments=[
        f"cryopose simulate: SNR {cfg.snr:g} (mean clean-image variance / noise variance over the full box)",
        f"noise sigma {sigma:.6g}, seed {cfg.seed}, source {cfg.source}"])
    with atomic_path(out / "simulation.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary

