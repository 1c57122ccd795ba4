"""Training methods under one recipe: each turns a loaded batch into a loss.

Methods compared in the IPS paper (Choi et al., Neurocomputing 2025) and its peers:

- ``ce``: plain cross-entropy.
- ``label_smoothing``: cross-entropy against smoothed targets (Szegedy et al., CVPR 2016).
- ``cutout``: a square of each image is blanked (DeVries & Taylor, arXiv 1708.04552).
- ``cutmix`` / ``mixup``: images and labels mixed with a rolled copy of the batch (Yun et al.,
  ICCV 2019; Zhang et al., ICLR 2018), drawn as ``torchvision.transforms.v2.CutMix`` / ``MixUp``
  draw them and applied on the device (``TorchvisionMix``).
- ``cskd``: class-wise self-KD (Yun et al., CVPR 2020): CE on an anchor plus
  ``T^2 * lambda * KL(p_partner || p_anchor)`` at temperature T, the partner (another image of
  the same class) forwarded without gradient.
- ``ips``: intra-class patch swap: same-class pairs exchange random patches
  (:func:`ipskit.swap.patch_swap`), both results are forwarded in one 2B batch and trained
  with :func:`ipskit.losses.ips_loss`.
- ``ips+cutmix`` / ``ips+mixup`` / ``ips+cutout``: IPS, then the mixing drawn ONCE per batch and
  applied identically to both sides of every pair, so the two sides still share one (soft)
  label and the KL compares like with like.

Which class implements which ``--method`` name, and whether it needs pairs, is decided in one
place, ``ipskit.registry.METHODS``; ``build_method`` checks that a class's ``needs_pairs``
agrees with its entry. Pair methods expect the batch of a
:class:`ipskit.pairs.SameClassPairSampler` loader: 2B images, anchors then partners. Every
method has the same interface:

    method = build_method(cfg, num_classes=10, fill=bundle.mean)
    out = method.step(model, x, y, generator)      # x [N, C, H, W] in [0, 1], y [N]
    out.loss.backward()                            # out.ce, out.kd: detached parts for logging
    acc = (out.logits.argmax(1) == out.targets).float().mean()

Randomness is drawn from ``generator``, on its device, never from the global RNG: a step is a
pure function of (model, batch, generator state). The mixers, like the swap, draw and apply
without a host-device sync.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from ipskit.losses import IPSLoss, _ips_loss, kl_divergence
from ipskit.pairs import split_pair
from ipskit.registry import MethodSpec, method_spec
from ipskit.swap import PatchSwap, _apply_swap, _draw_swap

__all__ = [
    "StepOutput",
    "Method",
    "CrossEntropy",
    "Mixed",
    "CSKD",
    "IPS",
    "Mixer",
    "TorchvisionMix",
    "MixParams",
    "CutMixer",
    "Cutout",
    "draw_cutout",
    "apply_cutout",
    "build_mixer",
    "build_method",
]


@dataclass
class StepOutput:
    """What one training step gives back to the loop.

    Attributes:
        loss: scalar tensor to back-propagate.
        ce, kd: detached scalars, the unweighted cross-entropy and distillation parts (kd is 0
            for methods without one).
        logits: [N, K] detached logits used for train accuracy.
        targets: [N] hard labels those logits are scored against (the labels before mixing).
    """

    loss: Tensor
    ce: Tensor
    kd: Tensor
    logits: Tensor
    targets: Tensor


def _zero(like: Tensor) -> Tensor:
    return torch.zeros((), device=like.device, dtype=torch.float32)


# ----- batch regularisers (mixers) ------------------------------------------------------------
class Mixer:
    """A batch regulariser: draw once, apply identically to each batch in ``xs``.

    ``__call__(xs, y, generator) -> (mixed xs, targets)``, where ``xs`` is a list of
    [B, C, H, W] batches whose row i shares label ``y[i]`` (one batch, or the two sides of IPS
    pairs) and ``targets`` is [B] class ids or [B, K] soft labels.
    """

    def __call__(
        self, xs: list[Tensor], y: Tensor, generator: torch.Generator
    ) -> tuple[list[Tensor], Tensor]:
        raise NotImplementedError


@functools.lru_cache(maxsize=128)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor made once per device: a mixer's hot path only reads it."""
    with torch.inference_mode(False):  # usable outside inference mode even if built inside it
        return torch.tensor(values, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _edge_table(size: int, device: torch.device) -> Tensor:
    """long [2, size]: (l, -(l + 1)) for every pixel row or column l. Row l is inside
    [start, end) iff both are >= (start, -end): one compare for both edges of every box."""
    with torch.inference_mode(False):  # usable outside inference mode even if built inside it
        at = torch.arange(size, device=device)
        return torch.stack([at, -(at + 1)])


def _box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """bool [N, 1, H, W]: True inside each box of ``boxes`` [N, 4] (y1, x1, y2, x2), rows y1..y2-1
    and columns x1..x2-1 (boxes may reach past the border: only pixels count). Four kernels:
    the rows and the columns of every box are tested at once, then crossed."""
    n = boxes.shape[0]
    lower = boxes * _constant((1, 1, -1, -1), boxes.dtype, boxes.device)  # (y1, x1, -y2, -x2)
    edges = _edge_table(max(height, width), boxes.device)  # (2, L)
    bounds = lower.view(n, 2, 2).transpose(1, 2)[..., None]  # (N, 2, 2, 1): (y1, -y2), (x1, -x2)
    inside = (edges >= bounds).all(dim=2)  # (N, 2, L): row l inside, column l inside
    return inside[:, None, 0, :height, None] & inside[:, None, 1, None, :width]  # (N, 1, H, W)


@dataclass(frozen=True)
class MixParams:
    """One batch's draw of :class:`TorchvisionMix`, on the generator's device.

    Attributes:
        lam: float [], mixup only: the weight of each row's own image (1 when the batch is not
            mixed).
        box: float [1, 4], cutmix only: (y1, x1, y2, x2), the rows y1..y2-1 and columns
            x1..x2-1 taken from the previous row, before clipping to the image (empty when the
            batch is not mixed). The label weight follows from its clipped area.
        mixed: float [], 1.0 if the batch is mixed at all (probability ``prob``), else 0.0;
            already folded into ``lam`` and ``box``.
    """

    lam: Tensor | None = None
    box: Tensor | None = None
    mixed: Tensor | None = None


class TorchvisionMix(Mixer):
    """CutMix or MixUp as ``torchvision.transforms.v2`` does them, with probability ``prob`` per
    batch, drawn from the step's generator and applied on the device without a host sync.

    The draw is torchvision's: lam ~ Beta(alpha, alpha); for CutMix a centre uniform over the
    pixels and a box of half-sides ``floor(sqrt(1 - lam) * H / 2)`` and ``floor(... * W / 2)``
    clipped to the image, the label weight 1 - (clipped area) / (H * W); every row mixed with
    the previous one (``roll(1, 0)``). Torchvision's own transform (``self.transform``) takes
    Python numbers (a sync per batch on a GPU) and is kept as the reference the tests compare
    with. Whether the batch is mixed is folded into the numbers (lam = 1, an empty box), so
    targets are always [B, K] soft labels, one-hot for a batch left as it is (the same
    cross-entropy as its class ids); ``prob = 0`` returns the batch and its class ids. With a
    CPU generator an unmixed batch is returned at once (no device is waited for to know it).

    Args:
        kind: "cutmix" or "mixup".
        num_classes: K, for the soft labels.
        alpha: Beta(alpha, alpha) parameter of the mixing ratio.
        prob: probability that a batch is mixed at all.
    """

    def __init__(self, kind: str, num_classes: int, alpha: float = 1.0, prob: float = 0.5):
        cls = {"cutmix": v2.CutMix, "mixup": v2.MixUp}[kind]
        self.kind, self.prob, self.alpha, self.num_classes = kind, prob, alpha, num_classes
        self.transform = cls(alpha=alpha, num_classes=num_classes)

    def draw(self, height: int, width: int, generator: torch.Generator) -> MixParams:
        """Draw one batch's mixing (3 kernels for MixUp, 8 for CutMix on square images, no host
        sync)."""
        dev = generator.device
        f32 = torch.float32
        # 1. (lam, 1 - lam) ~ Dirichlet(alpha, alpha), as torch's Beta draws it but from our
        #    generator, and whether the batch is mixed at all (1.0 or 0.0). Only 1 - lam is
        #    used, times that: 0 when the batch is left as it is.
        conc = _constant((float(self.alpha),) * 2, f32, dev)
        one_minus_lam = torch._sample_dirichlet(conc, generator)[1]  # ~ Beta(alpha, alpha)
        mixed = torch.bernoulli(_constant(float(self.prob), f32, dev), generator=generator)
        if self.kind == "mixup":
            # lam = 1 - mixed * (1 - lam): lam, or 1 (the batch itself) when not mixed
            return MixParams(
                lam=torch.addcmul(_constant(1.0, f32, dev), mixed, one_minus_lam, value=-1),
                mixed=mixed,
            )
        # 2. CutMix's box: half-sides floor(sqrt(1 - lam) * size / 2) (0 when not mixed: an
        #    empty box) around a centre uniform over the pixels.
        half = (
            (one_minus_lam * mixed).sqrt() * _constant((height / 2, width / 2), f32, dev)
        ).floor()  # (hy, hx)
        if height == width:  # integers uniform in 0..H-1, as torchvision draws them
            centre = torch.randint(height, (2,), generator=generator, device=dev, dtype=f32)
        else:
            u = torch.rand(2, generator=generator, device=dev)
            centre = (u * _constant((height, width), f32, dev)).floor()  # (cy, cx)
        box = torch.addcmul(centre, half, _constant(((-1, -1), (1, 1)), f32, dev))  # (2, 2)
        return MixParams(box=box.view(1, 4), mixed=mixed)  # (cy - hy, cx - hx, cy + hy, cx + hx)

    def apply(self, xs: list[Tensor], y: Tensor, params: MixParams) -> tuple[list[Tensor], Tensor]:
        """Apply one draw identically to every batch in ``xs`` (so pairs keep a shared label).

        Returns:
            (mixed xs, each [B, C, H, W]; soft targets [B, K]).
        """
        _, _, h, w = xs[0].shape
        one_hot = _one_hot_table(self.num_classes, y.device)[y]  # (B, K)
        if params.box is not None:
            inside = _box_mask(params.box.to(xs[0].device), h, w)  # (1, 1, H, W)
            # the labels' share of the previous row: the clipped box's area / (H * W)
            prev = inside.mean(dtype=torch.float32).to(y.device)
            return (
                [torch.where(inside, x.roll(1, 0), x) for x in xs],
                torch.lerp(one_hot, one_hot.roll(1, 0), prev),
            )
        # lam * row + (1 - lam) * previous row, for the images and the labels alike
        lam = params.lam.to(xs[0].device)
        return (
            [torch.lerp(x.roll(1, 0), x, lam.to(x.dtype)) for x in xs],
            torch.lerp(one_hot.roll(1, 0), one_hot, lam.to(y.device)),
        )

    def __call__(self, xs, y, generator):
        if self.prob == 0:
            return xs, y
        params = self.draw(xs[0].shape[2], xs[0].shape[3], generator)
        if generator.device.type == "cpu" and not params.mixed:
            # Drawn on the host, the gate is read without a device sync: an unmixed batch skips
            # the work that would give it back unchanged (apply's result: the images, one-hot
            # labels). A generator on a GPU always takes apply's branch-free path.
            return list(xs), _one_hot_table(self.num_classes, y.device)[y]
        return self.apply(xs, y, params)


@functools.lru_cache(maxsize=16)
def _one_hot_table(num_classes: int, device: torch.device) -> Tensor:
    """float [K, K] identity: row k is the one-hot label of class k."""
    with torch.inference_mode(False):
        return torch.eye(num_classes, device=device)


CutMixer = TorchvisionMix  # deprecated name (it does MixUp too); kept for one release


def draw_cutout(
    batch_size: int, height: int, width: int, size: int, generator: torch.Generator
) -> Tensor:
    """Draw Cutout squares: a centre uniform over the image, clipped at the border.

    Returns:
        long [B, 4] boxes (y1, x1, y2, x2), on the generator's device.
    """
    dev = generator.device
    if height == width:  # one draw, rows then columns: the same numbers as two on the CPU
        centre = torch.randint(height, (2, batch_size), generator=generator, device=dev).T
    else:
        centre = torch.cat(
            [
                torch.randint(height, (batch_size, 1), generator=generator, device=dev),
                torch.randint(width, (batch_size, 1), generator=generator, device=dev),
            ],
            dim=1,
        )  # (B, 2): cy, cx
    lo, hi = size // 2, size - size // 2
    corners = torch.cat([centre, centre], dim=1) + _constant((-lo, -lo, hi, hi), torch.long, dev)
    return corners.clamp(
        _constant((0,) * 4, torch.long, dev), _constant((height, width) * 2, torch.long, dev)
    )  # (B, 4)


def apply_cutout(x: Tensor, boxes: Tensor, fill: Tensor | float = 0.0) -> Tensor:
    """Fill each image's box with ``fill``.

    Args:
        x: [B, C, H, W] images. boxes: long [B, 4] (y1, x1, y2, x2) from ``draw_cutout``.
        fill: a float, or [C] per-channel values (the dataset mean is 0 after normalisation,
            which is what the original Cutout fills).
    Returns:
        [B, C, H, W] images with the boxes filled.
    """
    inside = _box_mask(boxes.to(x.device), x.shape[2], x.shape[3])  # (B, 1, H, W)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return torch.where(inside, fill, x)


class Cutout(Mixer):
    """Cutout as a mixer: one square per row, the same square on every batch in ``xs``.

    Args:
        size: side of the square in pixels.
        fill: [C] fill values in [0, 1] (default 0.5 grey).
    """

    def __init__(self, size: int, fill: Sequence[float] | float = 0.5):
        self.size, self.fill = size, torch.as_tensor(fill, dtype=torch.float32)
        self._fills: dict = {}  # (device, dtype) -> fill [1, C, 1, 1]: no copy per step

    def __call__(self, xs, y, generator):
        _, _, h, w = xs[0].shape
        boxes = draw_cutout(xs[0].shape[0], h, w, self.size, generator)
        inside = _box_mask(boxes.to(xs[0].device), h, w)  # (B, 1, H, W), once for every batch
        key = (xs[0].device, xs[0].dtype)
        if key not in self._fills:
            self._fills[key] = self.fill.to(device=key[0], dtype=key[1]).reshape(1, -1, 1, 1)
        return [torch.where(inside, self._fills[key], x) for x in xs], y


# ----- methods --------------------------------------------------------------------------------
class Method:
    """Base class: ``step(model, x, y, generator) -> StepOutput``; ``needs_pairs`` says whether
    ``x`` must come from a same-class pair sampler (2B images, anchors then partners), and must
    agree with the method's ``ipskit.registry`` entry."""

    needs_pairs = False

    @classmethod
    def from_config(cls, cfg, spec: MethodSpec, num_classes: int, image_size: int, fill) -> Method:
        """The method with the settings ``cfg`` gives it (see ``spec.settings``)."""
        raise NotImplementedError

    def step(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> StepOutput:
        """One training step's loss.

        Args:
            model: maps [N, C, H, W] images in [0, 1] to [N, K] logits.
            x: [N, C, H, W] batch (N = 2B for pair methods). y: [N] class ids.
            generator: source of this step's random choices (on the data's device).
        Returns:
            StepOutput.
        """
        raise NotImplementedError


class CrossEntropy(Method):
    """``ce`` (smoothing 0) and ``label_smoothing`` (smoothing eps)."""

    def __init__(self, smoothing: float = 0.0):
        self.smoothing = smoothing

    @classmethod
    def from_config(cls, cfg, spec, num_classes, image_size, fill):
        return cls(cfg.smoothing if "smoothing" in spec.settings else 0.0)

    def step(self, model, x, y, generator):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.smoothing)
        return StepOutput(loss, loss.detach(), _zero(loss), logits.detach(), y)


class Mixed(Method):
    """Cross-entropy on images regularised by a mixer (``cutmix``, ``mixup``, ``cutout``)."""

    def __init__(self, mixer: Mixer):
        self.mixer = mixer

    @classmethod
    def from_config(cls, cfg, spec, num_classes, image_size, fill):
        return cls(build_mixer(spec.mixer, cfg, num_classes, image_size, fill))

    def step(self, model, x, y, generator):
        (x,), target = self.mixer([x], y, generator)
        logits = model(x)
        loss = F.cross_entropy(logits, target)  # soft [B, K] targets after cutmix/mixup
        return StepOutput(loss, loss.detach(), _zero(loss), logits.detach(), y)


class CSKD(Method):
    """Class-wise self-knowledge distillation (Yun et al., CVPR 2020).

    Loss on a batch of anchors x_a and same-class partners x_b:
    ``CE(z_a, y) + lambda * T^2 * KL(softmax(z_b / T) || softmax(z_a / T))``, with z_b from a
    forward pass without gradient (as the original code does).
    """

    needs_pairs = True

    def __init__(self, temperature: float = 4.0, lam: float = 1.0):
        self.temperature, self.lam = temperature, lam

    @classmethod
    def from_config(cls, cfg, spec, num_classes, image_size, fill):
        return cls(cfg.cskd_temperature, cfg.cskd_lambda)

    def step(self, model, x, y, generator):
        x_a, x_b, y = split_pair(x, y, check_labels=False)
        logits = model(x_a)
        with torch.no_grad():
            partner = model(x_b)
        ce = F.cross_entropy(logits, y)
        t = self.temperature
        kd = kl_divergence(partner, logits, t).mean() * t * t
        return StepOutput(ce + self.lam * kd, ce.detach(), kd.detach(), logits.detach(), y)


class IPS(Method):
    """Intra-class patch swap, optionally followed by a mixer applied to both sides alike.

    Settings are checked once, here; ``step`` then draws, swaps and computes the loss without
    checking them again (the grid is still checked against each batch's image size).

    Args:
        grid: cells per side g. pr: swap probability per pair. swap_fraction: see draw_swap.
        loss_kwargs: temperature, alpha, gamma, kd_direction, detach_target, t2_scale for
            :func:`ipskit.losses.ips_loss`.
        mixer: optional Mixer run after the swap.
    """

    needs_pairs = True

    def __init__(
        self,
        grid: int,
        pr: float = 0.5,
        swap_fraction: float | None = None,
        loss_kwargs: dict | None = None,
        mixer: Mixer | None = None,
    ):
        # The module forms check the settings (and fill in the loss's defaults) once.
        swap = PatchSwap(grid=grid, pr=pr, swap_fraction=swap_fraction)
        self.grid, self.pr, self.swap_fraction = swap.grid, swap.pr, swap.swap_fraction
        self.loss_kwargs, self.mixer = dict(loss_kwargs or {}), mixer
        self._loss_settings = IPSLoss(**self.loss_kwargs).kwargs

    @classmethod
    def from_config(cls, cfg, spec, num_classes, image_size, fill):
        mixer = build_mixer(spec.mixer, cfg, num_classes, image_size, fill) if spec.mixer else None
        loss_kwargs = dict(
            temperature=cfg.temperature,
            alpha=cfg.alpha,
            gamma=cfg.gamma,
            kd_direction=cfg.kd_direction,
            detach_target=cfg.detach_target,
            t2_scale=cfg.t2_scale,
        )
        return cls(cfg.check_image_size(image_size), cfg.pr, cfg.swap_fraction, loss_kwargs, mixer)

    def step(self, model, x, y, generator):
        # 1. Pairs from the sampler's layout; 2. swap (as patch_swap, settings checked in
        # __init__); 3. optional mixer on both sides alike.
        x_a, x_b, y = split_pair(x, y, check_labels=False)
        decision = _draw_swap(
            x_a.shape[0], self.grid, self.pr, generator, x_a.device, self.swap_fraction
        )
        x_a, x_b = _apply_swap(x_a, x_b, decision)
        target = y
        if self.mixer is not None:
            (x_a, x_b), target = self.mixer([x_a, x_b], y, generator)
        # 4. One forward over both sides: batch-norm statistics see the whole 2B batch.
        logits = model(torch.cat([x_a, x_b]))  # (2B, K)
        z_a, z_b = logits.chunk(2)
        out = _ips_loss(z_a, z_b, target, **self._loss_settings)
        return StepOutput(
            out.loss, out.ce.detach(), out.kd.detach(), logits.detach(), torch.cat([y, y])
        )


def build_mixer(kind: str, cfg, num_classes: int, image_size: int, fill) -> Mixer:
    """The mixer named ``kind`` (one of ``ipskit.registry.MIXERS``) with ``cfg``'s settings."""
    if kind == "cutout":
        return Cutout(cfg.cutout_size or max(1, image_size // 2), fill)
    return TorchvisionMix(kind, num_classes, cfg.mix_alpha, cfg.mix_prob)


def build_method(
    cfg, num_classes: int, image_size: int, fill: Sequence[float] | float = 0.5
) -> Method:
    """The method a TrainConfig names, with its settings, as its registry entry says.

    Args:
        cfg: a TrainConfig (reads method and that method's settings).
        num_classes: K. image_size: training image side in pixels (IPS grid, cutout size).
        fill: Cutout fill value(s) in [0, 1], e.g. the dataset mean.
    Returns:
        A Method.
    Raises:
        ValueError for an unknown method; TypeError if the registry and the class disagree on
        pairs (a bug in a new method: the sampler would feed the step the wrong layout).
    """
    spec = method_spec(cfg.method)
    cls = globals().get(spec.step_class)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(
            f"registry entry {spec.name!r} names {spec.step_class!r}, which is not "
            f"a Method class in ipskit.methods"
        )
    if cls.needs_pairs != spec.needs_pairs:
        raise TypeError(
            f"{cls.__name__}.needs_pairs is {cls.needs_pairs} but the registry "
            f"entry {spec.name!r} says {spec.needs_pairs}"
        )
    return cls.from_config(cfg, spec, num_classes, image_size, fill)
