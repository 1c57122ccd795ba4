"""Shared helpers for the training-side tests: tiny settings and a cached dataset loader."""

import functools

import ipskit.data
from ipskit.config import TrainConfig

_load = ipskit.data.load_dataset


@functools.cache
def _cached(*args, **kwargs):
    return _load(*args, **kwargs)


def cache_datasets(monkeypatch):
    """Load each dataset once per test session (the bundles are never mutated)."""

    def load(name="digits", root="data", image_size=None, **kw):
        return _cached(name, root=str(root), image_size=image_size, **kw)

    monkeypatch.setattr(ipskit.data, "load_dataset", load)


def tiny(tmp_path, **changes) -> TrainConfig:
    """Seconds-long settings: 8x8 digits, smallcnn, a 400-image subset, one epoch."""
    base = dict(
        model="smallcnn",
        image_size=8,
        epochs=1,
        batch_size=32,
        lr=0.05,
        grid=2,
        max_train_samples=400,
        out_dir=str(tmp_path),
        seed=0,
    )
    return TrainConfig(**{**base, **changes})
