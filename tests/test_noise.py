"""Tests for ipskit.noise: flip rates within 3 standard errors, flip targets, seeding, errors."""

import math

import numpy as np
import pytest
import torch

from ipskit.checks import InputError
from ipskit.noise import noisy_labels


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.8])
def test_flip_fraction_matches_rate(kind, rate):
    n, k = 20000, 10
    labels = torch.arange(n) % k
    noisy, flipped = noisy_labels(labels, k, rate, kind=kind, seed=3)
    assert torch.equal(flipped, noisy != labels)  # "rate" counts changes to a different class
    se = math.sqrt(rate * (1 - rate) / n)
    assert abs(flipped.double().mean().item() - rate) <= 3 * se + 1e-12


def test_symmetric_targets_are_uniform_over_other_classes():
    n, k = 30000, 5
    labels = torch.zeros(n, dtype=torch.long)
    noisy, flipped = noisy_labels(labels, k, 0.6, seed=0)
    new = noisy[flipped]
    assert (new != 0).all()
    counts = torch.bincount(new, minlength=k)[1:].double()
    m = new.numel()
    expected, se = m / (k - 1), math.sqrt(m * (1 / (k - 1)) * (1 - 1 / (k - 1)))
    assert ((counts - expected).abs() <= 3 * se).all()


def test_pairflip_goes_to_next_class():
    labels = torch.arange(1000) % 4
    noisy, flipped = noisy_labels(labels, 4, 0.5, kind="pairflip", seed=1)
    assert torch.equal(noisy[flipped], (labels[flipped] + 1) % 4)
    assert torch.equal(noisy[~flipped], labels[~flipped])


def test_seeded_and_accepts_numpy():
    labels = np.arange(100) % 3
    a = noisy_labels(labels, 3, 0.3, seed=7)
    b = noisy_labels(torch.as_tensor(labels), 3, 0.3, seed=7)
    c = noisy_labels(labels, 3, 0.3, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.long and a[1].dtype == torch.bool


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rate": 1.0}, r"rate must be in \[0, 1\)"),
        ({"rate": -0.1}, r"rate must be in \[0, 1\)"),
        (
            {"rate": 0.2, "kind": "asym"},
            r"unknown label-noise kind 'asym'; choose one of: symmetric, pairflip",
        ),
        ({"rate": 0.2, "num_classes": 1}, r"num_classes must be >= 2 \(to flip labels\), got 1"),
        ({"rate": True}, "label-noise rate must be a number, got bool True"),
        ({"rate": 0.2, "seed": 1.5}, "seed must be an int, got float 1.5"),
        ({"rate": 0.2, "labels": torch.tensor([0, 5])}, r"labels must lie in \[0, 2\]"),
        ({"rate": 0.2, "labels": torch.zeros(2, 2, dtype=torch.long)}, r"1-D integer array"),
    ],
)
def test_errors(kwargs, match):
    args = {"labels": torch.tensor([0, 1, 2]), "num_classes": 3, **kwargs}
    with pytest.raises(InputError, match=match):
        noisy_labels(**args)


def test_numpy_scalars_are_accepted():
    labels = torch.arange(50) % 5
    a = noisy_labels(labels, 5, 0.5, seed=2)
    b = noisy_labels(labels, np.int64(5), np.float32(0.5), seed=np.int64(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
