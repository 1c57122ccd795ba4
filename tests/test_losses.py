"""Tests for ipskit.losses against formulas written independently with numpy."""
import numpy as np
import pytest
import torch

from ipskit import BLOG_INTENT, IPSLoss, ips_loss, pair_teacher


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
    kl = lambda p, q: float(np.sum(p * np.log(p / q)))
    if direction == "symmetric":
        kd = np.mean([(kl(pb[i], pa[i]) + kl(pa[i], pb[i])) / 2 for i in range(B)])
    else:
        pa1, pb1 = np_softmax(za), np_softmax(zb)
        kd = np.mean([kl(pa[i], pb[i]) if pa1[i, y[i]] >= pb1[i, y[i]] else kl(pb[i], pa[i])
                      for i in range(B)])
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
@pytest.mark.parametrize("T,alpha,gamma,t2", [(4.0, 1.0, 1.0, False), (1.0, 0.5, 2.0, True),
                                               (3.0, 0.0, 1.0, False)])
def test_matches_numpy_reference(logits, direction, T, alpha, gamma, t2):
    za, zb, y = logits
    out = ips_loss(za, zb, y, temperature=T, alpha=alpha, gamma=gamma, kd_direction=direction,
                   t2_scale=t2)
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
    assert (a.grad[~a_teaches].abs().sum(1) > 0).all() and (b.grad[a_teaches].abs().sum(1) > 0).all()


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
        ips_loss(za, zb, y, temperature=2.0).loss.item())
    assert "temperature=2.0" in repr(IPSLoss(temperature=2.0))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(labels=torch.zeros(5, dtype=torch.long)), ValueError, "labels has 5 entries but logits have 6 rows"),
    (dict(labels=torch.zeros(6)), TypeError, "labels must be integer class ids"),
    (dict(logits_b=torch.zeros(6, 4)), ValueError, r"must both be \[B, K\], got \(6, 5\) and \(6, 4\)"),
    (dict(temperature=0.0), ValueError, "temperature must be a number > 0, got 0.0"),
    (dict(alpha=-1.0), ValueError, "alpha must be a number >= 0, got -1.0"),
    (dict(kd_direction="forward"), ValueError, "kd_direction must be one of symmetric, confident, got 'forward'"),
    (dict(labels=torch.zeros(6, 3)), ValueError, r"soft labels must be float \[B, K\] = \[6, 5\]"),
])
def test_bad_input(kwargs, err, match):
    args = dict(logits_a=torch.zeros(6, 5), logits_b=torch.zeros(6, 5),
                labels=torch.zeros(6, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        ips_loss(**args)
    with pytest.raises(ValueError, match="kd_direction must be one of"):
        IPSLoss(kd_direction="x")
