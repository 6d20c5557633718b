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


def test_pickles_get_the_permissions_of_any_written_file(tmp_path):
    """The pickles are written through io.atomic (a bare mkstemp file is 0600, unreadable to the group)."""
    import os

    umask = os.umask(0o022)
    try:
        write_cryodrgn_poses(tmp_path / "pose.pkl", np.eye(3)[None], None, 64, 1.0)
    finally:
        os.umask(umask)
    assert (tmp_path / "pose.pkl").stat().st_mode & 0o777 == 0o644


def _ctf_table(n: int, box: int, apix: float) -> ParticleTable:
    rng = np.random.default_rng(2)
    ctf = {"defocus_u_A": rng.uniform(1e4, 3e4, n), "defocus_v_A": rng.uniform(1e4, 3e4, n),
           "defocus_angle_rad": rng.uniform(0, np.pi, n), "voltage_kV": np.full(n, 300.0),
           "cs_mm": np.full(n, 2.7), "amplitude_contrast": np.full(n, 0.1), "phase_shift_rad": np.zeros(n),
           "bfactor_A2": np.zeros(n), "scale": np.ones(n)}
    return ParticleTable(source=Path("x.star"), image_files=np.array(["/a.mrcs"] * n), image_indices=np.arange(n),
                         box=box, pixel_size_A=np.full(n, apix), ctf=ctf)


def _cryodrgn_dataset(folder: Path, n: int = 6, ctf_box: int = 32, stack_box: int = 16) -> ParticleTable:
    """A cryoDRGN data set: ``ctf.pkl`` for a ``ctf_box`` stack at 1.5 Å, and one stack of ``stack_box``."""
    from cryopose.io.mrc import write_map

    folder.mkdir(parents=True, exist_ok=True)
    table = _ctf_table(n, ctf_box, 1.5)
    write_cryodrgn_ctf(folder / "ctf.pkl", table)
    write_map(folder / "particles.mrcs", np.zeros((n, stack_box, stack_box), np.float32), 1.5 * ctf_box / stack_box)
    return table


def test_read_particles_reads_a_ctf_pickle_and_its_stack(tmp_path):
    """cryoDRGN's data set (stack + ctf.pkl): the pixel size follows the stack's box, as cryoDRGN rescales it."""
    from cryopose.io import read_particles

    written = _cryodrgn_dataset(tmp_path / "data")
    for path, datadir in ((tmp_path / "data" / "ctf.pkl", None), (tmp_path / "ctf.pkl", tmp_path / "data")):
        if datadir is not None:
            (tmp_path / "data" / "ctf.pkl").rename(path)
        table = read_particles(path, datadir=datadir)
        assert len(table) == 6 and table.box == 16 and table.apix == pytest.approx(3.0)
        assert list(table.image_files) == [str((tmp_path / "data" / "particles.mrcs").resolve())] * 6
        np.testing.assert_array_equal(table.image_indices, np.arange(6))
        for key, values in written.ctf.items():
            np.testing.assert_allclose(table.ctf[key], values, rtol=1e-6, atol=1e-6, err_msg=key)
        assert table.rotations is None and table.shifts_A is None
    assert read_particles(path, datadir=datadir, apix=2.0).apix == 2.0


def test_read_particles_pickle_without_one_matching_stack(tmp_path):
    from cryopose.io import read_particles
    from cryopose.io.mrc import write_map

    _cryodrgn_dataset(tmp_path)
    (tmp_path / "particles.mrcs").unlink()
    with pytest.raises(InputError, match=r"ctf.pkl: no image stack \(\.mrcs\) in .*; pass --datadir"):
        read_particles(tmp_path / "ctf.pkl")
    write_map(tmp_path / "a.mrcs", np.zeros((6, 16, 16), np.float32), 3.0)
    write_map(tmp_path / "b.mrcs", np.zeros((5, 16, 16), np.float32), 3.0)
    with pytest.raises(InputError, match=r"ctf.pkl: 2 image stacks \(a.mrcs, b.mrcs\) in .*: which one is ambiguous"):
        read_particles(tmp_path / "ctf.pkl")
    (tmp_path / "a.mrcs").unlink()
    with pytest.raises(InputError, match=r"ctf.pkl: 6 particles but the stack .*b.mrcs holds 5 images"):
        read_particles(tmp_path / "ctf.pkl")
    write_cryodrgn_poses(tmp_path / "pose.pkl", np.eye(3)[None].repeat(5, 0), None, 16, 3.0)
    with pytest.raises(InputError, match="pose.pkl: holds poses, not a CTF table"):
        read_particles(tmp_path / "pose.pkl")


def test_cli_info_on_a_ctf_pickle(tmp_path, capsys):
    from cryopose.cli import main

    _cryodrgn_dataset(tmp_path)
    code = main(["info", str(tmp_path / "ctf.pkl")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "particles:      6" in out.out and "box:            16 px" in out.out
    assert "pixel size:     3 Å" in out.out and "all present and complete" in out.out
