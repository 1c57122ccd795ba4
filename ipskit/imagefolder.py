"""Image-folder datasets: ``load_dataset("imagefolder:PATH")``, a folder of image files, one
sub-folder per class.

Layouts, as torchvision's ``ImageFolder`` reads them (same classes, same order, same extensions,
without importing torchvision): ``PATH/train/<class>/`` with ``PATH/val/<class>/`` (or
``PATH/test/``), the held-out split given; or ``PATH/<class>/`` (or ``PATH/train/<class>/`` alone)
with a seeded stratified held-out split (``val_fraction``, ``seed``). Every image is resized
(shorter side) and centre-cropped to ``image_size`` (default 32); every class needs at least 2
training images (IPS pairs two images of the same class).

Guarantees:

- A file that cannot be used (not an image, empty, truncated, a decompression bomb, a symlink
  whose target is missing) stops the load with one ``InputError`` line naming it, or, with
  ``skip_bad_files=True``, is left out and counted in one warning line.
- Folder symlinks are followed, except those that lead back into the dataset or to a folder
  already read (a loop, or images counted twice or under another class): those are skipped
  with one warning line.
- A folder is RGB if any of its images is in colour, greyscale otherwise (read from every
  file's header); 16-bit and float images are scaled to 8 bits by their range, not clipped.
- A folder whose decoded images fit in ``max_memory_bytes`` is decoded once, by a thread pool,
  and kept in a cache file (plain uncompressed ``.npz``: the uint8 images, the channel
  statistics, the bad files) under ``cache_dir``, by default ``$IPSKIT_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/ipskit``, else ``~/.cache/ipskit``. The cache is keyed by every file's
  relative path, size and mtime (and the image size and the classes), so adding, replacing or
  touching an image rebuilds it; a second load of CIFAR-10 as 60k JPEGs takes about a second
  instead of ~15 s. A larger folder is decoded on access (:class:`ImageFileDataset`).
- :func:`image_from_bytes` prepares one uploaded file the same way, and refuses one larger than
  ``MAX_IMAGE_BYTES`` or ``MAX_IMAGE_SIDE`` pixels a side before decoding it.

Usage (``ipskit.data`` re-exports the public names)::

    bundle = load_dataset("imagefolder:~/pets", image_size=32, skip_bad_files=True)
    x = image_from_bytes(uploaded_bytes, in_channels=3, size=32)  # [1, 3, 32, 32] in [0, 1]

No import cycle: ``ipskit.data`` imports this module to re-export it, so this module takes
``DatasetBundle`` and its helpers from ``ipskit.data`` only inside ``_load_imagefolder``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ipskit.augment import AugmentSpec, augment_batch, to_float01
from ipskit.checks import InputError, check_int
from ipskit.runs import atomic_write

if TYPE_CHECKING:
    from ipskit.data import DatasetBundle

__all__ = [
    "IMG_EXTENSIONS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_SIDE",
    "ImageFileDataset",
    "image_from_bytes",
]


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


# ------------------------------------------------------------------ one image file
class ImageFileDataset(Dataset):
    """Images decoded from files on each access (for image folders too large for memory).

    Args:
        paths: image files; targets: ``[N]`` int64; image_size: side S of the resized square;
        mode: PIL mode ``"L"`` or ``"RGB"``; augment: as in
        :class:`ipskit.data.TensorImageDataset`.
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
            f"bad image file {path}: {problem}; fix or remove it, or skip such files "
            f"(--skip-bad-files, skip_bad_files=True)"
        )
        self.path, self.problem = path, problem


# what PIL raises for a file that is not a (whole) image: struct.error and EOFError from some
# plugins, SyntaxError and ValueError for malformed headers; UnidentifiedImageError is an OSError
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


def _bad_image(path: str, err: Exception) -> _BadImageFile:
    if os.path.islink(path) and not os.path.exists(path):  # a file symlink, dangling or a loop
        try:
            target = os.readlink(path)
        except OSError:  # removed meanwhile
            target = "?"
        why = getattr(err, "strerror", None) or err  # "Too many levels of symbolic links"
        problem = (
            f"the symlink's target {target} is missing"
            if isinstance(err, FileNotFoundError)
            else f"the symlink to {target} cannot be followed ({why})"
        )
    elif isinstance(err, UnidentifiedImageError):
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


# ------------------------------------------------------------------ image folders: scan, parallel decode, cache
def _inside(a: str, b: str) -> bool:
    """Real path ``a`` is ``b`` or lies inside it."""
    return a == b or a.startswith(os.path.join(b, ""))


def _is_dir(e: os.DirEntry) -> bool:
    """``e.is_dir()``, False where following a symlink fails (a loop), as in ``os.walk``."""
    try:
        return e.is_dir()
    except OSError:
        return False


def _stamp(e: os.DirEntry, rel: str) -> str:
    """``"relpath\\0size\\0mtime_ns\\0"`` of an image file, for the cache key. A symlink whose
    target is missing (or loops) is stamped by the link itself, with ``link`` for the size: the
    header probe reports it as a bad file, and a target that appears later changes the key."""
    try:
        st = e.stat()
        size = st.st_size
    except OSError:
        st, size = e.stat(follow_symlinks=False), "link"
    return f"{rel}\0{size}\0{st.st_mtime_ns}\0"


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
            entries = sorted((e for e in it if _is_dir(e)), key=lambda e: e.name)
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
                e.path for e in entries if _is_dir(e) and (not e.is_symlink() or follow(e.path))
            ]
            images[folder] = [
                e for e in entries if not _is_dir(e) and e.name.lower().endswith(IMG_EXTENSIONS)
            ]
        for folder in sorted(images):  # ImageFolder sorts os.walk's (folder, dirs, files) tuples
            for e in images[folder]:
                paths.append(e.path)
                stamps.append(_stamp(e, e.path[len(top) :]))
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
        # tqdm reads TQDM_DISABLE only at import; `ipskit ... --no-progress` sets it later
        quiet = os.environ.get("TQDM_DISABLE", "") not in ("", "0")
        with tqdm(total=n, desc=desc, unit="img", leave=False, disable=quiet) as bar:
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
    """``load_dataset("imagefolder:SPEC")`` once its arguments are checked (see there)."""
    from ipskit.data import DatasetBundle, _bundle_in_memory, _channel_stats, stratified_split

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
