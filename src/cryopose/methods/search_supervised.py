"""Search-supervised ab initio reconstruction (Cryo2SSNet; DESIGN §4).

Stage ``search`` (epochs < ``switch_epoch``): the encoder predicts one pose per image; a heuristic beam search over
the Hopf grid seeded by it, followed by gradient refinement (:mod:`cryopose.methods.beam_search`), finds a better
pose under the current volume; with shifts, local shift searches at the base level's best cell and at the grid's
best rotation come before the refinement (from the encoder's shift at the first search, from the last one's
afterwards). The searched pose drives the decoder (data term at that pose) and supervises the encoder (``λ`` ×
squared quaternion distance, plus the squared shift error as a fraction of the box: ~ the quaternion term of the
rotation that moves the box edge by as much). Stage ``end-to-end``: encoder and decoder are trained through the
rendered images alone, the decoder learning rate divided by ``decoder_lr_drop``.

During the first ``denoise_epochs`` (default: the first third of stage 1) the search cost is the L2 between the
denoised image and the denoised projection, with an MLP denoiser pre-trained on the noisy images
(:mod:`cryopose.models.denoiser`; pre-trained as a stage of the training loop); afterwards it is the data term itself.
Not in the paper, on by default: a coarse-to-fine band (``resolution_start_A``, growing to Nyquist over
stage 1) for the search cost and the data term; ``beam_explore``: each search also starts from the best cells of
the grid, not only those nearest to the encoder's pose, so it stays global while the encoder is poor; the search
starts at the 576 cells of level 1 scored up to ``beam_start_resolution_A`` instead of the 72 base cells, and
``keep_better``: a particle's pose from its last search competes with the new search under the current map
(:mod:`cryopose.methods.beam_search` has the measurements that led to both). Difference from the paper, on
purpose: the data term is the Gaussian likelihood on whitened spectra used by every cryopose method (the
SNR-corrected L2 up to scale and constant); the denoiser keeps the paper's loss. On a CPU the denoised search is
slow at 64 px (every candidate projection goes through the MLP: ~2 images/s on 2 cores), so it pays off on GPUs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import roma
import torch
from torch import Tensor

from ..io.dataset import ParticleDataset
from ..models.denoiser import MLPDenoiser, snr_from_noise, unbiased_l2
from ..physics.fourier import ifft2_centered
from ..physics.projection import render
from .autoencoder import EncoderDecoder
from .beam_search import BeamSearchConfig, beam_search
from .config import SearchSupervisedConfig


def beam_config(cfg: SearchSupervisedConfig, start_radius: float | None, pixel_size_A: float,
                max_shift_A: float) -> BeamSearchConfig:
    """The beam search's settings; shifts searched in steps of one pixel, then finer, within the encoder's bound
    ``max_shift_A``."""
    return BeamSearchConfig(cfg.beam_width, cfg.beam_depth, cfg.gd_steps, cfg.gd_lr, cfg.beam_explore,
                            cfg.beam_start_level, start_radius, shift_step=pixel_size_A, shift_span=cfg.shift_span,
                            shift_levels=cfg.shift_levels, shift_limit=max_shift_A)


def quaternion_loss(r1: Tensor, r2: Tensor) -> Tensor:
    """Squared distance ``min(‖q1 − q2‖², ‖q1 + q2‖²)`` ``(...)`` between the unit quaternions of rotations
    ``(..., 3, 3)`` (sign-invariant; differentiable)."""
    q1, q2 = roma.rotmat_to_unitquat(r1), roma.rotmat_to_unitquat(r2)
    return torch.minimum((q1 - q2).square().sum(-1), (q1 + q2).square().sum(-1))


class SearchSupervised(EncoderDecoder):
    """The Cryo2SSNet method for :func:`cryopose.train.loop.train` (see module docstring).

    Args:
        cfg: settings.
        n_particles: number of particles; the other arguments as :class:`EncoderDecoder`.
    """

    def __init__(self, cfg: SearchSupervisedConfig, n_particles: int, box: int, pixel_size_A: float,
                 noise_sigma: float | Tensor, device: torch.device, seed: int = 0, init_rms: float | Tensor = 1e-2):
        super().__init__(cfg, 1, box, pixel_size_A, noise_sigma, device, seed, init_rms)
        self.rotations = torch.eye(3, device=device).repeat(n_particles, 1, 1)
        self.shifts = torch.zeros(n_particles, 2, device=device)
        self.gain = torch.zeros(2, device=device)  # summed (encoder − searched) loss and count, per epoch
        self.denoiser = MLPDenoiser(box, cfg.denoiser_factor).to(device) if cfg.denoiser_factor > 0 else None
        self.denoise = self.denoiser  # what pre-training calls; a DDP wrapper after distribute()
        self.opt_denoiser = None if self.denoiser is None else torch.optim.Adam(self.denoiser.parameters(),
                                                                                lr=cfg.denoiser_lr)
        self.snr = cfg.denoiser_snr  # of the images, for the denoiser's loss: given, or estimated in begin_pretrain
        self.pretrain_losses: list[float] = []  # the last 50
        self.pretrained = False
        self.denoising = False

    def distribute(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        super().distribute(wrap)
        if self.denoiser is not None and not self.pretrained:  # a frozen module has no gradients to average
            self.denoise = wrap(self.denoiser)

    # ------------------------------------------------------------------------------- denoiser pre-training
    def pretrain_plan(self) -> tuple[int, int]:
        """The denoiser's pre-training (steps, batch) on random batches of the noisy images; none without a
        denoiser or once done."""
        if self.denoiser is None or self.pretrained:
            return 0, 0
        return self.cfg.denoiser_steps, self.cfg.denoiser_batch

    def begin_pretrain(self, dataset: ParticleDataset, seed: int) -> None:
        """Estimate the images' SNR from the noise level of 512 of them, unless it was given."""
        if self.snr is None:
            pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:512]
            self.snr = snr_from_noise(dataset.__getitems__(pick.sort().values.numpy())["images"], self.sigma)

    def pretrain_step(self, batch: dict) -> dict[str, float]:
        images = batch["images"]
        loss = unbiased_l2(images, self.denoise(images), self.snr).mean()
        self.opt_denoiser.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_denoiser.step()
        self.pretrain_losses = (self.pretrain_losses + [loss.item()])[-50:]
        return {"loss": self.pretrain_losses[-1]}

    def end_pretrain(self) -> dict[str, float]:
        """Freeze the denoiser; its loss over the last 50 steps and the SNR used."""
        self.denoiser.requires_grad_(False)
        self.denoise = self.denoiser
        self.pretrained = True
        return {"denoiser_loss": sum(self.pretrain_losses) / max(len(self.pretrain_losses), 1), "snr": self.snr}

    # -------------------------------------------------------------------------------------------- loop hooks
    def stage(self, epoch: int) -> str:
        return "search" if epoch < self.cfg.switch_epoch else "end-to-end"

    def begin_epoch(self, epoch: int) -> None:
        self.gain.zero_()
        self.set_band(epoch, self.cfg.switch_epoch)
        lr = self.cfg.lr_decoder / (1.0 if self.stage(epoch) == "search" else self.cfg.decoder_lr_drop)
        self.set_lr(lr)
        self.searching = self.stage(epoch) == "search"
        self.holding = self.cfg.keep_better and epoch > 0  # every particle has a searched pose after epoch 0
        limit = self.cfg.switch_epoch // 3 if self.cfg.denoise_epochs is None else self.cfg.denoise_epochs
        self.denoising = self.searching and self.denoiser is not None and epoch < limit

    def step(self, batch: dict) -> dict[str, float]:
        target = self.target(batch["images"])
        index = batch["index"].to(self.device)
        rotations, shifts = self.encode(batch["images"])  # (B, 1, 3, 3), (B, 1, 2) | None
        predicted = rotations[:, 0]
        loss_enc = torch.zeros((), device=self.device)
        if self.searching:
            volume = self.volume.hartley().detach()
            start = None  # shifts the grid is scored at: the last search's, or the encoder's at the first
            if shifts is not None:
                start = self.shifts[index] if self.holding else shifts[:, 0].detach()

            clean = self.denoiser(batch["images"])[:, None] if self.denoising else None

            def cost(candidates: Tensor, radius: float | None = None, shifts: Tensor | None = None) -> Tensor:
                at = (None if start is None else start[:, None]) if shifts is None else shifts  # (B, 1|K, 2)
                if clean is None:
                    return self.pose_loss(candidates, at, batch, target, volume, radius)
                return self.denoised_cost(volume, candidates, at, batch, clean, radius)

            held = self.rotations[index] if self.holding else None
            search = beam_config(self.cfg, self.radius_at(self.cfg.beam_start_resolution_A), self.apix,
                                 self.encoder.max_shift_A)
            searched, searched_shifts, searched_cost = beam_search(
                cost, len(predicted), search, initial=predicted.detach(), incumbent=held, shifts=start)
            with torch.no_grad():
                own = None if shifts is None else shifts.detach()
                self.gain += torch.stack([(cost(predicted.detach()[:, None], shifts=own)[:, 0]
                                           - searched_cost).sum(),
                                          torch.tensor(float(len(predicted)), device=self.device)])
            supervision = quaternion_loss(predicted, searched)
            if shifts is not None:  # squared shift error as a fraction of the box (module doc)
                miss = (shifts[:, 0] - searched_shifts) / (self.box * self.apix)
                supervision = supervision + miss.square().sum(-1)
                shifts = searched_shifts[:, None]
            loss_enc = self.cfg.supervision_weight * supervision.mean()
            data = self.pose_loss(searched[:, None], shifts, batch, target, self.field()).mean()
            poses = searched
        else:
            data = self.pose_loss(rotations, shifts, batch, target, self.field()).mean()
            poses = predicted.detach()
        loss = data + loss_enc
        self.opt_encoder.zero_grad(set_to_none=True)
        self.opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_encoder.step()
        self.opt_volume.step()
        with torch.no_grad():
            self.rotations[index] = poses.detach()
            if shifts is not None:
                self.shifts[index] = shifts[:, 0].detach()
        return {"loss": data.item(), "supervision": loss_enc.item()}

    def denoised_cost(self, volume: Tensor, rotations: Tensor, shifts: Tensor | None, batch: dict, clean: Tensor,
                      radius: float | None = None) -> Tensor:
        """Cryo2SSNet's search cost ``(B, K)``: L2 between the denoised images ``clean`` ``(B, 1, D, D)`` and the
        denoised projections of the Hartley ``volume`` at ``rotations`` ``(B, K, 3, 3)`` and ``shifts``
        ``(B, K|1, 2)`` Å, rendered within the current band (and ``radius`` pixels): coefficients beyond it are
        not fitted yet."""
        limit = self.radius if radius is None else min(radius, self.radius)
        spectra = render(volume * self.sigma, rotations, self.apix, ctf=batch["ctf"], shifts_A=shifts,
                         radius=limit, real_space=False)
        projections = ifft2_centered(spectra).real  # in the units of the normalised images
        return (self.denoiser(projections) - clean).square().mean((-2, -1))

    def end_epoch(self, epoch: int) -> dict[str, float]:
        if self.stage(epoch) != "search":
            return {}
        return {"search_gain": float(self.gain[0] / self.gain[1].clamp(min=1))}

    # ---------------------------------------------------------------------------------------------- results
    @torch.no_grad()
    def poses(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Current rotations ``(N, 3, 3)`` and shifts ``(N, 2)`` Å (None without shift estimation)."""
        return self.rotations.cpu().double().numpy(), (self.shifts.cpu().double().numpy() if self.cfg.shifts
                                                       else None)

    def kept(self) -> np.ndarray:
        """Boolean ``(N,)``: every particle (this method leaves no image out as junk)."""
        return np.ones(len(self.rotations), dtype=bool)

    def particle_state(self) -> list[Tensor]:
        """Every ``(N, ...)`` tensor a step updates by particle (merged across ranks in distributed runs)."""
        return [self.rotations, self.shifts]

    def counters(self) -> list[Tensor]:
        return [self.gain]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rotations": self.rotations, "shifts": self.shifts, "gain": self.gain,
                "pretrained": self.pretrained, "snr": self.snr, "pretrain_losses": self.pretrain_losses,
                "denoiser": None if self.denoiser is None else self.denoiser.state_dict(),
                "opt_denoiser": None if self.opt_denoiser is None else self.opt_denoiser.state_dict()}

    @staticmethod
    def particles_in(state: dict) -> int:
        """The number of particles of a run whose :meth:`state_dict` is ``state``."""
        return len(state["rotations"])

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rotations.copy_(state["rotations"])
        self.shifts.copy_(state["shifts"])
        self.gain.copy_(state["gain"])
        self.pretrained, self.snr, self.pretrain_losses = state["pretrained"], state["snr"], state["pretrain_losses"]
        if self.denoiser is not None:
            self.denoiser.load_state_dict(state["denoiser"])
            self.opt_denoiser.load_state_dict(state["opt_denoiser"])
            self.denoiser.requires_grad_(not self.pretrained)
