"""Synthetic label noise (symmetric and pair-flip) for training under noisy labels.

The IPS paper (Choi et al., arXiv 2505.14124) reports that IPS keeps more accuracy than plain
cross-entropy when a large share of training labels is wrong (e.g. 80% symmetric noise).
This module corrupts a label vector reproducibly so that claim can be tested at small scale.

Definitions (the literature is not uniform; ipskit's convention):

* ``rate`` is the probability that a label is **changed to a different class**, so the
  realised share of wrong labels equals ``rate`` in expectation. (Some papers draw the new
  label uniformly over all K classes, true class included, so their "rate r" leaves only
  r (K-1)/K of labels wrong; to reproduce such a setting pass ``rate = r (K-1)/K``.)
* ``"symmetric"``: a changed label becomes one of the other K-1 classes, uniformly.
* ``"pairflip"``: a changed label c becomes ``(c + 1) mod K`` (Han et al., Co-teaching 2018).

Usage::

    noisy, flipped = noisy_labels(train_labels, num_classes=10, rate=0.4, seed=0)
    # train on `noisy`; `flipped` [N] bool says which labels were changed
"""

from __future__ import annotations

import numpy as np
import torch

from ipskit.checks import InputError, check_choice, check_float, check_int

__all__ = ["NOISE_KINDS", "noisy_labels"]

NOISE_KINDS = ("symmetric", "pairflip")


def noisy_labels(
    labels: torch.Tensor | np.ndarray | list,
    num_classes: int,
    rate: float,
    kind: str = "symmetric",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip a share of labels to another class, reproducibly.

    Which labels flip and their new classes are drawn first from a ``torch.Generator``
    seeded with ``seed``, then applied; the same (labels, rate, kind, seed) always gives
    the same result.

    Args:
        labels: clean class ids ``[N]`` in [0, num_classes).
        num_classes: K >= 2.
        rate: probability in [0, 1) that a label is changed to a different class.
        kind: ``"symmetric"`` (uniform over the other K-1 classes) or ``"pairflip"``
            (c -> (c + 1) mod K).
        seed: seed of the generator that draws the flips.

    Returns:
        ``(noisy, flipped)``: ``noisy`` LongTensor ``[N]``; ``flipped`` BoolTensor ``[N]``,
        True where ``noisy != labels``.
    """
    check_choice("label-noise kind", kind, NOISE_KINDS)
    rate = check_float("label-noise rate", rate, 0, 1, hi_open=True)
    num_classes = check_int("num_classes", num_classes, minimum=2, why="(to flip labels)")
    seed = check_int("seed", seed)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(
            f"labels must be a 1-D integer array [N], got shape {tuple(y.shape)} dtype {y.dtype}"
        )
    y = y.long().cpu()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(
            f"labels must lie in [0, {num_classes - 1}], got values in [{int(y.min())}, {int(y.max())}]"
        )

    # 1. Draw: which samples flip, and (symmetric) an offset in 1..K-1 for each.
    g = torch.Generator().manual_seed(seed)
    flipped = torch.rand(y.shape, generator=g) < rate  # [N]
    offset = torch.randint(
        1, num_classes, y.shape, generator=g
    )  # [N], never 0 -> never the true class
    if kind == "pairflip":
        offset = torch.ones_like(offset)
    # 2. Apply: a non-zero offset mod K always lands on a different class.
    noisy = torch.where(flipped, (y + offset) % num_classes, y)
    return noisy, flipped
