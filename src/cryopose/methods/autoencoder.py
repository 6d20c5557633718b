"""What both methods share: a pose encoder on the images and the explicit decoder, built, saved and restored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import Tensor

from ..models.encoder import PoseEncoder
from .decoder import ExplicitDecoder


class EncoderDecoder(ExplicitDecoder):
    """A :class:`PoseEncoder` with ``heads`` heads and its Adam, on top of :class:`ExplicitDecoder`.

    ``cfg`` is a method config with the fields ``encoder``, ``encoder_box``, ``shifts``, ``max_shift_A``,
    ``lr_encoder``, ``lr_decoder``, ``mantissa_exponent``, ``loss``, ``radius_px`` and ``resolution_start_A``.
    """

    def __init__(self, cfg, heads: int, box: int, pixel_size_A: float, noise_sigma: float | Tensor,
                 device: torch.device, seed: int, init_rms: float | Tensor):
        self.cfg, self.device = cfg, device
        with torch.random.fork_rng(devices=[]):  # the seed decides the initial weights, not the caller's RNG
            torch.manual_seed(seed)
            self.encoder = PoseEncoder(box, heads=heads, backbone=cfg.encoder, predict_shifts=cfg.shifts,
                                       max_shift_A=cfg.max_shift_A, pixel_size_A=pixel_size_A,
                                       input_box=cfg.encoder_box).to(device)
            super().__init__(box, pixel_size_A, noise_sigma, device, lr=cfg.lr_decoder, init_rms=init_rms,
                             mantissa_exponent=cfg.mantissa_exponent, loss=cfg.loss, radius_px=cfg.radius_px,
                             resolution_start_A=cfg.resolution_start_A)
        self.opt_encoder = torch.optim.Adam(self.encoder.parameters(), lr=cfg.lr_encoder)
        self.encode: torch.nn.Module = self.encoder  # what training calls; a DDP wrapper after distribute()

    def distribute(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Train the encoder and the volume through ``wrap`` (gradients averaged over the ranks)."""
        super().distribute(wrap)
        self.encode = wrap(self.encoder)

    def pretrain_plan(self) -> tuple[int, int]:
        """(steps, batch) of pre-training still to do before the epochs: none."""
        return 0, 0

    def state_dict(self) -> dict:
        return {"config": asdict(self.cfg), "sigma": self.sigma, "noise": self.noise.cpu(),
                "encoder": self.encoder.state_dict(), "volume": self.volume.state_dict(),
                "opt_encoder": self.opt_encoder.state_dict(), "opt_volume": self.opt_volume.state_dict(),
                "radius": self.radius}

    def load_state_dict(self, state: dict) -> None:
        self.sigma = state["sigma"]
        self.set_noise(state["noise"] if "noise" in state else torch.full((self.box, self.box), self.sigma))
        self.encoder.load_state_dict(state["encoder"])
        self.volume.load_state_dict(state["volume"])
        self.opt_encoder.load_state_dict(state["opt_encoder"])
        self.opt_volume.load_state_dict(state["opt_volume"])
        self._limit(state.get("radius", self.radius_end))  # the band of the epoch checkpointed (a finished run's map)
