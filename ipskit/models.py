"""Model registry: small-image classifiers wrapped with their normalisation and Grad-CAM layer.

Every network ipskit trains is a :class:`Classifier`: it takes float images in [0, 1]
``[B, C, H, W]``, normalises them with ``mean``/``std`` buffers (saved in the checkpoint,
so a loaded model needs no side information), runs a backbone and returns logits
``[B, num_classes]``. It also knows which layer Grad-CAM should look at by default.

Models (all run on 8x8, 16x16 and 32x32 inputs, 1 or 3 channels):

- ``smallcnn``: three conv stages (16/32/64 channels, 24 k parameters), for teaching and quick tests.
- ``resnet8/20/32/56``: the CIFAR ResNets of He et al., "Deep Residual Learning for Image
  Recognition" (CVPR 2016, section 4.2): a 3x3 stem, three stages of 16/32/64 channels,
  n = (depth - 2) / 6 torchvision ``BasicBlock`` per stage, parameter-free "option A"
  shortcuts (subsample + zero channels) as in the paper. ResNet-20 has 0.27 M parameters.
- ``resnet18/34``: torchvision's ResNet-18/34 with the usual CIFAR stem (3x3 stride-1 conv,
  no max-pool), as in the CS-KD / PS-KD / IPS CIFAR experiments.
- ``vgg11``, ``vgg16``: VGG with batch norm (Simonyan & Zisserman 2015), max-pools dropped
  from the end so the last conv map stays at least 2x2, then global average pool + linear.
- ``mobilenetv2``: torchvision's MobileNetV2 with a stride-1 stem and the second stage at
  stride 1 (total stride 8, the common CIFAR adaptation).
- ``shufflenetv2``: torchvision's ShuffleNetV2 x1.0 with a stride-1 3x3 stem and no max-pool.

On 8x8 inputs (native ``digits``) every model runs, but the stride-8 models (``resnet18/34``,
``mobilenetv2``, ``shufflenetv2``) end at 1x1, so their Grad-CAM layer falls back to an
earlier stage; ``smallcnn``, ``resnet8/20`` and ``vgg11`` are the sensible choices there.

Usage::

    model = build_model("resnet8", num_classes=10, in_channels=1, image_size=16,
                        mean=bundle.mean, std=bundle.std)
    logits = model(x01)                          # x01: [B, 1, 16, 16] in [0, 1]
    same = build_model(**model.model_info)       # what ipskit.runs.load_model does
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import MobileNetV2, ShuffleNetV2
from torchvision.models.resnet import BasicBlock, ResNet

from ipskit.checks import InputError, check_int

__all__ = ["CifarResNet", "Classifier", "MODELS", "build_model"]

# A builder returns (backbone mapping [B, C, S, S] -> [B, K] logits, candidate Grad-CAM layer
# names relative to the backbone, shallow to deep).
Builder = Callable[[int, int, int], "tuple[nn.Module, list[str]]"]


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """He init, as torchvision uses for the layers we swap into its models."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _stem(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 stride-1 conv + BN + ReLU: the small-image stem that keeps full resolution."""
    return nn.Sequential(
        _init_conv(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


# ---------------------------------------------------------------- smallcnn
def _smallcnn(num_classes: int, in_channels: int, image_size: int):
    def stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
        # ceil_mode: a 1x1 map stays 1x1 instead of collapsing to 0x0
        layers = [nn.MaxPool2d(2, ceil_mode=True)] if pool else []
        return nn.Sequential(*layers, *_stem(cin, cout))

    net = nn.Sequential()
    net.add_module("stage1", stage(in_channels, 16, pool=False))
    net.add_module("stage2", stage(16, 32, pool=True))
    net.add_module("stage3", stage(32, 64, pool=True))
    net.add_module(
        "head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
    )
    return net, ["stage1", "stage2", "stage3"]


# ---------------------------------------------------------------- CIFAR ResNets (He et al. 2016)
class _PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by 2 and zero-pad the new channels."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]  # [B, C, ceil(H/2), ceil(W/2)], matches a stride-2 3x3 conv
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarResNet(nn.Module):
    """3-stage ResNet for small images (16/32/64 channels), built from torchvision's BasicBlock."""

    def __init__(self, depth: int, num_classes: int, in_channels: int):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = _stem(in_channels, 16)
        cin, stages = 16, []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                down = _PadShortcut(width - cin) if (s != 1 or cin != width) else None
                blocks.append(BasicBlock(cin, width, stride=s, downsample=down))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _init_conv(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))  # [B, 64, H/4, W/4]
        return self.fc(x.mean(dim=(2, 3)))


def _cifar_resnet(num_classes: int, in_channels: int, image_size: int, depth: int):
    return CifarResNet(depth, num_classes, in_channels), ["stem", "layer1", "layer2", "layer3"]


# ---------------------------------------------------------------- torchvision ResNet-18/34
def _tv_resnet(num_classes: int, in_channels: int, image_size: int, layers: Sequence[int]):
    net = ResNet(BasicBlock, list(layers), num_classes=num_classes)
    net.conv1 = _init_conv(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False))
    net.maxpool = nn.Identity()  # CIFAR stem: no early downsampling on 32x32 images
    return net, ["layer1", "layer2", "layer3", "layer4"]


# ---------------------------------------------------------------- VGG with BN
_VGG_CFG = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def _vgg(num_classes: int, in_channels: int, image_size: int, cfg: str):
    # VGG halves the map before stages 2..5; keep only as many halvings as leave >= 2x2
    n_pools = max(0, min(4, int(math.log2(image_size)) - 1))
    net, cin = nn.Sequential(), in_channels
    for i, widths in enumerate(_VGG_CFG[cfg]):
        layers: list[nn.Module] = [nn.MaxPool2d(2, ceil_mode=True)] if 1 <= i <= n_pools else []
        for w in widths:
            layers += [
                _init_conv(nn.Conv2d(cin, w, 3, padding=1, bias=False)),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            cin = w
        net.add_module(f"stage{i + 1}", nn.Sequential(*layers))
    net.add_module(
        "head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
    )
    return net, [f"stage{i}" for i in range(1, 6)]


# ---------------------------------------------------------------- MobileNetV2, ShuffleNetV2
def _mobilenetv2(num_classes: int, in_channels: int, image_size: int):
    # torchvision's setting (t, c, n, s) with the 24-channel stage at stride 1 instead of 2
    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    net = MobileNetV2(num_classes=num_classes, inverted_residual_setting=setting)
    stem = _stem(in_channels, 32)
    stem[2] = nn.ReLU6(inplace=True)
    net.features[0] = stem
    return net, [f"features.{i}" for i in range(len(net.features))]


def _shufflenetv2(num_classes: int, in_channels: int, image_size: int):
    net = ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], num_classes=num_classes)
    net.conv1 = _stem(in_channels, 24)
    net.maxpool = nn.Identity()
    return net, ["conv1", "stage2", "stage3", "stage4", "conv5"]


MODELS: dict[str, Builder] = {
    "smallcnn": _smallcnn,
    **{f"resnet{d}": partial(_cifar_resnet, depth=d) for d in (8, 20, 32, 56)},
    "resnet18": partial(_tv_resnet, layers=(2, 2, 2, 2)),
    "resnet34": partial(_tv_resnet, layers=(3, 4, 6, 3)),
    "vgg11": partial(_vgg, cfg="vgg11"),
    "vgg16": partial(_vgg, cfg="vgg16"),
    "mobilenetv2": _mobilenetv2,
    "shufflenetv2": _shufflenetv2,
}


def _probe_sizes(
    builder: Builder, num_classes: int, in_channels: int, image_size: int, names: list[str]
) -> dict[str, tuple[int, int]]:
    """Spatial size of each candidate layer's output, from a free forward pass on the meta device."""
    with torch.device("meta"):
        net, _ = builder(num_classes, in_channels, image_size)
    net.eval()
    modules, sizes = dict(net.named_modules()), {}
    hooks = [
        modules[n].register_forward_hook(
            lambda m, i, o, n=n: sizes.__setitem__(n, tuple(o.shape[-2:]))
        )
        for n in names
    ]
    try:
        net(torch.empty(1, in_channels, image_size, image_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return sizes


class Classifier(nn.Module):
    """A backbone with its input normalisation and Grad-CAM layer: [0, 1] images in, logits out.

    Args:
        backbone: module mapping normalised images ``[B, C, H, W]`` to logits ``[B, K]``.
        name: registry name (``build_model`` rebuilds the same model from ``model_info``).
        num_classes, in_channels, image_size: what the model was built for.
        mean, std: per-channel normalisation in [0, 1] units, length ``in_channels``.
        cam_candidates: dotted layer names (relative to ``backbone``), shallow to deep.
        cam_sizes: spatial output size of each candidate at ``image_size``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        name: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        cam_candidates: Sequence[str],
        cam_sizes: dict[str, tuple[int, int]],
    ):
        super().__init__()
        self.backbone, self.name = backbone, name
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self._cam_sizes = {f"backbone.{n}": cam_sizes[n] for n in cam_candidates}

    @property
    def model_info(self) -> dict:
        """JSON-able description; ``build_model(**model_info)`` rebuilds the architecture."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for float images in [0, 1].

        Args:
            x: ``[B, C, H, W]`` float in [0, 1], ``C == in_channels``.

        Returns:
            ``[B, num_classes]`` logits.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"{self.name} expects images [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        return self.backbone((x - self.mean) / self.std)

    def cam_layer_names(self) -> list[str]:
        """Sensible Grad-CAM layers: the deepest candidate at each resolution, shallow to deep.

        Names are dotted paths as in ``named_modules()`` (e.g. ``"backbone.layer3"``).
        """
        names = list(self._cam_sizes)
        return [
            n
            for i, n in enumerate(names)
            if i + 1 == len(names) or self._cam_sizes[names[i + 1]] != self._cam_sizes[n]
        ]

    def cam_layer_size(self, name: str) -> tuple[int, int]:
        """Spatial output size ``(h, w)`` of a candidate layer at ``image_size``."""
        return self._cam_sizes[self._full_name(name)]

    @property
    def cam_layer_name(self) -> str:
        """Name of the default Grad-CAM layer: the deepest candidate whose output is larger than
        1x1. A 1x1 map gives a constant (uninformative) CAM, e.g. the last stage of ResNet-18 on
        8x8."""
        names = self.cam_layer_names()
        good = [n for n in names if min(self._cam_sizes[n]) > 1]
        return good[-1] if good else names[0]

    @property
    def cam_layer(self) -> nn.Module:
        """The default Grad-CAM layer (the module named :attr:`cam_layer_name`)."""
        return self.get_layer(self.cam_layer_name)

    def _full_name(self, name: str) -> str:
        modules = dict(self.named_modules())
        for full in (name, f"backbone.{name}"):
            if full in modules and full != "":
                return full
        raise InputError(
            f"no layer named '{name}' in {self.name}; Grad-CAM choices: {', '.join(self.cam_layer_names())}"
        )

    def get_layer(self, dotted_name: str) -> nn.Module:
        """The submodule at ``dotted_name`` (as in ``named_modules()``; the ``backbone.`` prefix is optional)."""
        return dict(self.named_modules())[self._full_name(dotted_name)]


def _check_stats(label: str, values, in_channels: int, positive: bool) -> tuple[float, ...]:
    need = "positive " if positive else ""
    bad = InputError(
        f"{label} must be {in_channels} finite {need}value(s), one per channel, got {values!r}"
    )
    try:  # any sequence of numbers: tuple, list, numpy array, tensor
        vals = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise bad from None
    if (
        len(vals) != in_channels
        or not all(map(math.isfinite, vals))
        or (positive and min(vals) <= 0)
    ):
        raise bad
    return vals


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """Build a registered model wrapped in a :class:`Classifier`.

    Args:
        name: one of ``MODELS`` (case-insensitive).
        num_classes: number of output logits K (>= 2).
        in_channels: image channels C (1 for digits, 3 for colour).
        image_size: side S of the square training images; picks the Grad-CAM layer and,
            for VGG, how many max-pools to keep. Other sizes still run (global pooling).
        mean, std: per-channel normalisation in [0, 1] units (``bundle.mean``/``bundle.std``);
            default 0.5 / 0.5 (maps [0, 1] to [-1, 1]).

    Returns:
        A ``Classifier`` mapping ``[B, C, H, W]`` floats in [0, 1] to ``[B, K]`` logits.
    """
    key = name.lower().strip() if isinstance(name, str) else name
    if key not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    num_classes = check_int("num_classes", num_classes, minimum=2)
    in_channels = check_int("in_channels", in_channels, minimum=1)
    image_size = check_int("image_size", image_size, minimum=1)
    mean = _check_stats("mean", (0.5,) * in_channels if mean is None else mean, in_channels, False)
    std = _check_stats("std", (0.5,) * in_channels if std is None else std, in_channels, True)
    builder = MODELS[key]
    backbone, candidates = builder(num_classes, in_channels, image_size)
    sizes = _probe_sizes(builder, num_classes, in_channels, image_size, candidates)
    if min(min(s) for s in sizes.values()) < 1:
        raise InputError(
            f"{key} collapses a {image_size}x{image_size} image to an empty feature map; use a larger image_size"
        )
    return Classifier(
        backbone, key, num_classes, in_channels, image_size, mean, std, candidates, sizes
    )
