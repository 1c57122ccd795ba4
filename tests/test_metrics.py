"""Tests for ipskit.metrics: formulas against naive references, invariants, temperature scaling."""

import json
import math

import numpy as np
import pytest
import torch

from ipskit import metrics as M


def _data(n=500, k=7, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * scale
    labels = torch.randint(0, k, (n,), generator=g)
    return logits, labels


def _softmax_np(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- references


def test_accuracy_top1_top5_against_loop():
    logits, labels = _data()
    z, y = logits.numpy(), labels.numpy()
    top1 = np.mean([int(np.argmax(z[i]) == y[i]) for i in range(len(y))])
    top5 = np.mean([int(y[i] in np.argsort(-z[i])[:5]) for i in range(len(y))])
    assert M.accuracy(logits, labels) == pytest.approx(top1)
    assert M.accuracy(logits, labels, k=5) == pytest.approx(top5)
    assert M.accuracy(logits, labels, k=7) == 1.0


def test_nll_against_formula():
    logits, labels = _data()
    p = _softmax_np(logits.numpy())
    ref = -np.mean([math.log(p[i, labels[i]]) for i in range(len(labels))])
    assert M.nll(logits, labels) == pytest.approx(ref, rel=1e-9)


def test_brier_against_loop():
    logits, labels = _data()
    p = _softmax_np(logits.numpy())
    total = 0.0
    for i in range(p.shape[0]):
        for c in range(p.shape[1]):
            total += (p[i, c] - (1.0 if c == labels[i] else 0.0)) ** 2
    assert M.brier_score(logits, labels) == pytest.approx(total / p.shape[0], rel=1e-9)


def test_brier_extremes():
    labels = torch.tensor([0, 1])
    perfect = torch.tensor([[100.0, -100.0], [-100.0, 100.0]])
    wrong = torch.tensor([[-100.0, 100.0], [100.0, -100.0]])
    assert M.brier_score(perfect, labels) == pytest.approx(0.0, abs=1e-12)
    assert M.brier_score(wrong, labels) == pytest.approx(2.0)  # sum over classes, not / K


def _naive_ece(logits, labels, n_bins):
    p = _softmax_np(logits.numpy())
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    n, ece = len(conf), 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(n) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if members:
            acc = np.mean([pred[i] == labels[i] for i in members])
            avg_conf = np.mean([conf[i] for i in members])
            ece += len(members) / n * abs(acc - avg_conf)
    return ece


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_against_loop(n_bins):
    logits, labels = _data(scale=3.0)
    assert M.expected_calibration_error(logits, labels, n_bins) == pytest.approx(
        _naive_ece(logits, labels, n_bins), abs=1e-12
    )


def test_reliability_data_invariants():
    logits, labels = _data(n=300)
    rel = M.reliability_data(logits, labels, n_bins=15)
    assert len(rel["count"]) == 15 and sum(rel["count"]) == 300
    for lo, hi, c, a, n in zip(
        rel["bin_lower"], rel["bin_upper"], rel["confidence"], rel["accuracy"], rel["count"]
    ):
        if n == 0:
            assert c is None and a is None
        else:
            assert lo < c <= hi and 0.0 <= a <= 1.0
    assert 0.0 <= rel["ece"] <= rel["mce"] <= 1.0


# ----------------------------------------------------------------------------- temperature


def _calibrated(n, k, seed):
    """Logits whose softmax is the true label distribution (calibrated by construction)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 2.5
    y = torch.multinomial(z.softmax(dim=1), 1, generator=g).squeeze(1)
    return z, y


def test_temperature_scaling_fixes_overconfidence():
    z, y = _calibrated(4000, 10, seed=1)
    over = 3.0 * z  # deliberately over-confident
    fit, held = slice(0, 2000), slice(2000, 4000)
    t = M.fit_temperature(over[fit], y[fit])
    assert t == pytest.approx(3.0, rel=0.15)
    assert M.nll(over[held] / t, y[held]) < M.nll(over[held], y[held]) - 0.1
    assert M.expected_calibration_error(over[held] / t, y[held]) < M.expected_calibration_error(
        over[held], y[held]
    )


def test_temperature_of_calibrated_logits_is_near_one():
    z, y = _calibrated(4000, 10, seed=2)
    assert M.fit_temperature(z, y) == pytest.approx(1.0, abs=0.1)


def test_temperature_of_constant_logits_is_finite():
    t = M.fit_temperature(torch.zeros(20, 3), torch.arange(20) % 3)
    assert math.isfinite(t) and t > 0


# ----------------------------------------------------------------------------- smoothing


def test_smoothing_stats_against_numpy():
    logits, labels = _data(n=50, k=5)
    s = M.smoothing_stats(logits, labels)
    p = _softmax_np(logits.numpy())
    np.testing.assert_allclose(s["max_prob"], p.max(axis=1), rtol=1e-9)
    np.testing.assert_allclose(s["entropy"], -(p * np.log(p)).sum(axis=1), rtol=1e-9)
    np.testing.assert_allclose(s["off_true_mass"], 1 - p[np.arange(50), labels.numpy()], rtol=1e-9)
    np.testing.assert_allclose(s["logit_norm"], np.linalg.norm(logits.numpy(), axis=1), rtol=1e-6)


def test_uniform_logits_have_maximal_entropy():
    logits, labels = torch.zeros(8, 4), torch.arange(8) % 4
    rep = M.smoothing_report(logits, labels)
    assert rep["overall"]["entropy"] == pytest.approx(math.log(4))
    assert rep["overall"]["max_prob"] == pytest.approx(0.25)
    assert rep["overall"]["off_true_mass"] == pytest.approx(0.75)


def test_class_similarity_rows_and_cosine():
    logits, labels = _data(n=400, k=6)
    sim = M.class_similarity(logits, labels)
    p = _softmax_np(logits.numpy())
    for c in range(6):
        np.testing.assert_allclose(
            sim["mean_prob"][c], p[labels.numpy() == c].mean(axis=0), rtol=1e-9
        )
    np.testing.assert_allclose(sim["mean_prob"].sum(dim=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(torch.diagonal(sim["cosine"]), 1.0, rtol=1e-9)
    assert torch.allclose(sim["cosine"], sim["cosine"].T)


def test_reports_are_strict_json_with_absent_class():
    logits, labels = _data(n=60, k=6)
    labels = labels.clamp(max=4)  # class 5 has no samples
    cal = M.calibration_report(logits, labels, n_bins=10)
    smo = M.smoothing_report(logits, labels)
    json.dumps({"cal": cal, "smo": smo}, allow_nan=False)
    assert smo["class_counts"][5] == 0 and smo["per_class"]["entropy"][5] is None
    assert smo["similarity"][5] == [None] * 6
    for kind in ("max_prob", "entropy"):
        hist = smo["histograms"][kind]
        assert sum(hist["counts"]) == 60 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert cal["top1"] == pytest.approx(M.accuracy(logits, labels)) and cal["top5"] is not None
    per_class = [v for v in smo["per_class"]["max_prob"] if v is not None]
    counts = [c for c in smo["class_counts"] if c]
    assert np.average(per_class, weights=counts) == pytest.approx(smo["overall"]["max_prob"])


# ----------------------------------------------------------------------------- predict, errors


def test_predict_matches_forward_and_restores_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
    )
    x = torch.rand(10, 3, 2, 2)
    model.train()
    out = M.predict(model, x, batch_size=4)
    assert model.training
    model.eval()
    assert torch.allclose(out, model(x), atol=1e-6) and out.shape == (10, 3)
    with pytest.raises(
        TypeError, match="x must be float images in \\[0, 1\\], got dtype torch.uint8"
    ):
        M.predict(model, (x * 255).to(torch.uint8))


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (
            torch.zeros(3, 4),
            torch.zeros(2, dtype=torch.long),
            r"expected logits \[N, K\] and labels \[N\]",
        ),
        (torch.zeros(3, 4), torch.tensor([0, 1, 4]), r"labels must lie in \[0, 3\]"),
        (torch.zeros(3, 4), torch.zeros(3), "integer tensor"),
        (torch.full((2, 3), float("nan")), torch.tensor([0, 1]), "NaN or inf"),
    ],
)
def test_bad_input_messages(logits, labels, match):
    with pytest.raises((ValueError, TypeError), match=match):
        M.nll(logits, labels)


def test_topk_and_bins_errors():
    logits, labels = _data(n=10, k=3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        M.accuracy(logits, labels, k=5)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 1"):
        M.reliability_data(logits, labels, n_bins=0)
    assert M.calibration_report(logits, labels)["top5"] is None


@pytest.mark.parametrize(
    "conf, acc, verdict",
    [
        (0.99, 0.90, "over-confident"),
        (0.80, 0.95, "under-confident"),
        (0.91, 0.90, "calibrated"),
        (0.885, 0.90, "calibrated"),
    ],
)
def test_confidence_verdict(conf, acc, verdict):
    assert M.confidence_verdict(conf, acc, tolerance=0.02) == verdict
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        M.confidence_verdict(conf, acc, tolerance=-0.1)


@pytest.mark.parametrize(
    "gaps, verdict",
    [
        ([0.05], "over-confident"),  # one seed: confidence_verdict of that run
        ([0.05, 0.06, 0.055], "over-confident"),  # far beyond the tolerance, small spread
        ([-0.06, -0.05], "under-confident"),
        ([0.001, -0.002, 0.0], "calibrated"),
        ([0.05, -0.01], "unclear"),  # the seeds disagree
    ],
)
def test_seed_verdict(gaps, verdict):
    out = M.seed_verdict(gaps, tolerance=0.02)
    assert out["verdict"] == verdict and out["n"] == len(gaps)
    assert out["mean"] == pytest.approx(np.mean(gaps))
    assert out["sd"] == (None if len(gaps) == 1 else pytest.approx(np.std(gaps, ddof=1)))
    with pytest.raises(ValueError, match="one or more finite numbers"):
        M.seed_verdict([])


def test_teacher_side_names_no_teacher_within_the_margin():
    assert M.teacher_side(0.9, 0.4) == "a" and M.teacher_side(0.4, 0.9) == "b"
    assert M.teacher_side(0.993, 0.994) is None  # a tie is no teacher
    assert M.teacher_side(0.5, 0.5 + M.CLEAR_TEACHER_MARGIN / 2) is None
    assert M.teacher_side(0.5, 0.6, margin=0.05) == "b"
    with pytest.raises(ValueError, match="margin must be >= 0"):
        M.teacher_side(0.5, 0.6, margin=-1)


class _Bright(torch.nn.Module):
    """p(class 1) grows with the mean brightness of the left half: a model with a known answer."""

    num_classes = 2

    def forward(self, x):
        s = x[:, :, :, : x.shape[-1] // 2].mean(dim=(1, 2, 3)) * 20 - 10
        return torch.stack([-s, s], dim=1)


def test_most_lopsided_pair_matches_a_naive_search():
    from ipskit.swap import apply_swap, draw_swap

    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 8, 8, generator=g)
    model = _Bright()
    out = M.most_lopsided_pair(
        model,
        x,
        1,
        grid=4,
        pr=0.5,
        generator=torch.Generator().manual_seed(3),
        n_pairs=16,
        batch_size=5,
    )
    # independent: replay the same draws and score pair by pair
    g = torch.Generator().manual_seed(3)
    ia = torch.randint(0, 10, (16,), generator=g)
    ib = (ia + torch.randint(1, 10, (16,), generator=g)) % 10
    d = draw_swap(16, 4, 0.5, generator=g)
    gaps = []
    for t in range(16):
        a, b = apply_swap(
            x[ia[t]][None], x[ib[t]][None], type(d)(d.swapped[t : t + 1], d.cells[t : t + 1], 4)
        )
        p = model(torch.cat([a, b])).softmax(1)[:, 1]
        gaps.append(float((p[0] - p[1]).abs()))
    best = int(np.argmax(gaps))
    assert (out.index_a, out.index_b) == (
        int(ia[best]),
        int(ib[best]),
    ) and out.index_a != out.index_b
    assert torch.equal(out.decision.cells[0], d.cells[best]) and len(out.decision) == 1
    assert abs(out.p_a - out.p_b) == pytest.approx(max(gaps), abs=1e-6)
    assert out.gaps.tolist() == pytest.approx(gaps, abs=1e-6)
    assert (ia != ib).all()  # every pair joins two different images
    # swapped_only: the most lopsided among the pairs that drew a swap
    out = M.most_lopsided_pair(
        model,
        x,
        1,
        grid=4,
        pr=0.5,
        generator=torch.Generator().manual_seed(3),
        n_pairs=16,
        swapped_only=True,
    )
    best = max((t for t in range(16) if d.swapped[t]), key=lambda t: gaps[t])
    assert bool(out.decision.swapped[0]) and (out.index_a, out.index_b) == (
        int(ia[best]),
        int(ib[best]),
    )
    none = M.most_lopsided_pair(
        model,
        x,
        1,
        grid=4,
        pr=0.0,
        generator=torch.Generator().manual_seed(3),
        n_pairs=16,
        swapped_only=True,
    )  # nothing swapped: every pair counts
    assert not bool(none.decision.swapped[0])


def test_most_lopsided_pair_bad_input():
    model, x = _Bright(), torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="at least two images"):
        M.most_lopsided_pair(model, x[:1], 0, grid=2)
    with pytest.raises(ValueError, match=r"label must be a class id in \[0, 1\]"):
        M.most_lopsided_pair(model, x, 2, grid=2)
    with pytest.raises(ValueError, match="n_pairs must be an int >= 1"):
        M.most_lopsided_pair(model, x, 0, grid=2, n_pairs=0)
