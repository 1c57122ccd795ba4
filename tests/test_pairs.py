"""Tests for ipskit.pairs: sampler invariants over epochs and replicas, determinism, bad input."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ipskit import SameClassPairSampler, split_pair
from ipskit.checks import InputError


def make_labels(n=103, classes=7, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    labels[: classes * 2] = np.repeat(np.arange(classes), 2)  # every class has >= 2 samples
    return labels


def pairs_of(sampler):
    anchors, partners = [], []
    for batch in sampler:
        b = len(batch) // 2
        assert len(batch) == 2 * b
        anchors += batch[:b]
        partners += batch[b:]
    return np.array(anchors), np.array(partners)


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_every_index_anchor_once_and_partners_share_class(epoch):
    labels = make_labels()
    s = SameClassPairSampler(labels, batch_size=16, seed=3)
    s.set_epoch(epoch)
    anchors, partners = pairs_of(s)
    assert sorted(anchors.tolist()) == list(range(len(labels)))
    assert (labels[anchors] == labels[partners]).all()
    assert (anchors != partners).all()
    assert len(s) == math.ceil(len(labels) / 16) == len(list(s))


def test_partner_uniform_among_others_of_class():
    labels = np.array([0] * 5 + [1] * 2)
    s = SameClassPairSampler(labels, batch_size=7, seed=0)
    counts = np.zeros((7, 7))
    for e in range(4000):
        s.set_epoch(e)
        a, p = pairs_of(s)
        counts[a, p] += 1
    # anchor 0's partner is uniform over {1, 2, 3, 4}: expected 1000 each
    row = counts[0, 1:5]
    assert counts[0, 0] == 0 and counts[0, 5:].sum() == 0
    assert (np.abs(row - 1000) < 4 * math.sqrt(1000 * 0.75)).all(), row
    assert (counts[5, 6] == 4000) and (
        counts[6, 5] == 4000
    )  # a 2-sample class pairs with the other


def test_order_is_a_function_of_seed_and_epoch():
    labels = make_labels()
    a = SameClassPairSampler(labels, 8, seed=1)
    b = SameClassPairSampler(labels, 8, seed=1)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating twice gives the same epoch
    b.set_epoch(3)
    assert list(a) != list(b)
    c = SameClassPairSampler(labels, 8, seed=2)
    c.set_epoch(2)
    assert list(a) != list(c)


@pytest.mark.parametrize(
    "n,replicas,drop_last",
    [(103, 2, False), (103, 3, False), (100, 4, False), (103, 2, True), (103, 3, True)],
)
def test_replicas_split_anchors_without_overlap(n, replicas, drop_last):
    labels = make_labels(n)
    parts = []
    for rank in range(replicas):
        s = SameClassPairSampler(
            labels, 10, seed=4, drop_last=drop_last, num_replicas=replicas, rank=rank
        )
        s.set_epoch(1)
        a, p = pairs_of(s)
        assert (labels[a] == labels[p]).all() and (a != p).all()
        parts.append(a)
    lengths = {
        len(list(SameClassPairSampler(labels, 10, 4, drop_last, replicas, r)))
        for r in range(replicas)
    }
    assert len(lengths) == 1  # every rank runs the same number of steps (DDP would hang otherwise)
    allp = np.concatenate(parts)
    if drop_last:
        assert len(set(allp.tolist())) == len(allp)  # no index twice
        assert all(len(p) % 10 == 0 for p in parts)
    else:
        assert set(allp.tolist()) == set(range(n))  # everything covered
        assert len(allp) - n < replicas  # at most replicas-1 repeats (padding)


@pytest.mark.parametrize(
    "n,batch,replicas,drop_last",
    [
        (4, 1, 10, False),
        (4, 3, 10, False),
        (5, 2, 7, False),
        (2, 1, 3, False),
        (6, 4, 2, False),
        (103, 10, 3, False),
        (100, 7, 8, False),
        (9, 2, 4, False),
        (103, 10, 3, True),
        (20, 3, 4, True),
        (9, 2, 4, True),
        (64, 8, 8, True),
    ],
)
def test_every_rank_yields_exactly_len_batches(n, batch, replicas, drop_last):
    """DDP ranks stay in step: each yields len(sampler) batches, the same number on every rank,
    full batches except a last short one, partners of the anchor's class."""
    labels = np.arange(n) % max(1, n // 2)  # every class has >= 2 samples
    anchors = []
    for rank in range(replicas):
        s = SameClassPairSampler(
            labels, batch, seed=1, drop_last=drop_last, num_replicas=replicas, rank=rank
        )
        s.set_epoch(2)
        batches = list(s)
        assert len(batches) == len(s) >= 1, (rank, len(batches), len(s))
        assert all(len(bt) == 2 * batch for bt in batches[:-1])
        assert len(batches[-1]) == 2 * batch if drop_last else 2 <= len(batches[-1]) <= 2 * batch
        a, p = pairs_of(s)
        assert (labels[a] == labels[p]).all() and (a != p).all()
        assert len(a) == s.num_anchors  # the same number of anchors on every rank
        anchors.append(a)
    everything = np.concatenate(anchors)
    if drop_last:
        assert len(set(everything.tolist())) == len(everything)  # no anchor twice
    else:
        assert set(everything.tolist()) == set(range(n))  # every sample is an anchor
        assert (
            len(everything) == math.ceil(n / replicas) * replicas
        )  # padded like DistributedSampler


def test_drop_last_that_leaves_no_batch_is_refused():
    with pytest.raises(
        InputError,
        match=r"drop_last leaves no batch: 4 samples over 2 replica\(s\) "
        r"give 2 anchors per replica, fewer than batch_size=3",
    ):
        SameClassPairSampler([0, 0, 1, 1], 3, drop_last=True, num_replicas=2, rank=0)
    with pytest.raises(InputError, match="drop_last leaves no batch: 4 samples over 1 replica"):
        SameClassPairSampler([0, 0, 1, 1], 5, drop_last=True)


def test_drop_last_single_replica():
    s = SameClassPairSampler(make_labels(103), 10, drop_last=True)
    a, _ = pairs_of(s)
    assert len(a) == 100 and len(s) == 10


def test_reads_labels_only_never_images():
    class Exploding(Dataset):
        targets = [0, 0, 1, 1, 1]

        def __len__(self):
            return 5

        def __getitem__(self, i):
            raise AssertionError("the sampler must not load images")

    s = SameClassPairSampler(Exploding(), batch_size=2)
    assert len(list(s)) == 3


@pytest.mark.parametrize(
    "labels", [[0, 1, 0, 1], np.array([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1])]
)
def test_accepts_lists_arrays_tensors(labels):
    a, p = pairs_of(SameClassPairSampler(labels, 4))
    assert sorted(a.tolist()) == [0, 1, 2, 3]


def test_with_dataloader_and_split_pair():
    labels = torch.tensor(make_labels(50))
    x = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    loader = DataLoader(TensorDataset(x, labels), batch_sampler=SameClassPairSampler(labels, 8))
    n = 0
    for xb, yb in loader:
        x_a, x_b, y = split_pair(xb, yb)
        assert x_a.shape == x_b.shape and len(y) == x_a.shape[0]
        assert torch.equal(x_a[:, 0, 0, 0], y.float()) and torch.equal(x_b[:, 0, 0, 0], y.float())
        n += len(y)
    assert n == 50


def test_split_pair_errors():
    with pytest.raises(InputError, match="expected 2B images and 2B labels"):
        split_pair(torch.zeros(3, 1, 2, 2), torch.zeros(3))
    with pytest.raises(InputError, match="partners do not share their anchor's class"):
        split_pair(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, 1]))


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(labels=[0, 0, 1, 2, 2]), InputError, "class 1 has a single sample"),
        (dict(labels=[]), InputError, "labels are empty"),
        (
            dict(labels=[0.0, 0.0, 1.0, 1.0]),
            TypeError,
            "labels must be integer class ids, got dtype float64",
        ),
        (dict(labels=[[0, 0], [1, 1]]), InputError, r"labels must be 1-D .*got shape \(2, 2\)"),
        (dict(labels=[-1, -1, 0, 0]), InputError, "class ids >= 0, got -1"),
        (
            dict(labels=[0, 0], batch_size=0),
            InputError,
            r"batch_size must be >= 1 \(pairs per batch\), got 0",
        ),
        (
            dict(labels=[0, 0], batch_size=2.0),
            InputError,
            "batch_size must be an int, got float 2.0",
        ),
        (
            dict(labels=[0, 0], num_replicas=2, rank=2),
            InputError,
            r"rank must be >= 0 and <= 1 for num_replicas=2, got 2",
        ),
        (
            dict(labels=[0, 0], num_replicas=0, rank=0),
            InputError,
            "num_replicas must be >= 1, got 0",
        ),
        (dict(labels=[0, 0], seed=-1), InputError, "seed must be >= 0, got -1"),
        (dict(labels=[0, 0], seed=True), InputError, "seed must be an int, got bool True"),
        (
            dict(labels=[0, 0], drop_last=1),
            InputError,
            "drop_last must be True or False, got int 1",
        ),
    ],
)
def test_bad_input(kwargs, err, match):
    kwargs.setdefault("batch_size", 2)
    with pytest.raises(err, match=match):
        SameClassPairSampler(**kwargs)


def test_numpy_scalars_are_accepted():
    s = SameClassPairSampler(
        [0, 0, 1, 1],
        np.int64(2),
        seed=np.int32(3),
        drop_last=np.bool_(False),
        num_replicas=np.int64(2),
        rank=np.int64(1),
    )
    assert (s.batch_size, s.seed, s.num_replicas, s.rank) == (2, 3, 2, 1) and len(list(s)) == len(s)
