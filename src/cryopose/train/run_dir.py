"""Run directories (file names in :mod:`cryopose.io.run_files`): resolved configuration, JSONL metrics log,
atomic checkpoints."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import time
import warnings
from pathlib import Path

import torch

from ..errors import InputError, OutputError
from ..io.atomic import atomic_path
from ..io.run_files import CHECKPOINT, CONFIG, EPOCH_MAPS, OWNED


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda was asked for but no CUDA device is available")
    return device


def prepare_run_dir(path: str | os.PathLike, config: dict, *, resume: bool, force: bool,
                    switch_epoch: int | None = None) -> tuple[dict, bool]:
    """Create or reopen a run directory; returns the configuration to use and whether the run resumes.

    A new run refuses a folder that already holds a run unless ``force`` (which clears the run's own files,
    nothing else). ``resume`` reuses the saved configuration (the current one must describe the same data)
    but for the epochs, device, workers, processes, the steps after training (symmetry relaxation, local rounds)
    and, when given, the method's ``switch_epoch``: a copy of a run taken at its switch can continue stage 1
    instead (a branched run).
    A run killed before its first checkpoint lost nothing: ``resume`` then starts it over, with a warning.
    """
    run = Path(path)
    saved = run / CONFIG
    if resume and not (run / CHECKPOINT).is_file():
        warnings.warn(f"{run}: no {CHECKPOINT} to resume from; starting the run from the beginning")
        resume = force = True
    if resume and not force:
        old = json.loads(saved.read_text())
        if old.get("particles") != config.get("particles"):
            raise InputError(run, f"was run on {old.get('particles')}, not {config.get('particles')}")
        for key in ("epochs", "device", "num_workers", "processes", "relax_symmetry", "local_rounds"):
            old[key] = config.get(key)
        if switch_epoch is not None and switch_epoch != old["options"]["switch_epoch"]:
            _check_switch_move(run, old["options"]["switch_epoch"], switch_epoch)
            old["options"]["switch_epoch"] = switch_epoch
        config = old
    elif saved.exists():
        if not force:
            raise InputError(run, "already holds a run; use --resume to continue it or --force to replace it")
        for name in OWNED:
            target = run / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    try:
        (run / EPOCH_MAPS).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(run, f"cannot create the run directory ({err.strerror or err})") from err
    with atomic_path(saved) as tmp:
        tmp.write_text(json.dumps(config, indent=2, default=str))
    return config, resume and not force


def _check_switch_move(run: Path, old: int, new: int) -> None:
    """A run may move its switch only if its checkpoint has begun neither the old nor the new switch epoch."""
    loop = load_checkpoint(run / CHECKPOINT, torch.device("cpu"))["loop"]
    first = min(old, new)
    if loop["epoch"] > first or (loop["epoch"] == first and loop["batch"] > 0):
        raise InputError(run, f"its checkpoint is in epoch {loop['epoch'] + 1}, past the switch at epoch "
                              f"{first + 1}: the switch cannot move from {old} to {new} epochs")


class MetricsLog:
    """Append-only JSON-lines log (one flushed line per record, so a kill loses nothing written)."""

    def __init__(self, path: Path):
        self.path = path
        self.start = time.time()

    def write(self, **record) -> None:
        record.setdefault("time", round(time.time(), 3))
        line = json.dumps(record, default=float) + "\n"
        try:
            with open(self.path, "a+b") as f:
                if f.seek(0, os.SEEK_END):
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a line cut short (full disk, kill) stays on its own
                        line = "\n" + line
                f.write(line.encode())
        except OSError as err:
            raise OutputError(self.path, f"cannot write ({err.strerror or err})") from err

    def records(self) -> list[dict]:
        """The records written; a line cut short (a full disk, a kill mid-write) is skipped."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def save_checkpoint(path: Path, state: dict) -> None:
    """Serialise in memory, write and fsync a temporary file, then rename: the previous checkpoint survives a
    crash or a full disk (which raises :class:`~cryopose.errors.OutputError`, not torch's zip-writer error)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise InputError(path, f"cannot read the checkpoint ({err})") from err
