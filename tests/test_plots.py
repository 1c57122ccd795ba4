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
    fig = plots.reliability_diagrams(
        {"sharp": rep, "soft": metrics.calibration_report(z / 3, y)}, ncols=2
    )
    _png(fig)
    assert "ECE" in fig.axes[0].get_title()
    assert matplotlib.get_backend() == backend
    with pytest.raises(ValueError, match="reports is empty"):
        plots.reliability_diagrams({})


@pytest.mark.parametrize("kind", ["max_prob", "entropy"])
def test_histograms_from_logits_or_reports(kind):
    (a, ya), (b, yb) = _logits(0, 3.0), _logits(1, 0.5)
    _png(plots.confidence_histograms({"a": a, "b": b}, kind=kind))
    _png(
        plots.confidence_histograms(
            {"a": metrics.smoothing_report(a, ya), "b": metrics.smoothing_report(b, yb)}, kind=kind
        )
    )
    with pytest.raises(ValueError, match="kind must be 'max_prob' or 'entropy'"):
        plots.confidence_histograms({"a": a}, kind="margin")


def test_curves():
    _png(
        plots.fgsm_curves(
            {
                "ce": {"epsilons": [0, 0.01, 0.02], "accuracy": [0.9, 0.6, 0.3]},
                "ips": ([0, 0.01], [0.9, 0.7]),
            }
        )
    )
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
    df = pd.DataFrame(
        {
            "grid": [2, 2, 4, 4, 2],
            "pr": [0.25, 0.5, 0.25, 0.5, 0.25],
            "value": [0.8, 0.9, 0.7, 0.85, 0.6],
        }
    )
    fig = plots.ablation_heatmap(df)
    _png(fig)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.700\n± 0.141" in texts and "0.850" in texts  # repeats (grid 2, pr 0.25): mean ± sd
    with pytest.raises(ValueError, match=r"df lacks column\(s\) \['acc'\]"):
        plots.ablation_heatmap(df, value="acc")
    # lower-is-better metrics: reversed colours, so bright always means better
    assert fig.axes[0].images[0].get_cmap().name == "viridis"
    ece = plots.ablation_heatmap(df, lower_is_better=True, label="ECE")
    assert (
        ece.axes[0].images[0].get_cmap().name == "viridis_r" and ece.axes[1].get_ylabel() == "ECE"
    )
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
    x_a, x_b = (
        torch.rand(3, channels, 12, 12, generator=g),
        torch.rand(3, channels, 12, 12, generator=g),
    )
    decision = draw_swap(3, grid=3, pr=0.7, generator=g)
    out_a, out_b = apply_swap(x_a, x_b, decision)
    fig = plots.swap_pair_figure(x_a, x_b, out_a, out_b, decision, max_pairs=2)
    _png(fig)
    n_cells = int(decision.cells[:2].sum())
    assert (
        sum(len(ax.patches) for ax in fig.axes) == 4 * n_cells
    )  # every swapped cell marked in 4 panels
    axes = np.array(fig.axes).reshape(2, 4)
    for i in range(2):
        before = [p for ax in axes[i, :2] for p in ax.patches]
        after = [p for ax in axes[i, 2:] for p in ax.patches]
        assert all(p.get_facecolor()[3] == 0 for p in before)  # before: a frame only, no tint
        assert all(p.get_facecolor()[3] > 0 for p in after)  # after: tinted
        assert all(
            matplotlib.colors.to_hex(p.get_edgecolor()) == plots.SWAP_COLOR for p in before + after
        )
        assert axes[i, 0].get_title() == "a" and axes[i, 0].get_ylabel() == f"pair {i}"
        assert axes[i, 2].get_title() == (
            "a after swap" if decision.swapped[i] else "a (no swap drawn)"
        )
    with pytest.raises(ValueError, match="decision is for 3 pairs but the batch holds 2"):
        plots.swap_pair_figure(x_a[:2], x_b[:2], out_a[:2], out_b[:2], decision)
    one = type(decision)(decision.swapped[:1] & False, decision.cells[:1] & False, 3)
    fig = plots.swap_pair_figure(
        x_a[:1], x_b[:1], x_a[:1], x_b[:1], one, notes=[("p 0.9", "p 0.4")]
    )
    ax = fig.axes
    assert [a.get_title() for a in ax] == [
        "a",
        "b",
        "a (no swap drawn)",
        "b (no swap drawn)",
    ]  # no "pair 0:"
    assert ax[0].get_xlabel() == "no cells swapped" and ax[2].get_xlabel() == "p 0.9"
    with pytest.raises(ValueError, match="one .* pair of texts per pair shown"):
        plots.swap_pair_figure(x_a[:1], x_b[:1], x_a[:1], x_b[:1], one, notes=[])


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
    out = plots.outline_cells(
        np.zeros((6 * 2, 5 * 2, 3), np.uint8), cells, scale=2, color=(255, 0, 0), thickness=1
    )
    red = (out == [255, 0, 0]).all(axis=2)
    rows, cols = np.nonzero(red)
    assert cols.min() == 6 and cols.max() == 9 and rows.min() == 0 and rows.max() == 5
    assert not red[1:5, 7:9].any()  # only the border is drawn
    with pytest.raises(ValueError, match="square"):
        plots.outline_cells(out, np.zeros((2, 3), bool))
    padded = plots.add_margin(rgb, px=4)
    assert padded.shape == (3, 9, 3) and (padded[:, 5:] == 255).all()


def test_ablation_heatmap_shows_the_seed_spread_and_centres_on_the_baseline():
    df = pd.DataFrame(
        {"grid": [2, 2, 2, 4], "pr": [0.5, 0.5, 1.0, 0.5], "acc": [0.14, 0.16, 0.15, 0.152]}
    )
    fig = plots.ablation_heatmap(df, value="acc", baseline=0.15, baseline_label="CE")
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.150", "0.150\n± 0.014", "0.152"]  # the sd only where seeds repeat
    vmin, vmax = fig.axes[0].images[0].get_clim()
    assert (vmin + vmax) / 2 == pytest.approx(0.15)  # centred on the baseline ...
    assert vmax - vmin >= 4 * np.std([0.14, 0.16], ddof=1) - 1e-12  # ... and wider than the noise
    assert fig.axes[0].images[0].get_cmap().name == "RdBu"
    assert "CE 0.150" in [t.get_text() for t in fig.axes[1].get_yticklabels()]
    # one run per cell: no std column to lose
    single = plots.ablation_heatmap(df.drop_duplicates(["grid", "pr"]), value="acc")
    assert len(single.axes[0].texts) == 3


def test_colour_limits():
    assert plots.colour_limits([0.14, 0.16], [0.001, 0.001], centre=0.15) == pytest.approx(
        (0.14, 0.16)
    )
    # a spread wider than the data: the scale is at least 4 sd wide, so noise looks pale
    lo, hi = plots.colour_limits([0.149, 0.151], [0.01, np.nan])
    assert hi - lo == pytest.approx(0.04)
    with pytest.raises(ValueError, match="no finite value"):
        plots.colour_limits([np.nan])


def test_reliability_greys_sparse_bins_and_counts_every_bin():
    z, y = _logits(0, 3.0)
    rep = metrics.calibration_report(z, y, n_bins=10)
    fig = plots.reliability_diagram(rep, min_count=15)
    ax, ax_n = fig.axes[:2]
    counts = rep["reliability"]["count"]
    bars = ax.patches[:10]  # accuracy bars first, then the gap bars
    for bar, n in zip(bars, counts):
        grey = bar.get_facecolor()[:3] == matplotlib.colors.to_rgb("lightgrey")
        assert grey == (n < 15)
    heights = [b.get_height() for b in ax_n.patches]
    assert [h for h in heights if not np.isnan(h)] == [
        n for n in counts if n > 0
    ]  # empty bins left out
    assert ax_n.get_yscale() == "log"
    assert not fig.axes[0].get_legend()  # the legend is the figure's, outside the diagrams
    assert fig.legends


def test_similarity_heatmap_log_scale():
    z, y = _logits(0, 2.0)
    sim = metrics.class_similarity(z, y)["mean_prob"]
    fig = plots.similarity_heatmap(sim, log=True, floor=1e-3)
    _png(fig)
    norm = fig.axes[0].images[0].norm
    assert isinstance(norm, matplotlib.colors.LogNorm) and (norm.vmin, norm.vmax) == (1e-3, 1.0)
    with pytest.raises(ValueError, match="not both"):
        plots.similarity_heatmap(sim, log=True, diverging=True)
    # several runs: one figure, one shared log scale, class names once per row
    fig = plots.similarity_heatmaps({"ce": sim, "ips": sim.sqrt()}, list("abcde"), floor=1e-3)
    _png(fig)
    left, right = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:2]
    assert left.images[0].norm is right.images[0].norm and left.images[0].norm.vmin == 1e-3
    assert [t.get_text() for t in left.get_yticklabels()] == list("abcde")
    assert not any(t.get_text() for t in right.get_yticklabels())
    with pytest.raises(ValueError, match="one K"):
        plots.similarity_heatmaps({"a": sim, "b": sim[:3, :3]})


def test_run_curves_fit_each_axis_and_put_legends_outside():
    rows = [
        {
            "epoch": e,
            "train_acc": 0.97 + e / 1000,
            "test_acc": 0.99 + e / 1000,
            "train_loss": 1 / e,
            "test_loss": 0.5 / e,
            "ece": 0.02,
            "mean_max_prob": 0.98,
        }
        for e in range(1, 6)
    ]
    fig = plots.run_curves(rows)
    _png(fig)
    acc = fig.axes[0]
    lo, hi = acc.get_ylim()
    assert lo > 90 and hi < 100  # in %, fitted to 97-99.5 %, not 0-100
    legend = acc.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().y0 < acc.bbox.y0  # under the axes
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == list(plots.RUN_PANELS)
    with pytest.raises(ValueError, match="no rows with an epoch"):
        plots.run_curves([{"epoch": 1}])


def test_pair_probabilities_and_image_rows():
    p = np.full(12, 0.01)
    p[3] = 0.89
    fig = plots.pair_probabilities(p, p[::-1], [f"c{i}" for i in range(12)], true_class=0, top=5)
    _png(fig)
    names = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "c0" in names and len(names) <= 6  # the top 5 and the true class
    with pytest.raises(ValueError, match="true_class must be in"):
        plots.pair_probabilities(p, p, list(range(12)), true_class=12)
    img = np.zeros((16, 16, 3), np.uint8)
    fig = plots.image_rows_figure([("input", [img, img], ["a", "b"]), ("model", [img], ["pred 1"])])
    _png(fig)
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_visible()] == ["a", "b", "pred 1"]
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        plots.image_rows_figure([("input", [img, img], ["a"])])


def test_one_colour_for_swapped_cells():
    assert plots.SWAP_RGB == (255, 0, 255)
    out = plots.outline_cells(
        np.zeros((4, 4, 3), np.uint8), np.array([[True, False], [False, False]])
    )
    assert tuple(out[0, 0]) == plots.SWAP_RGB
