"""The methods' settings: one dataclass per method on a shared base.

Every field carries its help, whether its default is a paper's value (``paper``) or ours (``ours``, the reason in
``docs/methods.md``), and whether ``cryopose reconstruct`` shows it as a flag; the others are expert settings, set
with ``--option key=value``. The command line is generated from these fields (:func:`flag_settings`), so no
setting is described twice. This module imports no torch, so that ``cryopose --help`` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import ClassVar

PAPER, OURS = "paper", "ours"
NOISE_MODELS = ("shell", "white")  # the images' noise models (cryopose.methods.noise)


def setting(default, help: str, source: str = PAPER, flag: bool = False, internal: bool = False,
            choices: tuple[str, ...] = ()):
    """A config field: its ``default``, ``help`` (with units), ``source`` of the default, ``flag``: a flag of
    ``cryopose reconstruct``; ``internal``: set by the job itself (e.g. from ``--shifts``), not an option;
    ``choices``: the values a text setting takes."""
    return field(default=default, metadata={"help": help, "source": source, "flag": flag, "internal": internal,
                                            "choices": choices})


def _override(base: type, name: str, default, source: str):
    """The field ``name`` of ``base`` with another default (and its source), same help."""
    meta = {f.name: f.metadata for f in fields(base)}[name]
    return field(default=default, metadata={**meta, "source": source})


@dataclass
class MethodConfig:
    """Settings both methods have (learning rates for Adam). ``epochs`` and ``batch`` are the default length and
    batch of a run of the method (the training loop's, ``cryopose reconstruct --epochs / --batch``)."""

    epochs: ClassVar[int] = 20
    batch: ClassVar[int] = 32

    switch_epoch: int = setting(5, "epoch of the switch from the first stage to the second (semi-amortized: from "
                                   "the encoder's poses to per-particle poses; search-supervised: from the search "
                                   "to end-to-end training); with --resume it moves the switch of a run that has "
                                   "not switched yet", flag=True)
    encoder: str = setting("light", "CNN backbone of the encoder: light, paper (VGG16-like) or small", OURS,
                           flag=True, choices=("light", "paper", "small"))
    encoder_box: int | None = setting(32, "Fourier-crop the images to this box (px) for the encoder", OURS)
    lr_encoder: float = setting(1e-4, "encoder learning rate", flag=True)
    lr_decoder: float = setting(5e-3, "decoder learning rate in the first stage", flag=True)
    loss: str = setting("nll", "data term: nll (Gaussian likelihood on whitened spectra) or l1 (the cryoSPIN "
                               "reference code's modulus, listed as a mistake in DESIGN)", choices=("nll", "l1"))
    mantissa_exponent: bool = setting(True, "volume stored as mantissa·exp(exponent) (cryoSPIN §4.3)")
    shifts: bool = setting(False, "estimate in-plane shifts", OURS, internal=True)
    max_shift_A: float | None = setting(None, "largest shift (Å; default a quarter of the box)", OURS)
    radius_px: float | None = setting(None, "highest frequency fitted (px; default Nyquist)")
    resolution_start_A: float | None = setting(20.0, "coarse-to-fine: fit frequencies up to 1/this (Å) at first "
                                                     "(0: the whole band from the start)", OURS, flag=True)


@dataclass
class SemiAmortizedConfig(MethodConfig):
    """cryoSPIN settings (:mod:`cryopose.methods.semi_amortized`). Runs default to 30 epochs of 8 particles (ours:
    the marginal epochs and the searches every other epoch after them bootstrap map and poses only with many volume
    steps in between)."""

    epochs: ClassVar[int] = 30
    batch: ClassVar[int] = 8
    switch_epoch: int = _override(MethodConfig, "switch_epoch", 8, OURS)
    heads: int = setting(7, "pose heads of the encoder", flag=True)
    lr_decoder_direct: float = setting(2e-3, "decoder learning rate after the switch")
    lr_pose: float = setting(0.05, "per-particle rotation learning rate after the switch (radians)", flag=True)
    lr_shift_px: float = setting(0.6, "per-particle shift learning rate after the switch (px)", OURS)
    pose_steps: int = setting(5, "pose steps per batch after the switch")
    band_ramp_epochs: int = setting(3, "epochs after the switch over which the band widens to Nyquist", OURS)
    search_epochs: tuple[int, ...] = setting(tuple(range(6, 21, 2)), "epochs after the switch (0 = the first) in "
                                             "which every particle's pose is also searched globally on the SO(3) "
                                             "grid, keeping the better pose", OURS, flag=True)
    search_width: int = setting(8, "cells kept per level by that search", OURS)
    search_depth: int = setting(4, "grid levels of that search", OURS)
    search_resolution_A: float | None = setting(10.0, "highest resolution scored at its first level (Å)", OURS)
    marginal_epochs: int = setting(6, "epochs after the switch in which each image is marginalised over the grid's "
                                      "rotations (soft assignment) instead of given one pose", OURS, flag=True)
    marginal_level: int = setting(2, "grid level of those rotations (2: 4,608, about 15° apart)", OURS)
    marginal_keep: int = setting(32, "most probable poses per image the volume step is weighted over", OURS)
    marginal_shift_span: int = setting(1, "marginal epochs with shifts: each image is also marginalised over a "
                                          "(2·span + 1)² grid of 1 px steps around its shift (0: its shift only)",
                                       OURS)
    outlier_mads: float = setting(2.0, "leave out of each volume step the images whose explained share of power "
                                       "lies more than this many robust standard deviations below the median of "
                                       "the epoch's images (junk; 0: keep every image)", OURS)


@dataclass
class SearchSupervisedConfig(MethodConfig):
    """Cryo2SSNet settings (:mod:`cryopose.methods.search_supervised`)."""

    switch_epoch: int = _override(MethodConfig, "switch_epoch", 10, OURS)
    encoder: str = _override(MethodConfig, "encoder", "small", PAPER)
    encoder_box: int | None = _override(MethodConfig, "encoder_box", 64, OURS)
    lr_decoder: float = _override(MethodConfig, "lr_decoder", 1e-2, PAPER)
    resolution_start_A: float | None = _override(MethodConfig, "resolution_start_A", 40.0, OURS)
    decoder_lr_drop: float = setting(10.0, "the decoder learning rate is divided by this at the switch")
    supervision_weight: float = setting(1.0, "weight λ of the encoder's supervision by the searched poses")
    beam_width: int = setting(4, "cells kept per level of the beam search, c", flag=True)
    beam_depth: int = setting(5, "grid levels searched, i", flag=True)
    gd_steps: int = setting(20, "gradient steps after the search, n", flag=True)
    gd_lr: float = setting(0.05, "step size of those gradient steps")
    beam_explore: bool = setting(True, "also start each search from the grid's best cells, not only those nearest "
                                       "the encoder's pose", OURS)
    keep_better: bool = setting(True, "a particle keeps its last searched pose when the new search does not fit "
                                      "better", OURS)
    beam_start_level: int = setting(1, "grid level the search starts from (0: the 72 base cells, as the paper)",
                                    OURS)
    beam_start_resolution_A: float | None = setting(10.0, "highest resolution scored at the start level (Å)", OURS)
    shift_span: int = setting(2, "local shift grid: ± this many steps", OURS)
    shift_levels: int = setting(3, "local shift grid: levels, each step halved", OURS)
    denoiser_factor: int = setting(8, "bottleneck factor f of the MLP denoiser; 0: no denoiser", flag=True)
    denoiser_steps: int = setting(7500, "pre-training steps of the denoiser")
    denoiser_batch: int = setting(64, "pre-training batch of the denoiser")
    denoiser_lr: float = setting(1e-4, "pre-training learning rate of the denoiser")
    denoise_epochs: int | None = setting(None, "epochs whose search compares denoised images (default: the first "
                                               "third of the first stage)", flag=True)
    denoiser_snr: float | None = setting(None, "SNR of the images in the denoiser's loss (default: estimated from "
                                               "the data)", flag=True)


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {"semi-amortized": SemiAmortizedConfig,
                                                 "search-supervised": SearchSupervisedConfig}


def parse_value(config: type[MethodConfig], name: str, text: str):
    """``text`` read as the type of the field ``name`` of ``config``; a ValueError names what was expected."""
    known = {f.name: f for f in fields(config) if not f.metadata.get("internal")}
    if name not in known:
        raise ValueError(f"unknown setting '{name}' (settings: {', '.join(sorted(known))})")
    kind, choices = str(known[name].type), known[name].metadata["choices"]
    if choices and text not in choices:
        raise ValueError(f"{name} takes {', '.join(choices)}, not '{text}'")
    if "None" in kind and text.lower() == "none":
        return None
    if kind.startswith("tuple"):
        return tuple(int(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    if kind.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"{name} takes true or false, not '{text}'")
        return text.lower() in ("true", "1", "yes", "on")
    for cast in (int, float):
        if kind.startswith(cast.__name__):
            try:
                return cast(text)
            except ValueError:
                raise ValueError(f"{name} takes a number ({cast.__name__}), not '{text}'") from None
    return text


@dataclass(frozen=True)
class FlagSetting:
    """A config field shown as a ``cryopose reconstruct`` flag: its ``name``, the field's type, the methods
    that have it with their default and source, and its help."""

    name: str
    kind: str
    defaults: dict[str, tuple[object, str]]
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """``--switch-epoch`` for ``switch_epoch``; units (``_A``, ``_px``) are left to the help."""
        return "--" + re.sub(r"_(A|px)$", "", self.name).replace("_", "-")


def flag_settings() -> list[FlagSetting]:
    """The fields shown as flags, shared ones first, in field order."""
    found: dict[str, FlagSetting] = {}
    for method, config in METHOD_CONFIGS.items():
        for f in fields(config):
            if not f.metadata.get("flag"):
                continue
            known = found.get(f.name) or FlagSetting(f.name, str(f.type), {}, f.metadata["help"],
                                                     f.metadata["choices"])
            known.defaults[method] = (f.default, f.metadata["source"])
            found[f.name] = known
    return sorted(found.values(), key=lambda s: -len(s.defaults))


def expert_settings() -> dict[str, list[str]]:
    """For each method, its settings set only with ``--option key=value``."""
    return {method: [f.name for f in fields(config) if not f.metadata.get("flag") and not f.metadata.get("internal")]
            for method, config in METHOD_CONFIGS.items()}
