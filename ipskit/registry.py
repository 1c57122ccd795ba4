"""The names ipskit knows, in one place: methods (with what each needs), datasets and models.

Everything that depends on a method's identity is derived from its :class:`MethodSpec` here:
the pair sampler (``needs_pairs``), the IPS columns of run lists and sweep tables
(``swaps_patches``), the settings a method reads, and the class that implements its step
(``ipskit.methods``, looked up by name so that this module imports nothing but the leaf
``ipskit.checks``, and ``ipskit.config`` can check names without importing models or data).

Adding a method is one class in ``ipskit/methods.py`` (a ``Method`` with a ``from_config``
classmethod) plus one entry in :data:`METHODS` (docs/ARCHITECTURE.md shows an example).

Usage:
    spec = method_spec("ips+cutmix")   # MethodSpec(name, step_class="IPS", mixer="cutmix", ...)
    spec.needs_pairs, spec.swaps_patches, spec.settings
"""

from __future__ import annotations

from dataclasses import dataclass

from ipskit.checks import InputError

__all__ = [
    "MethodSpec",
    "METHODS",
    "METHOD_NAMES",
    "MIXERS",
    "method_spec",
    "swaps_patches",
    "DATASETS",
    "IMAGEFOLDER",
    "MODELS",
]

MIXERS = ("cutmix", "mixup", "cutout")  # batch regularisers, alone or riding on IPS
_MIXER_SETTINGS = {
    "cutmix": ("mix_alpha", "mix_prob"),
    "mixup": ("mix_alpha", "mix_prob"),
    "cutout": ("cutout_size",),
}
_IPS_SETTINGS = (
    "grid",
    "patch_size",
    "pr",
    "swap_fraction",
    "temperature",
    "alpha",
    "gamma",
    "kd_direction",
    "detach_target",
    "t2_scale",
)


@dataclass(frozen=True)
class MethodSpec:
    """What ipskit needs to know about a training method.

    Attributes:
        name: the ``--method`` value.
        step_class: name of its ``ipskit.methods.Method`` subclass.
        needs_pairs: batches come from ``SameClassPairSampler`` (2B images: anchors, partners).
        swaps_patches: uses the IPS swap (``grid``, ``pr`` ... are meaningful).
        mixer: the batch regulariser it applies (one of :data:`MIXERS`) or None.
        settings: the ``TrainConfig`` fields it reads beyond the shared recipe.
        summary: one line for help texts.
    """

    name: str
    step_class: str
    needs_pairs: bool = False
    swaps_patches: bool = False
    mixer: str | None = None
    settings: tuple[str, ...] = ()
    summary: str = ""


def _specs() -> dict[str, MethodSpec]:
    specs = [
        MethodSpec("ce", "CrossEntropy", summary="plain cross-entropy"),
        MethodSpec(
            "ips",
            "IPS",
            needs_pairs=True,
            swaps_patches=True,
            settings=_IPS_SETTINGS,
            summary="intra-class patch swap: CE on both swapped sides + KL between them",
        ),
        MethodSpec(
            "label_smoothing",
            "CrossEntropy",
            settings=("smoothing",),
            summary="cross-entropy against smoothed targets",
        ),
        MethodSpec(
            "cskd",
            "CSKD",
            needs_pairs=True,
            settings=("cskd_temperature", "cskd_lambda"),
            summary="class-wise self-KD: a same-class partner's prediction as target",
        ),
    ]
    specs += [
        MethodSpec(m, "Mixed", mixer=m, settings=_MIXER_SETTINGS[m], summary=f"CE with {m}")
        for m in MIXERS
    ]
    specs += [
        MethodSpec(
            f"ips+{m}",
            "IPS",
            needs_pairs=True,
            swaps_patches=True,
            mixer=m,
            settings=_IPS_SETTINGS + _MIXER_SETTINGS[m],
            summary=f"IPS, then {m} applied alike to both sides of each pair",
        )
        for m in MIXERS
    ]
    return {s.name: s for s in specs}


METHODS: dict[str, MethodSpec] = _specs()
METHOD_NAMES = tuple(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The spec of a method name; ValueError (one line, the known names) for an unknown one."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown method {name!r}; choose one of: {', '.join(METHOD_NAMES)}"
        ) from None


def swaps_patches(method) -> bool:
    """Whether a method name uses the IPS swap (so ``grid`` and ``pr`` mean something); False
    for names ipskit does not know (an old or foreign run folder)."""
    spec = METHODS.get(method) if isinstance(method, str) else None
    return bool(spec and spec.swaps_patches)


# Datasets by name (``ipskit.data.load_dataset``), plus "imagefolder:PATH" for a folder.
DATASETS = ("digits", "cifar10", "cifar100")
IMAGEFOLDER = "imagefolder:"

# Architectures (``ipskit.models.build_model``); models.py checks that it builds exactly these.
MODELS = (
    "smallcnn",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet18",
    "resnet34",
    "vgg11",
    "vgg16",
    "mobilenetv2",
    "shufflenetv2",
)
