"""ParticleDataset batching/streaming and the CLI's behaviour on good and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cryopose.cli import main
from cryopose.errors import InputError
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset, make_loader
from cryopose.io.mrc import write_map
from cryopose.io.particles import ParticleTable
from cryopose.io.star import write_star
from cryopose.physics.fourier import fourier_resize


def _make_dataset(folder, n=40, box=16, files=2, ctf=True):
    """A small synthetic data set: ``files`` stacks, a STAR file with CTF and poses."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, box, box)).astype(np.float32) + 3.0
    per = n // files
    names = []
    for f in range(files):
        write_map(folder / f"stack{f}.mrcs", images[f * per:(f + 1) * per], 2.0)
        names += [str(folder / f"stack{f}.mrcs")] * per
    table = ParticleTable(
        source=folder / "p.star", image_files=np.array(names, dtype=object),
        image_indices=np.tile(np.arange(per), files), box=box, pixel_size_A=np.full(n, 2.0),
        ctf={"defocus_u_A": rng.uniform(1e4, 2e4, n), "defocus_v_A": rng.uniform(1e4, 2e4, n),
             "defocus_angle_rad": rng.uniform(0, np.pi, n), "voltage_kV": np.full(n, 300.0),
             "cs_mm": np.full(n, 2.7), "amplitude_contrast": np.full(n, 0.1), "phase_shift_rad": np.zeros(n),
             "bfactor_A2": np.zeros(n), "scale": np.ones(n)} if ctf else None,
        rotations=np.tile(np.eye(3), (n, 1, 1)), shifts_A=rng.normal(size=(n, 2)))
    write_star(folder / "p.star", table)
    return images, folder / "p.star"


def test_dataset_batches_match_the_stacks(tmp_path):
    images, star = _make_dataset(tmp_path)
    ds = ParticleDataset(read_particles(star), normalize=False)
    batch = ds.__getitems__([39, 0, 21, 5])
    np.testing.assert_array_equal(batch["images"].numpy(), images[[39, 0, 21, 5]])
    assert batch["ctf"].defocus_u_A.dtype == torch.float32 and batch["rotations"].shape == (4, 3, 3)
    assert batch["shifts_A"].shape == (4, 2) and batch["index"].tolist() == [39, 0, 21, 5]


def test_invert_normalize_and_downsample(tmp_path):
    images, star = _make_dataset(tmp_path)
    table = read_particles(star)
    ds = ParticleDataset(table, invert=True, normalize=True)
    all_images = ds.__getitems__(np.arange(40))["images"]
    assert abs(float(all_images.mean())) < 1e-5 and float(all_images.std()) == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(all_images.numpy(), (-images - (-images).mean()) / images.std(), atol=1e-3)
    small = ParticleDataset(table, box=8, normalize=False)
    assert small.pixel_size_A == pytest.approx(4.0)
    expected = fourier_resize(torch.from_numpy(images[:3]), 8, 2)
    torch.testing.assert_close(small.__getitems__([0, 1, 2])["images"], expected)
    for bad in (9, 32):
        with pytest.raises(InputError, match=f"--box {bad} must be even and at most the images' 16 px"):
            ParticleDataset(table, box=bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_covers_every_particle_once(tmp_path, workers):
    _, star = _make_dataset(tmp_path)
    loader = make_loader(ParticleDataset(read_particles(star)), batch_size=7, shuffle=True, num_workers=workers)
    seen = torch.cat([b["index"] for b in loader])
    assert sorted(seen.tolist()) == list(range(40))
    again = torch.cat([b["index"] for b in make_loader(ParticleDataset(read_particles(star)), batch_size=7,
                                                        shuffle=True, num_workers=workers)])
    assert seen.tolist() == again.tolist()  # same seed, same order


def test_dataset_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the STAR names its stacks from here (``000020@stack1.mrcs``), as RELION does
    _, star = _make_dataset(tmp_path)
    text = star.read_text()
    (tmp_path / "missing.star").write_text(text.replace("stack1.mrcs", "nowhere.mrcs"))
    with pytest.raises(InputError, match="missing.star: image stack .*nowhere.mrcs not found"):
        ParticleDataset(read_particles(tmp_path / "missing.star"))
    (tmp_path / "beyond.star").write_text(text.replace("000020@stack1.mrcs", "000099@stack1.mrcs"))
    with pytest.raises(InputError, match="image 99 of .*stack1.mrcs requested but the stack has 20"):
        ParticleDataset(read_particles(tmp_path / "beyond.star"))
    _, no_ctf = _make_dataset(tmp_path / "noctf", ctf=False) if (tmp_path / "noctf").mkdir() is None else None
    with pytest.raises(InputError, match="no CTF parameters"):
        ParticleDataset(read_particles(no_ctf))
    (tmp_path / "wrongbox.star").write_text(text.replace("rlnImageSize #7\n", "rlnImageSize #7\n")
                                            .replace("\t16\t", "\t32\t"))
    with pytest.raises(InputError, match="box 16 px differs from the metadata's 32 px"):
        ParticleDataset(read_particles(tmp_path / "wrongbox.star"))


def _cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_info_on_real_files(shared_data, capsys):
    code, out, err = _cli(capsys, "info", shared_data / "particles/aspire_sample17/sample_particles_relion31.star")
    assert code == 0, err
    assert "particles:      17" in out and "optics groups:  2" in out and "all present and complete" in out
    code, out, _ = _cli(capsys, "info", shared_data / "maps/EMD-3197.map")
    assert code == 0 and "20 × 20 × 20" in out and "11.4" in out


def test_console_entry_point_exit_code(tmp_path):
    """The real process: --help works and bad input exits with code 2 and one line on stderr."""
    run = [sys.executable, "-m", "cryopose"]
    assert "info" in subprocess.run(run + ["--help"], capture_output=True, text=True, check=True).stdout
    out = subprocess.run(run + ["info", str(tmp_path / "absent.star")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == f"cryopose: error: {tmp_path / 'absent.star'}: file not found"


def test_cli_bad_input_is_one_line_and_exit_2(shared_data, tmp_path, capsys):
    garbage = tmp_path / "garbage.mrcs"
    garbage.write_bytes(b"\x00" * 100)
    cases = [
        (shared_data / "particles/aspire_sample17/sample_incomplete_ctf_params.star", "CTF columns missing"),
        (garbage, "garbage.mrcs: "),
        (tmp_path / "absent.star", "absent.star: file not found"),
        (shared_data / "metadata/cryosparc/empty_alignments3D_4k_dataset.cs", "no particles"),
    ]
    for path, message in cases:
        code, out, err = _cli(capsys, "info", path)
        assert code == 2, (path, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cryopose: error: ") and message in lines[0], err
