"""``TrainConfig``: every training setting in one dataclass, with its unit, range and default.

One recipe for every method (IPS, Choi et al. 2025; CS-KD, Yun et al. 2020; CutMix, MixUp,
Cutout, label smoothing; plain cross-entropy), so that differences in a comparison come from
the method and not from the recipe. Each field's help text says its unit, its allowed range
and why its default was chosen; the same text is the ``ipskit train --help`` text, so the code
and the command line cannot drift apart.

Usage:
    cfg = TrainConfig(method="ips", epochs=10, grid=4, pr=0.5)   # validated on construction
    cfg = cfg.replace(seed=1)                                    # a validated copy
    dataclasses.asdict(cfg)                                      # what config.json holds

Bad values raise ``ValueError`` with one line naming the field, the value and what is allowed.
Method, dataset and model names are checked against ``ipskit.registry`` (which imports
nothing from the rest of ipskit); the grid is checked against the image size once the data is
loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = [
    "TrainConfig",
    "METHOD_NAMES",
    "MIXERS",
    "SCHEDULES",
    "CAPTURE_MODES",
    "KD_DIRECTIONS",
    "NOISE_KINDS",
]

from ipskit.checks import InputError, check_device
from ipskit.registry import (
    DATASETS,
    IMAGEFOLDER,
    METHOD_NAMES,
    METHODS,
    MIXERS,
    MODELS,
)

SCHEDULES = ("cosine", "step")
CAPTURE_MODES = ("auto", "on", "off")  # the training step in a CUDA graph (ipskit.step)
MAX_IMAGE_SIZE = 1024  # pixels a side: 1024^2 x 3 bytes = 3 MB an image, in memory


KD_DIRECTIONS = ("symmetric", "confident")  # as ipskit.losses.KD_DIRECTIONS
NOISE_KINDS = ("symmetric", "pairflip")  # as ipskit.noise.NOISE_KINDS


def setting(default, help: str, choices: tuple | None = None, group: str = "training"):
    """A dataclass field whose metadata carries the help text (unit, range, why this default)."""
    meta = {"help": help, "group": group}
    if choices is not None:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """All settings of one training run; see each field's help (``ipskit train --help``)."""

    # --- data ---------------------------------------------------------------------------------
    dataset: str = setting(
        "digits",
        "digits | cifar10 | cifar100 | imagefolder:PATH. digits (sklearn, 1,797 "
        "images, no download) trains in seconds on a CPU, so it is the default; use cifar100 "
        "with a GPU to test the paper's claims at scale.",
        group="data",
    )
    data_root: str = setting(
        "data", "folder where datasets are stored/downloaded (path).", group="data"
    )
    image_size: int | None = setting(
        None,
        "side in pixels images are resized to, 4..1024; default: the dataset's own (16 for "
        "digits, 32 for CIFAR). Larger digits images give the patch grid more room.",
        group="data",
    )
    max_train_samples: int | None = setting(
        None,
        "use only this many training images (a seeded random subset), >= 2; default all. "
        "For quick runs and tests.",
        group="data",
    )
    skip_bad_files: bool = setting(
        False,
        "image folders: leave out files that cannot be read as images (counted in one warning "
        "line) instead of stopping at the first. Off by default: a bad file is usually a "
        "mistake worth fixing.",
        group="data",
    )
    augment: bool = setting(
        True,
        "the dataset's standard augmentation (random crop + flip where it makes sense). "
        "On by default: every method gets the same augmentation.",
        group="data",
    )
    label_noise: float = setting(
        0.0,
        "share of training labels changed to a wrong class, in [0, 1). 0 by default; the "
        "paper reports IPS holding up at high noise (e.g. 0.8).",
        group="data",
    )
    label_noise_kind: str = setting(
        "symmetric",
        "symmetric (uniform over the other classes) or pairflip (c -> c+1).",
        choices=NOISE_KINDS,
        group="data",
    )
    fast_path: bool = setting(
        True,
        "keep the training set as one uint8 tensor on the device and augment whole "
        "batches there (no DataLoader workers). Much faster for small images; turn off for "
        "datasets that do not fit in memory.",
        group="data",
    )
    num_workers: int = setting(
        0,
        "DataLoader worker processes when fast_path is off, >= 0. 0 by default: no process "
        "start-up cost on small data; use 4-8 for imagefolder data.",
        group="data",
    )

    # --- model and method ----------------------------------------------------------------------
    model: str = setting(
        "resnet8",
        "architecture name from ipskit.models.MODELS. resnet8 is small enough to "
        "train on a CPU and still shows method differences.",
        group="model",
    )
    method: str = setting(
        "ips",
        "training method: " + ", ".join(METHOD_NAMES) + ". Pair methods (ips, cskd) "
        "load 2 images per sample.",
        choices=METHOD_NAMES,
        group="method",
    )
    grid: int = setting(
        4,
        "IPS patch grid g: each image is cut into g x g patches, >= 2 and <= image side. "
        "4 gives 4-pixel patches on 16x16 digits and 8-pixel patches on 32x32 CIFAR.",
        group="method",
    )
    patch_size: int | None = setting(
        None,
        "IPS patch side in pixels; if set it replaces grid (g = image side / patch_size, "
        "must divide the side).",
        group="method",
    )
    pr: float = setting(
        0.5,
        "IPS swap probability per pair, in [0, 1]. 0.5 is the paper's best value; high "
        "values over-smooth the predictions.",
        group="method",
    )
    swap_fraction: float | None = setting(
        None,
        "fixed share of patches swapped, in (0, 1); default: the number of patches is "
        "uniform in 1..g*g-1.",
        group="method",
    )
    temperature: float = setting(
        4.0, "IPS KL temperature T, > 0. 4 as in CS-KD and the paper.", group="method"
    )
    alpha: float = setting(1.0, "IPS weight of the KL term, >= 0. 1 by default.", group="method")
    gamma: float = setting(
        1.0, "IPS weight of the cross-entropy term, >= 0. 1 by default.", group="method"
    )
    kd_direction: str = setting(
        "symmetric",
        "IPS KL direction: symmetric (both sides teach each other, the paper) or "
        "confident (the side more sure of the true class teaches).",
        choices=KD_DIRECTIONS,
        group="method",
    )
    detach_target: bool = setting(
        True,
        "IPS: stop gradients through the target side of each KL, as CS-KD does. "
        "--no-detach-target with symmetric KL and no T^2 is the blog's intent.",
        group="method",
    )
    t2_scale: bool = setting(
        False,
        "IPS: multiply the KL by T^2 (Hinton et al.). Off by default: at CPU scale it "
        "over-smoothed predictions (see docs/METHOD.md).",
        group="method",
    )
    smoothing: float = setting(
        0.1,
        "label_smoothing method: epsilon in [0, 1). 0.1, the usual value (Szegedy et al. 2016).",
        group="method",
    )
    cskd_temperature: float = setting(
        4.0, "cskd: KL temperature, > 0. 4 as in Yun et al. 2020.", group="method"
    )
    cskd_lambda: float = setting(
        1.0,
        "cskd: weight of the class-wise KL term, >= 0. 1 as in Yun et al. 2020 (CIFAR).",
        group="method",
    )
    mix_alpha: float = setting(
        1.0,
        "cutmix/mixup: Beta(alpha, alpha) parameter, > 0. 1 (uniform mixing ratio) as in "
        "both papers' CIFAR settings.",
        group="method",
    )
    mix_prob: float = setting(
        0.5,
        "cutmix/mixup: probability a batch is mixed, in [0, 1]. 0.5 as in the CutMix "
        "paper's CIFAR recipe; MixUp's paper mixes every batch (1.0).",
        group="method",
    )
    cutout_size: int | None = setting(
        None,
        "cutout: side of the square cut out, in pixels, >= 1; default half the image side "
        "(16 px at 32x32, DeVries & Taylor's CIFAR-10 value).",
        group="method",
    )

    # --- optimisation --------------------------------------------------------------------------
    epochs: int = setting(
        15,
        "training epochs, >= 1. 15 lets a small model converge on digits in about a "
        "minute on a CPU; CIFAR recipes use 200-240.",
    )
    batch_size: int = setting(
        64,
        "samples per step on each process, >= 1 (pair methods load 2x as many images). 64 "
        "gives digits ~22 steps per epoch; 128 is the CIFAR standard.",
    )
    lr: float = setting(
        0.05,
        "peak learning rate for SGD, > 0. 0.05 at batch 64 follows the linear rule from "
        "0.1 at batch 128, the CIFAR ResNet standard.",
    )
    momentum: float = setting(0.9, "SGD momentum, in [0, 1). 0.9, the standard value.")
    weight_decay: float = setting(
        5e-4, "L2 weight decay, >= 0. 5e-4, the usual CIFAR ResNet value."
    )
    schedule: str = setting(
        "cosine",
        "learning-rate schedule: cosine (to 0 at the end) or step (x0.1 at 50% and "
        "75% of training). Cosine has no milestones to tune.",
        choices=SCHEDULES,
    )
    warmup_epochs: float = setting(
        0.0,
        "linear warm-up from 0 over this many epochs, >= 0 (may be fractional). 0 by "
        "default; use 1-5 with large batches.",
    )
    seed: int = setting(
        0,
        "seed of everything random (weights, order, pairs, swaps, augmentation), >= 0. "
        "Compare methods over several seeds.",
    )

    # --- runtime -------------------------------------------------------------------------------
    device: str = setting(
        "auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.", group="runtime"
    )
    amp: bool | None = setting(
        None, "bf16 autocast. Default: on for CUDA, off elsewhere (slow on CPU).", group="runtime"
    )
    channels_last: bool | None = setting(
        None,
        "channels-last memory format. Default: on for CUDA (faster convolutions), off elsewhere.",
        group="runtime",
    )
    capture: str = setting(
        "auto",
        "auto | on | off: capture the whole training step (swap or mixer, forward, loss, "
        "backward, fused SGD update) in a CUDA graph and replay it, so the GPU does not wait "
        "for Python to launch each kernel. auto: captured on CUDA in a single process, eager "
        "on CPU, MPS and under torchrun, and eager with one line if the capture fails; on: "
        "captured or an error; off: always eager.",
        choices=CAPTURE_MODES,
        group="runtime",
    )
    compile: bool = setting(
        False,
        "torch.compile the model. Off by default: compiling costs more than it saves on "
        "short runs.",
        group="runtime",
    )
    out_dir: str = setting("runs", "folder holding run folders (path).", group="runtime")
    name: str | None = setting(
        None,
        "run folder name under out_dir (may contain /); default "
        "<method>-<dataset>-<model>-s<seed>.",
        group="runtime",
    )

    def __post_init__(self):
        self.validate()

    # -------------------------------------------------------------------------------------------
    def replace(self, **changes) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def run_name(self) -> str:
        """The run folder name: ``name`` or ``<method>-<dataset>-<model>-s<seed>``."""
        if self.name:
            return self.name
        data = self.dataset.replace(":", "-").replace("/", "_").replace("\\", "_")
        return f"{self.method}-{data}-{self.model}-s{self.seed}"

    @property
    def uses_pairs(self) -> bool:
        """True for methods trained on same-class pairs (ips, ips+..., cskd): the registry's
        ``needs_pairs``, which also decides the layout the method's step expects."""
        return METHODS[self.method].needs_pairs

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict such as config.json, ignoring keys that are not settings."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        """Check every field; raise ValueError/TypeError with one line on the first bad one."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        _choice("method", self.method, METHOD_NAMES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("capture", self.capture, CAPTURE_MODES)
        _choice("kd_direction", self.kd_direction, KD_DIRECTIONS)
        _choice("label_noise_kind", self.label_noise_kind, NOISE_KINDS)
        _check_dataset(self.dataset)
        _check_model(self.model)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("seed", self.seed, 0)
        _at_least("num_workers", self.num_workers, 0)
        _at_least("grid", self.grid, 2, "(a single patch cannot be swapped)")
        optional_minima = {
            "image_size": 4,
            "patch_size": 1,
            "cutout_size": 1,
            "max_train_samples": 2,
        }
        for name, lo in optional_minima.items():
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), lo)
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise InputError(
                f"image_size must be <= {MAX_IMAGE_SIZE} (every image is held in "
                f"memory at this size), got {self.image_size}"
            )
        _in_range("pr", self.pr, 0, 1)
        _in_range("label_noise", self.label_noise, 0, 1, hi_open=True)
        _in_range("smoothing", self.smoothing, 0, 1, hi_open=True)
        _in_range("momentum", self.momentum, 0, 1, hi_open=True)
        _in_range("mix_prob", self.mix_prob, 0, 1)
        if self.swap_fraction is not None:
            _in_range("swap_fraction", self.swap_fraction, 0, 1, lo_open=True, hi_open=True)
        for name in ("lr", "temperature", "cskd_temperature", "mix_alpha"):
            _positive(name, getattr(self, name))
        for name in ("alpha", "gamma", "cskd_lambda", "weight_decay", "warmup_epochs"):
            _at_least(name, getattr(self, name), 0)
        if self.warmup_epochs >= self.epochs:
            raise InputError(
                f"warmup_epochs {self.warmup_epochs} must be below epochs {self.epochs}"
            )
        check_device(self.device)
        if not self.out_dir:
            raise InputError("out_dir must be a non-empty path")
        if self.name is not None and (
            self.name.startswith("/")
            or any(part in ("", ".", "..") for part in self.name.replace("\\", "/").split("/"))
        ):
            raise InputError(
                f"name {self.name!r} must be a relative folder name inside "
                f"out_dir: parts separated by '/', none empty, '.' or '..'"
            )

    def check_image_size(self, image_size: int) -> int:
        """The IPS grid g for images of side ``image_size``; ValueError if it cannot split them.

        Args:
            image_size: side of the (square) training images, pixels.
        Returns:
            g, cells per side (``grid``, or ``image_size // patch_size``).
        """
        if self.patch_size is not None:
            if image_size % self.patch_size or self.patch_size >= image_size:
                raise InputError(
                    f"patch_size {self.patch_size} does not split {image_size}x"
                    f"{image_size} images into 2 or more whole patches per side; "
                    f"use a divisor of {image_size} or --grid"
                )
            return image_size // self.patch_size
        if self.grid > image_size:
            raise InputError(
                f"grid {self.grid} cannot split {image_size}x{image_size} images "
                f"(a patch needs at least 1 pixel); use grid <= {image_size}"
            )
        if self.method.endswith("cutout") and (self.cutout_size or 0) > image_size:
            raise InputError(
                f"cutout_size {self.cutout_size} is larger than the {image_size}-pixel image side"
            )
        return self.grid


# ----- checks (one line each) -----------------------------------------------------------------
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _check_type(name, value, annotation: str):
    optional = "None" in annotation
    if value is None:
        if not optional:
            raise TypeError(f"{name} must not be None")
        return
    base = annotation.replace("| None", "").strip()
    want = _TYPES[base]
    ok = isinstance(value, want) and (base == "bool" or not isinstance(value, bool))
    if base == "float" and isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if not ok:
        raise TypeError(
            f"{name} must be {base}{' or None' if optional else ''}, got "
            f"{type(value).__name__} {value!r}"
        )


def _choice(name, value, allowed):
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _at_least(name, value, lo, why=""):
    if value < lo:
        raise InputError(f"{name} must be >= {lo}{' ' + why if why else ''}, got {value!r}")


def _positive(name, value):
    if value <= 0:
        raise InputError(f"{name} must be > 0, got {value!r}")


def _in_range(name, value, lo, hi, lo_open=False, hi_open=False):
    bad = value <= lo if lo_open else value < lo
    bad = bad or (value >= hi if hi_open else value > hi)
    if bad:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise InputError(f"{name} must be in {interval}, got {value!r}")


def _check_dataset(name: str):
    if name.startswith(IMAGEFOLDER):
        if not name[len(IMAGEFOLDER) :]:
            raise InputError("dataset imagefolder:PATH needs a path after the colon")
        return
    if name not in DATASETS:
        raise InputError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, imagefolder:PATH"
        )


def _check_model(name: str):
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
