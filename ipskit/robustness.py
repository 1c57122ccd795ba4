"""Robustness evaluation: FGSM / PGD attacks, accuracy under corruptions, CIFAR-10-C/100-C files.

The IPS paper (Choi et al., arXiv 2505.14124) reports gains under FGSM attack (eps 0.01) and
on CIFAR-100-C. This module measures both on any ipskit model (float images in [0, 1], so
epsilon is in pixel units of the [0, 1] image):

* :func:`fgsm` (Goodfellow et al. 2015) and :func:`pgd` (Madry et al. 2018, L-inf), and
  :func:`fgsm_curve` for accuracy against epsilon;
* :func:`corruption_accuracy`: accuracy over corruption names x severities, with the
  on-the-fly corruptions of :mod:`ipskit.corruptions` (re-exported here: :func:`corrupt`,
  :data:`CORRUPTIONS`, :data:`SEVERITY_PARAMS`);
* :func:`load_cifar_c`: the published CIFAR-10-C / CIFAR-100-C ``.npy`` arrays
  (Hendrycks & Dietterich, ICLR 2019).

Usage::

    accs = fgsm_curve(model, x, y, epsilons=[0, 0.005, 0.01, 0.02])
    res = corruption_accuracy(model, x, y, seed=0)   # res["mean_corruption_accuracy"]
    x_c, y_c = load_cifar_c("data/CIFAR-100-C", "fog", severity=5)
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ipskit.checks import InputError, check_float, check_int
from ipskit.corruptions import CORRUPTIONS, SEVERITY_PARAMS, corrupt

__all__ = [
    "CORRUPTIONS",
    "SEVERITY_PARAMS",
    "CIFAR_C_NAMES",
    "fgsm",
    "pgd",
    "fgsm_curve",
    "corrupt",
    "corruption_accuracy",
    "load_cifar_c",
]


# The 19 corruption files of the published CIFAR-10-C / CIFAR-100-C.
CIFAR_C_NAMES = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur",
    "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate",
    "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur",
)  # fmt: skip


# ----------------------------------------------------------------------------- attacks


def _check_eps(eps: float) -> float:
    return check_float("epsilon (pixel units of a [0, 1] image)", eps, 0, 1)


def _input_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the mean cross-entropy w.r.t. the input (parameter .grad is left untouched)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one step of size eps along the sign of the loss gradient.

    The model runs in eval mode (its mode is restored afterwards).

    Args:
        model: classifier taking images in [0, 1].
        x: clean images ``[B, C, H, W]`` in [0, 1].
        y: labels ``[B]``.
        eps: step in [0, 1], in pixel units of the [0, 1] image (0.01 is about 2.55/255).

    Returns:
        adversarial images ``[B, C, H, W]``, clamped to [0, 1], detached.
    """
    eps = _check_eps(eps)
    was_training = model.training
    model.eval()
    try:
        grad = _input_grad(model, x, y)
    finally:
        model.train(was_training)
    return (x.detach() + eps * grad.sign()).clamp(0.0, 1.0)


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent (L-inf), FGSM iterated inside the eps-ball.

    Args:
        model: classifier taking images in [0, 1].
        x: clean images ``[B, C, H, W]`` in [0, 1].
        y: labels ``[B]``.
        eps: radius of the L-inf ball in [0, 1].
        steps: number of gradient-sign steps (>= 1).
        step_size: per-step size; default ``2.5 * eps / steps`` (Madry et al.).
        random_start: start from a uniform point in the ball (drawn from ``generator``).
        generator: ``torch.Generator`` on ``x``'s device for the random start.

    Returns:
        adversarial images ``[B, C, H, W]`` in [0, 1] with ``|x_adv - x| <= eps``.
    """
    eps = _check_eps(eps)
    steps = check_int("steps", steps, minimum=1)
    alpha = 2.5 * eps / steps if step_size is None else check_float("step_size", step_size, lo=0)
    x0 = x.detach()
    x_adv = x0.clone()
    if random_start and eps > 0:
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        x_adv = (x0 + (2 * u - 1) * eps).clamp(0.0, 1.0)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            grad = _input_grad(model, x_adv, y)
            x_adv = x_adv + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x0 - eps), x0 + eps).clamp(0.0, 1.0)
    finally:
        model.train(was_training)
    return x_adv.detach()


def fgsm_curve(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[float]:
    """Top-1 accuracy under FGSM for each epsilon.

    Args:
        model: classifier taking images in [0, 1] (already on ``device``).
        x: images ``[N, C, H, W]`` in [0, 1].
        y: labels ``[N]``.
        epsilons: iterable of eps values in [0, 1]; eps 0 gives the clean accuracy.
        batch_size: images per attack step.
        device: where to run.
        progress: show a tqdm progress bar.

    Returns:
        list of accuracies in [0, 1], one per epsilon, in the given order.
    """
    epsilons = [_check_eps(e) for e in epsilons]
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"need N >= 1 images and N labels, got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    correct = [0] * len(epsilons)
    was_training = model.training
    model.eval()
    try:
        for s in tqdm(
            range(0, x.shape[0], batch_size), desc="fgsm", disable=not progress, leave=False
        ):
            xb, yb = x[s : s + batch_size].to(device).float(), y[s : s + batch_size].to(device)
            sign = _input_grad(model, xb, yb).sign()  # one gradient serves every eps
            with torch.no_grad():
                for i, eps in enumerate(epsilons):
                    pred = model((xb + eps * sign).clamp(0.0, 1.0)).argmax(dim=1)
                    correct[i] += int((pred == yb).sum())
    finally:
        model.train(was_training)
    return [c / x.shape[0] for c in correct]


# ----------------------------------------------------------------------------- accuracy under corruptions


def _corruption_seed(seed: int, name: str, severity: int) -> int:
    """A seed per (name, severity), independent of which other corruptions are evaluated."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{name}:{severity}".encode())) % (2**63)


@torch.no_grad()
def corruption_accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    names=None,
    severities=(1, 2, 3, 4, 5),
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Top-1 accuracy on corrupted copies of ``x`` for every (corruption, severity).

    Args:
        model: classifier taking images in [0, 1] (already on ``device``).
        x: clean images ``[N, C, H, W]`` in [0, 1].
        y: labels ``[N]``.
        names: corruption names (default: all of :data:`CORRUPTIONS`).
        severities: severities in 1..5.
        seed: base seed; each (name, severity) gets its own generator derived from it.
        batch_size: images per forward pass.
        device: where to run.
        progress: show a tqdm progress bar.

    Returns:
        JSON-ready dict: ``clean`` (accuracy), ``accuracy`` ({name: {str(severity): acc}}),
        ``mean_per_corruption`` ({name: acc}), ``mean_per_severity`` ({str(severity): acc}),
        ``mean_corruption_accuracy`` (mean over all cells), ``seed``.
    """
    names = list(CORRUPTIONS if names is None else names)
    for n in names:
        if not isinstance(n, str) or n not in SEVERITY_PARAMS:
            raise InputError(
                f"unknown corruption {n!r}; known corruptions: {', '.join(CORRUPTIONS)}"
            )
    severities = [check_int("corruption severity", s, 1, 5) for s in severities]
    batch_size = check_int("batch_size", batch_size, minimum=1)
    was_training = model.training
    model.eval()

    def acc_of(transform) -> float:
        correct = 0
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size].to(device).float()
            correct += int(
                (model(transform(xb)).argmax(dim=1) == y[s : s + batch_size].to(device)).sum()
            )
        return correct / x.shape[0]

    try:
        clean = acc_of(lambda b: b)
        table: dict[str, dict[str, float]] = {}
        cells = [(n, s) for n in names for s in severities]
        for n, s in tqdm(cells, desc="corruptions", disable=not progress, leave=False):
            g = torch.Generator(device=torch.device(device)).manual_seed(
                _corruption_seed(seed, n, s)
            )
            table.setdefault(n, {})[str(s)] = acc_of(lambda b, n=n, s=s, g=g: corrupt(b, n, s, g))
    finally:
        model.train(was_training)
    all_accs = [a for row in table.values() for a in row.values()]
    return {
        "clean": clean,
        "accuracy": table,
        "mean_per_corruption": {n: float(np.mean(list(row.values()))) for n, row in table.items()},
        "mean_per_severity": {
            str(s): float(np.mean([table[n][str(s)] for n in names])) for s in severities
        },
        "mean_corruption_accuracy": float(np.mean(all_accs)) if all_accs else float("nan"),
        "seed": int(seed),
    }


# ----------------------------------------------------------------------------- CIFAR-C files


def load_cifar_c(
    root: str | os.PathLike, name: str, severity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one corruption at one severity from the published CIFAR-10-C / CIFAR-100-C arrays.

    The folder holds ``<name>.npy`` (uint8 ``[5 n, 32, 32, 3]``, severities 1..5 stacked in
    blocks of n; n = 10,000 in the published files) and ``labels.npy`` (``[5 n]``). Arrays are
    memory-mapped, so only the requested block is read.

    Args:
        root: folder with the ``.npy`` files (e.g. ``data/CIFAR-10-C``).
        name: one of :data:`CIFAR_C_NAMES`.
        severity: 1..5.

    Returns:
        ``(x, y)``: images ``[n, 3, 32, 32]`` float32 in [0, 1], labels ``[n]`` int64.
    """
    if not isinstance(name, str) or name not in CIFAR_C_NAMES:
        raise InputError(
            f"unknown CIFAR-C corruption {name!r}; the published files are: {', '.join(CIFAR_C_NAMES)}"
        )
    severity = check_int("CIFAR-C severity", severity, 1, 5)
    x_path, y_path = os.path.join(root, f"{name}.npy"), os.path.join(root, "labels.npy")
    for p in (x_path, y_path):
        if not os.path.isfile(p):
            raise InputError(
                f"CIFAR-C file not found: {p} (download CIFAR-10-C/100-C and pass its folder)"
            )
    xs = np.load(x_path, mmap_mode="r")
    ys = np.load(y_path, mmap_mode="r")
    if (
        xs.ndim != 4
        or xs.shape[1:] != (32, 32, 3)
        or xs.dtype != np.uint8
        or xs.shape[0] % 5
        or not xs.shape[0]
    ):
        raise InputError(
            f"{x_path} has shape {xs.shape} dtype {xs.dtype}; expected uint8 [5n, 32, 32, 3] (n = 10000 when published)"
        )
    if ys.shape != (xs.shape[0],):
        raise InputError(
            f"{y_path} has shape {ys.shape}; expected [{xs.shape[0]}] to match {name}.npy"
        )
    n = xs.shape[0] // 5
    block = slice((severity - 1) * n, severity * n)
    x = torch.from_numpy(np.array(xs[block])).permute(0, 3, 1, 2).float() / 255.0  # [n, 3, 32, 32]
    y = torch.from_numpy(np.asarray(ys[block]).astype(np.int64))
    return x, y
