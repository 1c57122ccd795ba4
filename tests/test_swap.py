"""Tests for ipskit.swap: reference, invariants, statistics, determinism, bad input, and the op
budget of the per-batch random ops (swap, augmentation, mixers: few kernels, no host sync)."""

import math

import numpy as np
import pytest
import torch

from ipskit import PatchSwap, SwapDecision, apply_swap, draw_swap, patch_swap, pixel_mask
from ipskit.augment import AugmentSpec, augment_batch
from ipskit.checks import InputError
from ipskit.methods import Cutout, MixParams, TorchvisionMix
from ipskit.opcount import count_ops
from ipskit.swap import resolve_grid


def reference_swap(x_a, x_b, cells):
    """Naive per-sample, per-cell loop, written independently of ipskit: cell (i, j) covers
    rows [round_down(i*H/g), round_down((i+1)*H/g)) -- the integer split of H into g parts."""
    out_a, out_b = x_a.clone(), x_b.clone()
    B, _, H, W = x_a.shape
    g = cells.shape[1]
    for n in range(B):
        for i in range(g):
            for j in range(g):
                if cells[n, i, j]:
                    r0, r1 = -(-i * H // g), -(-(i + 1) * H // g)  # ceil(i*H/g)
                    c0, c1 = -(-j * W // g), -(-(j + 1) * W // g)
                    out_a[n, :, r0:r1, c0:c1] = x_b[n, :, r0:r1, c0:c1]
                    out_b[n, :, r0:r1, c0:c1] = x_a[n, :, r0:r1, c0:c1]
    return out_a, out_b


def batch(B=8, C=3, H=12, W=12, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return (
            torch.randint(0, 256, (B, C, H, W), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (B, C, H, W), generator=g, dtype=torch.uint8),
        )
    return torch.rand(B, C, H, W, generator=g).to(dtype), torch.rand(B, C, H, W, generator=g).to(
        dtype
    )


@pytest.mark.parametrize(
    "H,W,grid", [(12, 12, 4), (8, 8, 8), (7, 10, 3), (32, 32, 8), (5, 9, 5), (224, 224, 2)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bfloat16])
def test_matches_reference_loop(H, W, grid, dtype):
    # One decision, applied by ipskit and by the loop.
    x_a, x_b = batch(B=6, H=H, W=W, dtype=dtype)
    d = draw_swap(6, grid, pr=0.7, generator=torch.Generator().manual_seed(1))
    out_a, out_b = apply_swap(x_a, x_b, d)
    ref_a, ref_b = reference_swap(x_a, x_b, d.cells)
    assert torch.equal(out_a, ref_a) and torch.equal(out_b, ref_b)
    assert out_a.dtype == dtype
    # patch_swap is that draw then that application, from the same generator state
    one_a, one_b, one_d = patch_swap(
        x_a, x_b, grid=grid, pr=0.7, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(one_d.cells, d.cells) and torch.equal(one_d.swapped, d.swapped)
    assert torch.equal(one_a, out_a) and torch.equal(one_b, out_b)


@pytest.mark.parametrize("H,W,grid", [(7, 10, 3), (33, 31, 4), (16, 16, 3)])
def test_every_pixel_in_exactly_one_cell_and_sizes_differ_by_one(H, W, grid):
    d = SwapDecision(
        torch.ones(grid * grid, dtype=torch.bool),
        torch.eye(grid * grid, dtype=torch.bool).view(-1, grid, grid),
        grid,
    )
    masks = pixel_mask(d, H, W)[:, 0]  # one mask per single cell
    assert torch.equal(masks.sum(0), torch.ones(H, W, dtype=torch.long))  # a partition, no gap
    sizes = masks.flatten(1).sum(1)
    heights = masks.any(dim=2).sum(1)
    widths = masks.any(dim=1).sum(1)
    assert heights.max() - heights.min() <= 1 and widths.max() - widths.min() <= 1
    assert torch.equal(sizes, heights * widths)  # every cell is a rectangle


def test_pixels_conserved_and_follow_mask():
    x_a, x_b = batch(B=16, H=10, W=14)
    out_a, out_b, d = patch_swap(
        x_a, x_b, grid=3, pr=0.5, generator=torch.Generator().manual_seed(3)
    )
    m = d.pixel_mask(10, 14)
    # the pair of values at every position is the same multiset before and after
    assert torch.equal(torch.minimum(out_a, out_b), torch.minimum(x_a, x_b))
    assert torch.equal(torch.maximum(out_a, out_b), torch.maximum(x_a, x_b))
    # swapped pixels come from the partner, the others stay
    assert torch.equal(out_a, torch.where(m, x_b, x_a))
    assert torch.equal(out_b, torch.where(m, x_a, x_b))
    assert not torch.equal(out_a, x_a)  # pr=0.5 over 16 pairs: something moved


def test_pr_zero_is_identity_and_pr_one_swaps_every_pair():
    x_a, x_b = batch()
    a, b, d = patch_swap(x_a, x_b, grid=4, pr=0.0)
    assert torch.equal(a, x_a) and torch.equal(b, x_b) and not d.swapped.any()
    assert d.num_swapped.sum() == 0
    _, _, d = patch_swap(x_a, x_b, grid=4, pr=1.0)
    assert d.swapped.all()


def test_k_never_zero_nor_all_and_uniform():
    g = torch.Generator().manual_seed(0)
    d = draw_swap(60_000, grid=3, pr=1.0, generator=g)
    k = d.num_swapped
    assert k.min() == 1 and k.max() == 8
    counts = torch.bincount(k, minlength=9)[1:].double()
    expected = 60_000 / 8
    se = math.sqrt(expected * (1 - 1 / 8))
    assert ((counts - expected).abs() < 4 * se).all(), counts


def test_swapped_fraction_matches_pr_and_cells_uniform():
    g = torch.Generator().manual_seed(1)
    n, pr = 40_000, 0.3
    d = draw_swap(n, grid=4, pr=pr, generator=g)
    frac = d.swapped.double().mean().item()
    assert abs(frac - pr) < 3 * math.sqrt(pr * (1 - pr) / n)
    # given k, every cell is equally likely: per-cell frequency among swapped pairs ~ E[k]/16
    per_cell = d.cells[d.swapped].double().mean(0).flatten()
    p = 8 / 16  # E[k] = 8 for k uniform in 1..15
    m = int(d.swapped.sum())
    assert ((per_cell - p).abs() < 4 * math.sqrt(p * (1 - p) / m)).all()


@pytest.mark.parametrize("pr", [0.3, 0.85])
def test_k_uniform_among_swapped_pairs_for_any_pr(pr):
    # k and the swap decision come from one uniform per pair: k must stay uniform given pr < 1
    d = draw_swap(80_000, grid=3, pr=pr, generator=torch.Generator().manual_seed(4))
    k = d.num_swapped[d.swapped]
    m = len(k)
    assert abs(m / 80_000 - pr) < 3 * math.sqrt(pr * (1 - pr) / 80_000)
    assert k.min() >= 1 and k.max() <= 8
    counts = torch.bincount(k, minlength=9)[1:].double()
    se = math.sqrt(m / 8 * (1 - 1 / 8))
    assert ((counts - m / 8).abs() < 4 * se).all(), counts


def test_given_k_every_subset_of_cells_is_equally_likely():
    # grid 2: 4 cells; k = 1 and 3 have 4 subsets each, k = 2 has 6
    d = draw_swap(60_000, grid=2, pr=1.0, generator=torch.Generator().manual_seed(6))
    code = (d.cells.flatten(1).long() * torch.tensor([1, 2, 4, 8])).sum(1)  # subset id 1..14
    k = d.num_swapped
    for size, subsets in ((1, 4), (2, 6), (3, 4)):
        ids = code[k == size]
        counts = torch.bincount(ids, minlength=16).double()
        used = counts[counts > 0]
        assert len(used) == subsets
        p = 1 / subsets
        se = math.sqrt(len(ids) * p * (1 - p))
        assert ((used - len(ids) * p).abs() < 4 * se).all(), (size, used)


@pytest.mark.parametrize(
    "pr, fraction", [(0.0, None), (0.4, None), (1.0, None), (1e-3, None), (0.4, 0.25), (1.0, 0.5)]
)
def test_swapped_exactly_when_some_cell_is_and_never_all_cells(pr, fraction):
    d = draw_swap(
        5000, grid=4, pr=pr, swap_fraction=fraction, generator=torch.Generator().manual_seed(8)
    )
    assert torch.equal(d.swapped, d.num_swapped > 0)
    assert d.num_swapped.max() <= 15
    assert d.swapped.dtype == torch.bool and d.swapped.shape == (5000,)
    assert d.cells.dtype == torch.bool and d.cells.shape == (5000, 4, 4)
    if fraction is not None:
        assert (d.num_swapped[d.swapped] == round(fraction * 16)).all()
    if pr == 1.0:
        assert d.swapped.all()


def test_swap_fraction_option_fixes_k():
    d = draw_swap(
        100, grid=4, pr=1.0, swap_fraction=0.25, generator=torch.Generator().manual_seed(0)
    )
    assert (d.num_swapped == 4).all()
    d = draw_swap(10, grid=2, pr=1.0, swap_fraction=0.99)
    assert (d.num_swapped == 3).all()  # clipped: never all cells


def test_deterministic_for_a_generator_and_redraw_is_reapplied():
    x_a, x_b = batch()
    r1 = patch_swap(x_a, x_b, grid=4, generator=torch.Generator().manual_seed(7))
    r2 = patch_swap(x_a, x_b, grid=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[2].cells, r2[2].cells)
    # a decision can be re-applied later: same output
    a, b = apply_swap(x_a, x_b, r1[2])
    assert torch.equal(a, r1[0]) and torch.equal(b, r1[1])


def test_patch_size_equals_grid_and_module_form():
    x_a, x_b = batch(H=16, W=16)
    a1, _, d1 = patch_swap(x_a, x_b, patch_size=4, generator=torch.Generator().manual_seed(2))
    a2, _, d2 = patch_swap(x_a, x_b, grid=4, generator=torch.Generator().manual_seed(2))
    assert d1.grid == 4 and torch.equal(a1, a2)
    a3, _, _ = PatchSwap(grid=4)(x_a, x_b, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a3, a2)
    assert "grid=4" in repr(PatchSwap(grid=4))


def test_gradients_flow_through_swap():
    x_a, x_b = batch(B=2)
    x_a.requires_grad_(True)
    out_a, out_b, d = patch_swap(x_a, x_b, grid=2, pr=1.0)
    (out_a.sum() + 2 * out_b.sum()).backward()
    m = d.pixel_mask(12, 12).expand_as(x_a)
    assert torch.equal(x_a.grad, torch.where(m, 2.0, 1.0))


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(grid=4, patch_size=2), ValueError, "exactly one of grid and patch_size"),
        (dict(), ValueError, "exactly one of grid and patch_size"),
        (dict(grid=1), ValueError, "single cell: nothing can be swapped"),
        (dict(grid=0), ValueError, r"grid must be >= 2 .*got 0"),
        (dict(grid=13), ValueError, r"more cells per side than the 12x12 image"),
        (dict(grid=2.0), TypeError, "grid must be an int, got float"),
        (dict(grid=True), TypeError, "grid must be an int, got bool"),
        (dict(patch_size=5), ValueError, r"patch_size 5 does not split a 12x12 image"),
        (dict(patch_size=12), ValueError, r"patch_size 12 makes a 12x12 image a single cell"),
        (
            dict(patch_size=0),
            ValueError,
            r"patch_size must be >= 1 \(pixels per cell side\), got 0",
        ),
        (dict(grid=4, pr=1.5), ValueError, r"pr .* must be in \[0, 1\], got 1.5"),
        (dict(grid=4, pr=-0.1), ValueError, r"in \[0, 1\], got -0.1"),
        (dict(grid=4, pr=True), ValueError, r"pr .* must be a number, got bool True"),
        (dict(grid=4, pr=float("nan")), ValueError, r"pr .* must be a finite number, got nan"),
        (
            dict(grid=4, swap_fraction=0.0),
            ValueError,
            r"swap_fraction must be in \(0, 1\), got 0.0",
        ),
    ],
)
def test_bad_settings(kwargs, err, match):
    x_a, x_b = batch()
    with pytest.raises(err, match=match) as info:
        patch_swap(x_a, x_b, **kwargs)
    assert isinstance(info.value, InputError)  # one line at the command line, whatever the kind
    if "grid" in kwargs or "patch_size" in kwargs:
        with pytest.raises(err, match=match):
            PatchSwap(**kwargs)(x_a, x_b)  # the module form refuses the same settings


def test_bad_inputs():
    x_a, x_b = batch()
    with pytest.raises(ValueError, match=r"same shape, got \(8, 3, 12, 12\) and \(8, 3, 12, 10\)"):
        patch_swap(x_a, x_b[..., :10], grid=2)
    with pytest.raises(TypeError, match="same dtype, got torch.float32 and torch.float64"):
        patch_swap(x_a, x_b.double(), grid=2)
    with pytest.raises(ValueError, match=r"4-D batch \[B, C, H, W\], got shape \(3, 12, 12\)"):
        patch_swap(x_a[0], x_b[0], grid=2)
    with pytest.raises(TypeError, match="must be tensors"):
        patch_swap(x_a.numpy(), x_b, grid=2)
    d = draw_swap(3, grid=2)
    with pytest.raises(ValueError, match="decision is for 3 pairs but the batch has 8"):
        apply_swap(x_a, x_b, d)
    with pytest.raises(InputError, match=r"grid must be >= 2 .*got 1"):
        draw_swap(4, grid=1)
    with pytest.raises(ValueError, match=r"swap_fraction must be in \(0, 1\)"):
        draw_swap(4, grid=2, swap_fraction=1.0)
    with pytest.raises(ValueError, match="exactly one of grid and patch_size"):
        PatchSwap()


def test_resolve_grid_accepts_non_square_with_grid():
    assert resolve_grid(7, 10, grid=3) == 3
    with pytest.raises(ValueError, match="does not split a 8x12 image"):
        resolve_grid(8, 12, patch_size=4)


def test_numpy_scalars_are_accepted_and_give_the_same_swap():
    x_a, x_b = batch(H=16, W=16)
    ref = patch_swap(x_a, x_b, grid=4, pr=0.5, generator=torch.Generator().manual_seed(5))
    for out in (
        patch_swap(
            x_a,
            x_b,
            grid=np.int64(4),
            pr=np.float32(0.5),
            generator=torch.Generator().manual_seed(5),
        ),
        patch_swap(
            x_a,
            x_b,
            patch_size=np.int32(4),
            pr=np.float64(0.5),
            generator=torch.Generator().manual_seed(5),
        ),
        PatchSwap(grid=np.int64(4), pr=np.float32(0.5))(x_a, x_b, torch.Generator().manual_seed(5)),
    ):
        assert torch.equal(out[0], ref[0]) and torch.equal(out[2].cells, ref[2].cells)
    d = draw_swap(
        np.int64(8),
        np.int64(4),
        np.float32(0.5),
        torch.Generator().manual_seed(5),
        swap_fraction=np.float32(0.25),
    )
    assert type(d.grid) is int and (d.num_swapped[d.swapped] == 4).all()
    assert torch.equal(
        draw_swap(8, 4, 0.5, torch.Generator().manual_seed(5)).cells,
        draw_swap(
            np.int64(8), np.int64(4), np.float32(0.5), torch.Generator().manual_seed(5)
        ).cells,
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda x_a, x_b, g: patch_swap(x_a, x_b, grid=4, generator=g),
        lambda x_a, x_b, g: PatchSwap(grid=4)(x_a, x_b, generator=g),
        lambda x_a, x_b, g: draw_swap(8, 4, generator=g),
    ],
)
def test_a_generator_must_be_a_torch_generator(call):
    x_a, x_b = batch()
    with pytest.raises(InputError, match="generator must be a torch.Generator or None, got int 0"):
        call(x_a, x_b, 0)


def test_ips_step_checks_the_swap_settings_once(monkeypatch):
    """IPS.step swaps like patch_swap but checks its settings in __init__, not every step."""
    from ipskit import swap as swap_module
    from ipskit.methods import IPS

    with pytest.raises(InputError, match=r"grid must be >= 2 .*got 1"):
        IPS(grid=1)  # refused when built, not at the first step
    with pytest.raises(InputError, match=r"pr .* must be in \[0, 1\], got 2.0"):
        IPS(grid=2, pr=2.0)
    method = IPS(grid=np.int64(2), pr=np.float32(1.0))
    calls = []
    real = swap_module._check_settings
    monkeypatch.setattr(swap_module, "_check_settings", lambda *a: calls.append(a) or real(*a))
    seen = []
    model = lambda x: seen.append(x) or x.flatten(1)[:, :3]  # noqa: E731 (records the swapped batch)
    x_a, x_b = batch(B=4, H=8, W=8)
    x, y = torch.cat([x_a, x_b]), torch.tensor([0, 1, 2, 0] * 2)
    for seed in range(3):
        method.step(model, x, y, torch.Generator().manual_seed(seed))
        ref_a, ref_b, _ = patch_swap(
            x_a, x_b, grid=2, pr=1.0, generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(seen[-1], torch.cat([ref_a, ref_b]))
    assert len(calls) == 3  # the three reference patch_swap calls, none from IPS.step


# ----- op budget: few kernels a call and no host sync, for every per-batch random op ----------
# Counted at the ATen dispatcher on the CPU (the same calls run on a GPU): "kernels" are the calls
# that compute something; views (reshape, unsqueeze, select) only change metadata and are not
# counted. A sync is an op that needs a value or a size from the device: .item(), bool(t), int(t),
# nonzero(), boolean indexing.
_count = count_ops


def test_patch_swap_is_at_most_10_kernels_and_never_syncs():
    x_a, x_b = batch(B=64, H=32, W=32)
    gen = torch.Generator().manual_seed(0)
    for call in (
        lambda: patch_swap(x_a, x_b, grid=8, pr=0.5, generator=gen),
        lambda: patch_swap(x_a, x_b, grid=3, pr=1.0, generator=gen, swap_fraction=0.3),
        lambda: PatchSwap(patch_size=4)(x_a, x_b, generator=gen),
    ):
        calls = _count(call)
        assert sum(calls.kernels.values()) <= 10, calls.kernels
        assert not calls.syncs, calls.syncs


def test_augment_is_at_most_10_kernels_and_never_syncs():
    x = batch(B=64, H=32, W=32, dtype=torch.uint8)[0]
    gen = torch.Generator().manual_seed(0)
    for spec in (AugmentSpec(4, flip=True), AugmentSpec(2, flip=False, padding_mode="reflect")):
        calls = _count(lambda spec=spec: augment_batch(x, spec, gen))
        assert sum(calls.kernels.values()) <= 10, calls.kernels
        assert not calls.syncs, calls.syncs


@pytest.mark.parametrize("kind, budget", [("cutout", 10), ("mixup", 10), ("cutmix", 20)])
def test_mixers_on_a_pair_of_batches_never_sync(kind, budget):
    # Cutout draws and builds its mask once for both sides; MixUp and CutMix also draw and fold
    # in whether the batch is mixed at all (prob 0.5), then mix two batches and the labels: the
    # path of a generator on a GPU (with a CPU generator, __call__ skips unmixed batches).
    x_a, x_b = batch(B=32, H=16, W=16)
    y = torch.randint(5, (32,), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    if kind == "cutout":
        mixer = Cutout(8)
        calls = _count(lambda: mixer([x_a, x_b], y, gen))
    else:
        mixer = TorchvisionMix(kind, 5, prob=0.5)
        calls = _count(lambda: mixer.apply([x_a, x_b], y, mixer.draw(16, 16, gen)))
    assert sum(calls.kernels.values()) <= budget, calls.kernels
    assert not calls.syncs, calls.syncs


# ----- the mixers' draw against torchvision's (ipskit.methods.TorchvisionMix) ------------------
def _torchvision_params(params: MixParams, h: int, w: int) -> dict:
    """Our draw in the Python numbers torchvision's transform takes (x1, y1, x2, y2 clipped)."""
    if params.box is None:
        return {"lam": float(params.lam)}
    y1, x1, y2, x2 = (int(v) for v in params.box.view(4))
    y1, x1, y2, x2 = max(y1, 0), max(x1, 0), min(y2, h), min(x2, w)
    return {"box": (x1, y1, x2, y2), "lam_adjusted": 1.0 - (x2 - x1) * (y2 - y1) / (w * h)}


@pytest.mark.parametrize("kind", ["cutmix", "mixup"])
@pytest.mark.parametrize("h, w", [(10, 14), (12, 12)])
def test_mix_applies_a_draw_as_torchvision_does(kind, h, w):
    x_a, x_b = batch(B=8, H=h, W=w)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixer = TorchvisionMix(kind, 5, alpha=1.0, prob=0.7)
    for seed in range(12):  # mixed and unmixed batches, boxes at the border and inside
        params = mixer.draw(h, w, torch.Generator().manual_seed(seed))
        (m_a, m_b), soft = mixer.apply([x_a, x_b], y, params)
        ref = dict(_torchvision_params(params, h, w), labels=y, batch_size=8)
        for got, x in ((m_a, x_a), (m_b, x_b)):
            torch.testing.assert_close(got, mixer.transform.transform(x, ref), rtol=0, atol=1e-6)
        torch.testing.assert_close(soft, mixer.transform.transform(y, ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["cutmix", "mixup"])
def test_mix_with_a_cpu_generator_skips_unmixed_batches_with_the_same_result(kind):
    x_a, x_b = batch(B=8, H=12, W=12)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixer = TorchvisionMix(kind, 5, prob=0.5)
    seen = set()
    for seed in range(16):
        (s_a, s_b), soft = mixer([x_a, x_b], y, torch.Generator().manual_seed(seed))
        params = mixer.draw(12, 12, torch.Generator().manual_seed(seed))
        (r_a, r_b), ref = mixer.apply([x_a, x_b], y, params)
        assert torch.equal(s_a, r_a) and torch.equal(s_b, r_b) and torch.equal(soft, ref)
        seen.add(bool(params.mixed))
        if not params.mixed:
            assert torch.equal(s_a, x_a) and torch.equal(soft, torch.eye(5)[y])
    assert seen == {True, False}


@pytest.mark.parametrize("h, w", [(12, 20), (16, 16)])  # square images draw the centre as ints
def test_cutmix_boxes_and_mix_rate_are_distributed_as_torchvision_draws_them(h, w):
    n = 3000
    mixer = TorchvisionMix("cutmix", 5, alpha=1.0, prob=0.6)
    gen = torch.Generator().manual_seed(0)
    ours = [_torchvision_params(mixer.draw(h, w, gen), h, w) for _ in range(n)]
    image = torch.zeros(1, 1, h, w)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theirs = [mixer.transform.make_params([image]) for _ in range(n)]
    mixed = torch.tensor([p["lam_adjusted"] < 1 for p in ours]).double()
    # the box is empty when unmixed, and (rarely) when 1 - lam is too small for one pixel
    p_empty_box = sum(p["lam_adjusted"] == 1 for p in theirs) / n
    expected = 0.6 * (1 - p_empty_box)
    assert abs(mixed.mean().item() - expected) < 4 * math.sqrt(expected * (1 - expected) / n)

    def ks(a, b):  # two-sample Kolmogorov-Smirnov distance
        a, b = (
            torch.tensor(a, dtype=torch.float64).sort().values,
            torch.tensor(b, dtype=torch.float64).sort().values,
        )
        grid = torch.cat([a, b])
        return (
            (
                torch.searchsorted(a, grid, right=True) / len(a)
                - torch.searchsorted(b, grid, right=True) / len(b)
            )
            .abs()
            .max()
            .item()
        )

    m = int(mixed.sum())
    ours_mixed = [p for p in ours if p["lam_adjusted"] < 1]
    theirs_mixed = [p for p in theirs if p["lam_adjusted"] < 1]
    crit = 1.95 * math.sqrt((m + len(theirs_mixed)) / (m * len(theirs_mixed)))  # alpha = 0.001
    for field in (
        lambda p: p["lam_adjusted"],
        lambda p: p["box"][0],
        lambda p: p["box"][1],
        lambda p: p["box"][2] - p["box"][0],
        lambda p: p["box"][3] - p["box"][1],
    ):
        assert ks([field(p) for p in ours_mixed], [field(p) for p in theirs_mixed]) < crit


def test_mixup_lambda_is_beta_and_gated_by_prob():
    mixer = TorchvisionMix("mixup", 5, alpha=0.4, prob=0.3)
    gen = torch.Generator().manual_seed(2)
    lam = torch.stack([mixer.draw(8, 8, gen).lam for _ in range(4000)]).flatten().double()
    mixed = lam < 1
    assert abs(mixed.double().mean().item() - 0.3) < 4 * math.sqrt(0.21 / 4000)
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 * (2 * 0.4 + 1)) = 0.1389
    lm = lam[mixed]
    assert abs(lm.mean().item() - 0.5) < 4 * math.sqrt(0.1389 / len(lm))
    assert abs(lm.var().item() - 0.1389) < 0.02
