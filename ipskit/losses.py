"""The IPS loss: cross-entropy on both swapped images plus a KL term aligning their predictions.

From "Intra-class Patch Swap for Self-Distillation" (Choi et al., 2025), as ipskit defines it
(docs/METHOD.md, "The loss"):

    L  = gamma * (CE(z_a, y) + CE(z_b, y)) / 2 + alpha * KD
    KD = (KL(p_b || p_a) + KL(p_a || p_b)) / 2,   p = softmax(z / T)

In ``KL(p_b || p_a)`` the target is ``p_b`` and the student ``p_a``; with ``detach_target``
(default, as in CS-KD) no gradient flows through the target side, so each image is pulled
towards its partner's prediction without pulling the partner back through the same term.
Defaults: T = 4, alpha = gamma = 1, no T^2 factor (docs/METHOD.md, "Open choices, defaults
and evidence", explains why: with T^2 the predictions were over-smoothed at CPU scale).

Usage:
    out = ips_loss(model(x_a), model(x_b), y)
    out.loss.backward(); log(out.ce.item(), out.kd.item())

Settings are checked where they enter (``ips_loss``, ``IPSLoss.__init__``); ``IPSLoss.forward``
checks only the batch, and a training step whose settings were checked once calls ``_ips_loss``
(``ipskit.methods.IPS.step``).

``BLOG_INTENT`` holds the settings that express what the source blog post meant (symmetric KL,
no stop-gradient, no T^2); its own code computes NaN for the second KL term.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ipskit.checks import InputError, check_bool, check_choice, check_float

__all__ = [
    "IPSLossOutput",
    "ips_loss",
    "IPSLoss",
    "kl_divergence",
    "pair_teacher",
    "KD_DIRECTIONS",
    "BLOG_INTENT",
]

KD_DIRECTIONS = ("symmetric", "confident")
# The blog's intent: both KL directions, gradients through both sides, no T^2.
BLOG_INTENT = {"kd_direction": "symmetric", "detach_target": False, "t2_scale": False}


class IPSLossOutput(NamedTuple):
    """Scalar tensors: ``loss`` to back-propagate, its unweighted parts ``ce`` and ``kd``."""

    loss: Tensor
    ce: Tensor
    kd: Tensor


def kl_divergence(
    target_logits: Tensor,
    student_logits: Tensor,
    temperature: float = 1.0,
    detach_target: bool = True,
) -> Tensor:
    """Per-sample KL(p_target || p_student) with p = softmax(logits / T).

    Args:
        target_logits, student_logits: [B, K].
    Returns:
        [B] KL divergence per sample (sum over classes).
    """
    log_t = F.log_softmax(target_logits / temperature, dim=1)
    if detach_target:
        log_t = log_t.detach()
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1)


def _true_class(labels: Tensor) -> Tensor:
    return labels.argmax(dim=1) if labels.dim() == 2 else labels


def pair_teacher(
    logits_a: Tensor, logits_b: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Which side of each pair is the pseudo-teacher (the more confident on the true class).

    Args:
        logits_a, logits_b: [B, K]; labels: [B] class ids (or [B, K] soft labels: argmax).
    Returns:
        (p_true_a [B], p_true_b [B], a_is_teacher bool [B]); probabilities at T = 1.
    """
    y = _true_class(labels)[:, None]
    p_a = logits_a.detach().softmax(dim=1).gather(1, y).squeeze(1)
    p_b = logits_b.detach().softmax(dim=1).gather(1, y).squeeze(1)
    return p_a, p_b, p_a >= p_b


def _check_settings(temperature, alpha, gamma, kd_direction, detach_target, t2_scale) -> dict:
    """The loss settings checked, as plain Python values (keyword arguments of ``_ips_loss``)."""
    return dict(
        temperature=check_float(
            "temperature", temperature, 0, math.inf, lo_open=True, hi_open=True
        ),
        alpha=check_float("alpha", alpha, 0, math.inf, hi_open=True),
        gamma=check_float("gamma", gamma, 0, math.inf, hi_open=True),
        kd_direction=check_choice("kd_direction", kd_direction, KD_DIRECTIONS),
        detach_target=check_bool("detach_target", detach_target),
        t2_scale=check_bool("t2_scale", t2_scale),
    )


def _check_batch(logits_a, logits_b, labels) -> None:
    """Shapes and dtypes of one batch, and hard labels in 0..K-1 (one device sync on a GPU)."""
    for name, t in (("logits_a", logits_a), ("logits_b", logits_b), ("labels", labels)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if logits_a.dim() != 2 or logits_a.shape != logits_b.shape:
        raise InputError(
            f"logits_a and logits_b must both be [B, K], got "
            f"{tuple(logits_a.shape)} and {tuple(logits_b.shape)}"
        )
    b, k = logits_a.shape
    if b == 0 or k == 0:
        raise InputError(
            f"the IPS loss needs at least one pair and one class, got logits of "
            f"shape {tuple(logits_a.shape)}"
        )
    if labels.dim() == 1:
        if labels.dtype in (torch.bool,) or labels.is_floating_point() or labels.is_complex():
            raise TypeError(
                f"labels must be integer class ids [B] or soft labels [B, K] (float),"
                f" got dtype {labels.dtype} with shape {tuple(labels.shape)}"
            )
        if labels.shape[0] != b:
            raise InputError(f"labels has {labels.shape[0]} entries but logits have {b} rows")
        lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # one sync for both ends
        if lo < 0 or hi >= k:
            raise InputError(
                f"label {lo if lo < 0 else hi} is not a class id of the {k} logits: "
                f"labels must be in 0..{k - 1}"
            )
    elif labels.dim() == 2:
        if not labels.is_floating_point() or tuple(labels.shape) != (b, k):
            raise InputError(
                f"soft labels must be float [B, K] = [{b}, {k}], got "
                f"{labels.dtype} {tuple(labels.shape)}"
            )
    else:
        raise InputError(
            f"labels must be [B] class ids or [B, K] soft labels, got shape {tuple(labels.shape)}"
        )


def ips_loss(
    logits_a: Tensor,
    logits_b: Tensor,
    labels: Tensor,
    temperature: float = 4.0,
    alpha: float = 1.0,
    gamma: float = 1.0,
    kd_direction: str = "symmetric",
    detach_target: bool = True,
    t2_scale: bool = False,
) -> IPSLossOutput:
    """IPS loss for a batch of swapped pairs.

    Args:
        logits_a, logits_b: [B, K] logits of the two swapped images of each pair (B >= 1).
        labels: [B] class ids in 0..K-1 shared by the pair, or [B, K] soft labels (e.g. after
            CutMix).
        temperature: finite T > 0 for the softened predictions in the KL term (default 4).
        alpha: weight of the KD term (default 1); gamma: weight of the CE term (default 1).
        kd_direction: "symmetric" (both KL directions, averaged) or "confident" (per pair, the
            side with the higher true-class probability is the teacher; one KL term).
        detach_target: stop gradients through the target side of each KL (default True).
        t2_scale: multiply KD by T^2 as in Hinton et al. (default False, see docs/METHOD.md).
    Returns:
        IPSLossOutput(loss, ce, kd) with scalar tensors; ``ce`` and ``kd`` are unweighted.
    Raises:
        InputError: a setting out of range, an empty batch, mismatched shapes, or a label
            outside 0..K-1 (checking labels costs one device sync on a GPU). Tensors of the
            wrong type or dtype raise TypeError.
    """
    settings = _check_settings(temperature, alpha, gamma, kd_direction, detach_target, t2_scale)
    _check_batch(logits_a, logits_b, labels)
    return _ips_loss(logits_a, logits_b, labels, **settings)


def _ips_loss(
    logits_a: Tensor,
    logits_b: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float,
    gamma: float,
    kd_direction: str,
    detach_target: bool,
    t2_scale: bool,
) -> IPSLossOutput:
    """:func:`ips_loss` without checks, for settings checked once (a training step)."""
    ce = (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2
    if kd_direction == "symmetric":
        kd = (
            kl_divergence(logits_b, logits_a, temperature, detach_target)
            + kl_divergence(logits_a, logits_b, temperature, detach_target)
        ).mean() / 2
    else:
        _, _, a_teaches = pair_teacher(logits_a, logits_b, labels)
        teacher = torch.where(a_teaches[:, None], logits_a, logits_b)  # (B, K)
        student = torch.where(a_teaches[:, None], logits_b, logits_a)  # (B, K)
        kd = kl_divergence(teacher, student, temperature, detach_target).mean()
    if t2_scale:
        kd = kd * temperature**2
    return IPSLossOutput(gamma * ce + alpha * kd, ce, kd)


class IPSLoss(nn.Module):
    """Module form of :func:`ips_loss` with fixed settings (same arguments, same defaults),
    checked once here; ``forward`` checks only the batch."""

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 1.0,
        gamma: float = 1.0,
        kd_direction: str = "symmetric",
        detach_target: bool = True,
        t2_scale: bool = False,
    ):
        super().__init__()
        self.kwargs = _check_settings(
            temperature, alpha, gamma, kd_direction, detach_target, t2_scale
        )

    def forward(self, logits_a: Tensor, logits_b: Tensor, labels: Tensor) -> IPSLossOutput:
        _check_batch(logits_a, logits_b, labels)
        return _ips_loss(logits_a, logits_b, labels, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
