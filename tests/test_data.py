"""Tests for ipskit.data and ipskit.augment: datasets, augmentation, the in-memory loader."""

import io
import os
import pickle
import re
import struct
import threading
import time
import urllib.error
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from sklearn.datasets import load_digits

import ipskit.data
import ipskit.imagefolder
from ipskit.checks import InputError
from ipskit.data import (
    AugmentParams,
    AugmentSpec,
    DatasetUnavailableError,
    ImageFileDataset,
    InMemoryLoader,
    apply_augment,
    augment_batch,
    draw_augment,
    load_dataset,
    stratified_split,
)


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory, monkeypatch):
    """Image-folder caches of these tests go to a fresh folder, never to ~/.cache."""
    monkeypatch.setenv("IPSKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ------------------------------------------------------------------ digits
def test_digits_bundle_shapes_and_dtypes(digits):
    b = digits
    assert (b.name, b.num_classes, b.in_channels, b.image_size) == ("digits", 10, 1, 16)
    assert b.classes == [str(i) for i in range(10)]
    assert b.train_x.shape == (1438, 1, 16, 16) and b.test_x.shape == (359, 1, 16, 16)
    assert b.train_x.dtype == torch.uint8 and b.train_y.dtype == torch.int64
    assert torch.equal(b.train_targets, b.train_y) and torch.equal(b.test_targets, b.test_y)
    assert int(b.train_x.max()) == 255 and int(b.train_x.min()) == 0
    assert len(b.mean) == len(b.std) == 1 and 0.1 < b.mean[0] < 0.6 and 0.1 < b.std[0] < 0.6
    # mean/std agree with a direct computation on the training images
    v = b.train_x.double() / 255
    assert b.mean[0] == pytest.approx(v.mean().item(), abs=1e-6)
    assert b.std[0] == pytest.approx(v.std(unbiased=False).item(), abs=1e-6)
    assert b.augment == AugmentSpec(crop_padding=2, flip=False)
    x, y = b.test_dataset[3]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.allclose(x, b.test_x[3].float() / 255)


def test_digits_native_size_matches_sklearn_pixels():
    b = load_dataset("digits", image_size=8)
    d = load_digits()
    y = torch.from_numpy(d.target).long()
    tr, te = stratified_split(y, 0.2, 0)
    ref = np.round(d.images * 255 / 16).astype(np.uint8)[:, None]
    assert np.array_equal(b.train_x.numpy(), ref[tr.numpy()])
    assert np.array_equal(b.test_y.numpy(), d.target[te.numpy()])
    assert b.augment.crop_padding == 1 and not b.augment.flip


def test_digits_split_is_deterministic_stratified_and_disjoint(digits):
    again = load_dataset("digits")
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)
    y = torch.from_numpy(load_digits().target).long()
    tr, te = stratified_split(y, 0.2, 0)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    assert sorted(tr.tolist() + te.tolist()) == list(range(len(y)))
    per_class = torch.bincount(y)
    expected = (per_class.double() * 0.2 + 0.5).floor().long()
    assert torch.equal(torch.bincount(y[te], minlength=10), expected)
    other = stratified_split(y, 0.2, 1)[1]
    assert not torch.equal(other, te)


def test_stratified_split_keeps_two_training_items_per_class():
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    tr, te = stratified_split(y, 0.9, 0)
    assert torch.bincount(y[tr]).tolist() == [2, 2, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"name": "mnist"},
            r"unknown dataset 'mnist'; known datasets: digits, cifar10, cifar100, imagefolder:PATH",
        ),
        (
            {"image_size": 2},
            r"image_size must be >= 4 \(or None for the dataset's default\), got 2",
        ),
        ({"image_size": True}, r"image_size must be an int, got bool True"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\), got 1.0"),
        ({"val_fraction": "0.2"}, r"val_fraction must be a number, got str '0.2'"),
        ({"seed": 1.5}, r"seed must be an int, got float 1.5"),
        ({"max_memory_bytes": -1}, r"max_memory_bytes must be >= 0, got -1"),
        ({"skip_bad_files": 1}, r"skip_bad_files must be True or False, got int 1"),
    ],
)
def test_load_dataset_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match) as e:
        load_dataset(**{"name": "digits", **kwargs})
    assert "\n" not in str(e.value)


def test_load_dataset_accepts_numpy_scalars():
    b = load_dataset(
        "digits", image_size=np.int64(8), val_fraction=np.float32(0.2), seed=np.int64(0)
    )
    assert b.image_size == 8 and len(b.test_y) == 359


# ------------------------------------------------------------------ augmentation
def _reference_augment(x, params, spec):
    """Naive per-image loop: pad, slice, flip."""
    out = []
    p, (h, w) = spec.crop_padding, x.shape[-2:]
    for i in range(len(x)):
        img = F.pad(x[i : i + 1].float() / 255, (p, p, p, p))[0]
        oy, ox = int(params.offset_y[i]), int(params.offset_x[i])
        img = img[:, oy : oy + h, ox : ox + w]
        out.append(img.flip(-1) if params.flip[i] else img)
    return torch.stack(out)


def test_augment_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=g)
    spec = AugmentSpec(crop_padding=3, flip=True)
    params = draw_augment(64, spec, g)
    out = apply_augment(x, params, spec)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, _reference_augment(x, params, spec))
    # float input in [0, 1] gives the same result as uint8
    assert torch.allclose(apply_augment(x.float() / 255, params, spec), out)


def test_crop_shifts_content_and_centre_offset_is_identity():
    x = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    spec = AugmentSpec(crop_padding=2)
    same = apply_augment(
        x, AugmentParams(torch.tensor([2]), torch.tensor([2]), torch.tensor([False])), spec
    )
    assert torch.equal(same, x.float() / 255)
    # offset (3, 4) = shift by (1, 2): out[i, j] = x[i + 1, j + 2], zeros past the border
    out = apply_augment(
        x, AugmentParams(torch.tensor([3]), torch.tensor([4]), torch.tensor([False])), spec
    )[0, 0]
    assert torch.equal(out[:7, :6], x[0, 0, 1:, 2:].float() / 255)
    assert out[7].abs().sum() == 0 and out[:, 6:].abs().sum() == 0


def test_no_flip_for_digits_and_flip_rate_for_natural_images(digits):
    g = torch.Generator().manual_seed(1)
    assert not draw_augment(4000, digits.augment, g).flip.any()
    flips = draw_augment(4000, AugmentSpec(crop_padding=4, flip=True), g).flip.float()
    assert abs(flips.mean().item() - 0.5) < 3 * (0.25 / 4000) ** 0.5
    offsets = draw_augment(4000, AugmentSpec(crop_padding=2), g).offset_x
    assert set(offsets.tolist()) == {0, 1, 2, 3, 4}


def test_augment_is_deterministic_with_a_generator(digits):
    x = digits.train_x[:32]
    a = augment_batch(x, AugmentSpec(2, True), torch.Generator().manual_seed(5))
    b = augment_batch(x, AugmentSpec(2, True), torch.Generator().manual_seed(5))
    c = augment_batch(x, AugmentSpec(2, True), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(x, None), x.float() / 255)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_other_padding_modes_match_f_pad(mode):
    x = torch.randint(0, 256, (4, 1, 6, 6), dtype=torch.uint8)
    spec = AugmentSpec(crop_padding=2, padding_mode=mode)
    params = AugmentParams(
        torch.tensor([0, 4, 1, 2]), torch.tensor([0, 0, 3, 2]), torch.zeros(4, dtype=torch.bool)
    )
    padded = F.pad(x.float() / 255, (2, 2, 2, 2), mode=mode)
    ref = torch.stack(
        [
            padded[i, :, oy : oy + 6, ox : ox + 6]
            for i, (oy, ox) in enumerate(zip(params.offset_y.tolist(), params.offset_x.tolist()))
        ]
    )
    assert torch.equal(apply_augment(x, params, spec), ref)


def test_augment_spec_rejects_bad_values():
    with pytest.raises(ValueError, match=r"crop_padding must be an int >= 0, got -1"):
        AugmentSpec(crop_padding=-1)
    with pytest.raises(
        ValueError, match=r"padding_mode must be one of zeros, reflect, replicate, got 'wrap'"
    ):
        AugmentSpec(padding_mode="wrap")
    with pytest.raises(ValueError, match=r"expects a batch \[B, C, H, W\], got shape \(1, 8, 8\)"):
        augment_batch(torch.zeros(1, 8, 8), AugmentSpec(1))


# ------------------------------------------------------------------ in-memory loader
def _index_images(n=50):
    """Images whose pixels and labels both encode their index, to trace what a loader yields."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(
        n, 1, 4, 4
    ).contiguous(), torch.arange(n)


def test_loader_covers_every_index_once_per_epoch():
    x, y = _index_images()
    loader = InMemoryLoader(x, y, 8, seed=0)
    assert len(loader) == 7
    seen = []
    for xb, yb in loader:
        assert torch.equal(xb[:, 0, 0, 0], yb.float() / 255)  # images follow their labels
        seen += yb.tolist()
    assert sorted(seen) == list(range(50)) and seen != list(range(50))
    dropped = InMemoryLoader(x, y, 8, drop_last=True)
    assert len(dropped) == 6 and sum(len(b) for _, b in dropped) == 48


def test_loader_is_deterministic_from_seed_and_epoch(digits):
    def epoch_batches(loader, epoch=None):
        if epoch is not None:
            loader.set_epoch(epoch)
        return [(xb.clone(), yb.clone()) for xb, yb in loader]

    a = InMemoryLoader(digits.train_x, digits.train_y, 256, digits.augment, seed=3)
    b = InMemoryLoader(digits.train_x, digits.train_y, 256, digits.augment, seed=3)
    e0, e0_again = epoch_batches(a, 0), epoch_batches(b, 0)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e0, e0_again))
    e1 = epoch_batches(a, 1)
    assert not torch.equal(e1[0][1], e0[0][1])
    assert torch.equal(epoch_batches(b, 1)[0][0], e1[0][0])
    c = InMemoryLoader(digits.train_x, digits.train_y, 256, digits.augment, seed=4)
    assert not torch.equal(epoch_batches(c, 0)[0][1], e0[0][1])


def test_iterating_twice_gives_the_same_batches_only_set_epoch_moves_on(digits):
    loader = InMemoryLoader(digits.train_x, digits.train_y, 256, digits.augment, seed=3)
    first, again = list(loader), list(loader)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, again))
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[1], first[0][1])
    with pytest.raises(InputError, match=r"epoch must be an int, got float 1.0"):
        loader.set_epoch(1.0)


def test_one_seed_mixer_and_the_loader_stream_of_existing_runs():
    import ipskit.train

    assert ipskit.train.derive_seed is ipskit.data.derive_seed
    # numbers of ipskit.train.derive_seed and InMemoryLoader before the mixer moved to ipskit.data
    assert [ipskit.data.derive_seed(*p) for p in [(0,), (7, 2, 0, 0), (3, 1)]] == [
        7896617691693857887,
        9139555415570476218,
        5712964121383671236,
    ]
    x, y = _index_images()
    loader = InMemoryLoader(x, y, 8, augment=AugmentSpec(1), seed=ipskit.data.derive_seed(3, 0, 1))
    loader.set_epoch(2)
    xb, yb = next(iter(loader))
    assert yb.tolist() == [12, 24, 32, 5, 14, 34, 10, 26]
    assert xb[:, 0].gt(0).sum(dim=(1, 2)).tolist() == [
        9,
        12,
        12,
        12,
        9,
        9,
        12,
        9,
    ]  # the crops drawn


class _RecordingSampler:
    def __init__(self, batches):
        self.batches, self.epochs = batches, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_loader_uses_batch_sampler_and_passes_epoch_on():
    x, y = _index_images()
    sampler = _RecordingSampler([[3, 4, 5, 9, 8, 7], [0, 1, 1, 0]])
    loader = InMemoryLoader(x, y, augment=AugmentSpec(1), batch_sampler=sampler)
    loader.set_epoch(5)
    got = [yb.tolist() for _, yb in loader]
    assert got == sampler.batches and len(loader) == 2 and sampler.epochs[-1] == 5


def test_loader_with_pair_sampler_yields_same_class_halves(digits):
    from ipskit.pairs import SameClassPairSampler

    sampler = SameClassPairSampler(digits.train_y, 32, seed=0, drop_last=True)
    loader = InMemoryLoader(
        digits.train_x, digits.train_y, None, digits.augment, batch_sampler=sampler
    )
    xb, yb = next(iter(loader))
    assert xb.shape == (64, 1, 16, 16) and torch.equal(yb[:32], yb[32:])


def test_standard_dataloader_pipeline_matches_fast_path_format(digits):
    from ipskit.pairs import SameClassPairSampler

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        digits.train_dataset, batch_sampler=SameClassPairSampler(digits.train_targets, 16, seed=0)
    )
    xb, yb = next(iter(loader))
    assert xb.shape == (32, 1, 16, 16) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert float(xb.min()) >= 0 and float(xb.max()) <= 1 and torch.equal(yb[:16], yb[16:])


def test_loader_rejects_bad_input():
    x = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(
        TypeError, match=r"x must be a uint8 tensor \[N, C, H, W\], got torch.float32"
    ):
        InMemoryLoader(torch.zeros(4, 1, 4, 4), torch.zeros(4), 2)
    with pytest.raises(
        InputError, match=r"batch_size must be >= 1 \(or give a batch_sampler\), got 0"
    ):
        InMemoryLoader(x, torch.zeros(4), 0)
    with pytest.raises(InputError, match=r"batch_size must be an int, got bool True"):
        InMemoryLoader(x, torch.zeros(4), True)
    with pytest.raises(InputError, match=r"y must have shape \[4\], got \(3,\)"):
        InMemoryLoader(x, torch.zeros(3), 2)
    assert len(InMemoryLoader(x, torch.zeros(4), np.int64(2))) == 2


# ------------------------------------------------------------------ image folders
def _write_tree(root, counts, size=(12, 10), mode="RGB"):
    """One folder per class; class k's images are filled with grey/colour level 40 * k + i."""
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            level = 40 * k + i
            fill = level if mode == "L" else (level, 255 - level, 7)
            Image.new(mode, size, fill).save(root / name / f"img{i}.png")


def test_imagefolder_single_level_split(tmp_path):
    _write_tree(tmp_path, {"cat": 5, "dog": 10})
    b = load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    assert b.classes == ["cat", "dog"] and b.in_channels == 3 and b.image_size == 8
    assert b.train_x.shape == (12, 3, 8, 8) and b.test_x.shape == (3, 3, 8, 8)
    assert torch.bincount(b.test_y).tolist() == [1, 2]
    assert b.augment.flip and b.augment.crop_padding == 1
    # each decoded image is its flat fill colour: class 1, red channel = 40 + i
    assert torch.equal(
        b.train_x[b.train_y == 1][:, 0].amin(dim=(1, 2)),
        b.train_x[b.train_y == 1][:, 0].amax(dim=(1, 2)),
    )
    assert set(b.train_x[b.train_y == 0][:, 0, 0, 0].tolist()) <= set(range(5))
    assert (
        load_dataset(f"imagefolder:{tmp_path}", image_size=8).test_y.tolist() == b.test_y.tolist()
    )


def test_imagefolder_train_val_layout_and_grayscale(tmp_path):
    _write_tree(tmp_path / "train", {"a": 3, "b": 2}, mode="L")
    _write_tree(tmp_path / "val", {"a": 1, "b": 0}, mode="L")
    b = load_dataset(f"imagefolder:{tmp_path}", image_size=6)
    assert b.in_channels == 1 and b.train_x.shape == (5, 1, 6, 6) and b.test_x.shape == (1, 1, 6, 6)
    assert b.train_y.tolist() == [0, 0, 0, 1, 1] and b.test_y.tolist() == [0]


def test_imagefolder_train_folder_alone_is_split(tmp_path):
    _write_tree(tmp_path / "train", {"a": 5, "b": 5})
    b = load_dataset(f"imagefolder:{tmp_path}", image_size=4)
    assert b.classes == ["a", "b"] and len(b.train_y) == 8 and len(b.test_y) == 2


def test_imagefolder_too_big_for_memory_decodes_lazily(tmp_path):
    _write_tree(tmp_path, {"cat": 4, "dog": 4}, size=(20, 10))
    eager = load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    lazy = load_dataset(f"imagefolder:{tmp_path}", image_size=8, max_memory_bytes=0)
    assert (
        lazy.train_x is None
        and lazy.train_y is None
        and isinstance(lazy.train_dataset, ImageFileDataset)
    )
    assert torch.equal(lazy.train_targets, eager.train_targets)
    x, y = lazy.test_dataset[0]
    assert torch.equal(x, eager.test_x[0].float() / 255) and y == int(eager.test_y[0])
    assert lazy.mean == pytest.approx(eager.mean)
    cache = tmp_path.parent / "lazy-cache"
    load_dataset(f"imagefolder:{tmp_path}", image_size=8, max_memory_bytes=0, cache_dir=cache)
    assert not cache.exists()  # images decoded on access are not cached


@pytest.mark.parametrize(
    "counts, match",
    [
        ({"cat": 3}, r"has 1 class folder \(cat\); classification needs at least 2"),
        (
            {"cat": 3, "dog": 1},
            r"class 'dog' in .* has 1 image\(s\); every class needs at least 2 training images",
        ),
        ({}, r"no class folders in .*"),
    ],
)
def test_imagefolder_bad_trees(tmp_path, counts, match):
    _write_tree(tmp_path, counts)
    with pytest.raises(InputError, match=match):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_missing_path_and_class_mismatch(tmp_path):
    with pytest.raises(InputError, match=r"imagefolder path '.*nowhere' is not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    _write_tree(tmp_path / "train", {"a": 2, "b": 2})
    _write_tree(tmp_path / "val", {"a": 0, "b": 0})
    with pytest.raises(
        InputError, match=r"no held-out images for .*: .*val leaves an empty test set"
    ):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "val").rename(tmp_path / "old")
    _write_tree(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(
        InputError, match=r"class folders differ: .*train has \['a', 'b'\], .*test has \['a', 'c'\]"
    ):
        load_dataset(f"imagefolder:{tmp_path}")


# ------------------------------------------------------------------ image folders: scan, parallel decode, cache
def test_scan_matches_torchvision_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    files = [
        "b/z.png",
        "b/A.PNG",
        "b/notes.txt",
        "b/sub/x.jpeg",
        "b/sub-x/y.webp",
        "b/sub/deeper/w.JPG",
        "a/1.bmp",
        "a/0.tif",
        ".hidden/k.png",
        "empty/readme.md",
    ]
    for f in files:  # os.walk order sorts "sub-x" before "sub/deeper": a depth-first walk would not
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    (tmp_path / "stray.png").write_bytes(b"")  # a file beside the class folders is no sample
    (tmp_path / "a/1.bmp").write_bytes(b"abc")
    classes, paths, stamps, targets, skipped = ipskit.imagefolder._scan_folder(tmp_path)
    ref = ImageFolder(str(tmp_path), allow_empty=True)
    assert classes == ref.classes == [".hidden", "a", "b", "empty"]
    assert paths == [p for p, _ in ref.samples] and targets.tolist() == ref.targets
    assert [st.split("\0")[0] for st in stamps] == [os.path.relpath(p, tmp_path) for p in paths]
    assert (
        stamps[2] == f"a/1.bmp\x003\x00{os.stat(tmp_path / 'a/1.bmp').st_mtime_ns}\x00"
        and skipped == []
    )


def test_parallel_decode_matches_serial_decode(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(11):  # different sizes and aspect ratios, so the resize and crop matter
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (9 + i, 14 + 2 * i, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    serial = torch.stack([ipskit.imagefolder._read_image(p, 8, "RGB") for p in paths])
    parallel, bad = ipskit.imagefolder._decode_images(paths, 8, "RGB", chunk=3, workers=4)
    assert bad == {} and parallel.shape == (11, 3, 8, 8) and parallel.dtype == torch.uint8
    assert torch.equal(parallel, serial)


@pytest.fixture
def decodes(monkeypatch):
    """How many images have been decoded from files so far."""
    count = [0]
    read = ipskit.imagefolder._read_image

    def counting(*args):
        count[0] += 1
        return read(*args)

    monkeypatch.setattr(ipskit.imagefolder, "_read_image", counting)
    return count


def _same_bundle(a, b):
    for field in ("train_x", "test_x", "train_y", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert (a.classes, a.mean, a.std) == (
        b.classes,
        b.mean,
        b.std,
    )  # stats exactly, not approximately


def _noise_tree(root, counts, seed=0):
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png"
            )


def test_second_load_comes_from_the_cache(tmp_path, decodes):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _noise_tree(data / "train", {"cat": 4, "dog": 3})
    _noise_tree(data / "val", {"cat": 2, "dog": 1}, seed=1)
    first = load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=cache)
    assert decodes[0] == 10
    assert [p.suffix for p in cache.iterdir()] == [".npz"]
    again = load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=cache)
    assert decodes[0] == 10  # not one image decoded again
    _same_bundle(again, first)
    _same_bundle(load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=False), first)
    assert decodes[0] == 20
    load_dataset(
        f"imagefolder:{data}", image_size=6, cache_dir=cache
    )  # another size: its own cache
    assert decodes[0] == 30 and len(list(cache.iterdir())) == 2


def _touch(data):
    st = os.stat(data / "cat" / "1.png")
    os.utime(data / "cat" / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _replace(data):
    Image.new("RGB", (10, 12), (9, 99, 199)).save(data / "cat" / "1.png")


def _add(data):
    Image.new("RGB", (10, 12), (1, 2, 3)).save(data / "dog" / "new.png")


def _remove(data):
    (data / "dog" / "0.png").unlink()


@pytest.mark.parametrize("change", [_touch, _replace, _add, _remove])
def test_a_changed_file_rebuilds_the_cache(tmp_path, decodes, change):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _noise_tree(data, {"cat": 6, "dog": 6})
    load_dataset(f"imagefolder:{data}", cache_dir=cache, image_size=8)
    old = list(cache.iterdir())
    change(data)
    decodes[0] = 0
    rebuilt = load_dataset(f"imagefolder:{data}", cache_dir=cache, image_size=8)
    assert decodes[0] == len(rebuilt.train_y) + len(rebuilt.test_y)
    _same_bundle(rebuilt, load_dataset(f"imagefolder:{data}", cache_dir=False, image_size=8))
    new = list(cache.iterdir())
    assert len(new) == 1 and new != old  # the stale cache of this folder is gone


@pytest.mark.parametrize("damage", ["truncate", "flip a pixel byte", "garbage"])
def test_a_corrupt_cache_file_is_rebuilt(tmp_path, decodes, damage):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _noise_tree(data, {"cat": 5, "dog": 5})
    first = load_dataset(f"imagefolder:{data}", cache_dir=cache, image_size=8)
    (file,) = cache.iterdir()
    raw = bytearray(file.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip a pixel byte":
        raw[raw.index(first.train_x[3].numpy().tobytes())] ^= 0xFF
    else:
        raw = b"not a cache" * 10
    file.write_bytes(bytes(raw))
    decodes[0] = 0
    _same_bundle(load_dataset(f"imagefolder:{data}", cache_dir=cache, image_size=8), first)
    assert decodes[0] == 10  # rebuilt from the images ...
    _same_bundle(load_dataset(f"imagefolder:{data}", cache_dir=cache, image_size=8), first)
    assert decodes[0] == 10  # ... and the rewritten cache is read again
    assert list(cache.iterdir()) == [file]


def test_cache_location_and_cache_dir_false(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _noise_tree(data, {"cat": 3, "dog": 3})
    env, xdg, home = tmp_path / "env", tmp_path / "xdg", tmp_path / "home"
    monkeypatch.setenv("IPSKIT_CACHE_DIR", str(env))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("HOME", str(home))
    before = sorted(data.rglob("*"))
    load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=False)
    assert not env.exists() and not xdg.exists() and not home.exists()
    assert sorted(data.rglob("*")) == before  # nothing written beside the images either
    load_dataset(f"imagefolder:{data}", image_size=8)
    assert len(list(env.iterdir())) == 1
    monkeypatch.delenv("IPSKIT_CACHE_DIR")
    load_dataset(f"imagefolder:{data}", image_size=8)
    assert len(list((xdg / "ipskit").iterdir())) == 1
    monkeypatch.delenv("XDG_CACHE_HOME")
    load_dataset(f"imagefolder:{data}", image_size=8)
    assert len(list((home / ".cache" / "ipskit").iterdir())) == 1
    with pytest.raises(
        TypeError,
        match=r"cache_dir must be a folder, None \(the default folder\) or False "
        r"\(no cache\), got True",
    ):
        load_dataset("digits", cache_dir=True)


def _warnings(err):
    return [line for line in err.splitlines() if "warning" in line]


def test_unwritable_cache_dir_warns_in_one_line_and_loads(tmp_path, capsys):
    data = tmp_path / "data"
    _noise_tree(data, {"cat": 3, "dog": 3})
    (tmp_path / "a-file").write_text("")  # a folder inside a file cannot be made, even by root
    b = load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=tmp_path / "a-file" / "cache")
    _same_bundle(b, load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=False))
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith("warning: decoded images not cached (NotADirectoryError: ")
    assert line.endswith("set IPSKIT_CACHE_DIR to a writable folder, or pass cache_dir")


def test_a_failed_cache_write_leaves_no_file_behind(tmp_path, monkeypatch, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _noise_tree(data, {"cat": 3, "dog": 3})

    def disk_full(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    b = load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=cache)
    assert b.train_x.shape == (4, 3, 8, 8)
    assert list(cache.iterdir()) == []
    (line,) = _warnings(capsys.readouterr().err)
    assert "OSError: [Errno 28] No space left on device" in line


# ------------------------------------------------------------------ image folders: symlinks, bit depths, bad files
def _levels(b, label):
    """The flat fill level of every image of class ``label``, train and test."""
    x = torch.cat([b.train_x[b.train_y == label], b.test_x[b.test_y == label]])
    assert torch.equal(x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)))  # flat, all channels equal
    return sorted(x[:, 0, 0, 0].tolist())


def test_a_symlink_loop_is_not_followed(tmp_path, capsys):
    _write_tree(tmp_path, {"a": 6, "b": 6}, mode="L")
    (tmp_path / "a" / "up").symlink_to(
        ".."
    )  # was: 492 samples, b's images as a, train images in the test set
    b = load_dataset(f"imagefolder:{tmp_path}", image_size=4, cache_dir=False)
    assert len(b.train_y) + len(b.test_y) == 12
    assert _levels(b, 0) == [0, 1, 2, 3, 4, 5] and _levels(b, 1) == [40, 41, 42, 43, 44, 45]
    assert "warning: skipped 1 folder symlink(s)" in capsys.readouterr().err


def test_folder_symlinks_that_loop_or_repeat_images_are_skipped(tmp_path, capsys):
    data, outside = tmp_path / "data", tmp_path / "outside"
    _write_tree(data, {"a": 6, "b": 6}, mode="L")  # class a levels 0..5, class b 40..45
    (data / "a" / "up").symlink_to(
        ".."
    )  # a loop back to the dataset: ImageFolder reads b's images as a
    (data / "b" / "also-a").symlink_to(data / "a")  # another class's folder
    (data / "c-copy").symlink_to("b", target_is_directory=True)  # a class that is another class
    for i in range(3):  # a folder outside the dataset, linked from a, then again from b
        outside.mkdir(exist_ok=True)
        Image.new("L", (12, 10), 200 + i).save(outside / f"{i}.png")
    (data / "a" / "extra").symlink_to(outside)
    (data / "b" / "extra").symlink_to(outside)
    b = load_dataset(f"imagefolder:{data}", image_size=4, cache_dir=False)
    assert b.classes == ["a", "b"] and len(b.train_y) + len(b.test_y) == 15
    assert _levels(b, 0) == [0, 1, 2, 3, 4, 5, 200, 201, 202] and _levels(b, 1) == [
        40,
        41,
        42,
        43,
        44,
        45,
    ]
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith(
        f"warning: skipped 4 folder symlink(s) in {data} that lead back into it or to a folder "
        f"already read (the first: {data / 'c-copy'}); their images would be read twice"
    )


def test_train_and_val_symlinks_do_not_leak_images_across_the_split(tmp_path, capsys):
    _write_tree(tmp_path / "train", {"a": 3, "b": 3}, mode="L")
    _write_tree(tmp_path / "val", {"a": 1, "b": 1}, mode="L")
    (tmp_path / "train" / "a" / "peek").symlink_to(tmp_path / "val" / "a")
    b = load_dataset(f"imagefolder:{tmp_path}", image_size=4, cache_dir=False)
    assert len(b.train_y) == 6 and len(b.test_y) == 2
    assert "skipped 1 folder symlink(s)" in capsys.readouterr().err


def _save_png16(path, level16):
    Image.fromarray(np.full((10, 12), level16, dtype=np.uint16)).save(path)  # mode I;16


def test_16_bit_and_float_images_are_scaled_to_8_bits(tmp_path):
    (tmp_path / "deep").mkdir()
    (tmp_path / "float").mkdir()
    for i in range(4):
        _save_png16(tmp_path / "deep" / f"{i}.png", 257 * (100 + i))  # 8-bit level 100 + i
        Image.fromarray(np.full((10, 12), 0.25 * i, dtype=np.float32)).save(
            tmp_path / "float" / f"{i}.tif"
        )
    Image.fromarray(np.full((10, 12), 300.0, dtype=np.float32)).save(
        tmp_path / "float" / "bright.tif"
    )
    with (
        Image.open(tmp_path / "deep" / "0.png") as img,
        Image.open(tmp_path / "float" / "0.tif") as f,
    ):
        assert (img.mode, f.mode) == ("I;16", "F")
    b = load_dataset(f"imagefolder:{tmp_path}", image_size=4, val_fraction=0.25, cache_dir=False)
    assert b.in_channels == 1
    assert _levels(b, 0) == [100, 101, 102, 103]  # PIL's convert("L") gives 255 for all of them
    assert _levels(b, 1) == [0, 64, 128, 191, 255]  # [0, 1] floats by 255; 300.0 clipped to 255
    from ipskit.data import image_from_bytes

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 257 * 60, dtype=np.uint16)).save(buf, format="PNG")
    x = image_from_bytes(buf.getvalue(), in_channels=1, size=4)  # an upload gets the same scaling
    assert torch.allclose(x, torch.full((1, 1, 4, 4), 60 / 255))


def test_a_folder_with_any_colour_image_is_rgb(tmp_path):
    _write_tree(tmp_path, {"a": 4}, mode="L")  # the first file is grey ...
    _write_tree(tmp_path / "b-colour", {"b": 4}, mode="RGB")  # ... and a later class in colour
    (tmp_path / "b-colour" / "b").rename(tmp_path / "b")
    (tmp_path / "b-colour").rmdir()
    b = load_dataset(f"imagefolder:{tmp_path}", image_size=4, cache_dir=False)
    assert b.in_channels == 3 and b.train_x.shape[1] == 3
    grey, colour = b.train_x[b.train_y == 0], b.train_x[b.train_y == 1]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(
        grey[:, 1], grey[:, 2]
    )  # grey stays grey
    assert colour[:, 0, 0, 0].tolist() != colour[:, 1, 0, 0].tolist()  # colour is not made grey
    lazy = load_dataset(f"imagefolder:{tmp_path}", image_size=4, max_memory_bytes=0)
    assert lazy.in_channels == 3 and lazy.train_dataset[0][0].shape == (3, 4, 4)


def _png_header(w, h):
    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buf, format="JPEG"
    )
    return buf.getvalue()[: len(buf.getvalue()) // 2]


BAD_FILES = {  # name: (file name, bytes, the problem in the message)
    "text": (
        "notes.png",
        b"these are my notes, not a picture\n",
        r"not an image file PIL can read",
    ),
    "empty": ("empty.png", b"", r"the file is empty \(0 bytes\)"),
    "truncated": (
        "cut.jpg",
        None,
        r"cannot be decoded, truncated or damaged \(OSError: image file is truncated",
    ),
    "bomb": (
        "bomb.png",
        _png_header(30000, 30000),
        r"too large to decode \(Image size \(900000000 pixels\) exceeds",
    ),
    "big": (
        "big.png",
        _png_header(10000, 10000),
        r"10000x10000 pixels is more than the 89478485 PIL decodes",
    ),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_one_line_naming_it_or_skipped_on_request(tmp_path, capsys, kind):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _noise_tree(data, {"cat": 5, "dog": 5})
    name, raw, problem = BAD_FILES[kind]
    (data / "dog" / name).write_bytes(_truncated_jpeg() if raw is None else raw)
    with pytest.raises(
        InputError,
        match=rf"^bad image file {data / 'dog' / name}: {problem}.*; fix or remove it, "
        r"or skip such files \(--skip-bad-files, skip_bad_files=True\)$",
    ) as e:
        load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=cache)
    assert "\n" not in str(e.value)
    assert (
        not cache.exists() or list(cache.iterdir()) == []
    )  # no cache, whole or half, of a failed load
    capsys.readouterr()
    skipped = load_dataset(
        f"imagefolder:{data}", image_size=8, cache_dir=cache, skip_bad_files=True
    )
    _same_bundle(
        skipped,
        load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=False, skip_bad_files=True),
    )
    assert len(skipped.train_y) + len(skipped.test_y) == 10 and skipped.train_x.shape[1] == 3
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 2 and lines[0] == lines[1]  # one line per load
    assert lines[0].startswith(
        f"warning: skipped 1 bad image file(s) of 11 in {data} (the first: {data / 'dog' / name}: "
    )
    # from the cache: the same images, the same warning; without the flag, the same error
    again = load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=cache, skip_bad_files=True)
    _same_bundle(again, skipped)
    assert _warnings(capsys.readouterr().err) == lines[:1]
    with pytest.raises(InputError, match=rf"^bad image file {data / 'dog' / name}: {problem}"):
        load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=cache)
    if kind != "truncated":  # too big for memory: the headers are still read at load
        lazy = load_dataset(
            f"imagefolder:{data}", image_size=8, max_memory_bytes=0, skip_bad_files=True
        )
        assert len(lazy.train_dataset) + len(lazy.test_dataset) == 10
        with pytest.raises(InputError, match=rf"^bad image file {data / 'dog' / name}: {problem}"):
            load_dataset(f"imagefolder:{data}", image_size=8, max_memory_bytes=0)


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_broken_file_symlink_is_a_bad_file(tmp_path, capsys, kind):
    """A file symlink whose target is missing (or that points at itself) is one line naming it,
    or skipped and counted like any bad file (it was a FileNotFoundError / OSError traceback)."""
    data, cache, gone = tmp_path / "data", tmp_path / "cache", tmp_path / "gone.png"
    _noise_tree(data / "train", {"a": 5, "b": 5})
    link = data / "train" / "a" / "link.png"
    if kind == "dangling":
        os.symlink(gone, link)
        problem = re.escape(f"the symlink's target {gone} is missing")
    else:
        os.symlink(link.name, link)
        problem = (
            r"the symlink to link\.png cannot be followed \(Too many levels of symbolic links\)"
        )
    for memory in ({}, {"max_memory_bytes": 0}):  # decoded now, or on access
        with pytest.raises(
            InputError,
            match=rf"^bad image file {re.escape(str(link))}: {problem}; fix or remove it, "
            r"or skip such files \(--skip-bad-files, skip_bad_files=True\)$",
        ):
            load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=cache, **memory)
        capsys.readouterr()
        skipped = load_dataset(
            f"imagefolder:{data}", image_size=8, cache_dir=cache, skip_bad_files=True, **memory
        )
        assert len(skipped.train_targets) + len(skipped.test_targets) == 10
        (line,) = _warnings(capsys.readouterr().err)
        assert re.fullmatch(
            rf"warning: skipped 1 bad image file\(s\) of 11 in {re.escape(str(data))} "
            rf"\(the first: {re.escape(str(link))}: {problem}\)",
            line,
        )
    if kind == "dangling":  # the target appears: the cache is not reused, the link is read
        Image.new("RGB", (12, 10), (1, 2, 3)).save(gone)
        bundle = load_dataset(f"imagefolder:{data}", image_size=8, cache_dir=cache)
        assert len(bundle.train_y) + len(bundle.test_y) == 11


def test_skipping_may_leave_a_class_too_small(tmp_path):
    _noise_tree(tmp_path, {"cat": 4, "dog": 2})
    (tmp_path / "dog" / "0.png").write_bytes(b"")
    with pytest.raises(
        InputError, match=r"class 'dog' in .* has 1 image\(s\) that can be read; every class needs"
    ):
        load_dataset(f"imagefolder:{tmp_path}", image_size=8, skip_bad_files=True)


def test_parallel_decode_reports_the_first_bad_file_in_order(tmp_path, monkeypatch):
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (9, 7), (i, 2 * i, 3 * i)).save(paths[-1])
    for i in (5, 9):
        (tmp_path / f"{i}.png").write_bytes(b"broken")
    read, started = ipskit.imagefolder._read_image, threading.Event()

    def slow_start(path, *args):  # the chunk with file 5 starts last: file 9 fails first in time
        if path == paths[4]:
            started.wait(5)
            time.sleep(0.2)
        elif path == paths[8]:
            started.set()
        return read(path, *args)

    monkeypatch.setattr(ipskit.imagefolder, "_read_image", slow_start)
    for _ in range(3):
        with pytest.raises(
            InputError, match=rf"^bad image file {paths[5]}: not an image file PIL can read"
        ):
            ipskit.imagefolder._decode_images(paths, 4, "RGB", chunk=2, workers=4)
        started.clear()
    x, bad = ipskit.imagefolder._decode_images(paths, 4, "RGB", chunk=2, workers=4, skip_bad=True)
    assert list(bad) == [5, 9] and all(isinstance(e, InputError) for e in bad.values())
    good = [i for i in range(12) if i not in bad]
    assert torch.equal(x[good], torch.stack([read(paths[i], 4, "RGB") for i in good]))


# ------------------------------------------------------------------ CIFAR
def test_cifar_offline_gives_one_clear_line(tmp_path, monkeypatch):
    def no_network(self):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    with pytest.raises(
        DatasetUnavailableError,
        match=r"cifar10 is missing or corrupted in .* \(URLError: .*name resolution.*\); "
        r"put cifar-10-python.tar.gz \(from https://.*\) or its extracted folder "
        r"cifar-10-batches-py/ into .* and run again",
    ) as err:
        load_dataset("cifar10", root=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(
        DatasetUnavailableError, match=r"cifar100 .*\(download=False\); put cifar-100-python.tar.gz"
    ):
        load_dataset("cifar100", root=tmp_path, download=False)


def test_cifar_from_extracted_folder(tmp_path, monkeypatch):
    # a miniature cifar-10-batches-py in torchvision's pickle format (md5 check bypassed)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [0, 1, 0, 1] if k < 5 else [1, 0, 1, 0]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile"]}, f)
    b = load_dataset("cifar10", root=tmp_path, download=False)
    assert b.classes == ["airplane", "automobile"] and b.in_channels == 3 and b.image_size == 32
    assert b.train_x.shape == (20, 3, 32, 32) and b.test_y.tolist() == [1, 0, 1, 0]
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0].reshape(3, 32, 32)
    assert np.array_equal(b.train_x[0].numpy(), first)  # channels first, not scrambled
    assert b.augment == AugmentSpec(crop_padding=4, flip=True)
    small = load_dataset("cifar10", root=tmp_path, image_size=16, download=False)
    assert small.train_x.shape == (20, 3, 16, 16) and small.augment.crop_padding == 2


# ------------------------------------------------------------------ one image from bytes (uploads)
def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_image_from_bytes_prepares_one_model_input():
    from ipskit.data import image_from_bytes

    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 10:70] = 255  # a white centre band, wider than the centre crop
    x = image_from_bytes(_png(Image.fromarray(arr)), in_channels=3, size=8)
    assert x.shape == (1, 3, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) > 0.95  # shorter side to 8 (16x8), centre 8x8 crop: all band
    assert float(image_from_bytes(_png(Image.fromarray(255 - arr)), 3, 8).max()) < 0.05
    grey = image_from_bytes(_png(Image.fromarray(arr)), in_channels=1, size=8, invert=True)
    assert grey.shape == (1, 1, 8, 8) and float(grey.max()) < 0.05


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        (b"not an image at all", {}, "not an image that can be read"),
        (b"\0" * (3 * 2**19), {"max_bytes": 2**20}, "the file is 1.5 MB; the limit is 1 MB"),
        ("wide", {"max_side": 64}, "100x10 pixels; the limit is 64 pixels a side"),
        ("wide", {"in_channels": 4}, "in_channels must be 1"),
        ("wide", {"in_channels": True}, "in_channels must be an int, got bool True"),
        ("wide", {"size": 0}, "size must be >= 1, got 0"),
    ],
)
def test_image_from_bytes_refuses_bad_files_in_one_line(data, kwargs, message):
    from ipskit.data import image_from_bytes

    if data == "wide":
        data = _png(Image.new("RGB", (100, 10)))
    kwargs = {"in_channels": 3, "size": 8, **kwargs}
    with pytest.raises(InputError, match=message) as e:
        image_from_bytes(data, **kwargs)
    assert "\n" not in str(e.value)
