"""Common image corruptions (CIFAR-C style), generated on the fly on CPU or GPU.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019) made CIFAR-10-C / CIFAR-100-C; the IPS paper (Choi et al., arXiv
2505.14124) reports its robustness gain on CIFAR-100-C. :func:`corrupt` applies the same kinds
of corruption to any ``[B, C, H, W]`` batch in [0, 1], 1- or 3-channel, as vectorised torch
ops (JPEG alone loops over images), so any ipskit dataset can be tested without downloads.
:func:`ipskit.robustness.corruption_accuracy` runs a model over names x severities.

The severity constants in :data:`SEVERITY_PARAMS` follow the CIFAR constants of Hendrycks'
``make_cifar_c.py`` where the corruption is the same; they are not bit-exact reproductions
(different blur/resize implementations), and ``elastic_transform`` is a simplified smooth
random displacement. Spatial constants (blur sigma, disk radius, elastic shift and smoothing)
are in pixels of a 32 x 32 image and scale with ``side / 32`` for larger images; smaller
images (8 x 8 digits) use them unscaled, since sub-pixel blurs would do nothing.
Departures from CIFAR-C, chosen so that the distance to the clean image grows with severity
at every image size: ``defocus_blur`` keeps its anti-aliasing sigma at 0.6 px for severities
4-5 (CIFAR-C lowers it to 0.2 / 0.1, which makes severity 4 milder than 3 once scaled), and
``pixelate`` averages over a partition of the image into blocks (an exact projection, rather
than a box resize whose aliasing is not monotone), with at least one block fewer per severity.
``saturate`` is left out: it has no meaning on grayscale and its CIFAR severities are not
ordered by strength. Every corruption in :data:`CORRUPTIONS` works on 1- and 3-channel images.

Usage::

    g = torch.Generator().manual_seed(0)
    x_c = corrupt(x, "gaussian_noise", severity=3, generator=g)   # x: [B, C, H, W] in [0, 1]
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ipskit.checks import InputError, check_int

__all__ = ["CORRUPTIONS", "SEVERITY_PARAMS", "corrupt"]

# Per corruption, the parameter for severities 1..5 (CIFAR-C constants; units in comments).
SEVERITY_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std of additive noise, [0, 1] units
    "shot_noise": (500, 250, 100, 75, 50),  # Poisson photons per unit intensity (fewer = noisier)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # share of values set to 0 or 1
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # std of multiplicative noise
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma, px at 32 px
    "defocus_blur": (
        (0.3, 0.4),
        (0.4, 0.5),
        (0.5, 0.6),
        (1.0, 0.6),
        (1.5, 0.6),
    ),  # (disk radius, alias sigma) px
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards the per-channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side of the block grid / image side
    # (largest shift, smoothing sigma of the random displacement field), px
    "elastic_transform": ((0.5, 3.0), (1.0, 3.0), (1.5, 3.0), (2.0, 3.0), (2.5, 3.0)),
}
CORRUPTIONS: list[str] = list(SEVERITY_PARAMS)


def _spatial(value: float, x: torch.Tensor) -> float:
    """Scale a pixel constant given at 32 px to this image size (never shrink below 32 px)."""
    return value * max(1.0, max(x.shape[-2:]) / 32.0)


def _gauss_kernel1d(sigma: float, device: torch.device) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()  # [2r+1]


def _conv_same(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D convolution of ``x [B, C, H, W]`` with ``kernel [kh, kw]``, edge-replicated."""
    c = x.shape[1]
    kh, kw = kernel.shape
    pad = (kw // 2, kw // 2, kh // 2, kh // 2)
    xp = F.pad(x, pad, mode="replicate")
    return F.conv2d(xp, kernel.expand(c, 1, kh, kw), groups=c)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gauss_kernel1d(sigma, x.device)
    return _conv_same(_conv_same(x, k[None, :]), k[:, None])  # separable: rows, then columns


def _disk_kernel(radius: float, alias_sigma: float, device: torch.device) -> torch.Tensor:
    """Normalised disk of ``radius`` px, anti-aliased by a Gaussian of ``alias_sigma`` (as CIFAR-C)."""
    r = math.ceil(radius) + math.ceil(3 * alias_sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).float()
    g = _gauss_kernel1d(alias_sigma, device)
    disk = F.conv2d(
        disk[None, None], (g[:, None] * g[None, :])[None, None], padding=g.numel() // 2
    )[0, 0]
    return disk / disk.sum()  # [2r+1, 2r+1]


def _block_average(n: int, blocks: int, device: torch.device) -> torch.Tensor:
    """``[n, n]`` matrix averaging a length-n axis over ``blocks`` contiguous, near-equal blocks."""
    onehot = F.one_hot(torch.arange(n, device=device) * blocks // n, blocks).float()  # [n, blocks]
    return onehot @ (onehot.T / onehot.sum(dim=0)[:, None])


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev).to(x.device)


def _rand(shape, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.rand(shape, generator=generator, device=dev).to(x.device)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    # Pillow's codec, as in make_cifar_c.py (torchvision's encode_jpeg is deprecated since 0.29);
    # JPEG cannot be vectorised, so this is the one per-image loop, on uint8 CPU arrays.
    u8 = (
        (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )  # [B, H, W, C]
    out = np.empty_like(u8)
    for i, img in enumerate(u8):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
            buf, format="JPEG", quality=quality
        )
        out[i] = np.asarray(Image.open(buf)).reshape(img.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, torch.float32) / 255.0


def _elastic(
    x: torch.Tensor, shift: float, sigma: float, generator: torch.Generator | None
) -> torch.Tensor:
    b, _, h, w = x.shape
    # 1. Draw a smooth random displacement field, each image's largest shift = `shift` px.
    field = _gaussian_blur(_rand((b, 2, h, w), x, generator) * 2 - 1, sigma)  # [B, 2, H, W]
    field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8) * shift
    # 2. Resample the image at the displaced positions (grid_sample wants [-1, 1] coordinates).
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, h, device=x.device),
        torch.linspace(-1, 1, w, device=x.device),
        indexing="ij",
    )
    gx = xs + field[:, 0] * 2 / max(w - 1, 1)
    gy = ys + field[:, 1] * 2 / max(h - 1, 1)
    grid = torch.stack([gx, gy], dim=-1)  # [B, H, W, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def corrupt(
    x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply one common corruption at one severity to a batch of images.

    Args:
        x: images ``[B, C, H, W]`` in [0, 1], C = 1 or 3, float, on any device.
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) .. 5 (strong).
        generator: ``torch.Generator`` for the random corruptions (noises, elastic); for
            reproducible results pass a seeded one. Its device may differ from ``x``'s.

    Returns:
        corrupted images ``[B, C, H, W]`` in [0, 1], same device and float dtype as ``x``.
    """
    if not isinstance(name, str) or name not in SEVERITY_PARAMS:
        raise InputError(
            f"unknown corruption {name!r}; known corruptions: {', '.join(CORRUPTIONS)}"
        )
    severity = check_int("corruption severity", severity, 1, 5)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"x must be images [B, C, H, W] with C = 1 or 3, got {shape}")
    if not x.dtype.is_floating_point:
        raise InputError(f"x must be a float tensor in [0, 1], got dtype {x.dtype}")
    if x.numel() and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
        raise InputError(
            f"x must be in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]"
        )
    c = SEVERITY_PARAMS[name][severity - 1]
    dtype = x.dtype
    x = x.float()

    if name == "gaussian_noise":
        out = x + c * _randn(x, generator)
    elif name == "shot_noise":
        dev = generator.device if generator is not None else x.device
        out = torch.poisson((x * c).to(dev), generator=generator).to(x.device) / c
    elif name == "impulse_noise":
        # Nested draws: a value hit at severity s is also hit at every higher severity (same seed).
        u = _rand(x.shape, x, generator)
        out = torch.where(u < c / 2, 0.0, torch.where(u < c, 1.0, x))
    elif name == "speckle_noise":
        out = x + x * c * _randn(x, generator)
    elif name == "gaussian_blur":
        out = _gaussian_blur(x, _spatial(c, x))
    elif name == "defocus_blur":
        out = _conv_same(x, _disk_kernel(_spatial(c[0], x), _spatial(c[1], x), x.device))
    elif name == "contrast":
        mean = x.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        out = (x - mean) * c + mean
    elif name == "brightness":
        # Add c to the HSV value V = max over channels; with hue and saturation fixed, that
        # scales RGB by V'/V (for gray images it is simply x + c).
        v = x.amax(dim=1, keepdim=True)  # [B, 1, H, W]
        v_new = (v + c).clamp(max=1.0)
        out = torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))
    elif name == "jpeg_compression":
        out = _jpeg(x, int(c))
    elif name == "pixelate":
        h, w = x.shape[-2:]
        ph = _block_average(h, max(1, min(round(h * c), h - severity)), x.device)  # [H, H]
        pw = _block_average(w, max(1, min(round(w * c), w - severity)), x.device)  # [W, W]
        out = ph @ x @ pw.T
    else:  # elastic_transform
        out = _elastic(x, _spatial(c[0], x), _spatial(c[1], x), generator)
    return out.clamp(0.0, 1.0).to(dtype)
