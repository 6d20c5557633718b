"""cryoSPARC .cs reader, checked against cryoDRGN's parse of the same file (shared/data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from cryopose.errors import InputError
from cryopose.io.cryosparc import read_cryosparc

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CS = DATA / "metadata" / "cryosparc"
P12 = CS / "cryosparc_P12_J24_001_particles.cs"
J2 = CS / "cryosparc_J2_particles_exported.cs"
EMPIAR = DATA / "particles" / "empiar10076_7" / "empiar_10076_7.cs"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")


def _save_cs(path: Path, arr: np.ndarray) -> Path:
    with open(path, "wb") as f:  # a file object keeps np.save from appending ".npy"
        np.save(f, arr)
    return path


@needs_data
@pytest.mark.parametrize(
    "path, n, box, apix, has_poses",
    [(P12, 2019, 180, 2.95, True), (J2, 22, 300, 1.345, False), (EMPIAR, 7, 320, 1.31, False)],
    ids=["P12_J24", "J2_exported", "empiar10076_7"],
)
def test_every_cs_parses(path, n, box, apix, has_poses):
    t = read_cryosparc(path)
    assert len(t) == n and t.box == box
    assert t.apix == pytest.approx(apix, abs=1e-5)
    assert t.image_files.shape == (n,) and all(Path(f).is_absolute() for f in t.image_files)
    assert t.image_indices.tolist()[:3] == [0, 1, 2]
    assert t.ctf is not None and all(v.shape == (n,) for v in t.ctf.values())
    assert (t.rotations is not None) == has_poses and (t.shifts_A is not None) == has_poses
    if has_poses:
        assert t.rotations.shape == (n, 3, 3) and t.shifts_A.shape == (n, 2)
        assert np.allclose(np.linalg.det(t.rotations), 1.0, atol=1e-6)


@needs_data
def test_empty_cs_is_an_input_error():
    with pytest.raises(InputError, match="contains no particles"):
        read_cryosparc(CS / "empty_alignments3D_4k_dataset.cs")


@needs_data
def test_p12_ctf_matches_cryodrgn_ctf2():
    t = read_cryosparc(P12)
    with open(DATA / "metadata" / "cryodrgn" / "ctf2.pkl", "rb") as f:
        ref = pickle.load(f).astype(np.float64)  # [D, Apix, dfU, dfV, dfang°, kV, Cs, w, phase°]
    c = t.ctf
    assert np.all(ref[:, 0] == t.box)
    ours = np.stack(
        [t.pixel_size_A, c["defocus_u_A"], c["defocus_v_A"], np.rad2deg(c["defocus_angle_rad"]), c["voltage_kV"],
         c["cs_mm"], c["amplitude_contrast"], np.rad2deg(c["phase_shift_rad"])], axis=1)
    np.testing.assert_allclose(ours, ref[:, 1:], rtol=1e-4, atol=1e-6)
    assert np.all(c["bfactor_A2"] == 0) and np.all(c["scale"] == 1)  # absent / all-ones in this file


@needs_data
def test_p12_poses_match_cryodrgn_pose_cs():
    """cryoDRGN's rot is RELION's matrix (see test_io_cryodrgn), so ours must equal it; trans = origin_px / D."""
    t = read_cryosparc(P12)
    with open(DATA / "metadata" / "cryodrgn" / "pose.cs.pkl", "rb") as f:
        rot, trans = pickle.load(f)
    np.testing.assert_allclose(t.rotations, rot, atol=1e-4)
    np.testing.assert_allclose(t.shifts_A / t.pixel_size_A[:, None] / t.box, trans, atol=1e-6)
    assert np.abs(trans).max() > 0.05  # the shifts are not all zero, so the sign is really tested


@needs_data
def test_p12_rotation_is_transposed_rodrigues_and_shift_is_unsigned():
    """Pin the formula independently of roma: R = expm(pose)ᵀ, origin_px = +shift."""
    raw = np.load(P12)[:50]
    t = read_cryosparc(P12)
    for i, w in enumerate(raw["alignments3D/pose"].astype(np.float64)):
        theta = np.linalg.norm(w)
        x, y, z = w / theta
        k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])  # [axis]ₓ
        expm = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k
        np.testing.assert_allclose(t.rotations[i], expm.T, atol=1e-6)
    np.testing.assert_allclose(t.shifts_A[:50], raw["alignments3D/shift"] * raw["alignments3D/psize_A"][:, None],
                               rtol=1e-6)


@needs_data
def test_alignments2d_only_gives_no_rotations_and_gt_prefix_is_project_relative(tmp_path):
    t = read_cryosparc(J2)
    assert t.rotations is None and t.shifts_A is None
    assert t.image_files[0] == str(CS / "J1" / "imported" / "000090334788266266069_18jam15b_0345_ali_DW.mrcs")
    t = read_cryosparc(J2, datadir=tmp_path)
    assert t.image_files[0] == str(tmp_path / "J1" / "imported" / "000090334788266266069_18jam15b_0345_ali_DW.mrcs")
    # a flat copy of the stacks in datadir is found by file name
    (tmp_path / "000090334788266266069_18jam15b_0345_ali_DW.mrcs").touch()
    t = read_cryosparc(J2, datadir=tmp_path)
    assert t.image_files[0] == str(tmp_path / "000090334788266266069_18jam15b_0345_ali_DW.mrcs")


@needs_data
def test_empiar_cs_matches_its_relion_star():
    import starfile

    t = read_cryosparc(EMPIAR)
    df = starfile.read(EMPIAR.with_suffix(".star"))
    assert t.image_files[0] == str(EMPIAR.with_suffix(".mrc"))
    np.testing.assert_allclose(t.ctf["defocus_u_A"], df["rlnDefocusU"], rtol=1e-5)
    np.testing.assert_allclose(np.rad2deg(t.ctf["defocus_angle_rad"]), df["rlnDefocusAngle"], atol=1e-3)


def _blob_only(n: int = 3) -> np.ndarray:
    arr = np.zeros(n, dtype=[("uid", "<u8"), ("blob/path", "S16"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                             ("blob/psize_A", "<f4")])
    arr["blob/path"] = b"/abs/stack.mrcs"
    arr["blob/idx"] = np.arange(n)
    arr["blob/shape"] = 64
    arr["blob/psize_A"] = 1.5
    return arr


def test_no_ctf_and_no_alignments_give_none(tmp_path):
    t = read_cryosparc(_save_cs(tmp_path / "p.cs", _blob_only()))
    assert t.ctf is None and t.rotations is None and t.shifts_A is None
    assert t.box == 64 and t.image_files.tolist() == ["/abs/stack.mrcs"] * 3


def test_missing_optional_ctf_fields_get_defaults(tmp_path):
    base = _blob_only()
    names = ["df1_A", "df2_A", "df_angle_rad", "accel_kv", "cs_mm", "amp_contrast"]
    arr = np.zeros(3, dtype=base.dtype.descr + [(f"ctf/{k}", "<f4") for k in names])
    for k in base.dtype.names:
        arr[k] = base[k]
    arr["ctf/df1_A"] = 10000.0
    t = read_cryosparc(_save_cs(tmp_path / "p.cs", arr))
    assert np.all(t.ctf["phase_shift_rad"] == 0) and np.all(t.ctf["bfactor_A2"] == 0) and np.all(t.ctf["scale"] == 1)
    assert np.all(t.ctf["defocus_u_A"] == 10000.0)


@pytest.mark.parametrize("content", [b"garbage bytes, not numpy", b"data_\nloop_\n_rlnImageName #1\n1@a.mrcs\n"])
def test_corrupt_or_text_file_is_an_input_error(tmp_path, content):
    p = tmp_path / "bad.cs"
    p.write_bytes(content)
    with pytest.raises(InputError, match="bad.cs"):
        read_cryosparc(p)


def test_plain_array_truncated_file_and_missing_file_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="structured array"):
        read_cryosparc(_save_cs(tmp_path / "plain.cs", np.zeros((4, 3))))
    good = _save_cs(tmp_path / "good.cs", _blob_only(100))
    (tmp_path / "cut.cs").write_bytes(good.read_bytes()[:300])
    with pytest.raises(InputError, match="cut.cs"):
        read_cryosparc(tmp_path / "cut.cs")
    with pytest.raises(InputError, match="not found"):
        read_cryosparc(tmp_path / "nope.cs")
    arr = np.zeros(2, dtype=[("uid", "<u8"), ("alignments3D/pose", "<f4", (3,))])
    with pytest.raises(InputError, match="no image fields"):
        read_cryosparc(_save_cs(tmp_path / "poses_only.cs", arr))
