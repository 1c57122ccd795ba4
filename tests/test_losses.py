"""Tests for ipskit.losses against formulas written independently with numpy."""

import math

import numpy as np
import pytest
import torch

from ipskit import BLOG_INTENT, IPSLoss, ips_loss, pair_teacher
from ipskit.checks import InputError


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_reference(za, zb, y, T=4.0, alpha=1.0, gamma=1.0, direction="symmetric", t2=False):
    """Per-sample loops in numpy: CE averaged over both sides, KL(p||q) = sum p log(p/q)."""
    B = len(y)
    ce = 0.0
    for z in (za, zb):
        p = np_softmax(z)
        ce += -np.mean([np.log(p[i, y[i]]) for i in range(B)]) / 2
    pa, pb = np_softmax(za / T), np_softmax(zb / T)

    def kl(p, q):
        return float(np.sum(p * np.log(p / q)))

    if direction == "symmetric":
        kd = np.mean([(kl(pb[i], pa[i]) + kl(pa[i], pb[i])) / 2 for i in range(B)])
    else:
        pa1, pb1 = np_softmax(za), np_softmax(zb)
        kd = np.mean(
            [
                kl(pa[i], pb[i]) if pa1[i, y[i]] >= pb1[i, y[i]] else kl(pb[i], pa[i])
                for i in range(B)
            ]
        )
    if t2:
        kd *= T * T
    return gamma * ce + alpha * kd, ce, kd


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    za = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    zb = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    return za, zb, y


@pytest.mark.parametrize("direction", ["symmetric", "confident"])
@pytest.mark.parametrize(
    "T,alpha,gamma,t2", [(4.0, 1.0, 1.0, False), (1.0, 0.5, 2.0, True), (3.0, 0.0, 1.0, False)]
)
def test_matches_numpy_reference(logits, direction, T, alpha, gamma, t2):
    za, zb, y = logits
    out = ips_loss(
        za, zb, y, temperature=T, alpha=alpha, gamma=gamma, kd_direction=direction, t2_scale=t2
    )
    loss, ce, kd = np_reference(za.numpy(), zb.numpy(), y.numpy(), T, alpha, gamma, direction, t2)
    assert out.loss.item() == pytest.approx(loss, rel=1e-9)
    assert out.ce.item() == pytest.approx(ce, rel=1e-9)
    assert out.kd.item() == pytest.approx(kd, rel=1e-9)


def test_kd_zero_for_identical_predictions_and_positive_otherwise(logits):
    za, zb, y = logits
    assert ips_loss(za, za.clone(), y).kd.item() == pytest.approx(0.0, abs=1e-12)
    assert ips_loss(za, zb, y).kd.item() > 0
    assert not torch.isnan(ips_loss(za, zb, y, **BLOG_INTENT).loss)  # the blog's intent is finite


def test_detached_targets_pull_each_side_towards_the_other_only_through_its_own_term(logits):
    za, zb, y = logits
    # alpha only, gamma 0: with the detached target, gradient of KL(p_b||p_a) reaches only z_a
    a, b = za.clone().requires_grad_(), zb.clone().requires_grad_()
    from ipskit import kl_divergence

    kl_divergence(b, a, 4.0, detach_target=True).sum().backward()
    assert b.grad is None and a.grad.abs().sum() > 0
    a.grad = None
    kl_divergence(b, a, 4.0, detach_target=False).sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0


def test_confident_direction_teaches_only_the_weaker_side(logits):
    za, zb, y = logits
    a, b = za.clone().requires_grad_(), zb.clone().requires_grad_()
    ips_loss(a, b, y, gamma=0.0, kd_direction="confident").loss.backward()
    _, _, a_teaches = pair_teacher(za, zb, y)
    # teacher rows receive no gradient, student rows do
    assert torch.all(a.grad[a_teaches] == 0) and torch.all(b.grad[~a_teaches] == 0)
    assert (a.grad[~a_teaches].abs().sum(1) > 0).all() and (
        b.grad[a_teaches].abs().sum(1) > 0
    ).all()


def test_pair_teacher_picks_higher_true_class_probability():
    za = torch.tensor([[5.0, 0.0], [0.0, 0.0]])
    zb = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    p_a, p_b, a_teaches = pair_teacher(za, zb, torch.tensor([0, 0]))
    assert a_teaches.tolist() == [True, False]
    assert p_a[1].item() == pytest.approx(0.5)


def test_soft_labels_equal_hard_labels_when_one_hot(logits):
    za, zb, y = logits
    soft = torch.nn.functional.one_hot(y, 5).double()
    assert ips_loss(za, zb, soft).loss.item() == pytest.approx(ips_loss(za, zb, y).loss.item())


def test_module_form(logits):
    za, zb, y = logits
    assert IPSLoss(temperature=2.0)(za, zb, y).loss.item() == pytest.approx(
        ips_loss(za, zb, y, temperature=2.0).loss.item()
    )
    assert "temperature=2.0" in repr(IPSLoss(temperature=2.0))


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (
            dict(labels=torch.zeros(5, dtype=torch.long)),
            InputError,
            "labels has 5 entries but logits have 6 rows",
        ),
        (dict(labels=torch.zeros(6)), TypeError, "labels must be integer class ids"),
        (
            dict(logits_b=torch.zeros(6, 4)),
            InputError,
            r"must both be \[B, K\], got \(6, 5\) and \(6, 4\)",
        ),
        (dict(temperature=0.0), InputError, r"temperature must be in \(0, inf\), got 0.0"),
        (dict(temperature=True), InputError, "temperature must be a number, got bool True"),
        (dict(temperature=math.inf), InputError, "temperature must be a finite number, got inf"),
        (dict(alpha=-1.0), InputError, r"alpha must be in \[0, inf\), got -1.0"),
        (dict(gamma=math.nan), InputError, "gamma must be a finite number, got nan"),
        (
            dict(kd_direction="forward"),
            InputError,
            "unknown kd_direction 'forward'; choose one of: symmetric, confident",
        ),
        (dict(detach_target=1), InputError, "detach_target must be True or False, got int 1"),
        (
            dict(labels=torch.zeros(6, 3)),
            InputError,
            r"soft labels must be float \[B, K\] = \[6, 5\]",
        ),
    ],
)
def test_bad_input(kwargs, err, match):
    args = dict(
        logits_a=torch.zeros(6, 5),
        logits_b=torch.zeros(6, 5),
        labels=torch.zeros(6, dtype=torch.long),
    )
    args.update(kwargs)
    with pytest.raises(err, match=match):
        ips_loss(**args)
    settings = {k: v for k, v in kwargs.items() if k not in ("logits_a", "logits_b", "labels")}
    with pytest.raises(err, match=match):  # the module form: settings when built, tensors per call
        IPSLoss(**settings)(args["logits_a"], args["logits_b"], args["labels"])


@pytest.mark.parametrize("b,k", [(0, 5), (3, 0)])
def test_empty_batch_is_refused_not_nan(b, k):
    z, y = torch.zeros(b, k), torch.zeros(b, dtype=torch.long)
    match = rf"needs at least one pair and one class, got logits of shape \({b}, {k}\)"
    with pytest.raises(InputError, match=match):
        ips_loss(z, z, y)
    with pytest.raises(InputError, match=match):
        IPSLoss()(z, z, y)


@pytest.mark.parametrize("direction", ["symmetric", "confident"])
@pytest.mark.parametrize("bad", [5, 7, -1])
def test_labels_outside_the_classes_are_refused_with_the_label_and_k(logits, direction, bad):
    za, zb, y = logits
    y = y.clone()
    y[2] = bad
    match = rf"label {bad} is not a class id of the 5 logits: labels must be in 0..4"
    with pytest.raises(InputError, match=match):
        ips_loss(za, zb, y, kd_direction=direction)
    with pytest.raises(InputError, match=match):
        IPSLoss(kd_direction=direction)(za, zb, y)


def test_numpy_scalars_give_the_same_loss(logits):
    za, zb, y = logits
    ref = ips_loss(za, zb, y, temperature=2.0, alpha=0.5, gamma=1.0, t2_scale=True)
    for out in (
        ips_loss(
            za,
            zb,
            y,
            temperature=np.float32(2.0),
            alpha=np.float32(0.5),
            gamma=np.int64(1),
            t2_scale=np.bool_(True),
        ),
        IPSLoss(
            temperature=np.float32(2.0),
            alpha=np.float32(0.5),
            gamma=np.int64(1),
            t2_scale=np.bool_(True),
        )(za, zb, y),
    ):
        assert torch.equal(out.loss, ref.loss) and torch.equal(out.kd, ref.kd)
    assert "temperature=2.0, alpha=0.5, gamma=1.0" in repr(
        IPSLoss(temperature=np.float32(2.0), alpha=np.float32(0.5), gamma=np.int64(1))
    )


def test_ips_step_checks_the_loss_settings_once(monkeypatch):
    """IPS.step computes ips_loss but checks the loss settings in __init__, not every step."""
    from ipskit import losses
    from ipskit.methods import IPS

    with pytest.raises(InputError, match="temperature must be a finite number, got inf"):
        IPS(grid=2, loss_kwargs=dict(temperature=math.inf))  # refused when built
    method = IPS(grid=2, pr=0.0, loss_kwargs=dict(temperature=np.float32(2.0)))
    for name in ("_check_settings", "_check_batch"):
        monkeypatch.setattr(losses, name, lambda *a, name=name: pytest.fail(f"{name} per step"))
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1] * 2)
    model = lambda t: t.flatten(1)[:, :3] * 4  # noqa: E731 (pr=0: the images are not swapped)
    out = method.step(model, x, y, torch.Generator().manual_seed(0))
    monkeypatch.undo()
    ref = ips_loss(model(x[:4]), model(x[4:]), y[:4], temperature=2.0)
    assert torch.equal(out.loss, ref.loss)
