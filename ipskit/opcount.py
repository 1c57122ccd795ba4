"""Counting the ATen kernels and host syncs of a call: the op budget of the per-batch ops.

A training step waits on the host when each random op launches many small kernels or reads a
value back from the device (``.item()``, ``bool(t)``, ``nonzero()``, boolean indexing). The
swap, augmentation and mixers keep a budget of both, checked in tests/test_swap.py and
reported by benchmarks/bench_swap.py. Calls are counted at the ATen dispatcher, on any device;
views (reshape, unsqueeze, select) only change metadata and are counted apart.

Usage:
    calls = count_ops(lambda: patch_swap(x_a, x_b, grid=4, generator=gen))
    sum(calls.kernels.values()), calls.views, calls.syncs     # Counter, int, Counter
"""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "AtenCalls", "count_ops"]

# Ops that need a value or a size from the device: each one waits for the GPU to catch up.
SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.nonzero",
        "aten.masked_select",
        "aten.equal",
        "aten.unique",
        "aten._unique",
        "aten._unique2",
        "aten.unique_consecutive",
        "aten.unique_dim",
    }
)


class AtenCalls(TorchDispatchMode):
    """While active, counts ATen calls: ``kernels`` and ``syncs`` by name, ``views`` in all."""

    def __init__(self):
        super().__init__()
        self.kernels, self.views, self.syncs = Counter(), 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if func.is_view:
            self.views += 1
        else:
            self.kernels[name] += 1
        if name in SYNC_OPS:
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> AtenCalls:
    """The ATen calls of one ``fn()``, after a first call that fills per-size caches (as the
    warm-up before a CUDA graph capture does)."""
    fn()
    with AtenCalls() as calls:
        fn()
    return calls
