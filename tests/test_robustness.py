"""Tests for ipskit.robustness: FGSM/PGD on a quickly trained digits model, corruptions, CIFAR-C files."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ipskit.checks import InputError
from ipskit.metrics import accuracy, predict
from ipskit.robustness import (
    CORRUPTIONS,
    corrupt,
    corruption_accuracy,
    fgsm,
    fgsm_curve,
    load_cifar_c,
    pgd,
)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def trained(digits):
    """A small MLP trained full-batch on sklearn digits for about a second."""
    x_tr, y_tr, _, _ = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x_tr), y_tr).backward()
        opt.step()
    return model.eval()


def _images(channels):
    """Natural-ish test images: digits upsampled to 32 px, or smooth colour textures."""
    if channels == 1:
        d = torch.tensor(load_digits().images[:16], dtype=torch.float32)[:, None] / 16.0
        return F.interpolate(d, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g)
    return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)


# ----------------------------------------------------------------------------- attacks


def test_trained_model_learns(trained, digits):
    _, _, x_te, y_te = digits
    assert accuracy(predict(trained, x_te), y_te) > 0.85


def test_fgsm_eps0_equals_clean_and_curve_is_non_increasing(trained, digits):
    _, _, x_te, y_te = digits
    clean = accuracy(predict(trained, x_te), y_te)
    eps = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3]
    accs = fgsm_curve(trained, x_te, y_te, eps, batch_size=100)
    assert accs[0] == pytest.approx(clean)
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < clean - 0.3  # the attack really bites


def test_fgsm_stays_in_ball_and_in_range(trained, digits):
    _, _, x, y = digits
    x, y = x[:64], y[:64]
    for p in trained.parameters():
        p.grad = None
    trained.train()
    adv = fgsm(trained, x, y, 0.1)
    assert trained.training  # mode restored
    assert all(p.grad is None for p in trained.parameters())  # only the input gradient was taken
    trained.eval()
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert torch.equal(fgsm(trained, x, y, 0.0), x)


def test_pgd_is_at_least_as_strong_as_fgsm(trained, digits):
    _, _, x, y = digits
    g = torch.Generator().manual_seed(0)
    adv = pgd(trained, x, y, 0.1, steps=10, generator=g)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    acc_pgd = accuracy(predict(trained, adv), y)
    acc_fgsm = accuracy(predict(trained, fgsm(trained, x, y, 0.1)), y)
    assert acc_pgd <= acc_fgsm + 0.01


@pytest.mark.parametrize(
    "bad, match",
    [
        (-0.01, r"must be in \[0, 1\], got -0.01"),
        (1.5, r"must be in \[0, 1\], got 1.5"),
        (float("nan"), "must be a finite number, got nan"),
        ("0.1", "must be a number, got str '0.1'"),
        (True, "must be a number, got bool True"),
    ],
)
def test_epsilon_outside_unit_interval(trained, digits, bad, match):
    _, _, x, y = digits
    with pytest.raises(InputError, match=r"epsilon \(pixel units of a \[0, 1\] image\) " + match):
        fgsm_curve(trained, x[:4], y[:4], [0.0, bad])
    with pytest.raises(InputError, match=r"epsilon .*" + match):
        fgsm(trained, x[:4], y[:4], bad)


def test_attack_settings_are_checked_and_numpy_scalars_accepted(trained, digits):
    _, _, x, y = digits
    x, y = x[:8], y[:8]
    assert torch.equal(fgsm(trained, x, y, np.float32(0.25)), fgsm(trained, x, y, 0.25))
    a = pgd(trained, x, y, 0.1, steps=np.int64(2), generator=torch.Generator().manual_seed(0))
    b = pgd(trained, x, y, 0.1, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(InputError, match="steps must be >= 1, got 0"):
        pgd(trained, x, y, 0.1, steps=0)
    with pytest.raises(InputError, match="steps must be an int, got bool True"):
        pgd(trained, x, y, 0.1, steps=True)
    with pytest.raises(InputError, match="batch_size must be >= 1, got 0"):
        fgsm_curve(trained, x, y, [0.1], batch_size=0)


# ----------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_close_at_severity1_and_ordered(name, channels):
    x = _images(channels)
    dist = []
    for s in range(1, 6):
        out = corrupt(x, name, s, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
        dist.append((out - x).pow(2).mean().sqrt().item())  # RMS distance in [0, 1] units
    assert 0 < dist[0] < 0.1, dist
    assert all(a < b for a, b in zip(dist, dist[1:])), dist


def test_corruption_count_and_reproducibility():
    assert len(CORRUPTIONS) >= 10
    x = _images(3)
    for name in (
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "speckle_noise",
        "elastic_transform",
    ):
        a = corrupt(x, name, 3, torch.Generator().manual_seed(5))
        b = corrupt(x, name, 3, torch.Generator().manual_seed(5))
        c = corrupt(x, name, 3, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c), name


def test_corruption_references():
    x = _images(1)
    assert torch.allclose(
        corrupt(x, "brightness", 2), (x + 0.1).clamp(0, 1), atol=1e-6
    )  # gray: V = x
    m = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(corrupt(x, "contrast", 2), ((x - m) * 0.5 + m).clamp(0, 1), atol=1e-6)
    p = corrupt(x, "pixelate", 5)
    assert torch.allclose(corrupt(p, "pixelate", 5), p, atol=1e-5)  # a projection: idempotent
    assert torch.allclose(
        p.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5
    )  # block averages keep the mean
    const = torch.full((2, 3, 16, 16), 0.4)
    for name in ("gaussian_blur", "defocus_blur", "elastic_transform"):
        assert torch.allclose(
            corrupt(const, name, 5, torch.Generator().manual_seed(0)), const, atol=1e-5
        ), name
    assert (corrupt(const, "jpeg_compression", 5) - const).abs().max() < 2 / 255


def test_brightness_keeps_hue_on_colour():
    x = torch.tensor([0.2, 0.4, 0.1]).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    out = corrupt(x, "brightness", 3)
    assert torch.allclose(out.amax(dim=1), torch.full((1, 4, 4), 0.55), atol=1e-6)
    assert torch.allclose(
        out / out.amax(dim=1, keepdim=True), x / x.amax(dim=1, keepdim=True), atol=1e-6
    )


def test_corruption_errors():
    x = _images(3)[:2]
    with pytest.raises(
        InputError, match="unknown corruption 'fog'; known corruptions: gaussian_noise, shot_noise"
    ):
        corrupt(x, "fog", 1)
    for bad, match in (
        (0, "must be >= 1 and <= 5, got 0"),
        (6, "must be >= 1 and <= 5, got 6"),
        (2.0, "must be an int, got float 2.0"),
        (True, "must be an int, got bool True"),
    ):
        with pytest.raises(InputError, match="corruption severity " + match):
            corrupt(x, "contrast", bad)
    assert torch.equal(corrupt(x, "contrast", np.int64(2)), corrupt(x, "contrast", 2))
    with pytest.raises(InputError, match=r"C = 1 or 3"):
        corrupt(torch.rand(2, 2, 8, 8), "contrast", 1)
    with pytest.raises(InputError, match=r"x must be in \[0, 1\]"):
        corrupt(x * 255, "contrast", 1)
    with pytest.raises(
        InputError, match="x must be a float tensor in \\[0, 1\\], got dtype torch.uint8"
    ):
        corrupt((x * 255).to(torch.uint8), "contrast", 1)


def test_corruption_accuracy_structure(trained, digits):
    _, _, x, y = digits
    x, y = x[:200], y[:200]
    names = ["gaussian_noise", "contrast"]
    res = corruption_accuracy(trained, x, y, names=names, severities=(1, 5), seed=0, batch_size=64)
    assert res["clean"] == pytest.approx(accuracy(predict(trained, x), y))
    assert set(res["accuracy"]) == set(names) and set(res["accuracy"]["contrast"]) == {"1", "5"}
    cells = [a for row in res["accuracy"].values() for a in row.values()]
    assert res["mean_corruption_accuracy"] == pytest.approx(np.mean(cells))
    assert res["accuracy"]["gaussian_noise"]["5"] <= res["accuracy"]["gaussian_noise"]["1"] + 0.02
    again = corruption_accuracy(
        trained, x, y, names=names[:1], severities=(1, 5), seed=0, batch_size=64
    )
    assert (
        again["accuracy"]["gaussian_noise"] == res["accuracy"]["gaussian_noise"]
    )  # per-cell seeds
    with pytest.raises(InputError, match="unknown corruption 'nope'"):
        corruption_accuracy(trained, x, y, names=["nope"])
    with pytest.raises(InputError, match="corruption severity must be >= 1 and <= 5, got 6"):
        corruption_accuracy(trained, x, y, names=["contrast"], severities=(1, 6))


# ----------------------------------------------------------------------------- CIFAR-C files


def _write_cifar_c(root, n_per=2, shape=None, labels_len=None):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, size=shape or (5 * n_per, 32, 32, 3), dtype=np.uint8)
    np.save(root / "fog.npy", xs)
    np.save(root / "labels.npy", np.arange(labels_len or xs.shape[0]) % 10)
    return xs


def test_load_cifar_c_block(tmp_path):
    xs = _write_cifar_c(tmp_path, n_per=2)
    x, y = load_cifar_c(tmp_path, "fog", 3)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.allclose(x, torch.from_numpy(xs[4:6]).permute(0, 3, 1, 2).float() / 255)
    assert y.tolist() == [4, 5]


def test_load_cifar_c_errors(tmp_path):
    _write_cifar_c(tmp_path, shape=(7, 32, 32, 3))
    with pytest.raises(
        ValueError,
        match=r"fog.npy has shape \(7, 32, 32, 3\) dtype uint8; expected uint8 \[5n, 32, 32, 3\]",
    ):
        load_cifar_c(tmp_path, "fog", 1)
    _write_cifar_c(tmp_path, shape=(10, 32, 32))
    with pytest.raises(ValueError, match="expected uint8"):
        load_cifar_c(tmp_path, "fog", 1)
    _write_cifar_c(tmp_path, n_per=2, labels_len=9)
    with pytest.raises(ValueError, match=r"labels.npy has shape \(9,\); expected \[10\]"):
        load_cifar_c(tmp_path, "fog", 1)
    with pytest.raises(ValueError, match="CIFAR-C file not found: .*snow.npy"):
        load_cifar_c(tmp_path, "snow", 1)
    with pytest.raises(ValueError, match="unknown CIFAR-C corruption 'smog'"):
        load_cifar_c(tmp_path, "smog", 1)
    with pytest.raises(InputError, match="CIFAR-C severity must be >= 1 and <= 5, got 6"):
        load_cifar_c(tmp_path, "fog", 6)
