"""cryoSPARC ``.cs`` particle files (a numpy structured array saved with ``np.save``).

Conventions (pinned by tests/test_io_cryosparc.py against cryoDRGN's parse of the same file, and the same as
pyem's ``csparc2star``):

* rotation: ``R_relion = expm(alignments3D/pose)ᵀ`` (the pose is an axis-angle vector in radians);
* shift: ``rlnOriginX/Y [px] = +alignments3D/shift [px]``, so ``shifts_A = shift · alignments3D/psize_A``
  (falling back to ``blob/psize_A``);
* CTF: ``df1_A``/``df2_A``/``df_angle_rad`` are RELION's DefocusU/V/Angle (the angle in radians);
  ``phase_shift_rad``, ``ctf/bfactor`` and ``ctf/scale`` map to phase shift, B-factor and scale when present.

Image paths (``blob/path``) are relative to the cryoSPARC project folder (a leading ``>`` marks this
explicitly); they are resolved against ``datadir`` if given, else the ``.cs`` file's folder, and if that file
does not exist but one of the same name sits directly in that folder, that one is used.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry.rotations import rotvec_to_matrix
from .particles import ParticleTable

_BLOB = ("blob/path", "blob/idx", "blob/shape", "blob/psize_A")
_CTF = {  # ours: (cryoSPARC field, default when absent or None if required)
    "defocus_u_A": ("ctf/df1_A", None),
    "defocus_v_A": ("ctf/df2_A", None),
    "defocus_angle_rad": ("ctf/df_angle_rad", None),
    "voltage_kV": ("ctf/accel_kv", None),
    "cs_mm": ("ctf/cs_mm", None),
    "amplitude_contrast": ("ctf/amp_contrast", None),
    "phase_shift_rad": ("ctf/phase_shift_rad", 0.0),
    "bfactor_A2": ("ctf/bfactor", 0.0),
    "scale": ("ctf/scale", 1.0),
}


def _load(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise InputError(path, f"not a cryoSPARC .cs file (numpy cannot read it: {err})") from None
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise InputError(path, "not a cryoSPARC .cs file (expected a 1-D numpy structured array)")
    return data


def _resolve(raw: bytes | str, base: Path) -> str:
    name = raw.decode() if isinstance(raw, bytes) else str(raw)
    name = name[1:] if name.startswith(">") else name
    p = Path(name)
    if p.is_absolute():
        return str(p)
    candidate = base / p
    if not candidate.exists() and (base / p.name).exists():
        candidate = base / p.name
    return str(candidate.absolute())


def read_cryosparc(path: str | os.PathLike, datadir: str | os.PathLike | None = None) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file.

    Returns a :class:`ParticleTable` with RELION-convention rotations ``(N, 3, 3)`` and shifts ``(N, 2)`` Å
    from ``alignments3D`` (None when absent: 2D-class poses are not 3D poses), and the CTF (None when the file
    has no ``ctf/df1_A``). Raises :class:`InputError` for unreadable, empty or image-less files.
    """
    path = Path(path)
    cs = _load(path)
    names = set(cs.dtype.names)
    if len(cs) == 0:
        raise InputError(path, "contains no particles")
    missing = [f for f in _BLOB if f not in names]
    if missing:
        raise InputError(path, f"has no image fields {', '.join(missing)} (is it a particle .cs file?)")

    shape = np.asarray(cs["blob/shape"]).reshape(len(cs), -1)
    boxes = np.unique(shape)
    if len(boxes) != 1:
        raise InputError(path, f"particles are not square boxes of one size: blob/shape values {boxes.tolist()}")
    base = Path(datadir) if datadir is not None else path.parent
    unique, inverse = np.unique(cs["blob/path"], return_inverse=True)
    files = np.array([_resolve(u, base) for u in unique])[inverse.reshape(-1)]
    psize = cs["blob/psize_A"].astype(np.float64)

    ctf = None
    if "ctf/df1_A" in names:
        ctf = {}
        for ours, (field, default) in _CTF.items():
            if field in names:
                ctf[ours] = cs[field].astype(np.float64)
            elif default is None:
                raise InputError(path, f"has ctf/df1_A but no {field}")
            else:
                ctf[ours] = np.full(len(cs), default)

    rotations = shifts = None
    if "alignments3D/pose" in names:
        pose = cs["alignments3D/pose"].astype(np.float64).reshape(len(cs), -1)
        if pose.shape[1] != 3:
            raise InputError(path, f"alignments3D/pose has {pose.shape[1]} values per particle, expected 3")
        rotations = rotvec_to_matrix(pose).numpy().transpose(0, 2, 1).copy()
        shift_px = np.zeros((len(cs), 2))
        if "alignments3D/shift" in names:
            shift_px = cs["alignments3D/shift"].astype(np.float64).reshape(len(cs), 2)
        apsize = cs["alignments3D/psize_A"].astype(np.float64) if "alignments3D/psize_A" in names else psize
        apsize = np.where(apsize > 0, apsize, psize)
        shifts = shift_px * apsize[:, None]

    groups = None
    if "ctf/exp_group_id" in names:
        _, groups = np.unique(cs["ctf/exp_group_id"], return_inverse=True)
        groups = groups.astype(np.int64) + 1

    return ParticleTable(
        source=path,
        image_files=files,
        image_indices=cs["blob/idx"].astype(np.int64),
        box=int(boxes[0]),
        pixel_size_A=psize,
        ctf=ctf,
        rotations=rotations,
        shifts_A=shifts,
        optics_group=groups,
    )
