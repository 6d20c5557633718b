"""RELION STAR reading/writing against real files written by RELION, cryoDRGN, ASPIRE and starfile."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import starfile

from cryopose.errors import InputError
from cryopose.geometry.rotations import relion_euler_to_matrix
from cryopose.io import read_particles
from cryopose.io.mrc import write_map
from cryopose.io.particles import ParticleTable
from cryopose.io.star import read_star, read_star_blocks, write_star

# (file under ../shared/data, particles, box, pixel size Å) as MANIFEST.md states them.
PARTICLE_STARS = [
    ("particles/relion31_5/relion31.star", 5, 256, 2.806),
    ("particles/relion31_5/relion31.v2.star", 5, 256, 2.806),
    ("particles/aspire_sample17/sample_particles_relion30.star", 17, 200, 1.338),
    ("particles/aspire_sample17/sample_particles_relion31.star", 17, 200, 1.4),
    ("particles/aspire_sample17/sample_relion_symmetry_group_D4.star", 17, 200, 1.338),
    ("particles/empiar10076_7/empiar_10076_7.star", 7, 320, 5 / 38168 * 1e4),
    ("particles/cryojax_tiny/test_starfile.star", 3, 16, 12.0),
    ("particles/sta_ribo_bin8/sta_testing_bin8.star", 219, 64, 1.96),
    ("metadata/relion/betagal_empiar10061_relion31_452.star", 452, 128, 1.911),
    ("metadata/relion/relion31.6opticsgroups.star", 139, 196, None),
    ("metadata/relion/relion5.star", 17, 448, 0.89),
    ("metadata/relion/FinalRefinement-OriginalParticles-PfCRT.star", 5, 0, 1.035),
]


@pytest.mark.parametrize("name,count,box,apix", PARTICLE_STARS)
def test_particle_star_files_parse(shared_data, name, count, box, apix):
    with pytest.warns(UserWarning) if "PfCRT" in name else _no_warning():
        table = read_star(shared_data / name)
    assert len(table) == count
    assert table.box == box
    if apix is None:  # six optics groups with 1.24 and 1.25 Å pixels
        assert set(np.round(table.pixel_size_A, 3)) == {1.24, 1.25}
        assert len(table.optics_names) == 6
        with pytest.raises(InputError, match="different pixel sizes"):
            table.apix
    else:
        assert table.apix == pytest.approx(apix, rel=1e-6)
    assert table.ctf is not None and np.all(table.ctf["defocus_u_A"] > 1000)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_every_star_file_in_shared_data_parses(shared_data):
    stars = sorted(shared_data.rglob("*.star"))
    assert len(stars) >= 30
    for path in stars:
        blocks = read_star_blocks(path)
        assert len(blocks) >= 1, path


def test_relion31_optics_values_and_poses(shared_data):
    table = read_star(shared_data / "particles/aspire_sample17/sample_particles_relion31.star")
    df = starfile.read(shared_data / "particles/aspire_sample17/sample_particles_relion31.star")
    optics, parts = df["optics"].set_index("rlnOpticsGroup"), df["particles"]
    kv = optics.loc[parts["rlnOpticsGroup"], "rlnVoltage"].to_numpy()
    np.testing.assert_allclose(table.ctf["voltage_kV"], kv)
    assert set(kv) == {300.0, 200.0}
    np.testing.assert_allclose(table.ctf["defocus_angle_rad"], np.deg2rad(parts["rlnDefocusAngle"]))
    np.testing.assert_allclose(table.shifts_A, parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy())
    expected = relion_euler_to_matrix(*(np.deg2rad(parts[c].to_numpy())
                                        for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))).numpy()
    np.testing.assert_allclose(table.rotations, expected, atol=1e-12)


def test_blocks_in_either_order_agree(shared_data):
    a = read_star(shared_data / "particles/relion31_5/relion31.star")
    b = read_star(shared_data / "particles/relion31_5/relion31.v2.star")
    for key in a.ctf:
        np.testing.assert_array_equal(a.ctf[key], b.ctf[key])
    np.testing.assert_array_equal(a.rotations, b.rotations)
    np.testing.assert_array_equal(a.image_indices, b.image_indices)


def test_relion30_pixel_shifts_become_angstrom(shared_data):
    path = shared_data / "particles/aspire_sample17/sample_particles_relion30.star"
    table = read_star(path)
    df = starfile.read(path)
    apix = df["rlnDetectorPixelSize"].to_numpy() * 1e4 / df["rlnMagnification"].to_numpy()
    np.testing.assert_allclose(table.pixel_size_A, apix)
    np.testing.assert_allclose(table.shifts_A, df[["rlnOriginX", "rlnOriginY"]].to_numpy() * apix[:, None])
    # rows 9-17 were edited to 200 kV: per-particle voltage survives
    assert np.count_nonzero(table.ctf["voltage_kV"] == 200) == 9


def test_pfcrt_star_matches_cryodrgn_parse(shared_data):
    """cryoDRGN's parse of this RELION 3.0.6 file: CTF (N, 9) and poses (rotations, translations / box)."""
    with pytest.warns(UserWarning, match="rlnAmplitudeContrast"):
        table = read_star(shared_data / "metadata/relion/FinalRefinement-OriginalParticles-PfCRT.star")
    ctf = pickle.load(open(shared_data / "metadata/cryodrgn/ctf1.pkl", "rb"))
    rot, trans = pickle.load(open(shared_data / "metadata/cryodrgn/pose.star.pkl", "rb"))
    box = ctf[0, 0]
    np.testing.assert_allclose(table.pixel_size_A, ctf[:, 1], rtol=1e-4)
    np.testing.assert_allclose(table.ctf["defocus_u_A"], ctf[:, 2], rtol=1e-4)
    np.testing.assert_allclose(table.ctf["defocus_v_A"], ctf[:, 3], rtol=1e-4)
    np.testing.assert_allclose(np.rad2deg(table.ctf["defocus_angle_rad"]), ctf[:, 4], rtol=1e-4)
    np.testing.assert_allclose(table.ctf["voltage_kV"], ctf[:, 5], rtol=1e-4)
    np.testing.assert_allclose(table.ctf["cs_mm"], ctf[:, 6], rtol=1e-4)
    np.testing.assert_allclose(table.ctf["amplitude_contrast"], ctf[:, 7], rtol=1e-4)
    # cryoDRGN's rotation is RELION's Euler matrix itself; its translation is +origin / box in pixels.
    np.testing.assert_allclose(table.rotations, rot, atol=1e-4)
    np.testing.assert_allclose(table.shifts_A / table.pixel_size_A[:, None] / box, trans, atol=1e-6)


def _assert_tables_equal(a, b):
    assert len(a) == len(b) and a.box == b.box
    np.testing.assert_array_equal(a.image_files, b.image_files)
    np.testing.assert_array_equal(a.image_indices, b.image_indices)
    np.testing.assert_allclose(a.pixel_size_A, b.pixel_size_A, rtol=1e-6)
    for key in a.ctf:
        np.testing.assert_allclose(a.ctf[key], b.ctf[key], rtol=1e-6, atol=1e-7, err_msg=key)
    if a.rotations is None:
        assert b.rotations is None
    else:
        np.testing.assert_allclose(a.rotations, b.rotations, atol=1e-6)
    if a.shifts_A is None:
        assert b.shifts_A is None
    else:
        np.testing.assert_allclose(a.shifts_A, b.shifts_A, atol=1e-6)
    assert set(a.extra) == set(b.extra)
    for key, values in a.extra.items():
        if np.issubdtype(np.asarray(values).dtype, np.number):
            np.testing.assert_allclose(np.asarray(values, float), np.asarray(b.extra[key], float), rtol=1e-6,
                                       err_msg=key)
        else:
            assert list(map(str, values)) == list(map(str, b.extra[key])), key


@pytest.mark.parametrize("name", [
    "particles/aspire_sample17/sample_particles_relion30.star",
    "particles/aspire_sample17/sample_particles_relion31.star",
    "particles/relion31_5/relion31.star",
    "particles/sta_ribo_bin8/sta_testing_bin8.star",
    "metadata/relion/relion31.6opticsgroups.star",
])
def test_star_round_trip_keeps_every_value(shared_data, tmp_path, name):
    original = read_star(shared_data / name)
    out = tmp_path / "sub" / "written.star"
    write_star(out, original, comments=["written by the round-trip test"])
    again = read_star(out)
    _assert_tables_equal(original, again)
    for key, values in original.optics_extra.items():
        groups = original.optics_group - 1
        np.testing.assert_array_equal(np.asarray(values)[groups], np.asarray(again.optics_extra[key])[
            again.optics_group - 1], err_msg=key)
    # and the file is plain RELION 3.1 for other readers
    text = out.read_text()
    assert text.startswith("# written by the round-trip test")
    assert "# version 30001\ndata_optics" in text
    blocks = starfile.read(out)
    assert set(blocks) == {"optics", "particles"} and len(blocks["particles"]) == len(original)


def test_mixed_voltage_in_one_group_splits_optics_groups(shared_data, tmp_path):
    table = read_star(shared_data / "particles/aspire_sample17/sample_particles_relion30.star")
    write_star(tmp_path / "out.star", table)
    optics = starfile.read(tmp_path / "out.star")["optics"]
    assert sorted(optics["rlnVoltage"]) == [200.0, 300.0]


def test_datadir_override(shared_data, tmp_path):
    star = tmp_path / "moved.star"
    star.write_text((shared_data / "particles/cryojax_tiny/test_starfile.star").read_text())
    table = read_particles(star, datadir=shared_data / "particles/cryojax_tiny")
    assert table.image_files[0] == str((shared_data / "particles/cryojax_tiny/000000.mrcs").resolve())


def test_bad_star_inputs(shared_data, tmp_path):
    with pytest.raises(InputError, match="CTF columns missing: rlnVoltage"):
        read_star(shared_data / "particles/aspire_sample17/sample_incomplete_ctf_params.star")
    with pytest.raises(InputError, match="no particle block"):
        read_star(shared_data / "metadata/starfile_edgecases/postprocess.star")
    bad = tmp_path / "bad.star"
    bad.write_text("data_\nloop_\n_rlnImageName\n_rlnCoordinateX\n1@a.mrcs 1000\n")
    with pytest.raises(InputError, match="no pixel size"):
        read_star(bad)
    assert len(read_star(bad, apix=1.5)) == 1
    zero = tmp_path / "zero.star"
    zero.write_text("data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n1 0.0 64\n\n"
                    "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@a.mrcs 1\n")
    with pytest.raises(InputError, match="pixel size is missing, zero"):
        read_star(zero)
    orphan = tmp_path / "orphan.star"
    orphan.write_text(zero.read_text().replace("1@a.mrcs 1", "1@a.mrcs 3"))
    with pytest.raises(InputError, match=r"optics group\(s\) \[3\]"):
        read_star(orphan)
    nan = tmp_path / "nan.star"
    nan.write_text("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n"
                   "_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnPixelSize\n1@a.mrcs nan 1 0 300 2.7 0.1 1\n")
    with pytest.raises(InputError, match="rlnDefocusU has missing or non-numeric"):
        read_star(nan)
    with pytest.raises(InputError, match="not found"):
        read_star(tmp_path / "absent.star")
    with pytest.raises(InputError, match="unknown particle file type"):
        read_particles(bad.rename(tmp_path / "bad.txt"))


def _stack_table(stack, n=3):
    """A table of ``n`` images in ``stack`` (written as a small MRC stack)."""
    stack.parent.mkdir(parents=True, exist_ok=True)
    write_map(stack, np.zeros((n, 8, 8), np.float32), 2.0)
    return ParticleTable(source=stack.with_suffix(".star"), image_files=np.full(n, str(stack.resolve()), dtype=object),
                         image_indices=np.arange(n), box=8, pixel_size_A=np.full(n, 2.0))


def test_written_stack_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    """RELION opens rlnImageName from the working directory: ``000001@sim/stack.mrcs`` from sim's parent."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    inside, outside = _stack_table(tmp_path / "work/sim/stack.mrcs"), _stack_table(tmp_path / "elsewhere/far.mrcs")
    write_star("sim/p.star", inside)
    write_star("sim/far.star", outside)
    assert list(starfile.read("sim/p.star")["particles"]["rlnImageName"]) == [
        "000001@sim/stack.mrcs", "000002@sim/stack.mrcs", "000003@sim/stack.mrcs"]
    assert starfile.read("sim/far.star")["particles"]["rlnImageName"][0] == f"000001@{outside.image_files[0]}"
    for cwd in (tmp_path / "work", tmp_path / "elsewhere", tmp_path / "work/sim"):
        monkeypatch.chdir(cwd)
        np.testing.assert_array_equal(read_star(tmp_path / "work/sim/p.star").image_files, inside.image_files)
        np.testing.assert_array_equal(read_star(tmp_path / "work/sim/far.star").image_files, outside.image_files)


def test_stack_paths_resolve_from_datadir_then_cwd_then_star_folder(tmp_path, monkeypatch):
    star = tmp_path / "job/p.star"
    star.parent.mkdir()
    star.write_text("data_\nloop_\n_rlnImageName\n_rlnPixelSize\n1@s.mrcs 2.0\n")
    for folder in ("job", "cwd", "data"):
        _stack_table(tmp_path / folder / "s.mrcs")
    monkeypatch.chdir(tmp_path / "cwd")
    assert read_star(star, datadir=tmp_path / "data").image_files[0] == str(tmp_path / "data/s.mrcs")
    assert read_star(star).image_files[0] == str(tmp_path / "cwd/s.mrcs")
    (tmp_path / "cwd/s.mrcs").unlink()
    assert read_star(star).image_files[0] == str(tmp_path / "job/s.mrcs")  # an old file, relative to its folder
    # a RELION project file (names relative to the project folder) reads from anywhere
    star.write_text("data_\nloop_\n_rlnImageName\n_rlnPixelSize\n1@data/s.mrcs 2.0\n")
    assert read_star(star).image_files[0] == str(tmp_path / "data/s.mrcs")
    # --datadir also overrides an absolute name that still exists (stacks copied elsewhere)
    star.write_text(f"data_\nloop_\n_rlnImageName\n_rlnPixelSize\n1@{tmp_path / 'job/s.mrcs'} 2.0\n")
    assert read_star(star).image_files[0] == str(tmp_path / "job/s.mrcs")
    assert read_star(star, datadir=tmp_path / "data").image_files[0] == str(tmp_path / "data/s.mrcs")
