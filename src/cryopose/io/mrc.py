"""MRC maps and MRC/MRCS image stacks (via mrcfile).

Maps are returned as ``(Z, Y, X)`` float32 arrays with their voxel size in Å. Stacks are opened once per file
and process and read a batch at a time with positional reads; a stack is never loaded or mapped whole.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from ..errors import InputError
from .atomic import atomic_path


@dataclass
class MapData:
    """A 3D map: ``data`` ``(Z, Y, X)`` float32 and its voxel sizes ``(x, y, z)`` in Å (0 when unset)."""

    source: Path
    data: np.ndarray
    voxel_sizes_A: tuple[float, float, float]
    origin_A: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def voxel_size_A(self) -> float:
        """The cubic voxel size (Å); an InputError for anisotropic voxels."""
        sizes = self.voxel_sizes_A
        if not np.allclose(sizes, sizes[0], rtol=1e-4):
            raise InputError(self.source, f"anisotropic voxels {sizes} Å are not supported; resample the map")
        return float(sizes[0])

    def cubic(self) -> np.ndarray:
        """The data, checked to be a cubic box with an even side (what the physics needs)."""
        d = self.data.shape
        if len(set(d)) != 1 or d[0] % 2:
            raise InputError(self.source, f"map must be a cubic box with an even side, found {d[::-1]} (x, y, z)")
        return self.data


def _open_mrc(path: Path, opener=mrcfile.open, **kwargs) -> mrcfile.mrcobject.MrcObject:
    """Open read-only and permissively (real stacks often lack the MAP ID); unreadable data is an InputError.

    The caller closes the returned object (it is a context manager).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = opener(path, mode="r", permissive=True, **kwargs)
        except (OSError, ValueError, EOFError) as err:
            raise _open_error(path, err) from err
    if not kwargs.get("header_only") and mrc.data is None:
        mrc.close()
        why = str(caught[-1].message) if caught else "no data"
        raise _open_error(path, ValueError(why))
    return mrc


def _open_error(path: Path, err: Exception) -> InputError:
    if isinstance(err, FileNotFoundError):
        return InputError(path, "file not found")
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "bytes" in text and ("Expected" in text or "expected" in text):
        return InputError(path, f"truncated MRC file ({text})")
    return InputError(path, f"not a readable MRC file ({text})")


def read_map(path: str | os.PathLike, voxel_size_A: float | None = None) -> MapData:
    """Read a 3D map (``.mrc``/``.map``, also ``.gz``/``.bz2``); ``voxel_size_A`` overrides the header."""
    path = Path(path)
    with _open_mrc(path) as mrc:
        data = np.array(mrc.data, dtype=np.float32)  # a writable copy: mrcfile's array is read-only
        vs = mrc.voxel_size
        origin = tuple(float(mrc.header.origin[a]) for a in ("x", "y", "z"))
        sizes = (float(vs.x), float(vs.y), float(vs.z))
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D map, found data of shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InputError(path, "map contains NaN or infinite values")
    if voxel_size_A is not None:
        sizes = (float(voxel_size_A),) * 3
    return MapData(source=path, data=data, voxel_sizes_A=sizes, origin_A=origin)  # type: ignore[arg-type]


def write_map(path: str | os.PathLike, data: np.ndarray, voxel_size_A: float) -> None:
    """Write a float32 map (``(Z, Y, X)``) or image stack (``(N, Y, X)``, ``.mrcs``) atomically."""
    path = Path(path)
    data = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if path.suffix == ".mrcs" and data.ndim == 3:
                mrc.set_image_stack()
            mrc.voxel_size = voxel_size_A
            mrc.update_header_stats()


@dataclass(frozen=True)
class StackInfo:
    """Header facts of one image stack: number of images, box (pixels), pixel size (Å), and where and how its
    pixels are stored."""

    n_images: int
    box: int
    voxel_size_A: float
    dtype: np.dtype = np.dtype(np.float32)
    data_offset: int = 1024


def stack_info(path: str | os.PathLike) -> StackInfo:
    """Read only the header of an image stack; clear errors for missing, non-MRC or truncated files."""
    path = Path(path)
    with _open_mrc(path, header_only=True) as mrc:
        h = mrc.header
        nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
        mode, ext = int(h.mode), int(h.nsymbt)
        voxel = float(mrc.voxel_size.x)
        try:
            dtype = mrcfile.utils.data_dtype_from_header(h)
        except ValueError:
            dtype = None
    if not (0 < nx <= 2**16 and 0 < ny <= 2**16 and 0 <= nz < 2**31):
        raise InputError(path, f"not a readable MRC file (header dimensions {nx} x {ny} x {nz})")
    if nx != ny:
        raise InputError(path, f"images are not square ({nx} x {ny} px)")
    if dtype is None or mode not in (0, 1, 2, 6, 12):
        raise InputError(path, f"unsupported MRC mode {mode}")
    expected = 1024 + ext + nx * ny * nz * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise InputError(path, f"truncated MRC file ({size} bytes, header says {expected})")
    return StackInfo(n_images=nz, box=nx, voxel_size_A=voxel, dtype=dtype, data_offset=1024 + ext)


class StackReader:
    """Batched reads from many image stacks, one open file descriptor per file per process.

    ``read(files, indices)`` returns ``(B, D, D)`` float32 images in the order asked for. Images are read with
    positional reads (``os.pread``), a run of consecutive indices in one call; nothing of a stack is mapped into
    the process, so resident memory is the batch itself however large the stacks are (the kernel's page cache
    keeps what was read recently, shared by every process). Descriptors are reopened after a fork (DataLoader
    workers), never per item.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._open: dict[str, tuple[int, StackInfo]] = {}

    def __getstate__(self) -> dict:
        return {"_pid": -1, "_open": {}}

    def __del__(self) -> None:
        if getattr(self, "_pid", -1) == os.getpid():
            for fd, _ in self._open.values():
                os.close(fd)

    def _stack(self, path: str) -> tuple[int, StackInfo]:
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        stack = self._open.get(path)
        if stack is None:
            info = stack_info(path)
            stack = self._open[path] = (os.open(path, os.O_RDONLY), info)  # kept open for the process' lifetime
        return stack

    def read(self, files: np.ndarray, indices: np.ndarray) -> np.ndarray:
        files = np.asarray(files)
        indices = np.asarray(indices, dtype=np.int64)
        box = self._stack(str(files[0]))[1].box
        out = np.empty((len(indices), box, box), dtype=np.float32)
        unique, inverse = np.unique(files, return_inverse=True)
        for k, path in enumerate(unique):  # one pass per stack file in the batch
            rows = np.flatnonzero(inverse == k)
            fd, info = self._stack(str(path))
            idx = indices[rows]
            if idx.max() >= info.n_images or idx.min() < 0:
                bad = int(idx[(idx >= info.n_images) | (idx < 0)][0])
                raise InputError(path, f"image index {bad + 1} is beyond the stack of {info.n_images} images")
            if info.box != box:
                raise InputError(path, f"box {info.box} px differs from {box} px of other stacks")
            order = np.argsort(idx, kind="stable")
            idx, rows = idx[order], rows[order]
            image_bytes = box * box * info.dtype.itemsize
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1  # runs of consecutive images: one read each
            for run_idx, run_rows in zip(np.split(idx, breaks), np.split(rows, breaks)):
                size = len(run_idx) * image_bytes
                raw = os.pread(fd, size, info.data_offset + int(run_idx[0]) * image_bytes)
                if len(raw) != size:
                    raise InputError(path, f"truncated MRC file (image {int(run_idx[0]) + 1} cannot be read)")
                out[run_rows] = np.frombuffer(raw, dtype=info.dtype).reshape(-1, box, box)
        if not np.all(np.isfinite(out)):
            bad = int(np.flatnonzero(~np.isfinite(out).all(axis=(1, 2)))[0])
            raise InputError(files[bad], f"image {int(indices[bad]) + 1} contains NaN or infinite pixels")
        return out
