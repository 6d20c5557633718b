"""``cryopose reconstruct`` on bad input and failing output: one line naming the file and the problem, exit
code 2, and nothing already written lost or corrupted."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from cryopose.io.mrc import read_map
from cryopose.simulation.simulate import SimulationConfig, simulate

FAST = ["--epochs", "2", "--switch-epoch", "1", "--heads", "2", "--batch", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    with pytest.MonkeyPatch.context() as mp:  # stack names relative to the data folder: copies read their own
        mp.chdir(folder)
        simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=96, snr=0.5, seed=2), folder)
    return folder


def _reconstruct(star, run, *args, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    cmd = [sys.executable, "-m", "cryopose", "reconstruct", str(star), "-o", str(run), *FAST, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=limit if file_limit else None,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("cryopose: ")]
    assert len(errors) == 1 and errors[0].startswith("cryopose: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _copy(data, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    return folder


def test_nan_pixels_stop_the_run_naming_file_and_image(data, tmp_path):
    folder = _copy(data, tmp_path)
    with mrcfile.open(folder / "particles.mrcs", mode="r+") as mrc:
        mrc.data[40, 3, 3] = np.nan
    for workers in ("0", "2"):  # raised in a loader worker process, shown the same
        _one_error_line(_reconstruct(folder / "particles.star", tmp_path / f"run{workers}", "--workers", workers),
                        "particles.mrcs: image 41 contains NaN")


def test_metadata_that_does_not_match_the_stack(data, tmp_path):
    folder = _copy(data, tmp_path)
    star = (folder / "particles.star").read_text()
    (folder / "beyond.star").write_text(star.replace("000096@particles.mrcs", "000200@particles.mrcs"))
    _one_error_line(_reconstruct(folder / "beyond.star", tmp_path / "a"), "beyond.star",
                    "image 200 of", "the stack has 96 images")
    with open(folder / "particles.mrcs", "r+b") as f:  # truncate: the header still promises 96 images
        f.truncate(1024 + 50 * 32 * 32 * 4)
    _one_error_line(_reconstruct(folder / "particles.star", tmp_path / "b"), "particles.mrcs: truncated MRC file")
    assert not (tmp_path / "a" / "config.json").exists()  # refused before anything was written


def test_wrong_pixel_size(data, tmp_path):
    _one_error_line(_reconstruct(data / "particles.star", tmp_path / "a", "--apix", "0"),
                    "particles.star: pixel size is missing, zero or negative")
    result = _reconstruct(data / "particles.star", tmp_path / "b", "--apix", "1.5", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "header pixel size 3 Å differs from the particles' 1.5 Å" in result.stderr


def test_failed_checkpoint_write_keeps_what_was_written(data, tmp_path):
    """The first checkpoint (MBs) cannot be written: the run stops with one line; the epoch's map and log,
    written before, are whole, and no temporary file is left behind."""
    run = tmp_path / "run"
    _one_error_line(_reconstruct(data / "particles.star", run, file_limit=1_000_000),
                    f"{run / 'checkpoint.pt'}: cannot write (File too large)")
    assert read_map(run / "maps" / "epoch_001.mrc").data.shape == (32, 32, 32)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.slow
def test_damaged_run_directory(data, tmp_path):
    """A corrupt checkpoint is named; a log line cut short by a full disk does not stop a resume."""
    run = tmp_path / "run"
    assert _reconstruct(data / "particles.star", run, "--epochs", "1").returncode == 0
    with open(run / "log.jsonl", "a") as log:
        log.write('{"kind": "epoch", "epo')  # what a write cut short by a full disk leaves
    result = _reconstruct(data / "particles.star", run, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (run / "log.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines if line.startswith('{"kind": "epoch", "epoch"')]
    assert epochs == [0, 1] and lines[-1].startswith('{"kind": "done"')
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    _one_error_line(_reconstruct(data / "particles.star", run, "--resume", "--epochs", "3"),
                    "checkpoint.pt: cannot read the checkpoint")
    other = tmp_path / "other.star"
    shutil.copy(data / "particles.star", other)
    _one_error_line(_reconstruct(other, run, "--resume", "--datadir", str(data)), "was run on")
    _one_error_line(_reconstruct(data / "particles.star", run), "already holds a run")
    _one_error_line(_reconstruct(data / "particles.star", run / "config.json" / "run"),
                    "cannot create the run directory (Not a directory)")
