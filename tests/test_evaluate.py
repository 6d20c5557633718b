"""FSC, map alignment (rotation, shift, hand), pose transfer between map frames, and the evaluate/fsc jobs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import roma
import torch

from cryopose.errors import InputError
from cryopose.geometry.rotations import MIRROR
from cryopose.io.mrc import read_map, write_map
from cryopose.io.particles import ParticleTable
from cryopose.io.run_files import HALF_MAPS, LOG, MAP
from cryopose.io.star import write_star
from cryopose.jobs.evaluate import evaluate_run
from cryopose.jobs.fsc import fsc_maps
from cryopose.physics.align import MapAlignment, align_maps, transform_volume
from cryopose.physics.fourier import fft2_centered, fft3_centered, ifft2_centered, ifft3_centered, radius_grid
from cryopose.physics.fsc import fsc, fsc_resolution, soft_sphere_mask
from cryopose.train.run_dir import MetricsLog

F64 = torch.float64


def _blob_model(n: int, box: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres ``(n, 3)`` (voxels, x y z), widths and weights of an asymmetric cluster of Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * box * 0.45
    return centres, 1.5 + 2 * torch.rand(n, generator=g, dtype=F64), 0.5 + torch.rand(n, generator=g, dtype=F64)


def _render(box: int, centres, sigma, weight) -> torch.Tensor:
    """Exact ``(D, D, D)`` map ``(z, y, x)`` of Gaussian blobs at ``centres`` (voxels from voxel ``D//2``)."""
    j = torch.arange(box, dtype=F64) - box // 2
    z, y, x = torch.meshgrid(j, j, j, indexing="ij")
    d2 = ((torch.stack([x, y, z], -1)[..., None, :] - centres) ** 2).sum(-1)
    return (weight * torch.exp(-d2 / (2 * sigma**2))).sum(-1)


def _moved(g: torch.Generator, mirrored: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A random rotation (times the mirror) ``G`` and shift ``t`` (voxels) of a forward transform."""
    q = roma.rotvec_to_rotmat(torch.randn(3, generator=g, dtype=F64) * 1.5)
    return (q @ MIRROR if mirrored else q), (torch.rand(3, generator=g, dtype=F64) - 0.5) * 8


def _errors(result: MapAlignment, forward: torch.Tensor, shift: torch.Tensor) -> tuple[float, float]:
    """Angle (°) of ``L·G`` and shift error (voxels) of an alignment undoing ``V(Gᵀ(x − t))``: the exact
    inverse is ``L = Gᵀ``, ``t' = −Gᵀ t``."""
    lg = torch.as_tensor(result.matrix) @ forward
    angle = math.degrees(float(roma.rotmat_geodesic_distance(lg, torch.eye(3, dtype=F64))))
    return angle, float(np.abs(result.shift_px - (-forward.T @ shift).numpy()).max())


# ------------------------------------------------------------------------------------------------------ FSC
def test_fsc_of_a_map_with_itself_is_one():
    v = torch.randn(32, 32, 32, generator=torch.Generator().manual_seed(0), dtype=F64)
    freq, curve = fsc(v, v)
    assert freq.shape == curve.shape == (17,)
    assert freq[-1] == pytest.approx(0.5)  # Nyquist, cycles/voxel
    torch.testing.assert_close(curve, torch.ones(17, dtype=F64))
    _, masked = fsc(v, v.numpy(), mask=soft_sphere_mask(32))
    torch.testing.assert_close(masked, torch.ones(17, dtype=F64))
    freq_A, _ = fsc(v, v, 2.0)
    assert freq_A[-1] == pytest.approx(0.25)  # 1 / (2 · 2 Å)


def test_fsc_of_noisy_copies_matches_snr_over_one_plus_snr():
    """``s + n1`` vs ``s + n2`` with a Gaussian-filtered white signal: FSC = SNR/(1 + SNR) per shell."""
    box, g = 48, torch.Generator().manual_seed(1)
    r = radius_grid(box)
    amplitude = 4 * torch.exp(-0.5 * (r / (box / 6)) ** 2)  # signal spectrum / white noise spectrum
    signal = ifft3_centered(fft3_centered(torch.randn(box, box, box, generator=g, dtype=F64)) * amplitude).real
    noisy = [signal + torch.randn(box, box, box, generator=g, dtype=F64) for _ in range(2)]
    _, curve = fsc(*noisy)
    shell = torch.round(r).long().flatten()
    keep = shell <= box // 2
    count = torch.bincount(shell[keep], minlength=box // 2 + 1).to(F64)
    snr = torch.bincount(shell[keep], (amplitude**2).flatten()[keep], minlength=box // 2 + 1) / count
    expected = snr / (1 + snr)
    sigma = (1 - expected**2) / count.sqrt()  # standard error of a correlation of `count` samples
    error = (curve - expected)[1:].abs()
    assert torch.all(error < 4 * sigma[1:] + 0.01), (curve, expected)
    assert expected[1] > 0.9 and expected[-1] < 0.01  # the test spans the whole range


def test_resolution_interpolates_the_first_crossing():
    freq = torch.arange(11, dtype=F64) / 20  # up to 0.5 / voxel
    curve = torch.tensor([1, 0.9, 0.8, 0.6, 0.4, 0.6, 0.1, 0.05, 0, 0, 0], dtype=F64)
    # 0.5 is crossed between shells 3 (0.6) and 4 (0.4): f = 3.5 / 20
    assert fsc_resolution(freq / 1.5, curve, 0.5) == pytest.approx(1.5 * 20 / 3.5)
    assert fsc_resolution(freq, torch.ones(11, dtype=F64), 0.143) == pytest.approx(2.0)  # never: Nyquist


def test_soft_sphere_mask_profile():
    m = soft_sphere_mask(32, radius=10, width=4)
    r = radius_grid(32)
    assert torch.all(m[r <= 10] == 1) and torch.all(m[r >= 14] == 0)
    edge = (r > 10) & (r < 14)
    assert torch.all((m[edge] > 0) & (m[edge] < 1))


# ------------------------------------------------------------------------------------------------ alignment
@pytest.mark.parametrize("mirrored", [False, True])
def test_transform_volume_convention(mirrored):
    """``transform_volume(V, G, t)`` is ``V(Gᵀ(x − t))``: blobs at ``p`` move to ``G p + t``."""
    box, g = 32, torch.Generator().manual_seed(2)
    centres, sigma, weight = _blob_model(6, box, seed=2)
    forward, shift = _moved(g, mirrored)
    ours = transform_volume(_render(box, centres, sigma, weight), forward, shift)
    exact = _render(box, centres @ forward.T + shift, sigma, weight)
    assert float((ours - exact).norm() / exact.norm()) < 0.03


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_recovers_rotation_shift_and_hand_of_blob_map(mirrored):
    box, g = 40, torch.Generator().manual_seed(3 + mirrored)
    centres, sigma, weight = _blob_model(14, box, seed=1)
    forward, shift = _moved(g, mirrored)
    reference = _render(box, centres, sigma, weight)
    moving = _render(box, centres @ forward.T + shift, sigma, weight)  # exact, no interpolation
    moving = moving + 0.05 * moving.std() * torch.randn(moving.shape, generator=g, dtype=F64)
    aligned, result = align_maps(moving, reference)
    angle, shift_error = _errors(result, forward, shift)
    assert result.mirrored == mirrored
    assert angle < 1.0 and shift_error < 0.5, f"rotation error {angle:.3f}°, shift error {shift_error:.3f} px"
    assert result.correlation > 0.95
    assert float(torch.corrcoef(torch.stack([aligned.flatten().double(), reference.flatten()]))[0, 1]) > 0.95


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_recovers_rotation_of_real_map(shared_data, mirrored):
    """4AKE density (52³, 2 Å), rotated and shifted by a random transform, with noise."""
    reference = torch.as_tensor(read_map(shared_data / "maps" / "4ake_sim_meld_52.mrc").cubic().copy(), dtype=F64)
    g = torch.Generator().manual_seed(10 + mirrored)
    forward, shift = _moved(g, mirrored)
    moving = transform_volume(reference, forward, shift)
    moving = moving + 0.1 * reference.std() * torch.randn(moving.shape, generator=g, dtype=F64)
    _, result = align_maps(moving, reference, voxel_size_A=2.0)
    angle, shift_error = _errors(result, forward, shift)
    assert result.mirrored == mirrored
    assert angle < 1.0 and shift_error < 0.5, f"rotation error {angle:.3f}°, shift error {shift_error:.3f} px"
    np.testing.assert_allclose(result.shift_A, result.shift_px * 2.0)


def _project(volume: torch.Tensor, rotations: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Real-space projections ``∫ V(Rᵀx) dz`` (RELION pose ``R``), particle centre moved to ``−shift``."""
    images = torch.stack([transform_volume(volume, r).sum(0) for r in rotations])
    k = torch.arange(volume.shape[-1], dtype=F64) - volume.shape[-1] // 2
    ky, kx = torch.meshgrid(k / volume.shape[-1], k / volume.shape[-1], indexing="ij")
    phase = 2 * torch.pi * (kx * shifts_px[:, 0, None, None] + ky * shifts_px[:, 1, None, None])
    return ifft2_centered(fft2_centered(images) * torch.exp(1j * phase)).real


@pytest.mark.parametrize("mirrored", [False, True])
def test_transformed_poses_explain_the_same_images(mirrored):
    """Images of ``V`` at ``(R, s)`` equal images of the aligned map at ``transform_poses(R, s)``."""
    box, apix, g = 32, 1.5, torch.Generator().manual_seed(4)
    centres, sigma, weight = _blob_model(8, box, seed=4)
    volume = _render(box, centres, sigma, weight)
    rotation, shift = _moved(g, False)
    alignment = MapAlignment(rotation=rotation.numpy(), shift_px=shift.numpy(), mirrored=mirrored, correlation=1.0,
                             voxel_size_A=apix)
    moved = _render(box, centres @ torch.as_tensor(alignment.matrix).T + shift, sigma, weight)  # exact
    poses = roma.rotvec_to_rotmat(torch.randn(4, 3, generator=g, dtype=F64) * 2)
    origins_A = torch.randn(4, 2, generator=g, dtype=F64) * 2
    new_poses, new_origins_A = alignment.transform_poses(poses.numpy(), origins_A.numpy())
    before = _project(volume, poses, origins_A / apix)
    after = _project(moved, torch.as_tensor(new_poses), torch.as_tensor(new_origins_A) / apix)
    for a, b in zip(before, after):
        assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) > 0.99
    wrong = _project(moved, torch.as_tensor(new_poses) @ rotation @ rotation, torch.as_tensor(new_origins_A) / apix)
    assert float(torch.corrcoef(torch.stack([before[0].flatten(), wrong[0].flatten()]))[0, 1]) < 0.9


# ------------------------------------------------------------------------------------------------------ jobs
def _particles(path, rotations: np.ndarray, shifts_A: np.ndarray, apix: float) -> None:
    n = len(rotations)
    table = ParticleTable(source=path, image_files=np.array([str(path.parent / "stack.mrcs")] * n, dtype=object),
                          image_indices=np.arange(n), box=40, pixel_size_A=np.full(n, apix), rotations=rotations,
                          shifts_A=shifts_A)
    write_star(path, table)


def test_evaluate_run_directory(tmp_path):
    """A run whose map, half maps and poses are a mirrored, rotated, shifted copy of the truth (plus noise)."""
    box, apix, g = 40, 2.5, torch.Generator().manual_seed(5)
    centres, sigma, weight = _blob_model(12, box, seed=5)
    truth = _render(box, centres, sigma, weight)
    rotation, shift = _moved(g, False)
    frame = MapAlignment(rotation=rotation.numpy(), shift_px=shift.numpy(), mirrored=True, correlation=1.0,
                         voxel_size_A=apix)
    moved = _render(box, centres @ torch.as_tensor(frame.matrix).T + shift, sigma, weight)
    halves = [moved + 0.3 * moved.std() * torch.randn(moved.shape, generator=g, dtype=F64) for _ in range(2)]
    run = tmp_path / "run"
    for name, v in zip((*HALF_MAPS, MAP), (halves[0], halves[1], (halves[0] + halves[1]) / 2)):
        write_map(run / name, v.numpy(), apix)
    write_map(tmp_path / "truth.mrc", np.pad(truth.numpy(), 4), apix)  # a larger box: resampled (cropped)
    n = 300
    poses = roma.rotvec_to_rotmat(torch.randn(n, 3, generator=g, dtype=F64) * 2).numpy()
    origins = np.random.default_rng(0).normal(0, 3, (n, 2))
    _particles(tmp_path / "particles.star", poses, origins, apix)
    noisy = roma.rotvec_to_rotmat(torch.randn(n, 3, generator=g, dtype=F64) * math.radians(1)).numpy() @ poses
    _particles(run / "poses.star", *frame.transform_poses(noisy, origins + 0.2), apix)
    log = MetricsLog(run / LOG)  # a run's epochs measured against the truth: the report draws them
    curve = [("amortized", 30.0, 120.0), ("direct", 12.0, 20.0), ("direct", 8.0, 3.0)]
    for epoch, (stage, res, err) in enumerate(curve):
        log.write(kind="epoch", epoch=epoch, stage=stage, train_seconds=60.0 * (epoch + 1),
                  **{"resolution_0.5_A": res, "pose_error_median_deg": err})

    result = evaluate_run(run, tmp_path / "truth.mrc", poses_truth=tmp_path / "particles.star", oracle_A=6.0)
    assert result["alignment"]["mirrored"] is True and result["reference_resampled"] is True
    # the same noise in the reference frame gives the resolutions a perfect alignment would
    noise = [h - moved for h in halves]
    mask = soft_sphere_mask(box)
    ideal_05 = fsc_resolution(*fsc(truth + (noise[0] + noise[1]) / 2, truth, apix, mask=mask), 0.5)
    ideal_0143 = fsc_resolution(*fsc(truth + noise[0], truth + noise[1], apix, mask=mask), 0.143)
    assert result["fsc_vs_reference"]["resolution_0.5_A"] == pytest.approx(ideal_05, rel=0.05), ideal_05
    assert result["fsc_halves"]["resolution_0.143_A"] == pytest.approx(ideal_0143, rel=0.05), ideal_0143
    poses_result = result["poses"]
    assert poses_result["n"] == n and not poses_result["mirrored"]
    assert poses_result["rotation_median_deg"] < 3 and poses_result["frame_vs_map_deg"] < 1
    assert poses_result["shift_median_A"] == pytest.approx(0.2 * math.sqrt(2), abs=0.15)
    for name in ("evaluation.json", "report.html", "plots/fsc.png", "plots/fsc.csv", "plots/map_views.png",
                 "plots/pose_errors.png", "plots/training.png", "map_aligned.mrc"):
        assert (run / name).stat().st_size > 0, name
    assert json.loads((run / "evaluation.json").read_text()) == json.loads(json.dumps(result))
    assert "base64," in (run / "report.html").read_text()


def test_fsc_maps_writes_png_and_csv(tmp_path):
    g = torch.Generator().manual_seed(6)
    signal = _render(32, *_blob_model(10, 32, seed=6))
    for name in ("a", "b"):
        write_map(tmp_path / f"{name}.mrc", (signal + 0.5 * torch.randn(signal.shape, generator=g, dtype=F64)).numpy(),
                  1.2)
    result = fsc_maps(tmp_path / "a.mrc", tmp_path / "b.mrc", out_dir=tmp_path / "out")
    # measured 7.37 Å and 9.13 Å (Nyquist is 2.4 Å); other noise seeds give 7.2-7.4 Å and 9.0-9.2 Å
    assert result["resolution_0.143_A"] == pytest.approx(7.37, rel=0.05), result
    assert result["resolution_0.5_A"] == pytest.approx(9.13, rel=0.05), result
    rows = (tmp_path / "out" / "fsc_a_b.csv").read_text().splitlines()
    assert len(rows) == 1 + 17 and rows[0].startswith("shell,frequency_per_A,resolution_A")
    assert (tmp_path / "out" / "fsc_a_b.png").stat().st_size > 0
    write_map(tmp_path / "c.mrc", np.zeros((16, 16, 16), np.float32), 1.2)
    with pytest.raises(InputError, match="c.mrc: box 16 differs"):
        fsc_maps(tmp_path / "a.mrc", tmp_path / "c.mrc")


def test_evaluate_needs_estimated_poses_to_compare_with_true_ones(tmp_path):
    write_map(tmp_path / "map.mrc", np.zeros((16, 16, 16), np.float32), 2.0)
    with pytest.raises(InputError, match="no estimated poses"):
        evaluate_run(tmp_path / "map.mrc", tmp_path / "map.mrc", poses_truth=tmp_path / "particles.star")
