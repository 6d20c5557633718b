"""Multi-head pose encoder: CNN backbone on a Gaussian pyramid + H pose heads (cryoSPIN §4.1, Cryo2SSNet A.1).

Rotations come from a 6D output through Gram–Schmidt (:func:`rotation_from_6d`); shifts (optional) are in Å,
bounded by ``max_shift_A`` through ``tanh``. The H heads have distinct, independently initialised weights and
are evaluated together as batched matrix products.
"""

from __future__ import annotations

import math
from functools import lru_cache

import roma
import torch
from torch import Tensor, nn

from ..physics.fourier import fourier_resize

# widths/convs: conv blocks (3×3 conv → BatchNorm → ReLU, then 2×2 max-pool); grid: side of the adaptive
# average pool that turns the last feature map into a vector; trunk: shared FC layers; head: per-head hidden FC
# (head_norm: each followed by BatchNorm).
_BACKBONES = {
    "paper": dict(sigmas=(0, 1, 2, 4), widths=(64, 128, 256, 512), convs=(2, 2, 3, 3), grid=2, trunk=(),
                  head=(512, 256), head_norm=True),
    "light": dict(sigmas=(0, 1, 2, 4), widths=(16, 32, 64, 128), convs=(2, 2, 3, 3), grid=2, trunk=(),
                  head=(512, 256), head_norm=True),
    "small": dict(sigmas=(0,), widths=(32, 64, 128), convs=(2, 2, 2), grid=4, trunk=(512, 512), head=(),
                  head_norm=False),
}


@lru_cache(maxsize=32)
def _pyramid_filters(box: int, sigmas: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Gaussian transfer functions ``(C, D, D//2+1)`` on the rfft2 grid, each with unit mean square."""
    ky = torch.fft.fftfreq(box, dtype=torch.float64)
    kx = torch.fft.rfftfreq(box, dtype=torch.float64)
    k2_full = ky[:, None] ** 2 + ky[None, :] ** 2  # full grid, for the white-noise normalisation
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    filters = []
    for sigma in sigmas:
        gain = torch.exp(-2 * math.pi ** 2 * sigma ** 2 * k2)
        rms = torch.exp(-4 * math.pi ** 2 * sigma ** 2 * k2_full).mean().sqrt()
        filters.append(gain / rms)
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        return torch.stack(filters).to(device=device, dtype=dtype)


def gaussian_pyramid(images: Tensor, sigmas: tuple[float, ...] = (0, 1, 2, 4)) -> Tensor:
    """Images ``(B, D, D)`` -> channels ``(B, C, D, D)``: the image blurred by a Gaussian of each σ (pixels).

    σ = 0 is the image itself. Filtering is periodic, in Fourier space; each channel is scaled so that white
    noise of unit variance stays at unit variance.
    """
    box = images.shape[-1]
    filters = _pyramid_filters(box, tuple(float(s) for s in sigmas), images.device, images.dtype)
    spectra = torch.fft.rfft2(images)
    return torch.fft.irfft2(spectra[:, None] * filters, s=(box, box))


def rotation_from_6d(x: Tensor) -> Tensor:
    """6D vectors ``(..., 6)`` -> rotation matrices ``(..., 3, 3)`` by Gram–Schmidt.

    With ``a = x[..., :3]`` and ``b = x[..., 3:]``, the columns are ``â``, the normalised component of ``b``
    orthogonal to ``a``, and their cross product. This one map is both cryoSPIN's Appendix A construction
    (first column ``â``, third ``ĉ = â×b̂/‖â×b̂‖``, second ``ĉ×â``) and the S2S2 map (Falorsi et al. 2018) of
    Cryo2SSNet A.1: the two give the same matrix.
    """
    return roma.special_gramschmidt(x.unflatten(-1, (2, 3)).transpose(-1, -2), epsilon=1e-8)


class _HeadLinear(nn.Module):
    """H independent linear layers: ``(B, in)`` or ``(B, H, in)`` -> ``(B, H, out)`` in one batched product."""

    def __init__(self, heads: int, in_dim: int, out_dim: int, gain: float):
        super().__init__()
        bound = gain * math.sqrt(3 / in_dim)  # uniform with variance gain²/in_dim, drawn for each head
        self.weight = nn.Parameter(torch.empty(heads, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(heads, out_dim).uniform_(-1, 1) / math.sqrt(in_dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return torch.einsum("bi,hio->bho", x, self.weight) + self.bias
        return torch.einsum("bhi,hio->bho", x, self.weight) + self.bias


class _HeadNorm(nn.BatchNorm1d):
    """BatchNorm over the heads' hidden units ``(B, H·width)``; a training batch of one, which has no spread
    (e.g. the last batch of an epoch), is normalised with the running statistics instead of failing."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            training=False, eps=self.eps)
        return super().forward(x)


def _conv_block(c_in: int, c_out: int, n_convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return layers + [nn.MaxPool2d(2)]


class PoseEncoder(nn.Module):
    """CNN backbone shared by H pose heads; images ``(B, D, D)`` -> H rotations and (optionally) shifts.

    Backbones: ``"paper"`` (VGG16-like: 3×3 conv blocks of 64/128/256/512 channels with 2/2/3/3 convs and
    max-pooling, on the 4-channel Gaussian pyramid), ``"light"`` (same, 16/32/64/128 channels) and ``"small"``
    (Cryo2SSNet: blocks of 2 convs with 32/64/128 channels on the image, then two shared FC 512 layers).
    Feature maps are average-pooled to a fixed grid (2×2, 4×4 for ``"small"``) so that the feature vector
    keeps coarse position, which shifts need. Convolutions are followed by BatchNorm (it trains several times
    faster than GroupNorm here); in eval mode it uses running statistics, so any batch size, 1 included, works.

    Heads (``"paper"``/``"light"``): FC feature→512→256→6(+2), each hidden layer ReLU then BatchNorm (per head,
    as the cryoSPIN reference code); for ``"small"`` a single FC 512→6(+2). Shift outputs start at exactly zero
    (zero-initialised last-layer columns).

    Args:
        box: image side D in pixels (≥ 16; ≥ 8 for ``"small"``).
        heads: number of pose heads H.
        backbone: ``"light"``, ``"paper"`` or ``"small"``.
        predict_shifts: also predict an in-plane shift per head.
        max_shift_A: shift bound in Å (default: a quarter of the box, ``box · pixel_size_A / 4``).
        pixel_size_A: pixel size in Å.
        input_box: Fourier-crop the images to this box before the backbone (default: ``box``); poses need
            only low resolution, and the convolutions cost ``input_box²``.
        input_norm: ``"dataset"``: the images as given (normalised over the data set by the loader);
            ``"image"``: each pyramid channel standardised per image, as the cryoSPIN reference code does.
    """

    def __init__(self, box: int, heads: int = 7, backbone: str = "light", predict_shifts: bool = False,
                 max_shift_A: float | None = None, pixel_size_A: float = 1.0, input_box: int | None = None,
                 input_norm: str = "dataset"):
        super().__init__()
        if input_norm not in ("dataset", "image"):
            raise ValueError(f"input_norm must be 'dataset' or 'image', got {input_norm!r}")
        self.input_norm = input_norm
        self.max_shift_A = box * pixel_size_A / 4 if max_shift_A is None else float(max_shift_A)
        self.input_box = box = box if input_box is None else min(int(input_box), box)
        if backbone not in _BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(_BACKBONES)}, got {backbone!r}")
        spec = _BACKBONES[backbone]
        if box < 2 ** len(spec["widths"]):
            raise ValueError(f"box {box} is too small for backbone {backbone!r}")
        self.sigmas = spec["sigmas"]
        self.heads, self.predict_shifts = heads, predict_shifts

        layers: list[nn.Module] = []
        c_in = len(self.sigmas)
        for width, n_convs in zip(spec["widths"], spec["convs"]):
            layers += _conv_block(c_in, width, n_convs)
            c_in = width
        layers += [nn.AdaptiveAvgPool2d(spec["grid"]), nn.Flatten()]
        dim = c_in * spec["grid"] ** 2
        for width in spec["trunk"]:
            layers += [nn.Linear(dim, width), nn.ReLU(inplace=True)]
            dim = width
        self.backbone = nn.Sequential(*layers)

        self.head_layers = nn.ModuleList()
        self.head_norms = nn.ModuleList()
        for width in spec["head"]:
            self.head_layers.append(_HeadLinear(heads, dim, width, gain=math.sqrt(2)))
            self.head_norms.append(_HeadNorm(heads * width) if spec["head_norm"] else nn.Identity())
            dim = width
        self.head_out = _HeadLinear(heads, dim, 6 + 2 * predict_shifts, gain=1.0)
        with torch.no_grad():
            self.head_out.weight[..., 6:] = 0
            self.head_out.bias[..., 6:] = 0

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images ``(B, D, D)`` -> rotations ``(B, H, 3, 3)``, shifts ``(B, H, 2)`` in Å or ``None``."""
        x = gaussian_pyramid(fourier_resize(images, self.input_box, 2), self.sigmas)
        if self.input_norm == "image":
            x = (x - x.mean((-2, -1), keepdim=True)) / x.std((-2, -1), keepdim=True).clamp(min=1e-6)
        x = self.backbone(x)
        for layer, norm in zip(self.head_layers, self.head_norms):
            x = torch.relu(layer(x))
            x = norm(x.flatten(1)).unflatten(1, (self.heads, -1))
        out = self.head_out(x)
        rotations = rotation_from_6d(out[..., :6])
        shifts = self.max_shift_A * torch.tanh(out[..., 6:]) if self.predict_shifts else None
        return rotations, shifts
