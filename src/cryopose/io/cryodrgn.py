"""cryoDRGN pose and CTF pickles.

* poses: a pickled tuple ``(rot (N, 3, 3), trans (N, 2))`` (or a bare ``rot`` array). ``rot`` *is* RELION's
  Euler matrix (our convention, no transpose) and ``trans = +rlnOriginX/Y [px] / D`` (a fraction of the box).
* CTF: a float32 array ``(N, 9)`` with columns ``[D, Apix, dfU Å, dfV Å, dfang °, kV, Cs mm, w, phase °]``,
  the angles being RELION's DefocusAngle and PhaseShift in degrees.

Both relations are pinned by tests/test_io_cryodrgn.py on cryoDRGN's own parses of a RELION 3.0 STAR file.
:func:`read_cryodrgn` reads a data set (CTF pickle and stack) as a :class:`ParticleTable`.
Pickles are read with an unpickler that only builds numpy arrays (no arbitrary code runs).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import atomic_path
from .mrc import stack_info
from .particles import ParticleTable

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _NumpyUnpickler(f).load()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except Exception as err:  # any unpickling failure is a bad input file
        raise InputError(path, f"not a readable cryoDRGN pickle ({type(err).__name__}: {err})") from None


def _as_float_array(path: Path, value, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.number):
        raise InputError(path, f"{what} is not a numeric numpy array (got {type(value).__name__})")
    arr = value.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError(path, f"{what} has NaN or infinite values")
    return arr


def read_cryodrgn_poses(path: str | os.PathLike, box: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a cryoDRGN pose pickle for images of ``box`` pixels.

    Returns ``(rotations (N, 3, 3), shifts_px (N, 2) or None)``: RELION Euler matrices and RELION origins
    ``rlnOriginX/Y`` in pixels (multiply by the pixel size for ``shifts_A``). None when the file has no
    translations.
    """
    path = Path(path)
    obj = _load_pickle(path)
    if isinstance(obj, (tuple, list)):
        if len(obj) not in (1, 2):
            raise InputError(path, f"pose pickle holds {len(obj)} items, expected (rot, trans)")
        rot, trans = obj[0], (obj[1] if len(obj) == 2 else None)
    else:
        rot, trans = obj, None
    rot = _as_float_array(path, rot, "rotation array")
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(path, f"rotations have shape {rot.shape}, expected (N, 3, 3)")
    err = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max(initial=0.0)
    if err > 1e-3 or np.any(np.linalg.det(rot) < 0):
        raise InputError(path, f"rotations are not proper rotation matrices (|R Rᵀ - I| up to {err:.2g})")
    if trans is None:
        return rot, None
    trans = _as_float_array(path, trans, "translation array")
    if trans.shape != (len(rot), 2):
        raise InputError(path, f"translations have shape {trans.shape}, expected ({len(rot)}, 2)")
    return rot, trans * box


def read_cryodrgn_ctf(path: str | os.PathLike) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    """Read a cryoDRGN CTF pickle: ``(box px, pixel_size_A (N,), ctf {CTF_FIELDS: (N,) float64})``."""
    path = Path(path)
    obj = _load_pickle(path)
    if isinstance(obj, (tuple, list)) or getattr(obj, "ndim", 0) == 3:
        raise InputError(path, "holds poses, not a CTF table: give the data set's CTF pickle (ctf.pkl)")
    arr = _as_float_array(path, obj, "CTF table")
    if arr.ndim != 2 or arr.shape[1] != 9 or len(arr) == 0:
        raise InputError(path, f"CTF table has shape {arr.shape}, expected (N, 9) with N > 0")
    boxes = np.unique(arr[:, 0])
    if len(boxes) != 1 or boxes[0] <= 0 or boxes[0] != round(boxes[0]):
        raise InputError(path, f"box sizes in column 0 are not one positive integer: {boxes.tolist()[:5]}")
    ctf = {
        "defocus_u_A": arr[:, 2],
        "defocus_v_A": arr[:, 3],
        "defocus_angle_rad": np.deg2rad(arr[:, 4]),
        "voltage_kV": arr[:, 5],
        "cs_mm": arr[:, 6],
        "amplitude_contrast": arr[:, 7],
        "phase_shift_rad": np.deg2rad(arr[:, 8]),
        "bfactor_A2": np.zeros(len(arr)),
        "scale": np.ones(len(arr)),
    }
    return int(boxes[0]), arr[:, 1].copy(), ctf


def read_cryodrgn(path: str | os.PathLike, datadir: str | os.PathLike | None = None,
                  apix: float | None = None) -> ParticleTable:
    """Read a cryoDRGN data set: its CTF pickle and the one ``.mrcs`` stack in ``datadir`` (default: beside it).

    The pixel size (Å) is rescaled to the stack's box as cryoDRGN does (``Apix · D / box``) unless ``apix``
    overrides it. The table has no poses.
    """
    path = Path(path)
    ctf_box, pixel, ctf = read_cryodrgn_ctf(path)
    folder = path.parent if datadir is None else Path(datadir)
    stacks = sorted(folder.glob("*.mrcs"))
    if not stacks:
        raise InputError(path, f"no image stack (.mrcs) in {folder}; pass --datadir with the stack's folder")
    if len(stacks) > 1:
        raise InputError(path, f"{len(stacks)} image stacks ({', '.join(s.name for s in stacks)}) in {folder}: "
                               "which one is ambiguous; pass --datadir with a folder holding only the stack")
    stack, n = stacks[0].resolve(), len(pixel)
    info = stack_info(stack)
    if info.n_images != n:
        raise InputError(path, f"{n} particles but the stack {stack} holds {info.n_images} images")
    return ParticleTable(
        source=path, image_files=np.full(n, str(stack), dtype=object), image_indices=np.arange(n),
        box=info.box, pixel_size_A=np.full(n, float(apix)) if apix is not None else pixel * ctf_box / info.box,
        ctf=ctf)


def write_cryodrgn_poses(
    path: str | os.PathLike,
    rotations: np.ndarray,
    shifts_A: np.ndarray | None,
    box: int,
    pixel_size_A: float | np.ndarray,
) -> None:
    """Write ``(rot float32 (N, 3, 3), trans float32 (N, 2))`` from RELION rotations and origins in Å.

    ``trans = shifts_A / pixel_size_A / box``; zeros when ``shifts_A`` is None.
    """
    rot = np.asarray(rotations, dtype=np.float64)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"rotations must have shape (N, 3, 3), got {rot.shape}")
    if shifts_A is None:
        trans = np.zeros((len(rot), 2))
    else:
        apix = np.asarray(pixel_size_A, dtype=np.float64).reshape(-1, 1)
        trans = np.asarray(shifts_A, dtype=np.float64).reshape(len(rot), 2) / apix / box
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump((rot.astype(np.float32), trans.astype(np.float32)), f, protocol=4)


def write_cryodrgn_ctf(path: str | os.PathLike, table: ParticleTable) -> None:
    """Write the table's CTF as cryoDRGN's float32 ``(N, 9)`` array (angles in degrees).

    cryoDRGN has no B-factor or scale column: those two are not written.
    """
    ctf = table.require_ctf()
    n = len(table)
    cols = [
        np.full(n, float(table.box)),
        table.pixel_size_A,
        ctf["defocus_u_A"],
        ctf["defocus_v_A"],
        np.rad2deg(ctf["defocus_angle_rad"]),
        ctf["voltage_kV"],
        ctf["cs_mm"],
        ctf["amplitude_contrast"],
        np.rad2deg(ctf["phase_shift_rad"]),
    ]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(np.stack(cols, axis=1).astype(np.float32), f, protocol=4)
