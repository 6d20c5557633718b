"""Simulation: the demo molecule, atomic-model maps, SNR definition, and consistency with RELION."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.errors import InputError
from cryopose.io import read_particles
from cryopose.io.mrc import read_map
from cryopose.io.structure import read_structure
from cryopose.jobs.backproject import backproject
from cryopose.physics.density import model_to_map
from cryopose.physics.fourier import frequency_grid_2d
from cryopose.physics.fsc import fsc, fsc_resolution, soft_sphere_mask
from cryopose.physics.resample import resample_map
from cryopose.simulation.molecule import demo_structure
from cryopose.simulation.simulate import SimulationConfig, noise_power, simulate


def _coords(st):
    return np.array([a.pos.tolist() for r in st[0][0] for a in r])


def test_demo_molecule_is_deterministic_protein_sized_and_centred():
    a, b = _coords(demo_structure()), _coords(demo_structure())
    np.testing.assert_array_equal(a, b)
    assert 900 < len(a) < 1500  # ~20 kDa of heavy atoms
    extent = np.linalg.norm(a - a.mean(0), axis=1).max()
    assert 20 < extent < 35
    density = model_to_map(demo_structure(), 48, 1.5)
    z, y, x = np.indices(density.shape)
    w = np.clip(density, 0, None)
    centre = [(w * g).sum() / w.sum() for g in (z, y, x)]
    np.testing.assert_allclose(centre, [24, 24, 24], atol=0.5)
    # chiral: the map is not its own mirror image about the centre (a necessary condition)
    assert np.corrcoef(density.ravel(), density[::-1].ravel())[0, 1] < 0.5


@pytest.mark.parametrize("name", ["adk_open_4AKE_chainA_charmm.pdb", "adk_closed_1AKE_charmm.pdb"])
def test_charmm_models_read_as_the_chain_they_are(shared_data, name):
    """CHARMM's PDB files have no element columns, left-justified atom names (``CA`` read as calcium) and HSD/HSE
    histidines: read, they hold the heavy atoms of 4AKE chain A (the open and the closed adenylate kinase have the
    same sequence), with its radius of gyration for the open one."""
    def elements(st):
        return Counter(atom.element.name for chain in st[0] for residue in chain for atom in residue)

    def gyration(st):
        xyz = np.array([atom.pos.tolist() for chain in st[0] for residue in chain for atom in residue])
        return float(np.sqrt(((xyz - xyz.mean(0)) ** 2).sum(1).mean()))

    charmm, pdb = read_structure(shared_data / "models" / name), read_structure(shared_data / "models/4AKE.pdb",
                                                                                 chains=["A"])
    assert elements(charmm) == elements(pdb) == {"C": 1040, "O": 320, "N": 289, "S": 7}
    if "open" in name:
        assert gyration(charmm) == pytest.approx(gyration(pdb), rel=0.005)


def test_atomic_model_map_centre_and_chains(shared_data):
    st = read_structure(shared_data / "models/4AKE.pdb")
    assert {ch.name for ch in st[0]} == {"A", "B"}
    assert st[0].count_atom_sites() == 3312  # 3459 atoms less 147 waters
    only_a = read_structure(shared_data / "models/4AKE.pdb", chains=["A"])
    assert only_a[0].count_atom_sites() == 3312 // 2
    with pytest.raises(InputError, match="chain\\(s\\) Z not in the model"):
        read_structure(shared_data / "models/4AKE.pdb", chains=["Z"])
    density = model_to_map(st, 64, 2.0)
    w = np.clip(density, 0, None)
    centre = [(w * g).sum() / w.sum() for g in np.indices(density.shape)]
    np.testing.assert_allclose(centre, [32, 32, 32], atol=0.5)


def test_resample_map_keeps_the_centre_and_identity():
    rng = np.random.default_rng(0)
    blob = torch.zeros(32, 32, 32, dtype=torch.float64)
    blob[14:19, 15:18, 12:20] = torch.from_numpy(rng.random((5, 3, 8)))
    torch.testing.assert_close(resample_map(blob, 2.0, 32, 2.0), blob)
    up = resample_map(blob, 2.0, 64, 1.0)
    assert up.shape == (64, 64, 64)
    com = lambda v: np.array([(v.numpy() * g).sum() / v.sum().item() for g in np.indices(v.shape)])  # noqa
    np.testing.assert_allclose((com(up) - 32) / 2, com(blob) - 16, atol=0.1)


def test_simulated_stack_has_the_requested_snr(tmp_path):
    """Two data sets that differ only in their noise: their covariance is the signal, their difference the noise."""
    cfg = SimulationConfig(source="demo", box=32, apix=3.0, n=400, snr=0.2, shift_std_px=1.5, seed=3)
    a = simulate(cfg, tmp_path / "a")
    simulate(SimulationConfig(**{**cfg.__dict__, "noise_seed": 99}), tmp_path / "b")
    sa = read_map(tmp_path / "a/particles.mrcs").data.astype(np.float64)  # a stack reads as (N, D, D)
    sb = read_map(tmp_path / "b/particles.mrcs").data.astype(np.float64)
    ca, cb = sa - sa.mean(axis=(1, 2), keepdims=True), sb - sb.mean(axis=(1, 2), keepdims=True)
    signal = (ca * cb).mean(axis=(1, 2)).mean()
    noise = ((sa - sb) ** 2).mean() / 2
    assert signal / noise == pytest.approx(0.2, rel=0.05)
    assert a["measured_snr"] == pytest.approx(0.2, rel=1e-6)
    summary = json.loads((tmp_path / "a/simulation.json").read_text())
    assert summary["config"]["snr"] == 0.2
    assert "SNR 0.2" in (tmp_path / "a/particles.star").read_text().splitlines()[0]
    table = read_particles(tmp_path / "a/particles.star")
    assert len(table) == 400 and table.box == 32 and table.apix == 3.0
    assert table.shifts_A.std() == pytest.approx(1.5 * 3.0, rel=0.15)
    with mrcfile.open(tmp_path / "a/particles.mrcs", header_only=True) as mrc:  # header statistics of the stream
        h = mrc.header
        np.testing.assert_allclose([h.dmin, h.dmax, h.dmean, h.rms], [sa.min(), sa.max(), sa.mean(), sa.std()],
                                   rtol=1e-5)
        assert int(h.ispg) == 0 and float(mrc.voxel_size.x) == pytest.approx(3.0)
    with pytest.raises(InputError, match="already holds a simulated data set"):
        simulate(cfg, tmp_path / "a")


def test_backprojection_of_simulated_data_recovers_the_truth(tmp_path):
    """Simulator (padded projector) and backprojector agree on rotations, shifts and the CTF sign."""
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=1500, snr=10.0, shift_std_px=2.0), tmp_path)
    backproject(tmp_path / "particles.star", tmp_path / "bp.mrc", snr=10.0)
    truth, bp = read_map(tmp_path / "ground_truth.mrc").data, read_map(tmp_path / "bp.mrc").data
    freq, curve = fsc(bp, truth, 3.0, soft_sphere_mask(32))
    assert float(curve[1:13].min()) > 0.9, curve
    assert fsc_resolution(freq, curve, 0.5) < 6.5


def _shell_mean(values: torch.Tensor, apix: float) -> np.ndarray:
    """Mean of a centred ``(D, D)`` spectrum per integer frequency shell 1 … D/2 − 1."""
    box = values.shape[-1]
    shell = torch.round(frequency_grid_2d(box, apix, dtype=torch.float64).norm(dim=-1) * box * apix).long()
    inside = shell < box // 2
    return (torch.bincount(shell[inside], values[inside]) / torch.bincount(shell[inside]))[1:].numpy()


def _shell_power(images: np.ndarray, apix: float) -> np.ndarray:
    """Mean power of images ``(N, D, D)`` per integer frequency shell 1 … D/2 − 1."""
    spectra = torch.fft.fftshift(torch.fft.fft2(torch.from_numpy(images)), dim=(-2, -1))
    return _shell_mean(spectra.abs().square().mean(0), apix)


@pytest.mark.parametrize("spectrum", ["pink", "ice"])
def test_coloured_noise_has_the_requested_spectrum(spectrum, tmp_path):
    """Images that are all noise (SNR 1e-4) have the requested power per shell, at the variance of white noise."""
    cfg = SimulationConfig(source="demo", box=32, apix=1.5, n=400, snr=1e-4, noise_spectrum=spectrum, seed=2)
    summary = simulate(cfg, tmp_path)
    stack = read_map(tmp_path / "particles.mrcs").data.astype(np.float64)
    assert stack.var() == pytest.approx(summary["noise_sigma"] ** 2, rel=0.03)
    measured = _shell_power(stack, 1.5)
    expected = _shell_mean(torch.from_numpy(noise_power(spectrum, 32, 1.5)), 1.5)
    ratio = (measured / measured.mean()) / (expected / expected.mean())
    assert np.abs(ratio - 1).max() < 0.1, ratio
    # pink falls; ice has its ring at 3.7 Å (shell 13)
    assert (measured[-1] / measured[0] < 0.6) if spectrum == "pink" else (measured[12] / measured[2] > 1.5)
    assert f"noise spectrum {spectrum}" in (tmp_path / "particles.star").read_text()


def test_preferred_views_junk_and_signal_envelope(tmp_path):
    """Half of the particles viewed within 20° of z, a fifth of the images junk (half of them only noise) listed in
    simulation.json, and the signal damped by exp(−B k²/4) in amplitude with the truth left sharp."""
    cfg = SimulationConfig(source="demo", box=32, apix=3.0, n=1000, snr=100.0, seed=4, preferred_fraction=0.5,
                           junk_fraction=0.2)
    sharp = simulate(cfg, tmp_path / "sharp")
    simulate(SimulationConfig(**{**cfg.__dict__, "envelope_bfactor_A2": 100.0}), tmp_path / "damped")
    table = read_particles(tmp_path / "sharp/particles.star")
    view = np.degrees(np.arccos(np.clip(table.rotations[:, 2, 2], -1, 1)))  # third row · z
    assert 0.5 <= (view < 20).mean() <= 0.56  # the cone's share, plus the uniform half's ~3 %
    junk = np.array(sharp["junk_indices"])
    assert 0.17 < len(junk) / 1000 < 0.23
    stack = read_map(tmp_path / "sharp/particles.mrcs").data.astype(np.float64)
    quiet = stack.var(axis=(1, 2)) < 3 * sharp["noise_sigma"] ** 2  # images of noise only
    assert set(np.flatnonzero(quiet)) <= set(junk.tolist()) and 0.35 < quiet.sum() / len(junk) < 0.65
    keep = np.setdiff1d(np.arange(1000), junk)
    damped = read_map(tmp_path / "damped/particles.mrcs").data.astype(np.float64)[keep]
    k = np.arange(1, 16) / (32 * 3.0)  # shells 1 … 15
    ratio = _shell_power(damped, 3.0) / _shell_power(stack[keep], 3.0)
    np.testing.assert_allclose(ratio[1:8], np.exp(-100.0 * k[1:8] ** 2 / 2), rtol=0.1)  # shells 2 … 8
    np.testing.assert_array_equal(read_map(tmp_path / "sharp/ground_truth.mrc").data,
                                  read_map(tmp_path / "damped/ground_truth.mrc").data)


@pytest.mark.relion
@pytest.mark.parametrize("spectrum", ["white", "pink"])
def test_relion_reconstruct_agrees_on_our_simulation(relion, shared_data, tmp_path, spectrum):
    """relion_reconstruct --ctf on our particles.star reaches the resolution of our backprojection (±5 %), with
    white or coloured noise."""
    simulate(SimulationConfig(source=str(shared_data / "models/4AKE.pdb"), box=32, apix=4.0, n=2000,
                              snr=0.01, shift_std_px=1.5, noise_spectrum=spectrum), tmp_path)
    subprocess.run(["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf", "--angpix", "4.0"],
                   cwd=tmp_path, check=True, capture_output=True)
    backproject(tmp_path / "particles.star", tmp_path / "ours.mrc")
    truth = read_map(tmp_path / "ground_truth.mrc").data
    mask = soft_sphere_mask(32)
    curves = {name: fsc(read_map(tmp_path / f"{name}.mrc").data, truth, 4.0, mask) for name in ("relion", "ours")}
    res = {name: fsc_resolution(*curve, 0.5) for name, curve in curves.items()}
    assert res["relion"] > 9.0 and res["ours"] > 9.0, res  # the curves cross well before Nyquist (8 Å)
    assert res["ours"] == pytest.approx(res["relion"], rel=0.05), res
    shells = slice(1, int(0.8 * 16) + 1)
    assert float((curves["ours"][1][shells] - curves["relion"][1][shells]).abs().max()) < 0.05


@pytest.mark.relion
def test_relion_reads_our_star_from_the_parent_folder(relion, tmp_path, monkeypatch):
    """``relion_reconstruct --i sim/particles.star`` run beside sim/ finds the stack (paths from the cwd)."""
    monkeypatch.chdir(tmp_path)
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=200, snr=10.0), "sim")
    run = subprocess.run(["relion_reconstruct", "--i", "sim/particles.star", "--o", "out.mrc", "--ctf"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    truth, theirs = read_map("sim/ground_truth.mrc").data, read_map("out.mrc").data
    assert np.corrcoef(theirs.ravel(), truth.ravel())[0, 1] > 0.8  # 0.89 for seeds 0-2
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # and we still read it from another folder
    assert read_particles(tmp_path / "sim/particles.star").image_files[0] == str(tmp_path / "sim/particles.mrcs")
