"""Tests for ipskit.methods: every method's loss against an independent formula or invariant,
mixers applied identically to both sides of a pair, and every method learning on digits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from train_helpers import cache_datasets, tiny

from ipskit.config import METHOD_NAMES, TrainConfig
from ipskit.methods import (
    CSKD,
    IPS,
    CrossEntropy,
    CutMixer,
    Cutout,
    Mixed,
    TorchvisionMix,
    apply_cutout,
    build_method,
    draw_cutout,
)
from ipskit.swap import patch_swap
from ipskit.train import fit

K = 5


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _pair_batch(b=8, c=1, s=8, seed=0):
    """2B images (anchors then partners) with shared labels, as a pair loader yields them."""
    g = _gen(seed)
    y = torch.randint(K, (b,), generator=g)
    y = torch.cat([y, y])
    templates = torch.rand(K, c, s, s, generator=g)  # a learnable signal per class
    x = 0.5 * templates[y] + 0.5 * torch.rand(2 * b, c, s, s, generator=g)
    return x, y


def _model(c=1, seed=0, s=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * s * s, K))


def test_ce_and_label_smoothing_match_torch():
    x, y = _pair_batch()
    model = _model()
    for eps in (0.0, 0.1):
        out = CrossEntropy(eps).step(model, x, y, _gen())
        z = model(x)
        # independent smoothed-target formula
        target = F.one_hot(y, K).float() * (1 - eps) + eps / K
        ref = -(target * z.log_softmax(1)).sum(1).mean()
        assert torch.allclose(out.loss, ref, atol=1e-6)
        assert out.kd == 0 and torch.equal(out.targets, y)


def test_cskd_matches_naive_formula():
    x, y = _pair_batch()
    model = _model()
    out = CSKD(temperature=4.0, lam=0.5).step(model, x, y, _gen())
    b = x.shape[0] // 2
    z_a, z_b = model(x[:b]), model(x[b:]).detach()
    kl = F.kl_div(F.log_softmax(z_a / 4, 1), F.softmax(z_b / 4, 1), reduction="batchmean") * 16
    assert torch.allclose(out.ce, F.cross_entropy(z_a, y[:b]), atol=1e-6)
    assert torch.allclose(out.kd, kl, atol=1e-6)
    assert torch.allclose(out.loss, out.ce + 0.5 * kl, atol=1e-6)
    # the partner gives no gradient: the loss's graph only sees the anchors' forward
    out.loss.backward()
    assert out.logits.shape == (b, K)


def test_ips_step_is_patch_swap_then_ips_loss():
    from ipskit.losses import ips_loss

    x, y = _pair_batch()
    model = _model()
    method = IPS(grid=2, pr=1.0, loss_kwargs=dict(temperature=4.0))
    out = method.step(model, x, y, _gen(3))
    b = x.shape[0] // 2
    xa, xb, _ = patch_swap(x[:b], x[b:], grid=2, pr=1.0, generator=_gen(3))
    ref = ips_loss(model(xa), model(xb), y[:b], temperature=4.0)
    assert torch.allclose(out.loss, ref.loss, atol=1e-5)
    assert torch.equal(out.targets, y) and out.logits.shape == (2 * b, K)


def test_cutmixer_same_draw_on_both_sides_and_global_rng_untouched():
    x, y = _pair_batch(b=16)
    xa, xb, y = x[:16], x[16:], y[:16]
    mixer = CutMixer("cutmix", K, alpha=1.0, prob=1.0)
    state = torch.get_rng_state()
    (ma, mb), soft = mixer([xa, xb], y, _gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    # the box is where a side differs from its input; it must be the same box on both sides,
    # filled from the rolled batch (the previous row)
    changed_a = (ma != xa).any(1)
    changed_b = (mb != xb).any(1)
    assert torch.equal(changed_a, changed_b) and changed_a.any()
    assert torch.equal(
        ma[changed_a[:, None].expand_as(ma)], xa.roll(1, 0)[changed_a[:, None].expand_as(ma)]
    )
    assert soft.shape == (16, K) and torch.allclose(soft.sum(1), torch.ones(16))
    # soft labels: lam on the own class, 1 - lam on the rolled row's class
    lam = 1 - changed_a[0].float().mean()
    expected = lam * F.one_hot(y, K) + (1 - lam) * F.one_hot(y.roll(1, 0), K)
    assert torch.allclose(soft, expected.float(), atol=1e-6)
    # reproducible from the generator alone
    (ma2, _), soft2 = mixer([xa, xb], y, _gen(1))
    assert torch.equal(ma, ma2) and torch.equal(soft, soft2)


def test_mixup_and_prob_zero():
    x, y = _pair_batch(b=8)
    x, y = x[:8], y[:8]
    (m,), soft = CutMixer("mixup", K, prob=1.0)([x], y, _gen(2))
    rolled = x.roll(1, 0)
    lam = float(((m - rolled) / (x - rolled)).flatten()[0])  # the one ratio of the batch
    assert torch.allclose(m, lam * x + (1 - lam) * rolled, atol=1e-5)
    expected = lam * F.one_hot(y, K) + (1 - lam) * F.one_hot(y.roll(1, 0), K)
    assert torch.allclose(soft, expected.float(), atol=1e-5)
    (same,), hard = CutMixer("mixup", K, prob=0.0)([x], y, _gen(2))
    assert torch.equal(same, x) and torch.equal(hard, y)


def test_cutout_against_a_loop():
    g = _gen(5)
    x = torch.rand(6, 3, 10, 12, generator=g)
    boxes = draw_cutout(6, 10, 12, 4, _gen(7))
    out = apply_cutout(x, boxes, fill=torch.tensor([0.1, 0.2, 0.3]))
    ref = x.clone()
    for i, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
        assert 0 <= y1 <= y2 <= 10 and 0 <= x1 <= x2 <= 12 and y2 - y1 <= 4 and x2 - x1 <= 4
        for c, v in enumerate((0.1, 0.2, 0.3)):
            ref[i, c, y1:y2, x1:x2] = v
    assert torch.equal(out, ref)
    # a box in the interior is the full square
    interior = draw_cutout(2000, 32, 32, 8, _gen(0))
    full = ((interior[:, 2] - interior[:, 0]) == 8) & ((interior[:, 3] - interior[:, 1]) == 8)
    assert full.float().mean() > 0.5


def test_ips_plus_mixers_keep_a_shared_label():
    x, y = _pair_batch(b=8)
    for mixer in (CutMixer("cutmix", K, prob=1.0), CutMixer("mixup", K, prob=1.0), Cutout(4, 0.5)):
        method = IPS(grid=2, pr=0.5, mixer=mixer)
        out = method.step(_model(), x, y, _gen(0))
        assert torch.isfinite(out.loss)
    (ma, mb), _ = Cutout(4, 0.0)([x[:8], x[8:]], y[:8], _gen(0))
    assert torch.equal(ma == 0, mb == 0) and (ma == 0).any()  # the same square on both sides


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_lowers_its_loss_on_a_fixed_batch(name):
    cfg = TrainConfig(method=name, mix_prob=1.0)
    method = build_method(cfg, K, image_size=8, fill=0.5)
    assert method.needs_pairs == cfg.uses_pairs
    x, y = _pair_batch(b=16, seed=1)
    model = _model(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(15):
        out = method.step(model, x, y, _gen(0))  # same random draw every step
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_build_method_types():
    def build(m):
        return build_method(TrainConfig(method=m), K, 16)

    assert isinstance(build("ce"), CrossEntropy) and build("ce").smoothing == 0
    assert build("label_smoothing").smoothing == 0.1
    assert isinstance(build("cutmix"), Mixed) and isinstance(build("cskd"), CSKD)
    assert isinstance(build("cutout").mixer, Cutout) and build("cutout").mixer.size == 8
    assert isinstance(build("ips+mixup").mixer, TorchvisionMix) and build("ips").mixer is None
    assert CutMixer is TorchvisionMix  # the deprecated name still works
    with pytest.raises(ValueError, match="grid 32 cannot split 16x16"):
        build_method(TrainConfig(method="ips", grid=32), K, 16)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_learns_digits(tmp_path, monkeypatch, name):
    """Two short epochs on 8x8 digits: far above chance (10%) for every method."""
    cache_datasets(monkeypatch)
    s = fit(
        tiny(tmp_path, method=name, epochs=2, max_train_samples=640), progress=False, verbose=False
    )
    assert s["test_acc"] > 0.5, s


def test_the_registry_decides_pairs_and_a_disagreeing_class_is_an_error(monkeypatch):
    """One registry entry per method name; a class whose layout contradicts it cannot be built."""
    import dataclasses

    from ipskit import registry

    assert registry.METHOD_NAMES == METHOD_NAMES
    for name, spec in registry.METHODS.items():
        assert TrainConfig(method=name).uses_pairs == spec.needs_pairs
        assert registry.swaps_patches(name) == spec.swaps_patches == name.startswith("ips")
    assert registry.swaps_patches("not-a-method") is False and registry.swaps_patches(None) is False
    wrong = dataclasses.replace(registry.METHODS["ce"], step_class="CSKD")  # CSKD needs pairs
    monkeypatch.setitem(registry.METHODS, "ce", wrong)
    with pytest.raises(TypeError, match="CSKD.needs_pairs is True but the registry entry 'ce'"):
        build_method(TrainConfig(method="ce"), K, 16)
    monkeypatch.setitem(registry.METHODS, "ce", dataclasses.replace(wrong, step_class="split_pair"))
    with pytest.raises(TypeError, match="not a Method class"):
        build_method(TrainConfig(method="ce"), K, 16)


def test_config_names_come_from_the_registry_not_from_data_or_models():
    """config.py imports no other ipskit module than the registry (no upward imports), and the
    registry's names are exactly what models and data build."""
    import ast
    from pathlib import Path

    import ipskit.config
    from ipskit import models, registry

    tree = ast.parse(Path(ipskit.config.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("ipskit")} == {
        "ipskit.registry",
        "ipskit.checks",
    }
    assert tuple(models.MODELS) == registry.MODELS
