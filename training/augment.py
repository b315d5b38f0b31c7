"""Batch augmentation for handwritten characters, on the training device (GPU or CPU).

Everything works on whole batches of float32 (N, 1, 28, 28) in [0, 1], white ink on black, with
a ``torch.Generator`` so that a run is reproducible from its seed. What is simulated, and why:

- geometry (rotation, shear, anisotropic scale, shift): writers slant and size characters
  differently, and the page segmenter's box is never exactly MNIST's;
- elastic distortion (a smooth random displacement field): the wobble of a real hand stroke
  (Simard et al. 2003 showed it is the augmentation that matters most for MNIST-like digits);
- stroke thickness (grey dilation / erosion by max-pooling): pens, pencils and scan resolution;
- blur and additive noise: scanner optics and paper texture.

The geometric part is one ``affine_grid`` + displacement + ``grid_sample`` call, so the cost of
a batch is a few kernel launches, whatever the batch size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F  # noqa: N812


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation. Angles in degrees; shifts in pixels at 28x28."""

    rotate_deg: float = 12.0
    shear: float = 0.25
    scale_min: float = 0.85
    scale_max: float = 1.10
    aspect: float = 0.12  # log-uniform +-aspect on the x/y scale ratio
    shift_px: float = 2.5
    elastic_alpha_px: float = 1.6  # peak displacement of the smooth field
    elastic_grid: int = 5  # control points per side of the displacement field
    p_elastic: float = 0.7
    p_thicken: float = 0.2
    p_thin: float = 0.15
    p_blur: float = 0.2
    blur_sigma_max: float = 0.9
    p_noise: float = 0.25
    noise_std_max: float = 0.08

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: No augmentation at all (used for validation and for --augment none).
NO_AUGMENT = AugmentConfig(
    rotate_deg=0.0,
    shear=0.0,
    scale_min=1.0,
    scale_max=1.0,
    aspect=0.0,
    shift_px=0.0,
    elastic_alpha_px=0.0,
    p_elastic=0.0,
    p_thicken=0.0,
    p_thin=0.0,
    p_blur=0.0,
    p_noise=0.0,
)


def _uniform(
    n: int, lo: float, hi: float, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.rand(n, device=device, generator=g) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """bool (n,): True with probability p."""
    return torch.rand(n, device=device, generator=g) < p


def random_affine(
    n: int, cfg: AugmentConfig, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    """float32 (n, 2, 3) affine matrices in ``affine_grid``'s normalised coordinates.

    Composes scale (with a random aspect ratio), horizontal shear, rotation and shift.
    """
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, g, device) * (math.pi / 180.0)
    shear = _uniform(n, -cfg.shear, cfg.shear, g, device)
    scale = _uniform(n, cfg.scale_min, cfg.scale_max, g, device)
    log_aspect = _uniform(n, -cfg.aspect, cfg.aspect, g, device)
    sx = scale * torch.exp(log_aspect / 2)
    sy = scale * torch.exp(-log_aspect / 2)
    # Shift in normalised units: 28 px span 2.0.
    shift = cfg.shift_px * 2.0 / 28.0
    tx = _uniform(n, -shift, shift, g, device)
    ty = _uniform(n, -shift, shift, g, device)

    cos, sin = torch.cos(angle), torch.sin(angle)
    # Forward map M = R @ Sh @ S (output = M @ input + t); grid_sample needs its inverse.
    fwd = torch.zeros(n, 3, 3, device=device)
    fwd[:, 0, 0] = cos * sx
    fwd[:, 0, 1] = (cos * shear - sin) * sy
    fwd[:, 1, 0] = sin * sx
    fwd[:, 1, 1] = (sin * shear + cos) * sy
    fwd[:, 0, 2] = tx
    fwd[:, 1, 2] = ty
    fwd[:, 2, 2] = 1.0
    return torch.linalg.inv(fwd)[:, :2, :]


def elastic_field(
    n: int, size: int, cfg: AugmentConfig, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    """float32 (n, size, size, 2): smooth random displacement in normalised units.

    Random displacements on a coarse ``elastic_grid`` lattice, upsampled bicubically: the same
    smoothness as Simard's Gaussian-filtered field at a fraction of the cost.
    """
    k = cfg.elastic_grid
    coarse = torch.randn(n, 2, k, k, device=device, generator=g)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    amp = cfg.elastic_alpha_px * 2.0 / size / 2.0  # randn ~ +-2 sigma -> +-alpha px
    return field.permute(0, 2, 3, 1) * amp


def _gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """float32 (n, 1, 5, 5) normalised Gaussian kernels, one per sigma (n,)."""
    r = torch.arange(-2, 3, device=sigma.device, dtype=torch.float32)
    g1 = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    g1 = g1 / g1.sum(dim=1, keepdim=True)
    return (g1[:, :, None] * g1[:, None, :])[:, None]


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Augment a batch.

    x: float32 (N, 1, H, W) in [0, 1], white ink on black, on any device; ``g`` must live on
    the same device. Returns a new float32 tensor of the same shape in [0, 1].
    """
    n, _, h, w = x.shape
    if n == 0 or cfg == NO_AUGMENT:
        return x
    device = x.device

    theta = random_affine(n, cfg, g, device)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if cfg.p_elastic > 0 and cfg.elastic_alpha_px > 0:
        use = _bernoulli(n, cfg.p_elastic, g, device).float()[:, None, None, None]
        grid = grid + elastic_field(n, h, cfg, g, device) * use
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Stroke thickness: grey dilation (max-pool) or erosion (min-pool) on a random subset.
    if cfg.p_thicken > 0 or cfg.p_thin > 0:
        r = torch.rand(n, device=device, generator=g)
        thick = (r < cfg.p_thicken)[:, None, None, None]
        thin = ((r >= cfg.p_thicken) & (r < cfg.p_thicken + cfg.p_thin))[:, None, None, None]
        dilated = F.max_pool2d(out, 3, stride=1, padding=1)
        # A soft erosion (mean of original and min-pool) keeps thin MNIST strokes alive.
        eroded = 0.5 * (out - F.max_pool2d(-out, 3, stride=1, padding=1))
        out = torch.where(thick, dilated, torch.where(thin, eroded, out))

    if cfg.p_blur > 0:
        use = _bernoulli(n, cfg.p_blur, g, device)
        sigma = _uniform(n, 0.4, max(cfg.blur_sigma_max, 0.41), g, device)
        kernels = _gaussian_kernels(sigma)  # (n, 1, 5, 5)
        # Grouped convolution: each image with its own kernel.
        blurred = F.conv2d(out.reshape(1, n, h, w), kernels, padding=2, groups=n)
        blurred = blurred.reshape(n, 1, h, w)
        out = torch.where(use[:, None, None, None], blurred, out)

    if cfg.p_noise > 0:
        use = _bernoulli(n, cfg.p_noise, g, device).float()[:, None, None, None]
        std = _uniform(n, 0.0, cfg.noise_std_max, g, device)[:, None, None, None]
        noise = torch.randn(out.shape, device=device, generator=g) * std * use
        out = out + noise

    return out.clamp_(0.0, 1.0)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A seeded generator on ``device`` for :func:`augment_batch`."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
