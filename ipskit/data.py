"""Datasets, batch augmentation and the in-memory fast path.

``load_dataset(name)`` returns a :class:`DatasetBundle`: class names, channel statistics, the
training labels (read without decoding an image, which is what the pair sampler of
IPS, Choi et al. 2025, needs), torch Datasets for the standard DataLoader pipeline and, when
the data fits in memory, the raw uint8 tensors for :class:`InMemoryLoader`.

Datasets:

- ``digits`` (default, offline): scikit-learn's 1,797 8x8 handwritten digits, pixel values
  0..16 rescaled to 0..255, bilinearly upscaled to 16x16 by default (``image_size=8`` keeps
  them native) so that patch grids of 2, 4 and 8 cells are all meaningful. Split: a fixed
  stratified split, ``round(0.2 * n_c)`` test images per class ``c`` drawn with ``seed`` = 0,
  which gives 1,438 train / 359 test images, the same on every machine.
- ``cifar10`` / ``cifar100``: torchvision's CIFAR under ``root`` (official 50k/10k split),
  downloaded when online; offline, put the archive or its extracted folder under ``root``.
- ``imagefolder:PATH``: one folder per class, either ``PATH/train/<class>/`` and
  ``PATH/val/<class>/`` (or ``PATH/test/``), or ``PATH/<class>/`` (or ``PATH/train/<class>/``
  alone) with a seeded stratified held-out split. Images are resized (shorter side) and centre-cropped to ``image_size``
  (default 32); they are decoded into memory when they fit in ``max_memory_bytes``, by a thread
  pool the first time, and kept in a cache file (plain uncompressed ``.npz``: the uint8 images and
  the channel statistics) under ``cache_dir``, by default ``$IPSKIT_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/ipskit``, else ``~/.cache/ipskit``. The cache is keyed by every file's
  relative path, size and modification time (and the image size and the classes), so adding,
  replacing or touching an image rebuilds it; a second load of CIFAR-10 as 60k JPEGs takes about
  a second instead of ~15 s. A folder is RGB if any of its images is in colour, greyscale
  otherwise (read from every file's header); 16-bit and float images are scaled to 8 bits by
  their range. A file that cannot be decoded (not an image, empty, truncated, a decompression
  bomb) stops the load with one line naming it, or is skipped with ``skip_bad_files=True``.
  Folder symlinks are followed, except those that lead back into the dataset or to a folder
  already read (a loop, or images counted twice or under another class): those are skipped with
  one warning line.

Augmentation (training only, ``bundle.augment``, see ``ipskit.augment``, re-exported here) is
the CIFAR recipe: a random crop after padding by ``max(1, round(S / 8))`` pixels (4 px at
32x32, 2 px at 16x16, 1 px at 8x8) and, for natural images only, a random horizontal flip;
never a flip for digits (a mirrored 2 is not a 2). It runs on whole batches on the device.

Usage::

    bundle = load_dataset("digits")
    loader = InMemoryLoader(bundle.train_x, bundle.train_y, 128, augment=bundle.augment, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:          # x: [B, 1, 16, 16] float in [0, 1], y: [B] int64
            ...
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import tarfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ipskit.augment import (
    AugmentParams,
    AugmentSpec,
    apply_augment,
    augment_batch,
    draw_augment,
    to_float01,
)
from ipskit.checks import InputError, check_bool, check_float, check_int
from ipskit.runs import atomic_write

__all__ = [
    "DATASETS",
    "AugmentParams",
    "AugmentSpec",
    "DatasetBundle",
    "DatasetUnavailableError",
    "ImageFileDataset",
    "InMemoryLoader",
    "TensorImageDataset",
    "apply_augment",
    "augment_batch",
    "derive_seed",
    "draw_augment",
    "image_from_bytes",
    "load_dataset",
    "stratified_split",
    "to_float01",
]

DATASETS = ("digits", "cifar10", "cifar100")  # plus "imagefolder:PATH"


class DatasetUnavailableError(RuntimeError):
    """A dataset's files are missing and cannot be downloaded; the message says where to put them."""


# ------------------------------------------------------------------ torch Datasets
class TensorImageDataset(Dataset):
    """In-memory images for the standard DataLoader path.

    Args:
        x: ``[N, C, H, W]`` uint8; y: ``[N]`` int64; augment: applied per item with torch's
            global RNG (a DataLoader seeds it per worker from its own ``generator``).
    Items: ``(float [C, H, W] in [0, 1], int label)``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: AugmentSpec | None = None):
        self.x, self.targets, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return augment_batch(self.x[i : i + 1], self.augment)[0], int(self.targets[i])


class ImageFileDataset(Dataset):
    """Images decoded from files on each access (for image folders too large for memory).

    Args:
        paths: image files; targets: ``[N]`` int64; image_size: side S of the resized square;
        mode: PIL mode ``"L"`` or ``"RGB"``; augment: as in :class:`TensorImageDataset`.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: torch.Tensor,
        image_size: int,
        mode: str,
        augment: AugmentSpec | None = None,
    ):
        self.paths, self.targets, self.image_size, self.mode, self.augment = (
            list(paths),
            targets,
            image_size,
            mode,
            augment,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x = _read_image(self.paths[i], self.image_size, self.mode)
        return augment_batch(x[None], self.augment)[0], int(self.targets[i])


_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # PIL modes of 16-bit greyscale files
_GREY_MODES = ("1", "L", "LA", "La", "F") + _SIXTEEN_BIT  # a folder of these alone stays 1-channel


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale as 8-bit ``L``, scaled by the type's range (PIL's ``convert("L")``
    clips them to 0..255, which turns a 16-bit image into 0s and 255s): 16-bit by 65535; float
    by 1 when its maximum is at most 1 (a [0, 1] image), else clipped to 0..255."""
    if img.mode in _SIXTEEN_BIT:
        a = np.asarray(img, dtype=np.float64).clip(0, 65535) * (255 / 65535)
    elif img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        a = a * 255 if a.max() <= 1 else a
    else:
        return img
    return Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8))


def _fit_image(img: Image.Image, size: int, mode: str) -> torch.Tensor:
    """Convert to ``mode``, resize the shorter side to ``size``, centre-crop: uint8 ``[C, S, S]``."""
    img = _to_8bit(img).convert(mode)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    t = torch.from_numpy(
        np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()
    )
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


class _BadImageFile(InputError):
    """An image file that cannot be used; ``path`` and ``problem`` for the skip warning."""

    def __init__(self, path: str, problem: str):
        super().__init__(
            f"bad image file {path}: {problem}; fix or remove it, or load with skip_bad_files=True"
        )
        self.path, self.problem = path, problem


# what PIL raises for a file that is not a (whole) image: struct.error and EOFError from some
# plugins, SyntaxError and ValueError for malformed headers; UnidentifiedImageError is an OSError
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


def _bad_image(path: str, err: Exception) -> _BadImageFile:
    if isinstance(err, UnidentifiedImageError):
        try:
            empty = os.path.getsize(path) == 0
        except OSError:
            empty = False
        problem = "the file is empty (0 bytes)" if empty else "not an image file PIL can read"
    elif isinstance(err, Image.DecompressionBombError):
        problem = f"too large to decode ({err})"
    else:
        problem = f"cannot be decoded, truncated or damaged ({type(err).__name__}: {err})"
    return _BadImageFile(path, " ".join(problem.split()))


def _probe_image(path: str) -> str:
    """The PIL mode of an image file, read from its header (no pixels are decoded).

    Raises:
        InputError: not an image, or more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    try:
        with Image.open(path) as img:
            (w, h), mode = img.size, img.mode
    except _PIL_ERRORS as err:
        raise _bad_image(path, err) from None
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        raise _BadImageFile(
            path,
            f"{w}x{h} pixels is more than the {Image.MAX_IMAGE_PIXELS} PIL decodes "
            "without suspecting a decompression bomb",
        )
    return mode


def _read_image(path: str, size: int, mode: str) -> torch.Tensor:
    """Decode an image file the way ``imagefolder`` data is prepared: uint8 ``[C, size, size]``.

    Raises:
        InputError: one line naming the file, if it cannot be decoded.
    """
    img = None
    try:
        img = Image.open(path)
        img.load()
    except _PIL_ERRORS as err:
        if img is not None:
            img.close()
        raise _bad_image(path, err) from None
    with img:
        return _fit_image(img, size, mode)


MAX_IMAGE_BYTES = 5 * 2**20  # image_from_bytes refuses larger files
MAX_IMAGE_SIDE = 4096  # ... and images wider or taller than this (decompression bombs)


def image_from_bytes(
    data: bytes,
    in_channels: int,
    size: int,
    invert: bool = False,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_side: int = MAX_IMAGE_SIDE,
) -> torch.Tensor:
    """An image file's bytes (an upload, say) as one model input, prepared like ``imagefolder``
    data: shorter side resized to ``size``, centre-cropped.

    Args:
        data: the file's bytes (PNG, JPEG, BMP, GIF, WebP ...).
        in_channels: 1 (greyscale) or 3 (RGB), the model's input channels.
        size: the side in pixels the model was trained at.
        invert: ``1 - x``, for dark ink on light paper when the model saw light ink on dark
            (the digits).
        max_bytes, max_side: larger files or images are refused before they are decoded.
    Returns:
        float ``[1, C, size, size]`` in [0, 1].
    Raises:
        InputError: too large, not an image, or an unsupported ``in_channels``.
    """
    if check_int("in_channels", in_channels) not in (1, 3):
        raise InputError(f"in_channels must be 1 (greyscale) or 3 (RGB), got {in_channels}")
    size = check_int("size", size, minimum=1)
    if len(data) > max_bytes:
        raise InputError(
            f"the file is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:g} MB"
        )
    try:
        with Image.open(io.BytesIO(data)) as img:  # opening reads the header only
            w, h = img.size
            if max(w, h) > max_side:
                raise InputError(
                    f"the image is {w}x{h} pixels; the limit is {max_side} pixels a side"
                )
            img.load()
            x = to_float01(_fit_image(img, size, "L" if in_channels == 1 else "RGB"))
    except (
        OSError,
        SyntaxError,
        Image.DecompressionBombError,
    ):  # UnidentifiedImageError is an OSError
        raise InputError(
            "the file is not an image that can be read (PNG, JPEG, BMP, GIF or WebP are accepted)"
        ) from None
    return (1.0 - x if invert else x)[None]


# ------------------------------------------------------------------ the bundle
@dataclass
class DatasetBundle:
    """Everything a run needs to know about its data.

    Images from ``train_dataset``/``test_dataset`` and from :class:`InMemoryLoader` are float
    ``[C, H, W]`` in [0, 1]; ``mean``/``std`` (per channel, [0, 1] units, from the training
    images) go into the model, which normalises inside. ``train_x``/``test_x`` (uint8
    ``[N, C, H, W]``) and ``train_y``/``test_y`` (int64 ``[N]``) are ``None`` when the data is
    not held in memory; ``train_targets``/``test_targets`` are always there.
    """

    name: str
    classes: list[str]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_targets: torch.Tensor
    test_targets: torch.Tensor
    train_dataset: Dataset
    test_dataset: Dataset
    augment: AugmentSpec
    train_x: torch.Tensor | None = None
    train_y: torch.Tensor | None = None
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)


def stratified_split(
    labels: torch.Tensor, test_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split: ``round(test_fraction * n_c)`` test items per class, at most ``n_c - 2``.

    At least two training items stay in every class so that same-class pairs exist.

    Args:
        labels: ``[N]`` int labels.

    Returns:
        ``(train_idx, test_idx)``, sorted int64 index tensors.
    """
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = min(int(test_fraction * len(idx) + 0.5), max(0, len(idx) - 2))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _channel_stats(
    x: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 ``[N, C, H, W]``."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        v = x[i : i + chunk].double()
        s += v.sum(dim=(0, 2, 3))
        s2 += v.square().sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def _resize_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` (uint8 0..255 or float in 0..255) to uint8 ``[N, C, size, size]``."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.round().clamp(0, 255).to(torch.uint8) if x.is_floating_point() else x
    out = []
    for i in range(0, len(x), chunk):
        v = F.interpolate(
            x[i : i + chunk].float(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=size < x.shape[-1],
        )
        out.append(v.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _bundle_in_memory(
    name, classes, train_x, train_y, test_x, test_y, augment, stats=None
) -> DatasetBundle:
    mean, std = stats or _channel_stats(train_x)
    return DatasetBundle(
        name=name,
        classes=list(classes),
        in_channels=train_x.shape[1],
        image_size=train_x.shape[-1],
        mean=mean,
        std=std,
        train_targets=train_y,
        test_targets=test_y,
        train_dataset=TensorImageDataset(train_x, train_y, augment),
        test_dataset=TensorImageDataset(test_x, test_y, None),
        augment=augment,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
    )


# ------------------------------------------------------------------ loaders per dataset
def _load_digits(image_size: int, val_fraction: float, seed: int) -> DatasetBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = _resize_uint8(
        torch.from_numpy(d.images).float().mul(255.0 / 16.0)[:, None], image_size
    )  # [1797, 1, S, S]
    y = torch.from_numpy(d.target).long()
    tr, te = stratified_split(y, val_fraction, seed)
    classes = [str(i) for i in range(10)]
    return _bundle_in_memory(
        "digits", classes, x[tr], y[tr], x[te], y[te], AugmentSpec.for_size(image_size, flip=False)
    )


def _load_cifar(name: str, root: Path, image_size: int, download: bool) -> DatasetBundle:
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import extract_archive

    cls = CIFAR10 if name == "cifar10" else CIFAR100

    def build(dl: bool):
        return cls(str(root), train=True, download=dl), cls(str(root), train=False, download=dl)

    try:
        train, test = build(False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        archive, reason = root / cls.filename, "download=False"
        try:
            if (
                archive.is_file()
            ):  # the archive was put there by hand: extract it, no network needed
                extract_archive(str(archive), str(root))
                train, test = build(False)
            elif download:
                root.mkdir(parents=True, exist_ok=True)
                train, test = build(True)
            else:
                raise DatasetUnavailableError
        except (OSError, RuntimeError, EOFError, tarfile.TarError) as err:
            if not isinstance(err, DatasetUnavailableError):
                reason = " ".join(f"{type(err).__name__}: {err}".split())[:160]
            raise DatasetUnavailableError(
                f"{name} is missing or corrupted in {root}/ and could not be fetched ({reason}); put {cls.filename} "
                f"(from {cls.url}) or its extracted folder {cls.base_folder}/ into {root}/ and run again"
            ) from None
    tx = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous()  # [N, 3, 32, 32]
    vx = torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous()
    return _bundle_in_memory(
        name,
        train.classes,
        _resize_uint8(tx, image_size),
        torch.tensor(train.targets),
        _resize_uint8(vx, image_size),
        torch.tensor(test.targets),
        AugmentSpec.for_size(image_size, flip=True),
    )


# ------------------------------------------------------------------ image folders: scan, parallel decode, cache
IMG_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)  # ImageFolder's
_CACHE_VERSION = (
    2  # part of every cache key: bump it when decoding changes and old cache files are ignored
)


def _inside(a: str, b: str) -> bool:
    """Real path ``a`` is ``b`` or lies inside it."""
    return a == b or a.startswith(os.path.join(b, ""))


def _scan_folder(path: Path, dataset: Path | None = None, walked: list | None = None):
    """torchvision ImageFolder's classes and samples (same order, same extensions), read with
    ``os.scandir``: no torchvision import (~1 s), and each file's size and mtime come with it.

    Folder symlinks are followed as ImageFolder follows them, except one whose real folder
    overlaps ``dataset`` (default ``path``: the folder itself, one above it or one inside it) or
    a folder already followed (listed in ``walked``, real paths, shared across the scans of one
    dataset): ImageFolder loops through ``a/up -> ..`` until the path is too long, reading every
    class's images again under ``a``.

    Returns:
        ``(classes, paths, stamps, targets, skipped)``; ``stamps[i]`` is
        ``"relpath\\0size\\0mtime_ns\\0"`` of ``paths[i]`` (relative to ``path``), for the cache
        key; ``targets`` is ``[N]`` int64; ``skipped`` lists the folder symlinks not followed.
    """
    top = os.path.join(str(path), "")
    home = os.path.realpath(dataset or path)
    walked = [] if walked is None else walked
    skipped = []

    def follow(link: str) -> bool:
        real = os.path.realpath(link)
        if any(_inside(real, w) or _inside(w, real) for w in [home, *walked]):
            skipped.append(link)
            return False
        walked.append(real)
        return True

    try:
        with os.scandir(path) as it:
            entries = sorted((e for e in it if e.is_dir()), key=lambda e: e.name)
    except FileNotFoundError:
        entries = []
    classes = [e.name for e in entries if not e.is_symlink() or follow(e.path)]
    if not classes:
        raise InputError(f"no class folders in {path}; expected {path}/<class>/<image> files")
    paths, stamps, targets = [], [], []
    for c, name in enumerate(classes):
        images, todo = (
            {},
            [os.path.join(top, name)],
        )  # folder -> its image entries, as os.walk(followlinks=True)
        while todo:
            folder = todo.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(
                        it, key=lambda e: e.name
                    )  # which of two links to a folder wins: fixed
            except OSError:  # os.walk skips unreadable folders too
                continue
            todo += [
                e.path for e in entries if e.is_dir() and (not e.is_symlink() or follow(e.path))
            ]
            images[folder] = [
                e for e in entries if not e.is_dir() and e.name.lower().endswith(IMG_EXTENSIONS)
            ]
        for folder in sorted(images):  # ImageFolder sorts os.walk's (folder, dirs, files) tuples
            for e in images[folder]:
                st = e.stat()
                paths.append(e.path)
                stamps.append(f"{e.path[len(top) :]}\0{st.st_size}\0{st.st_mtime_ns}\0")
                targets.append(c)
    return classes, paths, stamps, torch.tensor(targets, dtype=torch.long), skipped


def _each_file(
    work, n: int, desc: str, skip_bad: bool, chunk: int = 256, workers: int | None = None
) -> dict:
    """Call ``work(i)`` for ``i`` in ``range(n)`` on a thread pool (PIL releases the GIL while it
    decodes and resizes), in chunks, with a progress bar.

    A bad file (``work`` raises InputError) is collected when ``skip_bad``; otherwise the first
    bad file in index order is raised: chunks after the failing one stop, the ones before it
    finish (one of them may hold an earlier bad file), and the pool is shut down before the
    error leaves, so no thread is still writing.

    Returns:
        ``{index: InputError}`` of the bad files, in index order (empty unless ``skip_bad``).
    """
    bad, failed, lock = {}, [n], threading.Lock()

    def run(start: int) -> int:
        stop = min(start + chunk, n)
        for i in range(start, stop):
            if failed[0] < start:  # an earlier chunk failed: its error is the one reported
                return 0
            try:
                work(i)
            except InputError as err:
                if not skip_bad:
                    with lock:
                        failed[0] = min(failed[0], i)
                    raise
                bad[i] = err
        return stop - start

    pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)
    try:
        with tqdm(total=n, desc=desc, unit="img", leave=False) as bar:
            for done in pool.map(run, range(0, n, chunk)):
                bar.update(done)
    finally:
        pool.shutdown(cancel_futures=True)
    return dict(sorted(bad.items()))


def _probe_images(paths: Sequence[str], skip_bad: bool = False, **pool) -> tuple[list, dict]:
    """Every file's PIL mode from its header: ``(modes, bad)``, ``modes[i]`` None for bad files."""
    modes = [None] * len(paths)

    def probe(i: int) -> None:
        modes[i] = _probe_image(paths[i])

    return modes, _each_file(probe, len(paths), "reading image headers", skip_bad, **pool)


def _decode_images(
    paths: Sequence[str],
    size: int,
    mode: str,
    chunk: int = 256,
    workers: int | None = None,
    skip_bad: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Decode image files as ``imagefolder`` data, in order, on a thread pool.

    Returns:
        ``(x, bad)``: uint8 ``[N, C, size, size]``, equal to stacking ``_read_image`` (zeros for
        a bad file), and ``{index: InputError}`` of the files that could not be decoded.
    Raises:
        InputError: the first bad file, unless ``skip_bad``.
    """
    out = torch.zeros((len(paths), 1 if mode == "L" else 3, size, size), dtype=torch.uint8)

    def decode(i: int) -> None:
        out[i] = _read_image(paths[i], size, mode)

    return out, _each_file(decode, len(paths), "decoding images", skip_bad, chunk, workers)


def _cache_root(cache_dir) -> Path | None:
    """The cache folder ``load_dataset(cache_dir=...)`` means; None when caching is off."""
    if cache_dir is False:
        return None
    if cache_dir is None:
        if os.environ.get("IPSKIT_CACHE_DIR"):
            return Path(os.environ["IPSKIT_CACHE_DIR"]).expanduser()
        xdg = os.environ.get("XDG_CACHE_HOME")
        return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ipskit"
    return Path(cache_dir).expanduser()


def _cache_key(
    image_size: int, classes: list[str], train_stamps: list[str], test_stamps: list[str]
) -> str:
    """SHA-256 of everything the decoded images depend on: any changed file gives a new key (the
    PIL mode is decided by the files, so they fix it too)."""
    h = hashlib.sha256(
        json.dumps(
            [_CACHE_VERSION, image_size, classes, len(train_stamps), len(test_stamps)]
        ).encode()
    )
    for stamps in (train_stamps, test_stamps):
        h.update("".join(stamps).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _cache_slot(path: Path, image_size: int, val_fraction: float, seed: int) -> str:
    """File-name prefix for one folder and its settings: a newer cache of it replaces the older one."""
    folder = path.resolve()
    digest = hashlib.sha256(
        json.dumps([str(folder), image_size, val_fraction, seed]).encode()
    ).hexdigest()
    label = "".join(c if c.isalnum() or c in "._-" else "_" for c in folder.name)[
        :40
    ]  # readable, a safe name
    return f"imagefolder-{label}-{image_size}px-{digest[:12]}-"


def _read_cache(file: Path, key: str):
    """``(train_x, test_x, (mean, std), bad)`` from ``file`` if it holds ``key``, else None; ``bad``
    is ``{index: error}`` of the files skipped when it was written (left out of ``train_x`` and
    ``test_x``). The key fixes the shapes; zip's CRC-32 of every array catches a damaged byte."""
    try:
        with np.load(file, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            train_x, test_x, stats = z["train_x"], z["test_x"], z["stats"]
            bad = {
                int(i): _BadImageFile(str(p), str(q))
                for i, p, q in zip(z["bad_index"], z["bad_path"], z["bad_problem"])
            }
    except (
        Exception
    ):  # missing, truncated, corrupt or foreign: rebuilt from the images, the source of truth
        return None
    return (
        torch.from_numpy(train_x),
        torch.from_numpy(test_x),
        (tuple(stats[0].tolist()), tuple(stats[1].tolist())),
        bad,
    )


def _write_cache(
    file: Path, key: str, train_x: torch.Tensor, test_x: torch.Tensor, stats, bad: dict
) -> None:
    """Save the decoded images atomically as a plain uncompressed ``.npz``; drop older caches of the
    same folder. An unwritable folder costs one warning line, not the load."""
    arrays = dict(
        key=np.array(key),
        train_x=train_x.numpy(),
        test_x=test_x.numpy(),
        stats=np.array(stats, dtype=np.float64),
        bad_index=np.array(list(bad), dtype=np.int64),
        bad_path=np.array([e.path for e in bad.values()], dtype=str),
        bad_problem=np.array([e.problem for e in bad.values()], dtype=str),
    )
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(file, lambda f: np.savez(f, **arrays))
    except OSError as err:
        sys.stderr.write(
            f"warning: decoded images not cached ({type(err).__name__}: {err}); "
            "set IPSKIT_CACHE_DIR to a writable folder, or pass cache_dir\n"
        )
        return
    slot = file.name[: file.name.rindex("-") + 1]
    for old in file.parent.iterdir():
        if old.name.startswith(slot) and old.suffix == ".npz" and old.name != file.name:
            old.unlink(missing_ok=True)


def _check_classes(classes: list[str], train_y: torch.Tensor, where, why: str = "") -> None:
    """Every class keeps at least 2 training images (IPS pairs two images of the same class)."""
    counts = torch.bincount(train_y, minlength=len(classes))
    if int(counts.min()) < 2:
        c = int(counts.argmin())
        raise InputError(
            f"class {classes[c]!r} in {where} has {int(counts[c])} image(s){why}; every class needs "
            "at least 2 training images (IPS pairs two images of the same class)"
        )


def _drop_bad(
    bad: dict,
    n_train: int,
    train_y: torch.Tensor,
    test_y: torch.Tensor,
    classes,
    where,
    path,
    skip_bad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the bad files ``{index into train + test: error}``: raise the first one unless
    ``skip_bad``; else warn in one line and return ``(keep, train_y, test_y)`` without them."""
    keep = torch.tensor([i not in bad for i in range(n_train + len(test_y))], dtype=torch.bool)
    if not bad:
        return keep, train_y, test_y
    first = next(iter(bad.values()))
    if not skip_bad:
        raise first
    sys.stderr.write(
        f"warning: skipped {len(bad)} bad image file(s) of {len(keep)} in {path} (the first: "
        f"{first.path}: {first.problem})\n"
    )
    train_y, test_y = train_y[keep[:n_train]], test_y[keep[n_train:]]
    _check_classes(classes, train_y, where, " that can be read")
    if not len(test_y):
        raise InputError(f"no held-out images for {path}: every held-out image is a bad file")
    return keep, train_y, test_y


def _load_imagefolder(
    spec: str,
    image_size: int,
    val_fraction: float,
    seed: int,
    max_memory_bytes: int,
    cache_dir,
    skip_bad_files: bool = False,
) -> DatasetBundle:
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise InputError(
            f"imagefolder path {str(path)!r} is not a directory; give a folder of class folders "
            "(PATH/<class>/*.png) or one with train/ and val/ (or test/) inside"
        )
    # 1. the files: class folders, one or two levels, a seeded split where there is no val/ folder
    held_out = next((path / s for s in ("val", "test") if (path / s).is_dir()), None)
    two_level = (path / "train").is_dir() and held_out is not None
    walked = []  # real folders that symlinks led to, shared by both scans
    if two_level:
        where = path / "train"
        classes, train_paths, train_stamps, train_y, links = _scan_folder(where, path, walked)
        test_classes, test_paths, test_stamps, test_y, more = _scan_folder(held_out, path, walked)
        links += more
        if test_classes != classes:
            raise InputError(
                f"class folders differ: {where} has {classes}, {held_out} has {test_classes}"
            )
    else:  # one level of class folders (PATH/train/ alone counts as that level)
        where = path / "train" if (path / "train").is_dir() else path
        classes, all_paths, all_stamps, train_y, links = _scan_folder(where, path, walked)
    if links:
        sys.stderr.write(
            f"warning: skipped {len(links)} folder symlink(s) in {path} that lead back into it or to a "
            f"folder already read (the first: {links[0]}); their images would be read twice or under "
            "another class\n"
        )
    if len(classes) < 2:
        raise InputError(
            f"{where} has {len(classes)} class folder ({', '.join(classes)}); classification needs "
            "at least 2"
        )
    _check_classes(classes, train_y, where)
    if not two_level:  # hold out a seeded stratified share of every class
        tr, te = stratified_split(train_y, val_fraction, seed)
        train_paths, test_paths = [all_paths[i] for i in tr], [all_paths[i] for i in te]
        train_stamps, test_stamps = [all_stamps[i] for i in tr], [all_stamps[i] for i in te]
        train_y, test_y = train_y[tr], train_y[te]
    if not test_paths:
        raise InputError(
            f"no held-out images for {path}: {held_out or where} leaves an empty test set; "
            "add images to val/ (or test/) or raise val_fraction"
        )
    paths, n_train, size = train_paths + test_paths, len(train_paths), image_size
    augment = AugmentSpec.for_size(image_size, flip=True)
    name = f"imagefolder:{spec}"

    # 2. a cache hit opens no image file (the files' stamps fix the images, the mode, the bad files)
    root = _cache_root(cache_dir) if len(paths) * size**2 <= max_memory_bytes else None
    key = _cache_key(size, classes, train_stamps, test_stamps)
    file = root / f"{_cache_slot(path, size, val_fraction, seed)}{key[:16]}.npz" if root else None
    cached = _read_cache(file, key) if file else None
    if cached and cached[0].numel() + cached[1].numel() <= max_memory_bytes:
        x, stats, bad = (
            torch.cat(cached[:2]),
            cached[2],
            cached[3],
        )  # the readable files, train then test
    else:
        # 3. every file's header: the bad ones, and the mode (RGB if any image is in colour)
        modes, bad = _probe_images(paths, skip_bad_files)
        mode = "L" if all(m in _GREY_MODES for m in modes if m is not None) else "RGB"
        channels = 1 if mode == "L" else 3
        if (len(paths) - len(bad)) * channels * size**2 > max_memory_bytes:
            # too big for memory: decoded on access; channel statistics from 1,000 training images
            keep, train_y, test_y = _drop_bad(
                bad, n_train, train_y, test_y, classes, where, path, skip_bad_files
            )
            train_paths = [p for p, k in zip(train_paths, keep[:n_train].tolist()) if k]
            test_paths = [p for p, k in zip(test_paths, keep[n_train:].tolist()) if k]
            pick = torch.randperm(len(train_paths), generator=torch.Generator().manual_seed(seed))[
                :1000
            ]
            sample, broken = _decode_images(
                [train_paths[i] for i in pick], size, mode, skip_bad=skip_bad_files
            )
            mean, std = _channel_stats(
                sample[
                    torch.tensor([i not in broken for i in range(len(sample))], dtype=torch.bool)
                ]
            )
            return DatasetBundle(
                name=name,
                classes=classes,
                in_channels=channels,
                image_size=size,
                mean=mean,
                std=std,
                train_targets=train_y,
                test_targets=test_y,
                augment=augment,
                train_dataset=ImageFileDataset(train_paths, train_y, size, mode, augment),
                test_dataset=ImageFileDataset(test_paths, test_y, size, mode, None),
            )
        # 4. a miss: decode the readable files once (and save them below for the next load)
        good = [i for i in range(len(paths)) if i not in bad]
        x, broken = _decode_images([paths[i] for i in good], size, mode, skip_bad=skip_bad_files)
        x = x[
            torch.tensor([j not in broken for j in range(len(good))], dtype=torch.bool)
        ]  # [N_readable, C, S, S]
        bad = dict(sorted({**bad, **{good[j]: err for j, err in broken.items()}}.items()))
        stats = None
    _, train_y, test_y = _drop_bad(
        bad, n_train, train_y, test_y, classes, where, path, skip_bad_files
    )
    train_x, test_x = x[: len(train_y)], x[len(train_y) :]
    if stats is None:
        stats = _channel_stats(train_x)
        if file:
            _write_cache(file, key, train_x, test_x, stats, bad)
    return _bundle_in_memory(name, classes, train_x, train_y, test_x, test_y, augment, stats)


def load_dataset(
    name: str = "digits",
    root: str | Path = "data",
    image_size: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    download: bool = True,
    max_memory_bytes: int = 2 * 1024**3,
    cache_dir: str | os.PathLike | None | bool = None,
    skip_bad_files: bool = False,
) -> DatasetBundle:
    """Load a dataset by name.

    Args:
        name: ``digits``, ``cifar10``, ``cifar100`` or ``imagefolder:PATH``.
        root: folder holding downloaded datasets (CIFAR).
        image_size: side S of the square images; default 16 for digits, 32 otherwise.
        val_fraction: held-out fraction per class where a dataset has no official split
            (digits, single-level image folders), in (0, 1).
        seed: seed of that held-out split. Keep it fixed across training seeds so that every
            run is tested on the same images.
        download: allow downloading CIFAR when its files are missing.
        max_memory_bytes: image folders whose decoded uint8 images fit here are held in memory.
        cache_dir: where image folders held in memory keep their decoded images (one
            uncompressed ``.npz`` per folder, keyed by every file's path, size and mtime, so any
            change rebuilds it). None: ``$IPSKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ipskit``,
            else ``~/.cache/ipskit``; False: no cache. An unwritable folder gives one warning
            line on stderr and the load goes on without it.
        skip_bad_files: image folders: leave out the files that cannot be decoded (not an image,
            empty, truncated, too many pixels) with one warning line on stderr, instead of
            stopping at the first with an InputError that names it.

    Returns:
        A :class:`DatasetBundle`.
    Raises:
        InputError: a bad argument, an unknown name, or an image folder that cannot be used.
        DatasetUnavailableError: CIFAR's files are missing and cannot be downloaded.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    if image_size is not None:
        image_size = check_int(
            "image_size", image_size, minimum=4, why="(or None for the dataset's default)"
        )
    val_fraction = check_float("val_fraction", val_fraction, 0, 1, lo_open=True, hi_open=True)
    seed = check_int("seed", seed)
    max_memory_bytes = check_int("max_memory_bytes", max_memory_bytes, minimum=0)
    download, skip_bad_files = (
        check_bool("download", download),
        check_bool("skip_bad_files", skip_bad_files),
    )
    if not (cache_dir is None or cache_dir is False or isinstance(cache_dir, (str, os.PathLike))):
        raise TypeError(
            f"cache_dir must be a folder, None (the default folder) or False (no cache), got {cache_dir!r}"
        )
    key = name.strip()
    low = key.lower()
    if low == "digits":
        return _load_digits(image_size or 16, val_fraction, seed)
    if low in ("cifar10", "cifar100"):
        return _load_cifar(low, Path(root), image_size or 32, download)
    if low.startswith("imagefolder:") and len(key) > len("imagefolder:"):
        return _load_imagefolder(
            key[len("imagefolder:") :],
            image_size or 32,
            val_fraction,
            seed,
            max_memory_bytes,
            cache_dir,
            skip_bad_files,
        )
    raise InputError(
        f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}, imagefolder:PATH"
    )


# ------------------------------------------------------------------ seeds
def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (base seed, epoch, rank, stream id).

    The one seed mixer of the training loop (``ipskit.train`` re-exports it), kept here so that
    data code can use it without importing the trainer.
    """
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]
        >> np.uint64(1)
    )


def _epoch_seed(seed: int, epoch: int) -> int:
    """:class:`InMemoryLoader`'s seed for an epoch. Not :func:`derive_seed`: every run trained on
    the fast path shuffled and augmented with these numbers, and a resumed run must go on
    drawing them, so this linear mix stays as it is."""
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**62)


# ------------------------------------------------------------------ the fast path
class InMemoryLoader:
    """Batches from uint8 images kept on the device, augmented there: no workers, no copies.

    Args:
        x: ``[N, C, H, W]`` uint8 images; y: ``[N]`` int labels. Both are moved to ``device``.
        batch_size: images per batch (ignored when ``batch_sampler`` is given).
        augment: training augmentation, ``None`` for evaluation.
        device: where batches live (``"cpu"``, ``"cuda"``, ...).
        seed: with the epoch, fixes the order and the augmentation.
        shuffle, drop_last: as in ``torch.utils.data.DataLoader``.
        batch_sampler: any iterable of index lists (e.g. ``SameClassPairSampler``, which yields
            B anchors then B partners); it replaces the loader's own order, and its
            ``set_epoch`` is called with the loader's epoch.

    Yields ``(x [B, C, H, W] float in [0, 1], y [B] int64)``. The order and the augmentation
    are a function of (``seed``, the epoch given to :meth:`set_epoch`, 0 until then) alone:
    iterating twice gives the same batches, so call ``set_epoch(epoch)`` before each epoch, as
    with a ``DistributedSampler``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int | None = None,
        augment: AugmentSpec | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        batch_sampler: Iterable | None = None,
    ):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise TypeError(
                f"x must be a uint8 tensor [N, C, H, W], got {getattr(x, 'dtype', type(x))} "
                f"{tuple(getattr(x, 'shape', ()))}"
            )
        if y.dim() != 1 or len(y) != len(x):
            raise InputError(f"y must have shape [{len(x)}], got {tuple(y.shape)}")
        if batch_sampler is None:
            batch_size = check_int(
                "batch_size", batch_size, minimum=1, why="(or give a batch_sampler)"
            )
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device, torch.long)
        self.batch_size, self.augment, self.seed = batch_size, augment, seed
        self.shuffle, self.drop_last, self.batch_sampler = shuffle, drop_last, batch_sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation every ``iter()`` gives (and the batch
        sampler's epoch)."""
        self.epoch = check_int("epoch", epoch)
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _augment_generator(self, seed: int) -> torch.Generator:
        try:
            return torch.Generator(device=self.device).manual_seed(seed)
        except RuntimeError:  # a device without its own generator: draw on the CPU
            return torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.set_epoch(self.epoch)  # the sampler's epoch too, whatever else set it since
        s = _epoch_seed(self.seed, self.epoch)
        gen = self._augment_generator(s + 1)
        if self.batch_sampler is not None:
            # The whole epoch's indices in one copy to the device: a copy per batch from
            # pageable memory would make the host wait for the device every step.
            lists = [list(b) for b in self.batch_sampler]
            flat = torch.as_tensor([i for b in lists for i in b], dtype=torch.long)
            flat = flat.to(self.device)
            ends = np.cumsum([len(b) for b in lists]).tolist()
            batches = (flat[e - len(b) : e] for b, e in zip(lists, ends))
        else:
            n = len(self.x)
            order = (
                torch.randperm(n, generator=torch.Generator().manual_seed(s))
                if self.shuffle
                else torch.arange(n)
            ).to(self.device)
            stop = n - n % self.batch_size if self.drop_last else n
            batches = (order[i : i + self.batch_size] for i in range(0, stop, self.batch_size))
        return ((augment_batch(self.x[idx], self.augment, gen), self.y[idx]) for idx in batches)
