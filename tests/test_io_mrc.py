"""MRC maps and stacks: real files from EMDB, EMAN2, RELION-era stacks; corrupt and truncated files."""

from __future__ import annotations

import os
import shutil

import mrcfile
import numpy as np
import pytest

from cryopose.errors import InputError
from cryopose.io.mrc import StackReader, read_map, stack_info, write_map

# (file, shape (z, y, x), voxel size in the header) as MANIFEST.md states them.
MAPS = [
    ("maps/EMD-3197.map", (20, 20, 20), 11.4),
    ("maps/EMD-3197.map.bz2", (20, 20, 20), 11.4),
    ("maps/emd_3197.map.gz", (20, 20, 20), 11.4),
    ("maps/4ake_sim_meld_52.mrc", (52, 52, 52), 2.002),
    ("maps/2cg9_sim_polnet_5A_66.mrc", (66, 66, 66), 5.0),
    ("maps/2cg9_sim_polnet_10A_52.mrc", (52, 52, 52), 10.0),
    ("maps/betagal_simspi_64.mrc", (64, 64, 64), 0.0),
    ("maps/clean70SRibosome_vol_65p.mrc", (65, 65, 65), 0.0),
    ("maps/3j9g_potential_ps4_4.mrc", (64, 64, 64), 4.4),
]
STACKS = [
    ("particles/aspire_sample17/sample.mrcs", 17, 200),
    ("particles/empiar10076_7/empiar_10076_7.mrc", 7, 320),
    ("particles/relion31_5/relion31.mrcs", 5, 256),
    ("particles/cryojax_tiny/000000.mrcs", 3, 16),
    ("particles/sta_ribo_bin8/ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs", 220, 64),
]


@pytest.mark.parametrize("name,shape,voxel", MAPS)
def test_real_maps_read(shared_data, name, shape, voxel):
    m = read_map(shared_data / name)
    assert m.data.shape == shape and m.data.dtype == np.float32
    assert m.voxel_size_A == pytest.approx(voxel, abs=1e-3)


def test_anisotropic_map_reads_but_is_not_cubic(shared_data):
    m = read_map(shared_data / "maps/EMD-3001.map")
    assert m.data.shape == (25, 43, 73)
    assert m.voxel_sizes_A == pytest.approx((0.44825, 0.3925, 0.45875), abs=1e-5)
    with pytest.raises(InputError, match="anisotropic voxels"):
        m.voxel_size_A
    with pytest.raises(InputError, match="cubic box"):
        m.cubic()


@pytest.mark.parametrize("name,count,box", STACKS)
def test_real_stacks_memory_map(shared_data, name, count, box):
    path = shared_data / name
    info = stack_info(path)
    assert (info.n_images, info.box) == (count, box)
    reader = StackReader()
    idx = np.array([count - 1, 0, count // 2])
    images = reader.read(np.array([str(path)] * 3), idx)
    with mrcfile.open(path, permissive=True) as mrc:
        ref = np.asarray(mrc.data).reshape(-1, box, box)[idx]
    np.testing.assert_array_equal(images, ref)


def test_stack_reader_opens_each_file_once(shared_data):
    reader = StackReader()
    path = str(shared_data / "particles/aspire_sample17/sample.mrcs")
    for start in range(0, 17, 4):
        reader.read(np.array([path] * 4), np.arange(start, start + 4) % 17)
    assert list(reader._open) == [path]


def test_write_map_round_trip(tmp_path):
    data = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    write_map(tmp_path / "m.mrc", data, 1.7)
    m = read_map(tmp_path / "m.mrc")
    np.testing.assert_array_equal(m.data, data)
    assert m.data.flags.writeable  # torch.from_numpy on a read-only array warns (seen by users of simulate MAP)
    assert m.voxel_size_A == pytest.approx(1.7)
    write_map(tmp_path / "s.mrcs", data, 1.7)
    assert stack_info(tmp_path / "s.mrcs").n_images == 8
    assert not list(tmp_path.glob(".*.tmp"))


def test_truncated_and_corrupt_files(shared_data, tmp_path):
    src = shared_data / "particles/aspire_sample17/sample.mrcs"
    truncated = tmp_path / "truncated.mrcs"
    truncated.write_bytes(src.read_bytes()[: 1024 + 200 * 200 * 4 * 5 + 17])
    with pytest.raises(InputError, match="truncated.mrcs: truncated MRC file"):
        stack_info(truncated)
    with pytest.raises(InputError, match="truncated.mrcs"):
        StackReader().read(np.array([str(truncated)]), np.array([16]))
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(InputError, match="garbage.mrc: not a readable MRC file"):
        read_map(garbage)
    with pytest.raises(InputError, match="garbage.mrc: not a readable MRC file"):
        stack_info(garbage)
    with pytest.raises(InputError, match="file not found"):
        read_map(tmp_path / "absent.mrc")
    shutil.copy(shared_data / "maps/EMD-3197.map", tmp_path / "nan.mrc")
    with mrcfile.open(tmp_path / "nan.mrc", mode="r+") as mrc:
        mrc.data[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="nan.mrc: map contains NaN"):
        read_map(tmp_path / "nan.mrc")


def test_nan_pixels_and_bad_index_name_the_file(tmp_path):
    stack = np.zeros((4, 8, 8), np.float32)
    stack[2, 1, 1] = np.inf
    write_map(tmp_path / "s.mrcs", stack, 1.0)
    reader = StackReader()
    files = np.array([str(tmp_path / "s.mrcs")] * 2)
    with pytest.raises(InputError, match=r"s.mrcs: image 3 contains NaN or infinite"):
        reader.read(files, np.array([0, 2]))
    with pytest.raises(InputError, match=r"s.mrcs: image index 5 is beyond the stack of 4"):
        reader.read(files, np.array([0, 4]))


def _rss_kB() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_stack_reader_memory_stays_bounded(tmp_path):
    """Reading a whole 96 MiB stack in scattered and in consecutive batches leaves the process's resident
    memory within a few batches (one batch is 4 MiB), and the images read are the ones on disk."""
    path = tmp_path / "big.mrcs"
    data = np.random.default_rng(0).standard_normal((1536, 128, 128), dtype=np.float32)
    write_map(path, data, 1.0)
    files = np.array([str(path)] * 64)
    reader = StackReader()
    reader.read(files[:1], np.array([0]))
    before = _rss_kB()
    scattered = np.random.default_rng(1).permutation(1536).reshape(-1, 64)
    for batch in [*scattered, *np.arange(1536).reshape(-1, 64)]:
        images = reader.read(files, batch)
        np.testing.assert_array_equal(images, data[batch])
    grown_MiB = (_rss_kB() - before) / 1024
    assert grown_MiB < 24, grown_MiB
