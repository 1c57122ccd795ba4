"""Smoke tests for ipskit.plots: every figure builds headless, is labelled, and saves as PNG."""

import io

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from ipskit import metrics, plots
from ipskit.robustness import corruption_accuracy


def _png(fig):
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert visible and all(ax.get_title() or ax.get_xlabel() for ax in visible)


def _logits(seed, scale):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(200, 5, generator=g) * scale, torch.randint(0, 5, (200,), generator=g)


def test_backend_untouched_and_reliability():
    backend = matplotlib.get_backend()
    z, y = _logits(0, 3.0)
    rep = metrics.calibration_report(z, y, n_bins=10)
    _png(plots.reliability_diagram(rep))
    _png(plots.reliability_diagram(metrics.reliability_data(z, y)))
    fig = plots.reliability_diagrams({"sharp": rep, "soft": metrics.calibration_report(z / 3, y)}, ncols=2)
    _png(fig)
    assert "ECE" in fig.axes[0].get_title()
    assert matplotlib.get_backend() == backend
    with pytest.raises(ValueError, match="reports is empty"):
        plots.reliability_diagrams({})


@pytest.mark.parametrize("kind", ["max_prob", "entropy"])
def test_histograms_from_logits_or_reports(kind):
    (a, ya), (b, yb) = _logits(0, 3.0), _logits(1, 0.5)
    _png(plots.confidence_histograms({"a": a, "b": b}, kind=kind))
    _png(plots.confidence_histograms({"a": metrics.smoothing_report(a, ya), "b": metrics.smoothing_report(b, yb)}, kind=kind))
    with pytest.raises(ValueError, match="kind must be 'max_prob' or 'entropy'"):
        plots.confidence_histograms({"a": a}, kind="margin")


def test_curves():
    _png(plots.fgsm_curves({"ce": {"epsilons": [0, 0.01, 0.02], "accuracy": [0.9, 0.6, 0.3]}, "ips": ([0, 0.01], [0.9, 0.7])}))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x, y = torch.rand(20, 3, 8, 8), torch.randint(0, 4, (20,))
    res = corruption_accuracy(model, x, y, names=["contrast", "brightness"], severities=(1, 3))
    fig = plots.corruption_curves({"a": res, "b": res})
    _png(fig)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3  # two corruptions + the mean
    rows = [{"epoch": e, "train_loss": 1 / e, "test_acc": 0.5 + e / 10} for e in (1, 2, 3)]
    _png(plots.training_curves(rows, keys=("train_loss", "test_acc")))
    _png(plots.training_curves({"ce": rows, "ips": rows[:2]}))


def test_similarity_and_ablation_heatmaps():
    z, y = _logits(0, 2.0)
    rep = metrics.smoothing_report(z, y)
    _png(plots.similarity_heatmap(rep["similarity"], class_names=list("abcde")))
    with pytest.raises(ValueError, match="matrix must be square"):
        plots.similarity_heatmap([[1, 2, 3]])
    df = pd.DataFrame({"grid": [2, 2, 4, 4, 2], "pr": [0.25, 0.5, 0.25, 0.5, 0.25], "value": [0.8, 0.9, 0.7, 0.85, 0.6]})
    fig = plots.ablation_heatmap(df)
    _png(fig)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.700" in texts and "0.850" in texts  # repeats (grid 2, pr 0.25) are averaged
    with pytest.raises(ValueError, match=r"df lacks column\(s\) \['acc'\]"):
        plots.ablation_heatmap(df, value="acc")
    # lower-is-better metrics: reversed colours, so bright always means better
    assert fig.axes[0].images[0].get_cmap().name == "viridis"
    ece = plots.ablation_heatmap(df, lower_is_better=True, label="ECE")
    assert ece.axes[0].images[0].get_cmap().name == "viridis_r" and ece.axes[1].get_ylabel() == "ECE"
    # a signed matrix: a diverging map centred at 0
    signed = plots.similarity_heatmap([[0.5, -2.0], [1.0, 0.0]], diverging=True, label="log ratio")
    assert signed.axes[0].images[0].get_clim() == (-2.0, 2.0)


def test_training_curves_read_as_epochs():
    rows = [{"epoch": e, "test_acc": 0.5 + e / 10} for e in range(1, 6)]
    ax = plots.training_curves(rows, keys=("test_acc",)).axes[0]
    assert ax.get_title() == "test accuracy"
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize("channels", [1, 3])
def test_swap_pair_figure(channels):
    from ipskit.swap import apply_swap, draw_swap

    g = torch.Generator().manual_seed(0)
    x_a, x_b = torch.rand(3, channels, 12, 12, generator=g), torch.rand(3, channels, 12, 12, generator=g)
    decision = draw_swap(3, grid=3, pr=0.7, generator=g)
    out_a, out_b = apply_swap(x_a, x_b, decision)
    fig = plots.swap_pair_figure(x_a, x_b, out_a, out_b, decision, max_pairs=2)
    _png(fig)
    n_cells = int(decision.cells[:2].sum())
    assert sum(len(ax.patches) for ax in fig.axes) == 4 * n_cells  # every swapped cell outlined in 4 panels
    with pytest.raises(ValueError, match="decision is for 3 pairs but the batch holds 2"):
        plots.swap_pair_figure(x_a[:2], x_b[:2], out_a[:2], out_b[:2], decision)


def test_pixel_helpers_for_image_lists():
    x = torch.zeros(1, 3, 5)
    x[0, 1, 2] = 1.0
    rgb = plots.to_rgb(x)
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8 and rgb[1, 2].tolist() == [255] * 3
    with pytest.raises(ValueError, match="C = 1 or 3"):
        plots.to_rgb(torch.zeros(2, 4, 4))
    big = plots.upscale(rgb, 4)
    assert big.shape == (12, 20, 3) and (big[4:8, 8:12] == 255).all() and big[0:4, 8:12].max() == 0
    # 5 columns on a 2 x 2 grid: cell_index gives columns 0-2 to cell 0 and 3-4 to cell 1
    cells = np.array([[False, True], [False, False]])
    out = plots.outline_cells(np.zeros((6 * 2, 5 * 2, 3), np.uint8), cells, scale=2,
                              color=(255, 0, 0), thickness=1)
    red = (out == [255, 0, 0]).all(axis=2)
    rows, cols = np.nonzero(red)
    assert cols.min() == 6 and cols.max() == 9 and rows.min() == 0 and rows.max() == 5
    assert not red[1:5, 7:9].any()  # only the border is drawn
    with pytest.raises(ValueError, match="square"):
        plots.outline_cells(out, np.zeros((2, 3), bool))
    padded = plots.add_margin(rgb, px=4)
    assert padded.shape == (3, 9, 3) and (padded[:, 5:] == 255).all()
