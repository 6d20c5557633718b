"""``cryopose simulate``: particle images with known poses, CTF and noise, written as RELION 3.1 data.

Image formation (DESIGN §3): the ground-truth map is projected with RELION's padded projector (gridding
correction, 2× zero-padding, trilinear slices of the finer spectrum) — a more accurate operator than the
unpadded trilinear slices the reconstruction models use, so the data are not an "inverse crime". Then the CTF,
the shift, and Gaussian noise of one level for the whole data set:
``SNR = mean_i var(clean_i) / σ²`` (variances over the full box).

Toward real data (each recorded in ``simulation.json`` and the STAR header, none in the STAR's CTF columns): a
signal envelope ``exp(−B k²/4)`` on the images (``envelope_bfactor_A2``; the truth stays sharp); coloured noise
(``noise_spectrum``: its power per frequency, scaled to the same variance as white noise); preferred views (a
share of the particles viewed within a cone about the z axis); junk (a share of the images hold no particle: only
noise, or a Gaussian blob seen through their CTF, with the particle's variance), listed in ``junk_indices``.
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
from ..geometry.rotations import relion_euler_to_matrix
from ..io.atomic import atomic_path
from ..io.mrc import read_map, write_map
from ..io.particles import ParticleTable
from ..io.star import write_star
from ..io.structure import read_structure
from ..physics.ctf import compute_ctf
from ..physics.density import model_to_map
from ..physics.fourier import fft2_centered, frequency_grid_2d, ifft2_centered
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
    envelope_bfactor_A2: float = 0.0
    noise_spectrum: str = "white"
    preferred_fraction: float = 0.0
    preferred_within_deg: float = 20.0
    junk_fraction: float = 0.0


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


def random_rotations(n: int, rng: np.random.Generator, preferred_fraction: float = 0.0,
                     within_deg: float = 20.0) -> np.ndarray:
    """``(n, 3, 3)`` rotations uniform on SO(3) (normalised Gaussian quaternions), except a random
    ``preferred_fraction`` of them whose viewing direction (third row) is uniform in the cone of ``within_deg``
    about the z axis, with a uniform in-plane angle."""
    from ..geometry.so3_grid import quaternion_to_matrix

    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rotations = quaternion_to_matrix(torch.from_numpy(q)).numpy()
    if preferred_fraction <= 0:
        return rotations  # the random stream as it always was
    chosen = rng.random(n) < preferred_fraction
    k = int(chosen.sum())
    tilt = np.arccos(rng.uniform(np.cos(np.radians(within_deg)), 1.0, k))
    rot, psi = rng.uniform(0, 2 * np.pi, (2, k))
    rotations[chosen] = relion_euler_to_matrix(*(torch.from_numpy(a) for a in (rot, tilt, psi))).numpy()
    return rotations


def noise_power(spectrum: str, box: int, apix: float) -> np.ndarray:
    """Relative noise power ``(D, D)`` on the centred FFT grid, mean 1 (white noise of the same variance):
    ``white``; ``pink``, falling as ``1 / (1 + 30 Å · k)``; ``ice``, white plus a ring of 3× the power at
    1/3.7 Å (width 0.01 Å⁻¹; absent when Nyquist is coarser); or a CSV file of ``frequency_per_A,power`` rows,
    interpolated."""
    k = frequency_grid_2d(box, apix, dtype=torch.float64).norm(dim=-1).numpy()
    if spectrum == "white":
        power = np.ones_like(k)
    elif spectrum == "pink":
        power = 1.0 / (1.0 + 30.0 * k)
    elif spectrum == "ice":
        power = 1.0 + 3.0 * np.exp(-0.5 * ((k - 1 / 3.7) / 0.01) ** 2)
    else:
        path = Path(spectrum)
        try:
            table = np.loadtxt(path, delimiter=",", ndmin=2, comments="#")
        except (OSError, ValueError) as err:
            raise InputError(path, f"--noise-spectrum: white, pink, ice or a CSV of frequency_per_A,power rows "
                                   f"({err})") from None
        if table.shape[1] != 2 or np.any(table[:, 1] <= 0) or np.any(np.diff(table[:, 0]) <= 0):
            raise InputError(path, "--noise-spectrum CSV needs rows 'frequency_per_A,power' with increasing "
                                   "frequencies and positive powers")
        power = np.interp(k, table[:, 0], table[:, 1])
    return power / power.mean()


def random_ctf(cfg: SimulationConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-particle CTF parameters: defocus U uniform in the range, V = U − uniform(0, astigmatism)."""
    n = cfg.n
    du = rng.uniform(cfg.defocus_min_um, cfg.defocus_max_um, n) * 1e4
    return {"defocus_u_A": du, "defocus_v_A": du - rng.uniform(0, cfg.astigmatism_max_A, n),
            "defocus_angle_rad": rng.uniform(0, np.pi, n), "voltage_kV": np.full(n, cfg.voltage_kV),
            "cs_mm": np.full(n, cfg.cs_mm), "amplitude_contrast": np.full(n, cfg.amplitude_contrast),
            "phase_shift_rad": np.zeros(n), "bfactor_A2": np.zeros(n), "scale": np.ones(n)}


def _filtered(images: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Real images ``(B, D, D)`` with their centred spectra multiplied by ``gain`` (``(D, D)`` or ``(B, D, D)``)."""
    return ifft2_centered(fft2_centered(images) * gain).real.to(images.dtype)


def _junk(ctf, cfg: SimulationConfig, rng: np.random.Generator, kinds: np.ndarray) -> torch.Tensor:
    """Junk images ``(B, D, D)`` before scaling: zeros (kind 0: only noise will remain) or a Gaussian blob
    (σ = D/8 px, centred within D/4 px of the middle) seen through the CTF ``ctf`` (kind 1)."""
    j = torch.arange(cfg.box, dtype=torch.float64) - cfg.box // 2
    y, x = torch.meshgrid(j, j, indexing="ij")
    centre = torch.from_numpy(rng.uniform(-cfg.box / 4, cfg.box / 4, (len(kinds), 2)))
    blob = torch.exp(-((x - centre[:, 0, None, None]) ** 2 + (y - centre[:, 1, None, None]) ** 2)
                     / (2 * (cfg.box / 8) ** 2))
    blob = _filtered(blob, compute_ctf(ctf, cfg.box, cfg.apix, dtype=torch.float64))
    return blob * torch.from_numpy(kinds == 1)[:, None, None]


def _clean_batches(volume: torch.Tensor, table: ParticleTable, cfg: SimulationConfig, junk: np.ndarray,
                   rng: np.random.Generator, desc: str):
    """Yield ``(start, clean images (B, D, D))`` over the data set (in the volume's dtype): the particles with the
    signal envelope, and the junk images (``junk`` ``(N,)``: −1 for a particle, else the kind) scaled to the
    particles' mean variance in their batch."""
    ctf = table.ctf_params().to(dtype=volume.dtype)
    rotations = torch.from_numpy(table.rotations).to(volume.dtype)
    shifts = torch.from_numpy(table.shifts_A).to(volume.dtype)
    k2 = frequency_grid_2d(cfg.box, cfg.apix, dtype=torch.float64).square().sum(-1)
    envelope = torch.exp(-cfg.envelope_bfactor_A2 * k2 / 4)
    for start in progress(range(0, cfg.n, cfg.batch), desc=desc, unit="batch"):
        sel = slice(start, min(start + cfg.batch, cfg.n))
        images = render(volume, rotations[sel], cfg.apix, ctf=ctf[sel], shifts_A=shifts[sel], box=cfg.box)
        if cfg.envelope_bfactor_A2:
            images = _filtered(images, envelope)
        bad = junk[sel] >= 0
        if bad.any():
            good = images[torch.from_numpy(~bad)]
            level = float(good.var(dim=(-2, -1)).mean().sqrt()) if len(good) else 1.0
            fake = _junk(ctf[sel][torch.from_numpy(bad)].to(dtype=torch.float64), cfg, rng, junk[sel][bad])
            std = fake.std(dim=(-2, -1), keepdim=True)
            images[torch.from_numpy(bad)] = (fake * level / torch.where(std > 0, std, 1.0)).to(images.dtype)
        yield start, images


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
    if not (0 <= cfg.junk_fraction < 1 and 0 <= cfg.preferred_fraction <= 1 and cfg.envelope_bfactor_A2 >= 0):
        raise InputError(None, "--junk must be in [0, 1), --preferred-fraction in [0, 1] and "
                               "--envelope-bfactor >= 0")
    power = torch.from_numpy(noise_power(cfg.noise_spectrum, cfg.box, cfg.apix))
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
    extra = np.random.default_rng([cfg.seed, 1])  # views and junk: the default data set stays as it was
    if cfg.preferred_fraction:
        table.rotations = random_rotations(cfg.n, extra, cfg.preferred_fraction, cfg.preferred_within_deg)
    junk = np.where(extra.random(cfg.n) < cfg.junk_fraction, extra.integers(0, 2, cfg.n), -1)
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
            for start, images in _clean_batches(volume, table, cfg, junk, extra, "projecting"):
                f.seek(offset + start * row)
                f.write(images.numpy().astype(dtype).tobytes())
                variance += float(images.double().var(dim=(-2, -1)).sum())
            variance /= cfg.n
            sigma = float(np.sqrt(variance / cfg.snr))
            for start in range(0, cfg.n, cfg.batch):  # pass 2: one noise level for the whole data set
                count = min(cfg.batch, cfg.n - start) * cfg.box * cfg.box
                f.seek(offset + start * row)
                block = np.fromfile(f, dtype=dtype, count=count)
                noise = torch.randn(count, generator=noise_rng) * sigma
                if cfg.noise_spectrum != "white":
                    noise = _filtered(noise.double().view(-1, cfg.box, cfg.box), power.sqrt()).flatten()
                block += noise.numpy().astype(dtype)
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
               "measured_snr": variance / sigma**2, "junk_indices": np.flatnonzero(junk >= 0).tolist(),
               "seconds": round(time.time() - t0, 2),
               "files": {"particles": "particles.mrcs", "star": "particles.star", "truth": "ground_truth.mrc"}}
    write_star(out / "particles.star", table, comments=[
        f"cryopose simulate: SNR {cfg.snr:g} (mean clean-image variance / noise variance over the full box)",
        f"noise sigma {sigma:.6g}, seed {cfg.seed}, source {cfg.source}",
        f"noise spectrum {cfg.noise_spectrum}, signal envelope B {cfg.envelope_bfactor_A2:g} A^2, junk "
        f"{int((junk >= 0).sum())} images ({cfg.junk_fraction:g}), preferred views {cfg.preferred_fraction:g} "
        f"within {cfg.preferred_within_deg:g} deg of z"])
    with atomic_path(out / "simulation.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary

