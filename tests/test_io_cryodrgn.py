"""cryoDRGN pose/CTF pickles: the RELION ↔ cryoDRGN convention, readers, writers and bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry.rotations import relion_euler_to_matrix
from cryopose.io.cryodrgn import read_cryodrgn_ctf, read_cryodrgn_poses, write_cryodrgn_ctf, write_cryodrgn_poses
from cryopose.io.particles import ParticleTable

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DRGN = DATA / "metadata" / "cryodrgn"
PFCRT = DATA / "metadata" / "relion" / "FinalRefinement-OriginalParticles-PfCRT.star"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")


def _pkl(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _pfcrt():
    import starfile

    df = starfile.read(PFCRT)
    angles = [torch.as_tensor(np.deg2rad(df[c].to_numpy())) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")]
    return df, relion_euler_to_matrix(*angles).numpy(), df[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64)


@needs_data
def test_relion_to_cryodrgn_convention_from_pfcrt():
    """cryoDRGN rot = RELION Euler matrix A (not Aᵀ); trans = +rlnOriginX/Y [px] / D (D = 300)."""
    _, a, origin_px = _pfcrt()
    rot, trans = _pkl(DRGN / "pose.star.pkl")
    box = int(_pkl(DRGN / "ctf1.pkl")[0, 0])
    assert box == 300
    np.testing.assert_allclose(rot, a, atol=1e-6)
    np.testing.assert_allclose(trans, origin_px / box, atol=1e-9)
    # the data can tell the alternatives apart
    assert np.abs(rot - a.transpose(0, 2, 1)).max() > 0.5
    assert np.abs(trans + origin_px / box).max() > 1e-3


@needs_data
def test_pfcrt_ctf_and_readers():
    df, a, origin_px = _pfcrt()
    box, apix, ctf = read_cryodrgn_ctf(DRGN / "ctf1.pkl")
    assert box == 300
    np.testing.assert_allclose(apix, df["rlnDetectorPixelSize"] * 1e4 / df["rlnMagnification"], rtol=1e-6)
    np.testing.assert_allclose(ctf["defocus_u_A"], df["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_allclose(ctf["defocus_v_A"], df["rlnDefocusV"], rtol=1e-6)
    np.testing.assert_allclose(ctf["defocus_angle_rad"], np.deg2rad(df["rlnDefocusAngle"]), rtol=1e-6)
    np.testing.assert_allclose(ctf["voltage_kV"], df["rlnVoltage"], rtol=1e-6)
    np.testing.assert_allclose(ctf["cs_mm"], df["rlnSphericalAberration"], rtol=1e-6)
    np.testing.assert_allclose(ctf["phase_shift_rad"], np.deg2rad(df["rlnPhaseShift"]), atol=1e-9)
    rot, shifts_px = read_cryodrgn_poses(DRGN / "pose.star.pkl", box)
    np.testing.assert_allclose(rot, a, atol=1e-6)
    np.testing.assert_allclose(shifts_px, origin_px, atol=1e-6)


@needs_data
def test_writers_reproduce_cryodrgns_own_parse_of_the_cs(tmp_path):
    from cryopose.io.cryosparc import read_cryosparc

    t = read_cryosparc(DATA / "metadata" / "cryosparc" / "cryosparc_P12_J24_001_particles.cs")
    write_cryodrgn_ctf(tmp_path / "ctf.pkl", t)
    write_cryodrgn_poses(tmp_path / "pose.pkl", t.rotations, t.shifts_A, t.box, t.pixel_size_A)
    ctf, ref_ctf = _pkl(tmp_path / "ctf.pkl"), _pkl(DRGN / "ctf2.pkl")
    assert ctf.dtype == np.float32 and ctf.shape == ref_ctf.shape
    np.testing.assert_allclose(ctf, ref_ctf, rtol=1e-5, atol=1e-6)
    (rot, trans), (ref_rot, ref_trans) = _pkl(tmp_path / "pose.pkl"), _pkl(DRGN / "pose.cs.pkl")
    assert rot.dtype == trans.dtype == np.float32
    np.testing.assert_allclose(rot, ref_rot, atol=1e-5)
    np.testing.assert_allclose(trans, ref_trans, atol=1e-6)


def test_pose_and_ctf_round_trip(tmp_path):
    import roma

    n, box, apix = 50, 64, 1.5
    rot = roma.random_rotmat(n, dtype=torch.float64).numpy()
    shifts_a = np.random.default_rng(0).normal(scale=4.0, size=(n, 2))
    path = tmp_path / "pose.pkl"
    write_cryodrgn_poses(path, rot, shifts_a, box, apix)
    assert [p.name for p in tmp_path.iterdir()] == ["pose.pkl"]  # no temporary file left behind
    rot2, shifts_px = read_cryodrgn_poses(path, box)
    np.testing.assert_allclose(rot2, rot, atol=1e-6)
    np.testing.assert_allclose(shifts_px * apix, shifts_a, atol=1e-5)

    rng = np.random.default_rng(1)
    ctf = {
        "defocus_u_A": rng.uniform(1e4, 3e4, n), "defocus_v_A": rng.uniform(1e4, 3e4, n),
        "defocus_angle_rad": rng.uniform(-np.pi, np.pi, n), "voltage_kV": np.full(n, 300.0), "cs_mm": np.full(n, 2.7),
        "amplitude_contrast": np.full(n, 0.1), "phase_shift_rad": rng.uniform(0, 1, n),
        "bfactor_A2": np.zeros(n), "scale": np.ones(n),
    }
    table = ParticleTable(source=tmp_path / "x.star", image_files=np.array(["/a.mrcs"] * n),
                          image_indices=np.arange(n), box=box, pixel_size_A=np.full(n, apix), ctf=ctf)
    write_cryodrgn_ctf(tmp_path / "ctf.pkl", table)
    box2, apix2, ctf2 = read_cryodrgn_ctf(tmp_path / "ctf.pkl")
    assert box2 == box
    np.testing.assert_allclose(apix2, apix, rtol=1e-6)
    for k, v in ctf.items():
        np.testing.assert_allclose(ctf2[k], v, rtol=1e-6, atol=1e-6, err_msg=k)


def test_bare_rotation_array_has_no_shifts(tmp_path):
    p = tmp_path / "rot.pkl"
    with open(p, "wb") as f:
        pickle.dump(np.eye(3, dtype=np.float32)[None].repeat(4, 0), f)
    rot, shifts = read_cryodrgn_poses(p, 64)
    assert rot.shape == (4, 3, 3) and shifts is None


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "obj, reader, match",
    [
        ((np.zeros((4, 3, 2)), np.zeros((4, 2))), "poses", r"shape \(4, 3, 2\)"),
        ((np.eye(3)[None].repeat(4, 0), np.zeros((5, 2))), "poses", r"translations have shape"),
        ((np.full((4, 3, 3), 2.0), np.zeros((4, 2))), "poses", "not proper rotation"),
        ((np.eye(3)[None].repeat(4, 0), np.zeros((4, 2)), 1), "poses", "3 items"),
        ({"rot": 1}, "poses", "not a numeric numpy array"),
        (np.zeros((4, 8), np.float32), "ctf", r"shape \(4, 8\)"),
        (np.full((2, 9), np.nan, np.float32), "ctf", "NaN"),
        (_Evil(), "ctf", "refusing to load"),
    ],
)
def test_bad_pickles_are_input_errors(tmp_path, obj, reader, match):
    p = tmp_path / "bad.pkl"
    with open(p, "wb") as f:
        pickle.dump(obj, f)
    with pytest.raises(InputError, match=match):
        read_cryodrgn_poses(p, 64) if reader == "poses" else read_cryodrgn_ctf(p)


def test_corrupt_and_missing_pickles_are_input_errors(tmp_path):
    p = tmp_path / "corrupt.pkl"
    p.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(InputError, match="corrupt.pkl: not a readable cryoDRGN pickle"):
        read_cryodrgn_poses(p, 64)
    with pytest.raises(InputError, match="not found"):
        read_cryodrgn_ctf(tmp_path / "missing.pkl")
