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
- ``imagefolder:PATH``: one folder per class, ``PATH/train/<class>/`` with ``PATH/val/<class>/``
  (or ``PATH/test/``), or ``PATH/<class>/`` with a seeded stratified held-out split; resized and
  centre-cropped, decoded into memory and cached when they fit, bad files one line or skipped.
  That loader, :class:`ImageFileDataset` and :func:`image_from_bytes` live in
  ``ipskit.imagefolder`` (its docstring has the details) and are re-exported here.

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

import math
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ipskit.augment import (
    AugmentParams,
    AugmentSpec,
    apply_augment,
    augment_batch,
    draw_augment,
    to_float01,
)
from ipskit.checks import InputError, check_bool, check_float, check_int
from ipskit.imagefolder import (  # re-exported: image folders live in ipskit.imagefolder
    IMG_EXTENSIONS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_SIDE,
    ImageFileDataset,
    _load_imagefolder,
    image_from_bytes,
)

__all__ = [
    "DATASETS",
    "IMG_EXTENSIONS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_SIDE",
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
            empty, truncated, too many pixels, a symlink whose target is missing) with one
            warning line on stderr, instead of stopping at the first with an InputError that
            names it.

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
