"""Grad-CAM maps, overlays, and how much of a map falls inside the swapped patches.

Grad-CAM (Selvaraju et al., ICCV 2017) weights a convolutional layer's activations by the
spatially averaged gradient of a class score, giving a coarse map of where the network looks.
The IPS paper (Choi et al., arXiv 2505.14124) uses such maps to argue that the confident side
of a swapped pair keeps the discriminative parts; :func:`cam_mass_in_mask` measures that: the
share of a map's mass inside the patches taken from the partner image.

The maps come from pytorch-grad-cam (``grad-cam`` 1.5.7), always used as a context manager so
its forward hooks are removed even when something fails (a leaked hook would keep running, and
keeping tensors alive, on every later forward pass).

Usage::

    maps = gradcam(model, x)                       # [B, H, W] in [0, 1], top-1 class
    rgb = overlay(x[0], maps[0], alpha=0.5)        # [H, W, 3] uint8, for plt.imshow
    share = cam_mass_in_mask(maps, decision.pixel_mask(H, W))   # [B]
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

__all__ = ["gradcam", "overlay", "cam_mass_in_mask"]


def gradcam(
    model: torch.nn.Module,
    x: torch.Tensor,
    targets=None,
    layer: torch.nn.Module | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Grad-CAM maps for a batch of images.

    The model's train/eval mode and its parameters' ``.grad`` are left as they were
    (pytorch-grad-cam switches to eval mode and back-propagates into the parameters).

    Args:
        model: classifier taking float images in [0, 1] (an ipskit ``Classifier`` or any module).
        x: images ``[B, C, H, W]`` in [0, 1].
        targets: None (each image's top-1 class), or class ids ``[B]`` (tensor or sequence).
        layer: module whose activations are weighted; default ``model.cam_layer``.
        batch_size: images per backward pass.

    Returns:
        maps ``[B, H, W]`` float32 on the CPU, each scaled to [0, 1] (an all-zero map means no
        positive evidence for the target class at that layer).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be images [B, C, H, W], got {shape}")
    b = x.shape[0]
    if b == 0 or batch_size < 1:
        raise ValueError(
            f"need at least one image and batch_size >= 1, got {b} images, batch_size={batch_size}"
        )
    if layer is None:
        layer = getattr(model, "cam_layer", None)
        if not isinstance(layer, torch.nn.Module):
            raise ValueError(
                f"{type(model).__name__} has no cam_layer; pass layer=<a conv module of the model>"
            )
    if not any(m is layer for m in model.modules()):
        raise ValueError(
            f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}"
        )
    if targets is not None:
        targets = [int(t) for t in torch.as_tensor(targets).reshape(-1).tolist()]
        if len(targets) != b:
            raise ValueError(f"targets must hold one class id per image ({b}), got {len(targets)}")
        k = getattr(model, "num_classes", None)
        if any(t < 0 or (k is not None and t >= k) for t in targets):
            raise ValueError(
                f"targets must be class ids in [0, {k - 1 if k else 'K-1'}], got {targets}"
            )

    device = next(model.parameters()).device
    was_training = model.training
    saved_grads = [(p, p.grad) for p in model.parameters()]
    maps = []
    try:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            for s in range(0, b, batch_size):
                # requires_grad on the input: the layer's output then needs a gradient even
                # when the parameters are frozen.
                xb = x[s : s + batch_size].detach().to(device).float().requires_grad_(True)
                tb = (
                    None
                    if targets is None
                    else [ClassifierOutputTarget(t) for t in targets[s : s + batch_size]]
                )
                out = cam(input_tensor=xb, targets=tb)
                maps.append(torch.from_numpy(np.asarray(out, dtype=np.float32)))
                cam.outputs = None  # drop the graph kept for retain_graph before the next batch
        if len(maps) != -(-b // batch_size):  # pytorch-grad-cam's __exit__ swallows IndexError
            raise ValueError("Grad-CAM failed inside pytorch-grad-cam (it swallowed an IndexError)")
    finally:
        model.train(was_training)
        for p, g in saved_grads:
            p.grad = g
    return torch.cat(maps).clamp_(0.0, 1.0)  # [B, H, W]


def overlay(
    image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5, colormap: str = "jet"
) -> np.ndarray:
    """Blend a Grad-CAM map, coloured with a matplotlib colormap, over an image.

    Args:
        image: ``[C, H, W]`` float in [0, 1], C = 1 (shown as gray) or 3.
        cam: ``[H, W]`` in [0, 1].
        alpha: weight of the heatmap in [0, 1] (0: image only, 1: heatmap only).
        colormap: matplotlib colormap name.

    Returns:
        ``[H, W, 3]`` uint8 RGB array.
    """
    image = torch.as_tensor(image).detach().float().cpu()
    cam = torch.as_tensor(cam).detach().float().cpu()
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [C, H, W] with C = 1 or 3, got {tuple(image.shape)}")
    if cam.shape != image.shape[1:]:
        raise ValueError(
            f"cam must be [H, W] = {tuple(image.shape[1:])} to match the image, got {tuple(cam.shape)}"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    rgb = image.expand(3, -1, -1).permute(1, 2, 0).clamp(0, 1).numpy()  # [H, W, 3]
    heat = matplotlib.colormaps[colormap](cam.clamp(0, 1).numpy())[..., :3]  # [H, W, 3]
    out = (1 - alpha) * rgb + alpha * heat
    return np.round(out * 255).astype(np.uint8)


def cam_mass_in_mask(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each map's total mass that lies inside a pixel mask (e.g. the swapped patches).

    Compare with the mask's area share ``mask.float().mean((1, 2, 3))``: a map that ignores
    the mask puts about that share inside it.

    Args:
        cam: maps ``[B, H, W]``, non-negative.
        mask: bool ``[B, 1, H, W]`` (``ipskit.swap.pixel_mask(decision, H, W)``).

    Returns:
        ``[B]`` float in [0, 1]; NaN where a map is all zero (no mass to share).
    """
    cam = torch.as_tensor(cam).float()
    mask = torch.as_tensor(mask)
    if (
        cam.dim() != 3
        or mask.dim() != 4
        or mask.shape[1] != 1
        or mask.shape[0] != cam.shape[0]
        or mask.shape[2:] != cam.shape[1:]
    ):
        raise ValueError(
            f"expected cam [B, H, W] and mask [B, 1, H, W] of the same B, H, W; "
            f"got {tuple(cam.shape)} and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if (cam < 0).any():
        raise ValueError("cam must be non-negative (Grad-CAM maps are in [0, 1])")
    total = cam.sum(dim=(1, 2))
    inside = (cam * mask[:, 0].to(cam.device)).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.nan)
