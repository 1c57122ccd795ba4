"""Tests for ipskit.cam: map sizes and range, no leaked hooks or memory, overlays, mass in mask."""

import gc

import numpy as np
import pytest
import torch

from ipskit.cam import cam_mass_in_mask, gradcam, overlay


class TinyCNN(torch.nn.Module):
    def __init__(self, in_channels=3, num_classes=4):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        )  # fmt: skip
        self.head = torch.nn.Linear(8, num_classes)

    @property
    def cam_layer(self):
        return self.features

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def _all_hooks(model):
    n = 0
    for m in model.modules():
        n += (
            len(m._forward_hooks)
            + len(m._forward_pre_hooks)
            + len(m._backward_hooks)
            + len(m._backward_pre_hooks)
        )
    return n


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyCNN()


@pytest.mark.parametrize("channels, size", [(1, 8), (3, 15), (3, 32)])
def test_maps_have_input_size_and_unit_range(channels, size):
    torch.manual_seed(0)
    m = TinyCNN(in_channels=channels)
    x = torch.rand(5, channels, size, size)
    maps = gradcam(m, x)
    assert maps.shape == (5, size, size) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert (maps.flatten(1).amax(dim=1) > 0.99).any()  # per-image min-max scaled


def test_targets_none_means_top_class_and_batches_agree(model):
    x = torch.rand(6, 3, 16, 16)
    top = model.eval()(x).argmax(dim=1)
    a = gradcam(model, x)
    b = gradcam(model, x, targets=top, batch_size=4)
    assert torch.allclose(a, b, atol=1e-5)


def test_state_restored(model):
    x = torch.rand(3, 3, 16, 16)
    model.train()
    for p in model.parameters():
        p.grad = None
    gradcam(model, x)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_frozen_parameters_still_give_maps(model):
    for p in model.parameters():
        p.requires_grad_(False)
    maps = gradcam(model, torch.rand(2, 3, 16, 16))
    assert maps.shape == (2, 16, 16) and maps.max() > 0


def test_100_calls_leak_no_hooks_and_no_memory(model):
    x = torch.rand(2, 3, 8, 8)
    for _ in range(3):  # warm-up: lazy imports, caches
        gradcam(model, x)
    gc.collect()
    objects, tensors = (
        len(gc.get_objects()),
        sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()),
    )
    for _ in range(100):
        gradcam(model, x)
    gc.collect()
    assert _all_hooks(model) == 0
    assert sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()) <= tensors + 5
    assert (
        len(gc.get_objects()) <= objects + 500
    )  # a leak of one object per call would be 100+/call


def test_errors_release_hooks(model):
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="targets must hold one class id per image"):
        gradcam(model, x, targets=[0])
    with pytest.raises(ValueError, match="is not a submodule"):
        gradcam(model, x, layer=torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="has no cam_layer"):
        gradcam(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 2)), x)
    # an out-of-range class raises IndexError inside pytorch-grad-cam, whose __exit__ swallows it
    with pytest.raises(ValueError, match="Grad-CAM failed"):
        gradcam(model, x, targets=[0, 99])
    assert _all_hooks(model) == 0


def test_ipskit_classifier_default_layer():
    from ipskit.models import build_model

    m = build_model("smallcnn", num_classes=10, in_channels=1, image_size=16)
    maps = gradcam(m, torch.rand(3, 1, 16, 16), targets=torch.tensor([0, 1, 2]))
    assert maps.shape == (3, 16, 16) and _all_hooks(m) == 0


# ----------------------------------------------------------------------------- overlay, mass


@pytest.mark.parametrize("channels", [1, 3])
def test_overlay(channels):
    img = torch.rand(channels, 10, 12)
    cam = torch.rand(10, 12)
    out = overlay(img, cam, alpha=0.4)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    plain = overlay(img, cam, alpha=0.0)
    expected = np.round(img.expand(3, -1, -1).permute(1, 2, 0).numpy() * 255)
    assert np.abs(plain.astype(float) - expected).max() <= 1
    with pytest.raises(ValueError, match=r"cam must be \[H, W\] = \(10, 12\)"):
        overlay(img, torch.rand(5, 5))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        overlay(img, cam, alpha=2)


def test_cam_mass_in_mask_references():
    from ipskit.swap import draw_swap, pixel_mask

    decision = draw_swap(6, grid=4, pr=1.0, generator=torch.Generator().manual_seed(0))
    mask = pixel_mask(decision, 16, 16)  # [6, 1, 16, 16]
    area = mask.float().mean(dim=(1, 2, 3))
    assert torch.allclose(
        cam_mass_in_mask(torch.ones(6, 16, 16), mask), area
    )  # flat map: share = area
    assert torch.allclose(cam_mass_in_mask(mask[:, 0].float(), mask), torch.ones(6))
    assert torch.allclose(cam_mass_in_mask((~mask[:, 0]).float(), mask), torch.zeros(6))
    cam = torch.rand(6, 16, 16)
    naive = torch.tensor([float((cam[i] * mask[i, 0]).sum() / cam[i].sum()) for i in range(6)])
    assert torch.allclose(cam_mass_in_mask(cam, mask), naive)
    assert torch.isnan(cam_mass_in_mask(torch.zeros(6, 16, 16), mask)).all()
    with pytest.raises(ValueError, match=r"expected cam \[B, H, W\] and mask \[B, 1, H, W\]"):
        cam_mass_in_mask(cam, mask[:, :, :8])
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        cam_mass_in_mask(cam, mask.float())
