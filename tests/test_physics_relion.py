"""Pin rotations, shifts, CTF and reconstruction against RELION 3.1 (``relion_project``, ``relion_reconstruct``).

Conventions pinned here: pose ``R = relion_euler_to_matrix(rot, tilt, psi)`` and image frequency ``q`` samples the
volume spectrum at ``Rᵀ q``; ``(rlnOriginXAngst, rlnOriginYAngst) = t`` puts the particle centre at ``−t``; the
CTF is RELION's (sign included); an image is the line integral of the map in voxel units, as RELION's.
"""

from __future__ import annotations

import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import roma
import starfile
import torch
import torch.nn.functional as F

from cryopose.geometry.rotations import matrix_to_relion_euler, relion_euler_to_matrix
from cryopose.physics.backproject import BackprojectionAccumulator
from cryopose.physics.ctf import CTFParams
from cryopose.physics.fsc import fsc, fsc_resolution
from cryopose.physics.projection import projection_volume, render

pytestmark = pytest.mark.relion
VOLTAGE, CS, W = 300.0, 2.7, 0.1


def _write_star(path, box, apix, rot, tilt, psi, shifts, du, dv, dang, phase, image_names=None):
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [apix],
        "rlnImageSize": [box], "rlnImageDimensionality": [2], "rlnVoltage": [VOLTAGE],
        "rlnSphericalAberration": [CS], "rlnAmplitudeContrast": [W],
    })
    columns = {} if image_names is None else {"rlnImageName": image_names}
    columns.update({
        "rlnAngleRot": np.rad2deg(rot), "rlnAngleTilt": np.rad2deg(tilt), "rlnAnglePsi": np.rad2deg(psi),
        "rlnOriginXAngst": shifts[:, 0], "rlnOriginYAngst": shifts[:, 1], "rlnDefocusU": du, "rlnDefocusV": dv,
        "rlnDefocusAngle": np.rad2deg(dang), "rlnPhaseShift": np.rad2deg(phase), "rlnOpticsGroup": 1,
    })
    starfile.write({"optics": optics, "particles": pd.DataFrame(columns)}, path, overwrite=True)


def _ctf(du, dv, dang, phase) -> CTFParams:
    n = len(du)
    return CTFParams.from_arrays(defocus_u_A=du, defocus_v_A=dv, defocus_angle_rad=dang, phase_shift_rad=phase,
                                 voltage_kV=np.full(n, VOLTAGE), cs_mm=np.full(n, CS),
                                 amplitude_contrast=np.full(n, W))


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean((-1, -2), keepdim=True)
    b = b - b.mean((-1, -2), keepdim=True)
    return (a * b).sum((-1, -2)) / torch.sqrt((a * a).sum((-1, -2)) * (b * b).sum((-1, -2)))


def _random_rows(n, rng):
    rot, tilt, psi = rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n)
    du = rng.uniform(8000, 25000, n)
    return rot, tilt, psi, du, du - rng.uniform(2000, 6000, n), rng.uniform(-np.pi, np.pi, n)


@pytest.mark.parametrize("name, apix", [("4ake_sim_meld_52.mrc", None), ("betagal_simspi_64.mrc", 2.5)])
def test_projections_match_relion_project(shared_data, relion, tmp_path, name, apix):
    path = shared_data / "maps" / name
    with mrcfile.open(path, permissive=True) as f:
        density = torch.tensor(np.asarray(f.data), dtype=torch.float64)
        apix = apix or float(f.voxel_size.x)  # betagal's header says 0 Å: set one
    box, n = density.shape[-1], 8
    rng = np.random.default_rng(1)
    rot, tilt, psi, du, dv, dang = _random_rows(n, rng)
    shifts, phase = rng.normal(0, 2.5 * apix, (n, 2)), rng.uniform(0, np.pi / 2, n)
    _write_star(tmp_path / "angles.star", box, apix, rot, tilt, psi, shifts, du, dv, dang, phase)
    subprocess.run(["relion_project", "--i", str(path), "--o", "proj", "--ang", "angles.star", "--ctf",
                    "--angpix", str(apix)], cwd=tmp_path, check=True, capture_output=True)
    theirs = torch.tensor(mrcfile.read(tmp_path / "proj.mrcs"), dtype=torch.float64)

    rotations = relion_euler_to_matrix(*(torch.tensor(a) for a in (rot, tilt, psi)))
    shifts_t, ctf, volume = torch.tensor(shifts), _ctf(du, dv, dang, phase), projection_volume(density, pad=2)
    ours = render(volume, rotations, apix, ctf=ctf, shifts_A=shifts_t, box=box)
    assert _corr(ours, theirs).min() >= 0.99
    # same scale: line integrals in voxel units
    ratio = (ours * theirs).sum((-1, -2)) / (ours * ours).sum((-1, -2))
    assert torch.allclose(ratio, torch.ones(n, dtype=torch.float64), atol=0.01)
    # and the test discriminates: transposed rotations, opposite shifts or swapped astigmatism do not match
    swapped = _ctf(dv, du, dang, phase)
    for wrong in (render(volume, rotations.transpose(-1, -2), apix, ctf=ctf, shifts_A=shifts_t, box=box),
                  render(volume, rotations, apix, ctf=ctf, shifts_A=-shifts_t, box=box),
                  render(volume, rotations, apix, ctf=swapped, shifts_A=shifts_t, box=box)):
        assert _corr(wrong, theirs).min() < 0.95


def test_reconstruction_matches_relion_reconstruct(shared_data, relion, tmp_path):
    """2,000 noisy images (SNR 0.1, 64 px) rendered by us; relion_reconstruct --ctf vs our accumulator."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    n, box, apix, snr = 2000, 64, 2.002, 0.1
    with mrcfile.open(shared_data / "maps" / "4ake_sim_meld_52.mrc", permissive=True) as f:
        truth = F.pad(torch.tensor(np.asarray(f.data), dtype=torch.float64), (6, 6) * 3)
    rot, tilt, psi = matrix_to_relion_euler(roma.random_rotmat(n, dtype=torch.float64))
    rotations = relion_euler_to_matrix(rot, tilt, psi)
    _, _, _, du, dv, dang = _random_rows(n, rng)
    shifts = rng.normal(0, 3.0, (n, 2))
    ctf = _ctf(du, dv, dang, np.zeros(n))
    volume = projection_volume(truth, pad=2)
    clean = render(volume, rotations, apix, ctf=ctf, shifts_A=torch.tensor(shifts), box=box)
    sigma = float(clean.var(dim=(-1, -2)).mean() / snr) ** 0.5
    images = (clean + sigma * torch.randn_like(clean)).float()
    with mrcfile.new(tmp_path / "particles.mrcs") as f:
        f.set_data(images.numpy())
        f.voxel_size = apix
    names = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
    _write_star(tmp_path / "particles.star", box, apix, rot.numpy(), tilt.numpy(), psi.numpy(), shifts, du, dv,
                dang, np.zeros(n), image_names=names)
    subprocess.run(["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf"], cwd=tmp_path,
                   check=True, capture_output=True)
    theirs = torch.tensor(mrcfile.read(tmp_path / "relion.mrc"), dtype=torch.float64)

    acc = BackprojectionAccumulator(box)
    for i in range(0, n, 500):
        acc.add(images[i : i + 500], rotations[i : i + 500].float(), torch.tensor(shifts[i : i + 500]).float(),
                ctf[i : i + 500], apix)
    ours = acc.finalize()

    _, mutual = fsc(ours, theirs)
    assert mutual[: int(0.8 * box / 2) + 1].min() >= 0.9
    resolutions = [fsc_resolution(*fsc(m, truth, apix)) for m in (ours, theirs)]
    assert resolutions[0] == pytest.approx(resolutions[1], rel=0.05)
