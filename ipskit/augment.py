"""Batch augmentation for small images: random crop with padding and horizontal flip, on the device.

The CIFAR recipe (He et al. 2016, kept by CS-KD, PS-KD and the IPS CIFAR experiments of Choi
et al. 2025): pad by p pixels, crop back to H x W at a random offset, and flip natural images
left-right with probability 1/2. ipskit applies it to a whole batch at once, on the batch's
device, with a ``torch.Generator``: no loop over images, no host-device sync, 9 kernels a batch
(one gather does crop and flip through index tables cached per size and device). The random
choices are drawn apart from their application (:func:`draw_augment`, :func:`apply_augment`),
so a test or a figure can replay them.

Defaults per dataset (``AugmentSpec.for_size``): ``p = max(1, round(S / 8))``, i.e. 4 px at
32x32, 2 px at 16x16, 1 px at 8x8; flip for CIFAR and image folders, never for digits.

Usage::

    spec = AugmentSpec.for_size(32, flip=True)
    x_aug = augment_batch(x_uint8, spec, generator)   # [B, C, H, W] float in [0, 1]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ipskit.checks import InputError, check_int

__all__ = [
    "AugmentParams",
    "AugmentSpec",
    "apply_augment",
    "augment_batch",
    "draw_augment",
    "to_float01",
]

_PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}


@dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation of one dataset.

    crop_padding: pixels (>= 0) padded on each side before a random crop back to H x W;
        0 disables the crop. Default rule: ``max(1, round(S / 8))`` (4 px for 32x32 CIFAR).
    flip: random horizontal flip with probability 1/2; only for natural images.
    padding_mode: ``"zeros"`` (the CIFAR recipe), ``"reflect"`` or ``"replicate"``.
    """

    crop_padding: int = 0
    flip: bool = False
    padding_mode: str = "zeros"

    def __post_init__(self):
        crop = check_int("crop_padding", self.crop_padding)  # Python or NumPy int, not bool
        if crop < 0:
            raise InputError(f"crop_padding must be an int >= 0, got {crop!r}")
        object.__setattr__(self, "crop_padding", crop)  # frozen: a plain int for F.pad
        if not isinstance(self.padding_mode, str) or self.padding_mode not in _PADDING_MODES:
            raise InputError(
                f"padding_mode must be one of {', '.join(_PADDING_MODES)}, got {self.padding_mode!r}"
            )

    @classmethod
    def for_size(cls, image_size: int, flip: bool) -> AugmentSpec:
        """The default recipe for ``image_size`` x ``image_size`` images."""
        return cls(crop_padding=max(1, round(image_size / 8)), flip=flip)


@dataclass
class AugmentParams:
    """The random choices for one batch: crop offsets in [0, 2p] ``[B]`` and flips ``[B]`` (bool)."""

    offset_y: torch.Tensor
    offset_x: torch.Tensor
    flip: torch.Tensor


def to_float01(x: torch.Tensor) -> torch.Tensor:
    """uint8 images 0..255 -> float in [0, 1]; float images are returned as they are.

    Args:
        x: ``[..., C, H, W]`` uint8 or float.
    """
    return x.div(255.0) if x.dtype == torch.uint8 else x  # one kernel: uint8 / float -> float32


def draw_augment(
    batch_size: int,
    spec: AugmentSpec,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AugmentParams:
    """Draw crop offsets and flips for a batch (on the generator's device, then moved to ``device``)."""
    gen_device = generator.device if generator is not None else device
    # Both offsets in one draw, row 0 then row 1: on the CPU the same numbers as two draws.
    offsets = torch.randint(
        0, 2 * spec.crop_padding + 1, (2, batch_size), generator=generator, device=gen_device
    )  # (2, B)
    if spec.flip:
        flip = torch.rand(batch_size, generator=generator, device=gen_device) < 0.5
    else:
        flip = torch.zeros(batch_size, dtype=torch.bool, device=gen_device)
    return AugmentParams(offsets[0].to(device), offsets[1].to(device), flip.to(device))


@functools.lru_cache(maxsize=64)
def _source_index(
    height: int, width: int, padding: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """long [1, 1, H*W] twice: where output pixel (i, j) is read in the padded image, flattened,
    for offsets (0, 0): ``i * (W + 2p) + j``, and the same with j mirrored (``W - 1 - j``).
    Built once per size and device, so a batch only adds its offsets."""
    with torch.inference_mode(False):  # usable outside inference mode even if built inside it
        rows = torch.arange(height, device=device)[:, None] * (width + 2 * padding)  # [H, 1]
        cols = torch.arange(width, device=device)  # [W]
        return (rows + cols).view(1, 1, -1), (rows + (width - 1 - cols)).view(1, 1, -1)


def apply_augment(x: torch.Tensor, params: AugmentParams, spec: AugmentSpec) -> torch.Tensor:
    """Apply drawn crops and flips to a batch, vectorised (one gather, no loop over the batch).

    Output pixel ``(i, j)`` of image ``b`` is padded pixel ``(oy_b + i, ox_b + j)`` of the input,
    with ``j`` mirrored (``W - 1 - j``) when ``flip_b``; offsets ``(p, p)`` leave the image intact.

    Args:
        x: ``[B, C, H, W]`` uint8 (0..255) or float in [0, 1].
        params: from :func:`draw_augment` with the same ``B``.
        spec: the augmentation settings.

    Returns:
        ``[B, C, H, W]`` float in [0, 1], on ``x``'s device.
    """
    if x.dim() != 4:
        raise InputError(f"augmentation expects a batch [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    p, dev = spec.crop_padding, x.device
    # 1. Pad. uint8 stays uint8 until the end (a quarter of the bytes to move), except for
    #    reflect and replicate, whose CUDA kernels take floats only.
    if spec.padding_mode != "zeros":
        x = to_float01(x)
    if p > 0:
        x = F.pad(x, (p, p, p, p), mode=_PADDING_MODES[spec.padding_mode])  # [B, C, H + 2p, W + 2p]
    # 2. Flat source index of every output pixel: the straight or mirrored table of the crop,
    #    plus the crop's start oy * (W + 2p) + ox.
    straight, mirrored = _source_index(h, w, p, dev)
    start = torch.add(params.offset_x.to(dev), params.offset_y.to(dev), alpha=w + 2 * p)  # [B]
    index = torch.where(params.flip.to(dev).view(b, 1, 1), mirrored, straight) + start.view(b, 1, 1)
    # 3. One gather for crop and flip together, then to float.
    x = x.reshape(b, c, -1).gather(2, index.expand(b, c, h * w))  # [B, C, H*W]
    return to_float01(x.view(b, c, h, w))  # [B, C, H, W]


def augment_batch(
    x: torch.Tensor, spec: AugmentSpec | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop and flip a batch on its own device: :func:`draw_augment` + :func:`apply_augment`.

    Args:
        x: ``[B, C, H, W]`` uint8 or float in [0, 1], on CPU or GPU.
        spec: augmentation settings; ``None`` only converts to float.
        generator: source of randomness (CPU or ``x``'s device); ``None`` uses torch's global RNG.

    Returns:
        ``[B, C, H, W]`` float in [0, 1].
    """
    if spec is None or (spec.crop_padding == 0 and not spec.flip):
        return to_float01(x)
    return apply_augment(x, draw_augment(x.shape[0], spec, generator, x.device), spec)
