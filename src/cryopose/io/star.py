"""RELION STAR particle files, 3.0 (one block, no optics) and 3.1+ (optics + particles blocks, any order).

Read: :func:`read_star` -> :class:`ParticleTable`. Write: :func:`write_star` always writes RELION 3.1 (optics
block, ``rlnOriginX/YAngst`` in Å), which RELION, cryoSPARC and cryoDRGN import.

Image paths (``index@path``) are written relative to the working directory, as RELION writes and reads them
(absolute when the stack lies outside it). They are read from ``datadir`` when given, the working directory, or
the STAR file's folder (and those above it); see :func:`_resolve_paths`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ..errors import InputError
from ..geometry.rotations import matrix_to_relion_euler, relion_euler_to_matrix
from .atomic import atomic_path
from .particles import ParticleTable

# Columns this module interprets; every other column is carried in ``extra``/``optics_extra``.
_CTF_PARTICLE = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
                 "rlnCtfScalefactor")
_OPTICS_VALUES = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
_PIXEL = ("rlnImagePixelSize", "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification")
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_ORIGINS_A = ("rlnOriginXAngst", "rlnOriginYAngst")
_ORIGINS_PX = ("rlnOriginX", "rlnOriginY")
_INTERPRETED = set(_CTF_PARTICLE + _OPTICS_VALUES + _PIXEL + _ANGLES + _ORIGINS_A + _ORIGINS_PX) | {
    "rlnImageName", "rlnOpticsGroup", "rlnOpticsGroupName", "rlnImageSize", "rlnImageDimensionality"}


def read_star_blocks(path: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """All data blocks of a STAR file (via ``starfile``); an :class:`InputError` if it cannot be parsed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises many kinds of errors on malformed text
        raise InputError(path, f"not a valid STAR file ({type(err).__name__}: {err})") from err
    if not blocks:
        raise InputError(path, "not a STAR file (no data_ block found)")
    return blocks


def _find_blocks(path: Path, blocks: dict) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    particles = [k for k, v in tables.items() if "rlnImageName" in v.columns]
    if not particles:
        raise InputError(path, "no particle block (a loop with rlnImageName) in this STAR file")
    name = "particles" if "particles" in particles else particles[0]
    optics = [k for k, v in tables.items() if k != name and "rlnOpticsGroup" in v.columns
              and "rlnImageName" not in v.columns]
    return tables[name].reset_index(drop=True), (tables[optics[0]].reset_index(drop=True) if optics else None)


def _pixel_size(df: pd.DataFrame) -> np.ndarray | None:
    """Pixel size (Å) per row from ImagePixelSize, PixelSize, or DetectorPixelSize (µm) / Magnification."""
    for col in ("rlnImagePixelSize", "rlnPixelSize"):
        if col in df.columns:
            return df[col].to_numpy(np.float64)
    if "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
        mag = df["rlnMagnification"].to_numpy(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return df["rlnDetectorPixelSize"].to_numpy(np.float64) * 1e4 / mag
    return None


def _resolve_paths(star: Path, names: np.ndarray, datadir: str | os.PathLike | None) -> np.ndarray:
    """Absolute stack paths for the unique names: the first existing candidate, else the working directory's.

    Candidates in order: ``datadir`` (the relative name, then the bare file name), the working directory
    (RELION's convention; an absolute name as it is), the STAR file's folder and the folders above it, then the
    bare name in the STAR's folder.
    """
    unique, inverse = np.unique(names, return_inverse=True)
    resolved = []
    for name in unique:
        p = Path(name)
        candidates = [] if datadir is None else [Path(datadir) / c for c in ((p.name,) if p.is_absolute() else
                                                                              (p, p.name))]
        candidates += [Path.cwd() / p, *(d / p for d in (star.parent, *star.parent.parents)), star.parent / p.name]
        found = next((c for c in candidates if c.exists()), Path.cwd() / p)
        resolved.append(str(found.resolve()))
    return np.asarray(resolved, dtype=object)[inverse]


def read_star(path: str | os.PathLike, datadir: str | os.PathLike | None = None,
              apix: float | None = None) -> ParticleTable:
    """Read a RELION 3.0 or 3.1+ particle STAR file.

    Args:
        path: the STAR file.
        datadir: folder to find the image stacks in, tried first; also with the bare file name, as cryoDRGN does.
        apix: pixel size in Å overriding the file's (needed for 3.0 files without pixel-size columns).
    """
    path = Path(path)
    df, optics = _find_blocks(path, read_star_blocks(path))
    n = len(df)
    if n == 0:
        raise InputError(path, "the particle block has no rows")

    if optics is not None:
        groups = df["rlnOpticsGroup"].to_numpy(np.int64) if "rlnOpticsGroup" in df.columns else np.ones(n, int)
        optics = optics.set_index(optics["rlnOpticsGroup"].astype(np.int64))
        missing = sorted(int(g) for g in set(groups) - set(optics.index))
        if missing:
            raise InputError(path, f"particles refer to optics group(s) {missing} absent from the optics block")
        # Per-particle view of the optics columns (3.1) so that both versions are handled alike below.
        per_particle = optics.loc[groups].reset_index(drop=True)
        merged = pd.concat([per_particle.drop(columns=[c for c in per_particle.columns if c in df.columns]),
                            df], axis=1)
        order = sorted(optics.index)
        names = (optics.loc[order, "rlnOpticsGroupName"].astype(str).tolist()
                 if "rlnOpticsGroupName" in optics.columns else [f"opticsGroup{g}" for g in order])
        remap = {g: i + 1 for i, g in enumerate(order)}
        group_ids = np.array([remap[g] for g in groups], dtype=np.int64)
        optics_extra = {c: optics.loc[order, c].to_numpy() for c in optics.columns if c not in _INTERPRETED}
    else:
        merged = df
        group_ids, names, optics_extra = np.ones(n, dtype=np.int64), [], {}

    pixel = _pixel_size(merged)
    if apix is not None:
        pixel = np.full(n, float(apix))
    if pixel is None:
        raise InputError(path, "no pixel size (rlnImagePixelSize, or rlnDetectorPixelSize with "
                               "rlnMagnification); pass --apix")

    split = merged["rlnImageName"].astype(str).str.split("@", n=1, expand=True)
    if split.shape[1] == 2 and split[1].notna().all():
        indices = pd.to_numeric(split[0], errors="coerce").to_numpy() - 1
        files = split[1].to_numpy(dtype=object)
    else:
        indices, files = np.zeros(n), split[0].to_numpy(dtype=object)
    if np.any(~np.isfinite(indices)) or np.any(indices < 0):
        raise InputError(path, "rlnImageName must look like 000001@stack.mrcs (1-based index)")
    image_files = _resolve_paths(path, files, datadir)

    box = 0
    if "rlnImageSize" in merged.columns:
        sizes = np.unique(merged["rlnImageSize"].to_numpy(np.int64))
        if len(sizes) > 1:
            raise InputError(path, f"optics groups have different image sizes {sizes.tolist()}")
        box = int(sizes[0])

    table = ParticleTable(
        source=path,
        image_files=image_files,
        image_indices=indices.astype(np.int64),
        box=box,
        pixel_size_A=pixel,
        ctf=_read_ctf(path, merged),
        rotations=_read_rotations(merged),
        shifts_A=_read_shifts(merged, pixel),
        optics_group=group_ids,
        optics_names=names,
        extra={c: df[c].to_numpy() for c in df.columns if c not in _INTERPRETED},
        optics_extra=optics_extra,
    )
    if table.box == 0:
        table.box = _box_from_stack(table)
    return table


def _box_from_stack(table: ParticleTable) -> int:
    """Image size from the first stack's header, 0 when that stack is not there (metadata-only use)."""
    from .mrc import stack_info

    first = Path(table.image_files[0])
    return stack_info(first).box if first.is_file() else 0


def _read_ctf(path: Path, df: pd.DataFrame) -> dict[str, np.ndarray] | None:
    if "rlnDefocusU" not in df.columns:
        return None
    missing = [c for c in ("rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration")
               if c not in df.columns]
    if missing:
        raise InputError(path, f"CTF columns missing: {', '.join(missing)}")
    if "rlnAmplitudeContrast" not in df.columns:
        warnings.warn(f"{path}: no rlnAmplitudeContrast column; using 0.1 as RELION and cryoDRGN do", stacklevel=3)

    def col(name: str, default: float = 0.0) -> np.ndarray:
        if name not in df.columns:
            return np.full(len(df), default)
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(np.float64)
        if not np.all(np.isfinite(values)):
            raise InputError(path, f"column {name} has missing or non-numeric values")
        return values

    return {
        "defocus_u_A": col("rlnDefocusU"),
        "defocus_v_A": col("rlnDefocusV"),
        "defocus_angle_rad": np.deg2rad(col("rlnDefocusAngle")),
        "voltage_kV": col("rlnVoltage"),
        "cs_mm": col("rlnSphericalAberration"),
        "amplitude_contrast": col("rlnAmplitudeContrast", 0.1),
        "phase_shift_rad": np.deg2rad(col("rlnPhaseShift")),
        "bfactor_A2": col("rlnCtfBfactor"),
        "scale": col("rlnCtfScalefactor", 1.0),
    }


def _read_rotations(df: pd.DataFrame) -> np.ndarray | None:
    if not all(c in df.columns for c in _ANGLES):
        return None
    rot, tilt, psi = (np.deg2rad(df[c].to_numpy(np.float64)) for c in _ANGLES)
    return relion_euler_to_matrix(rot, tilt, psi).numpy()


def _read_shifts(df: pd.DataFrame, pixel: np.ndarray) -> np.ndarray | None:
    if all(c in df.columns for c in _ORIGINS_A):
        return df[list(_ORIGINS_A)].to_numpy(np.float64)
    if all(c in df.columns for c in _ORIGINS_PX):
        return df[list(_ORIGINS_PX)].to_numpy(np.float64) * pixel[:, None]
    return None


def _optics_rows(table: ParticleTable) -> tuple[np.ndarray, pd.DataFrame]:
    """Split optics groups so that voltage, Cs, amplitude contrast and pixel size are constant in each."""
    key = {"group": table.optics_group, "apix": np.round(table.pixel_size_A, 6)}
    if table.ctf is not None:
        key.update(kv=table.ctf["voltage_kV"], cs=table.ctf["cs_mm"], w=table.ctf["amplitude_contrast"])
    keys = pd.DataFrame(key)
    uniq = keys.drop_duplicates().sort_values(list(keys.columns)).reset_index(drop=True)
    new_ids = keys.merge(uniq.reset_index().rename(columns={"index": "new"}), how="left",
                         on=list(keys.columns))["new"].to_numpy() + 1
    optics = pd.DataFrame({"rlnOpticsGroup": np.arange(1, len(uniq) + 1)})
    old = uniq["group"].to_numpy()
    base = [table.optics_names[g - 1] if 0 < g <= len(table.optics_names) else f"opticsGroup{g}" for g in old]
    counts = pd.Series(base).map(pd.Series(base).value_counts())
    optics["rlnOpticsGroupName"] = [b if c == 1 else f"{b}_{i + 1}" for i, (b, c) in enumerate(zip(base, counts))]
    if table.ctf is not None:
        optics["rlnVoltage"] = uniq["kv"].to_numpy()
        optics["rlnSphericalAberration"] = uniq["cs"].to_numpy()
        optics["rlnAmplitudeContrast"] = uniq["w"].to_numpy()
    optics["rlnImagePixelSize"] = uniq["apix"].to_numpy()
    optics["rlnImageSize"] = table.box
    optics["rlnImageDimensionality"] = 2
    for name, values in table.optics_extra.items():
        optics[name] = np.asarray(values)[old - 1]
    return new_ids, optics


def write_star(path: str | os.PathLike, table: ParticleTable, comments: list[str] = ()) -> None:
    """Write ``table`` as a RELION 3.1 STAR file (optics + particles), atomically.

    Image paths are written relative to the working directory (RELION's convention), absolute for stacks outside
    it. ``comments`` are written as ``#`` lines at the top (e.g. the simulation SNR).
    """
    path = Path(path)
    group_ids, optics = _optics_rows(table)
    rel = _relative_names(table.image_files)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{f}" for i, f in zip(table.image_indices, rel)]})
    for name, values in table.extra.items():
        particles[name] = values
    particles["rlnOpticsGroup"] = group_ids
    if table.ctf is not None:
        particles["rlnDefocusU"] = table.ctf["defocus_u_A"]
        particles["rlnDefocusV"] = table.ctf["defocus_v_A"]
        particles["rlnDefocusAngle"] = np.rad2deg(table.ctf["defocus_angle_rad"])
        particles["rlnPhaseShift"] = np.rad2deg(table.ctf["phase_shift_rad"])
        particles["rlnCtfBfactor"] = table.ctf["bfactor_A2"]
        particles["rlnCtfScalefactor"] = table.ctf["scale"]
    if table.rotations is not None:
        angles = matrix_to_relion_euler(table.rotations)
        for name, a in zip(_ANGLES, angles):
            particles[name] = np.rad2deg(a.numpy())
    if table.shifts_A is not None:
        particles[_ORIGINS_A[0]] = table.shifts_A[:, 0]
        particles[_ORIGINS_A[1]] = table.shifts_A[:, 1]
    with atomic_path(path) as tmp:
        starfile.write({"optics": optics, "particles": particles}, tmp, float_format="%.6f")
        text = tmp.read_text()
        lines = [line for line in text.splitlines() if not line.startswith("# Created by the starfile")]
        body = "\n".join(("# version 30001\n" + line) if line.startswith("data_") else line for line in lines)
        header = "".join(f"# {c}\n" for c in comments)
        tmp.write_text(header + body.lstrip("\n") + "\n")


def _relative_names(files: np.ndarray) -> np.ndarray:
    """Stack paths relative to the working directory, or absolute for those outside it."""
    cwd = Path.cwd()
    unique, inverse = np.unique(files.astype(str), return_inverse=True)
    out = []
    for f in unique:
        p = Path(os.path.abspath(f))
        out.append(str(p.relative_to(cwd)) if p.is_relative_to(cwd) else str(p))
    return np.asarray(out, dtype=object)[inverse]
