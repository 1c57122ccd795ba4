"""Tests for ipskit.models: every registered model runs, trains and has a usable Grad-CAM layer."""

import io
import json

import pytest
import torch
import torch.nn as nn

from ipskit.checks import InputError
from ipskit.models import MODELS, Classifier, build_model

SHAPES = [(1, 16), (3, 32)]


def _cam_output_size(model: Classifier, x: torch.Tensor) -> tuple:
    got = {}
    handle = model.cam_layer.register_forward_hook(
        lambda m, i, o: got.__setitem__("shape", tuple(o.shape))
    )
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, got["shape"]


@pytest.mark.parametrize("channels, size", SHAPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_and_cam_layer(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size)
    x = torch.rand(3, channels, size, size)
    logits, cam_shape = _cam_output_size(model, x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    assert cam_shape[0] == 3 and cam_shape[2] > 1 and cam_shape[3] > 1
    nn.functional.cross_entropy(logits, torch.tensor([0, 3, 6])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_native_digits_size_runs_and_cam_layer_is_not_1x1(name):
    model = build_model(name, num_classes=10, in_channels=1, image_size=8).eval()
    with torch.no_grad():
        logits, cam_shape = _cam_output_size(model, torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 10) and min(cam_shape[2:]) > 1


def test_cam_sizes_match_a_real_forward_pass():
    model = build_model("resnet18", 10, 3, 32).eval()
    names = model.cam_layer_names()
    assert names == ["backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4"]
    seen = {}
    hooks = [
        model.get_layer(n).register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, tuple(o.shape[-2:]))
        )
        for n in names
    ]
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert (
        seen
        == {n: model.cam_layer_size(n) for n in names}
        == {
            "backbone.layer1": (32, 32),
            "backbone.layer2": (16, 16),
            "backbone.layer3": (8, 8),
            "backbone.layer4": (4, 4),
        }
    )
    assert model.cam_layer is model.backbone.layer4
    # at 8x8 ResNet-18's last stage is 1x1, whose CAM is constant: fall back to layer3
    assert build_model("resnet18", 10, 1, 8).cam_layer_names()[-1] == "backbone.layer4"
    small = build_model("resnet18", 10, 1, 8)
    assert small.cam_layer is small.backbone.layer3


def test_get_layer_accepts_names_with_and_without_backbone_prefix():
    model = build_model("resnet8", 10, 1, 16)
    assert model.get_layer("layer2") is model.get_layer("backbone.layer2") is model.backbone.layer2
    with pytest.raises(
        InputError, match=r"no layer named 'layer9' in resnet8; Grad-CAM choices: backbone.layer1, "
    ):
        model.get_layer("layer9")


def test_cifar_resnet_sizes_match_he_et_al():
    # He et al. 2016, Table 6: ResNet-20 0.27 M, ResNet-32 0.46 M, ResNet-56 0.85 M parameters
    for name, millions in (("resnet20", 0.27), ("resnet32", 0.46), ("resnet56", 0.85)):
        n = sum(p.numel() for p in build_model(name, 10, 3, 32).parameters())
        assert n / 1e6 == pytest.approx(millions, abs=0.006), name
    convs = [m for m in build_model("resnet20", 10).modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # 1 stem + 3 stages x 3 blocks x 2, option-A shortcuts have no conv


def test_normalisation_is_the_first_step():
    model = build_model("smallcnn", 5, 3, 16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2)).eval()
    x = torch.rand(2, 3, 16, 16)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 0.2]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.backbone((x - mean) / std))


def test_state_dict_round_trip_keeps_mean_std_and_model_info():
    model = build_model("resnet8", 4, 1, 16, mean=[0.3], std=[0.2]).eval()
    info = json.loads(json.dumps(model.model_info))
    assert info == {
        "name": "resnet8",
        "num_classes": 4,
        "in_channels": 1,
        "image_size": 16,
        "mean": [pytest.approx(0.3)],
        "std": [pytest.approx(0.2)],
    }
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "model_info": info}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    fresh = build_model(**{**ckpt["model_info"], "mean": [0.5], "std": [0.5]})
    fresh.load_state_dict(ckpt["model"])
    fresh.eval()
    assert torch.equal(fresh.mean, model.mean) and torch.equal(fresh.std, model.std)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"name": "resnet99", "num_classes": 10},
            r"unknown model 'resnet99'; choose one of: smallcnn, resnet8, .*shufflenetv2",
        ),
        ({"name": "resnet8", "num_classes": 1}, r"num_classes must be >= 2, got 1"),
        ({"name": "resnet8", "num_classes": True}, r"num_classes must be an int, got bool True"),
        (
            {"name": "resnet8", "num_classes": 10, "in_channels": 0},
            r"in_channels must be >= 1, got 0",
        ),
        (
            {"name": "resnet8", "num_classes": 10, "mean": (0.5,)},
            r"mean must be 3 finite value\(s\), one per channel, got \(0.5,\)",
        ),
        (
            {"name": "resnet8", "num_classes": 10, "mean": 0.5},
            r"mean must be 3 finite value\(s\), one per channel, got 0.5",
        ),
        (
            {"name": "resnet8", "num_classes": 10, "std": (0.5, 0.0, 0.5)},
            r"std must be 3 finite positive value\(s\)",
        ),
        (
            {"name": "resnet8", "num_classes": 10, "std": (0.5, float("inf"), 0.5)},
            r"std must be 3 finite positive value\(s\)",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        build_model(**kwargs)


def test_numpy_sizes_are_accepted_and_model_info_stays_json():
    import numpy as np

    model = build_model("smallcnn", np.int64(4), np.int64(1), np.int64(8), mean=np.array([0.5]))
    info = json.loads(json.dumps(model.model_info))
    assert info["num_classes"] == 4 and info["image_size"] == 8


def test_wrong_channel_count_is_a_clear_error():
    model = build_model("smallcnn", 10, 1, 16)
    with pytest.raises(
        InputError, match=r"smallcnn expects images \[B, 1, H, W\], got shape \(2, 3, 16, 16\)"
    ):
        model(torch.rand(2, 3, 16, 16))


def test_models_trained_at_one_size_run_at_another():
    # global pooling everywhere: a 32x32 model still classifies 8x8 inputs (no collapse to 0x0)
    for name in ("vgg11", "smallcnn", "shufflenetv2"):
        model = build_model(name, 10, 3, 32).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 3, 8, 8)).shape == (1, 10)
