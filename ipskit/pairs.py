"""Same-class pairs: a DataLoader batch sampler that gives every anchor a partner of its class.

IPS (Choi et al., 2025) and CS-KD (Yun et al., 2020) both train on pairs of images that share a
class. ``SameClassPairSampler`` yields, per batch, ``2 * B`` dataset indices: B anchors first,
then their B partners in the same order, so ``split_pair`` turns the loaded batch into
``(x_a, x_b, y)``:

    sampler = SameClassPairSampler(dataset.targets, batch_size=128, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            x_a, x_b, y = split_pair(x, y)

Guarantees: every index is an anchor exactly once per epoch (with several replicas and
``drop_last=False``, up to ``num_replicas - 1`` extra anchors repeat the start of the epoch's
order, as ``DistributedSampler`` pads, so that every rank yields exactly ``len(sampler)``
batches and DDP ranks stay in step); a partner has the anchor's class and is never
the anchor itself, drawn uniformly among the others of its class; the order is a pure function
of (seed, epoch); replicas split the anchors without overlap. Only labels are read: images are
never loaded to find them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from ipskit.checks import InputError, check_bool, check_int

__all__ = ["SameClassPairSampler", "split_pair", "labels_to_array"]


def labels_to_array(labels) -> np.ndarray:
    """Integer labels as a 1-D int64 numpy array, from a list, array, tensor or a dataset's
    ``targets``."""
    if hasattr(labels, "targets") and not isinstance(labels, (np.ndarray, Tensor, list, tuple)):
        labels = labels.targets
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"labels must be 1-D (one class id per sample), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError("labels are empty: the sampler needs at least two samples per class")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise InputError(f"labels must be class ids >= 0, got {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


class SameClassPairSampler:
    """Batch sampler of same-class pairs (see the module docstring for guarantees).

    Args:
        labels: class id per sample (list, numpy array, tensor, or a dataset with ``targets``).
        batch_size: B, pairs per batch; each batch holds 2*B indices.
        seed: base seed; the order of epoch e depends only on (seed, e).
        drop_last: drop the last incomplete batch (and, with replicas, the uneven tail).
        num_replicas, rank: distributed split; default from torch.distributed if initialised,
            else a single replica.

    Every rank yields exactly ``len(sampler)`` batches, so DDP ranks never wait on each other.
    Without ``drop_last`` each rank gets ``ceil(n / num_replicas)`` anchors: the epoch's order
    is repeated from its start to fill the last places (as ``DistributedSampler`` pads; with
    more replicas than samples some anchors then appear several times). With ``drop_last``
    each rank gets ``n // num_replicas`` anchors rounded down to whole batches; a setting that
    leaves no batch at all is refused.

    Raises:
        InputError: bad labels (a non-integer dtype is a TypeError), a class with a single
            sample, a setting out of range, or ``drop_last`` leaving no batch.
    """

    def __init__(
        self,
        labels,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        self.labels = labels_to_array(labels)
        self.batch_size = check_int("batch_size", batch_size, minimum=1, why="(pairs per batch)")
        self.seed = check_int("seed", seed, minimum=0)
        self.drop_last, self.epoch = check_bool("drop_last", drop_last), 0
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = (
                num_replicas
                if num_replicas is not None
                else (dist.get_world_size() if ready else 1)
            )
            rank = rank if rank is not None else (dist.get_rank() if ready else 0)
        self.num_replicas = check_int("num_replicas", num_replicas, minimum=1)
        self.rank = check_int(
            "rank", rank, 0, self.num_replicas - 1, why=f"for num_replicas={self.num_replicas}"
        )

        # Class index built once from labels: members of class c are order[start[c]:start[c]+count[c]].
        counts = np.bincount(self.labels)
        lonely = np.flatnonzero(counts == 1)
        if lonely.size:
            raise InputError(
                f"class {int(lonely[0])} has a single sample, so it has no partner; "
                f"every class needs at least 2 samples ({lonely.size} class(es) "
                f"have 1)"
            )
        self._order = np.argsort(self.labels, kind="stable")
        self._start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._count = counts
        self._pos = np.empty_like(self.labels)  # position of each sample inside its class
        self._pos[self._order] = np.arange(len(self.labels)) - self._start[self.labels[self._order]]

        n = len(self.labels)
        if self.drop_last:
            self.num_anchors = n // self.num_replicas
            self.num_anchors -= self.num_anchors % self.batch_size
            if self.num_anchors == 0:
                raise InputError(
                    f"drop_last leaves no batch: {n} samples over {self.num_replicas}"
                    f" replica(s) give {n // self.num_replicas} anchors per replica,"
                    f" fewer than batch_size={self.batch_size}; lower batch_size or "
                    f"pass drop_last=False"
                )
        else:
            self.num_anchors = math.ceil(n / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_anchors / self.batch_size)

    def epoch_pairs(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (anchors, partners) for an epoch, as int64 arrays of equal length."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        n, per_rank = len(self.labels), self.num_anchors
        anchors = rng.permutation(n)
        # Partners for every sample, drawn in one vectorised step: a uniform slot among the
        # other (count - 1) members of the class, skipping the sample's own slot.
        lab = self.labels
        slot = np.floor(rng.random(n) * (self._count[lab] - 1)).astype(np.int64)
        slot += slot >= self._pos
        partner_of = self._order[self._start[lab] + slot]
        total = per_rank * self.num_replicas
        if total > n:  # pad so every rank has the same number of anchors, cyclically if R > n
            anchors = np.resize(anchors, total)
        mine = anchors[self.rank : total : self.num_replicas]
        return mine, partner_of[mine]

    def __iter__(self) -> Iterator[list[int]]:
        anchors, partners = self.epoch_pairs()
        for s in range(0, len(anchors), self.batch_size):
            yield (
                anchors[s : s + self.batch_size].tolist()
                + partners[s : s + self.batch_size].tolist()
            )


def split_pair(x: Tensor, y: Tensor, check_labels: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Split a loaded batch of 2B samples (anchors, then partners) into aligned pairs.

    Args:
        x: [2B, C, H, W] images as yielded by a loader over ``SameClassPairSampler``.
        y: [2B] labels.
        check_labels: verify that partners share their anchor's class (costs a device sync on
            a GPU; training loops that trust the sampler pass False).
    Returns:
        (x_a [B, C, H, W], x_b [B, C, H, W], y [B]).
    """
    if x.shape[0] != y.shape[0] or x.shape[0] % 2:
        raise InputError(
            f"expected 2B images and 2B labels (anchors then partners), got "
            f"{x.shape[0]} images and {y.shape[0]} labels"
        )
    b = x.shape[0] // 2
    if check_labels and not torch.equal(y[:b], y[b:]):
        raise InputError(
            "partners do not share their anchor's class: was the batch made by "
            "SameClassPairSampler?"
        )
    return x[:b], x[b:], y[:b]
