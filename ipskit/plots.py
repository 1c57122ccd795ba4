"""Matplotlib figures shared by the notebooks, the Streamlit app and ``ipskit compare``.

Every function takes plain results (the dicts of :mod:`ipskit.metrics`,
:mod:`ipskit.robustness`, ``metrics.jsonl`` rows, tensors) and returns a
``matplotlib.figure.Figure`` built without pyplot, so it works under any backend (Agg on a
server), leaks no global figure state, and can be shown (``st.pyplot(fig)``, a notebook cell
ending in ``fig``) or saved (``fig.savefig("x.png")``). Axes are labelled and titled for
projection in a lecture room.

Figures: reliability diagrams (Guo et al. 2017) with the image count of each bin,
confidence / entropy histograms, FGSM and corruption curves, a class-similarity heatmap
(linear or log colour scale), a patch-swap pair with the swapped cells outlined (the IPS
operation of Choi et al., arXiv 2505.14124), both sides' class probabilities, a grid x pr
ablation heatmap (mean ± sd over seeds, coloured around a baseline), training curves (one
panel per metric, or one run's curves grouped by kind), and rows of images with captions.
Pixel helpers for image lists (the explorer's ``st.image``): ``to_rgb``, ``upscale`` (nearest
neighbour, so 16-pixel images stay crisp), ``outline_cells`` (the swapped cells of a pair, in
:data:`SWAP_COLOR`, the one colour every figure marks exchanged cells with) and ``add_margin``.

Usage::

    from ipskit import plots
    fig = plots.reliability_diagrams({"ce": report_ce, "ips": report_ips})
    fig.savefig("reliability.png", dpi=150)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.colors import to_rgb as _hex_to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

__all__ = [
    "SWAP_COLOR",
    "SWAP_RGB",
    "SWAP_COLOR_NAME",
    "RELIABILITY_MIN_COUNT",
    "pair_probabilities",
    "run_curves",
    "image_rows_figure",
    "colour_limits",
    "reliability_diagram",
    "reliability_diagrams",
    "confidence_histograms",
    "fgsm_curves",
    "corruption_curves",
    "similarity_heatmap",
    "similarity_heatmaps",
    "swap_pair_figure",
    "ablation_heatmap",
    "training_curves",
    "to_rgb",
    "upscale",
    "outline_cells",
    "add_margin",
]


# Exchanged cells are marked in this colour everywhere (swap figures, Grad-CAM outlines): magenta
# is absent from the jet colour map of Grad-CAM overlays and rare in natural images and digits.
SWAP_COLOR = "#ff00ff"
SWAP_COLOR_NAME = "magenta"  # for captions that refer to it
SWAP_RGB = tuple(round(255 * v) for v in _hex_to_rgb(SWAP_COLOR))  # (255, 0, 255), for pixel arrays
# Reliability bins with fewer images are greyed: a bin's accuracy from n images has a standard
# error of up to 0.5 / sqrt(n), 0.11 at n = 20, already a tenth of the diagram's height.
RELIABILITY_MIN_COUNT = 20
_TEXT = 13  # points; at the explorer's 100 px per inch of figure that is 18 px on screen


def _grid(n: int, ncols: int, size: float = 3.6) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _reliability(report: dict) -> tuple[dict, float | None]:
    rel = report.get("reliability", report)
    if not all(k in rel for k in ("bin_lower", "bin_upper", "accuracy", "confidence", "count")):
        raise ValueError(
            "expected a calibration_report() or reliability_data() dict "
            "(bin_lower, bin_upper, accuracy, confidence, count)"
        )
    return rel, report.get("ece", rel.get("ece"))


def _draw_reliability(ax, ax_n, report: dict, title: str, min_count: int) -> list:
    """Reliability bars on ``ax`` and the image count per bin on ``ax_n`` (log scale); bins
    under ``min_count`` images in grey. Returns legend handles."""
    rel, ece = _reliability(report)
    lo, hi = np.asarray(rel["bin_lower"]), np.asarray(rel["bin_upper"])
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in rel["confidence"]], dtype=float)
    count = np.array([0 if c is None else c for c in rel["count"]], dtype=float)
    width, centers = hi - lo, (lo + hi) / 2
    ok = count >= min_count
    colours = np.where(ok, "tab:blue", "lightgrey")
    ax.bar(
        centers, np.nan_to_num(acc), width=width, edgecolor="black", color=colours, linewidth=0.6
    )
    # The gap is hatched, not filled: under-confident bins (accuracy above confidence) have it
    # inside the blue bar, where a translucent fill would vanish. Sparse bins get no gap.
    gap_lo = np.nan_to_num(np.minimum(acc, conf))
    gap = np.where(ok, np.nan_to_num(np.abs(conf - acc)), 0.0)
    ax.bar(
        centers,
        gap,
        bottom=gap_lo,
        width=width,
        facecolor="none",
        edgecolor="tab:red",
        hatch="////",
        linewidth=0.8,
    )
    ax.plot([0, 1], [0, 1], "k--")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.set_title(
        title + (f"\nECE {ece:.3f}, {int(count.sum()):,} images" if ece is not None else ""),
        fontsize=_TEXT,
    )
    ax.tick_params(labelsize=_TEXT - 1, labelbottom=False)
    ax.yaxis.label.set_size(_TEXT)
    # how many images each bin holds, on its own axis: sparse bins are noise
    ax_n.bar(
        centers,
        np.where(count > 0, count, np.nan),
        width=width,
        color=colours,
        edgecolor="black",
        linewidth=0.6,
    )
    ax_n.axhline(min_count, color="tab:red", linestyle=":", linewidth=1.2)
    ax_n.set_yscale("log")
    ax_n.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_n.set_ylim(0.7, max(count.max(), min_count) * 3)
    ax_n.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="images")
    ax_n.tick_params(labelsize=_TEXT - 1)
    ax_n.xaxis.label.set_size(_TEXT)
    ax_n.yaxis.label.set_size(_TEXT)
    return [
        Patch(facecolor="tab:blue", edgecolor="black", label="accuracy per bin"),
        Patch(facecolor="none", edgecolor="tab:red", hatch="////", label="gap to confidence"),
        Patch(facecolor="lightgrey", edgecolor="black", label=f"bin under {min_count} images"),
        ax.lines[0],
    ]


def _reliability_figure(
    reports: dict[str, dict], ncols: int, size: float, min_count: int
) -> Figure:
    n = len(reports)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size * ncols, (size * 1.3 + 0.5) * nrows), layout="constrained")
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    handles = []
    for i, (name, rep) in enumerate(reports.items()):
        r, c = divmod(i, ncols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax_n = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
        handles = _draw_reliability(ax, ax_n, rep, name, min_count)
    handles[-1].set_label("perfect calibration")
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncols=min(4, 2 * ncols),
        fontsize=_TEXT - 1,
        frameon=False,
    )
    return fig


def reliability_diagram(
    report: dict, title: str = "Reliability diagram", min_count: int = RELIABILITY_MIN_COUNT
) -> Figure:
    """One reliability diagram: accuracy per confidence bin against the diagonal, and under it
    the number of test images in each bin (log scale).

    Args:
        report: ``metrics.calibration_report(...)`` or ``metrics.reliability_data(...)``.
        title: axes title (the ECE and the image count are appended when known).
        min_count: bins with fewer images are drawn in grey, without their gap.

    Returns:
        Figure (its first axes is the diagram).
    """
    return _reliability_figure({title: report}, 1, 4.6, min_count)


def reliability_diagrams(
    reports: dict[str, dict], ncols: int = 3, min_count: int = RELIABILITY_MIN_COUNT
) -> Figure:
    """Reliability diagrams side by side, one per run, each over its count per bin.

    Args:
        reports: run name -> ``calibration_report`` (or ``reliability_data``) dict.
        ncols: diagrams per row.
        min_count: bins with fewer images are drawn in grey, without their gap.

    Returns:
        Figure (axes alternate diagram, count panel).
    """
    if not reports:
        raise ValueError("reports is empty; pass {run name: calibration_report(...)}")
    return _reliability_figure(reports, ncols, 4.2, min_count)


def confidence_histograms(data_by_run: dict, kind: str = "max_prob", bins: int = 20) -> Figure:
    """Distributions of per-sample confidence or entropy, one outline per run.

    Args:
        data_by_run: run name -> logits ``[N, K]`` (tensor or array), or a
            ``metrics.smoothing_report(...)`` dict (its stored histograms are used).
        kind: ``"max_prob"`` (confidence) or ``"entropy"`` (nats).
        bins: histogram bins when logits are given.

    Returns:
        Figure.
    """
    from ipskit.metrics import smoothing_report

    if kind not in ("max_prob", "entropy"):
        raise ValueError(f"kind must be 'max_prob' or 'entropy', got {kind!r}")
    if not data_by_run:
        raise ValueError(
            "data_by_run is empty; pass {run name: logits [N, K] or smoothing_report(...)}"
        )
    fig = Figure(figsize=(4.6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, data in data_by_run.items():
        if not isinstance(data, dict):
            logits = torch.as_tensor(data).double()
            data = smoothing_report(
                logits, logits.argmax(dim=1), bins=bins
            )  # labels do not enter the histograms
        hist = data["histograms"][kind]
        edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], dtype=float)
        density = counts / max(counts.sum(), 1) / np.diff(edges)
        ax.stairs(density, edges, linewidth=2, label=name)
    k = round(1 / edges[0]) if kind == "max_prob" else round(math.exp(edges[-1]))
    if kind == "max_prob":
        ax.set(xlabel="confidence (max probability)", title="Confidence of test predictions")
    else:
        ax.set(
            xlabel=f"entropy (nats, at most ln {k} = {math.log(k):.2f})",
            title="Entropy of test predictions",
        )
    ax.set_ylabel("density")
    _larger(ax)
    long = (
        max(len(str(n)) for n in data_by_run) > 16
    )  # long run names: one a line, not wider than the plot
    fig.legend(
        loc="outside lower center",
        ncols=1 if long else min(len(data_by_run), 3),
        fontsize=_TEXT - 1,
        frameon=False,
    )
    return fig


def _larger(ax, size: int = _TEXT) -> None:
    """Title, axis labels and ticks at a size that reads when projected."""
    ax.title.set_size(size + 1)
    ax.xaxis.label.set_size(size)
    ax.yaxis.label.set_size(size)
    ax.tick_params(labelsize=size - 1)


def fgsm_curves(curves: dict) -> Figure:
    """Top-1 accuracy against FGSM epsilon, one line per run.

    Args:
        curves: run name -> ``{"epsilons": [...], "accuracy": [...]}`` or ``(epsilons, accuracies)``.

    Returns:
        Figure.
    """
    if not curves:
        raise ValueError("curves is empty; pass {run name: {'epsilons': [...], 'accuracy': [...]}}")
    fig = Figure(figsize=(5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for name, c in curves.items():
        eps, acc = (c["epsilons"], c["accuracy"]) if isinstance(c, dict) else c
        ax.plot(eps, acc, marker="o", linewidth=2, label=name)
    ax.set(
        xlabel="FGSM epsilon (pixels of a [0, 1] image)",
        ylabel="top-1 accuracy",
        title="Accuracy under FGSM attack",
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    _larger(ax)
    ax.legend(fontsize=_TEXT - 1)
    return fig


def corruption_curves(results: dict[str, dict], ncols: int = 4) -> Figure:
    """Accuracy against severity for each corruption (one panel each, plus the mean).

    Args:
        results: run name -> ``robustness.corruption_accuracy(...)`` dict.
        ncols: panels per row.

    Returns:
        Figure.
    """
    if not results:
        raise ValueError("results is empty; pass {run name: corruption_accuracy(...)}")
    names = list(next(iter(results.values()))["accuracy"])
    fig, axes = _grid(len(names) + 1, ncols, size=2.7)
    ncols = max(1, min(ncols, len(axes)))
    for i, (ax, cname) in enumerate(zip(axes, names + ["mean over corruptions"])):
        for run, res in results.items():
            table = (
                res["mean_per_severity"]
                if cname == "mean over corruptions"
                else res["accuracy"].get(cname)
            )
            if not table:
                continue
            sev = sorted(table, key=int)
            ax.plot(
                [int(s) for s in sev], [table[s] for s in sev], marker="o", linewidth=2, label=run
            )
            ax.axhline(res["clean"], linestyle=":", linewidth=1.2, color=ax.lines[-1].get_color())
        ax.set(title=cname.replace("_", " "), ylim=(0, 1))
        ax.set_xticks(range(1, 6))
        ax.grid(alpha=0.3)
        # axis labels once per row and column, so the panels keep their room
        if i % ncols == 0:
            ax.set_ylabel("top-1 accuracy")
        if i >= len(axes) - ncols:
            ax.set_xlabel("severity")
        _larger(ax, _TEXT - 1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        [f"{n} (dotted: clean accuracy)" for n in labels],
        loc="outside upper center",
        ncols=min(len(labels), 2),
        fontsize=_TEXT - 1,
        frameon=False,
    )
    return fig


def similarity_heatmap(
    matrix,
    class_names=None,
    title: str = "Mean prediction per true class",
    diverging: bool = False,
    label: str | None = None,
    log: bool = False,
    floor: float = 1e-4,
) -> Figure:
    """Heatmap of a ``[K, K]`` class-similarity matrix (``metrics.class_similarity``).

    Args:
        matrix: ``[K, K]`` (row = true class, column = predicted class), tensor, array or lists.
        class_names: K labels for the axes (default 0..K-1).
        title: axes title.
        diverging: for signed values (a difference or log-ratio of two matrices): a red-blue
            map centred at 0 with symmetric limits, so the sign reads off the colour.
        label: colour-bar label.
        log: a logarithmic colour scale from ``floor`` to 1 (for probabilities: on a linear
            scale a trained model's matrix shows only its diagonal).
        floor: smallest value the log scale shows; smaller ones get its colour.

    Returns:
        Figure.
    """
    m = np.array(
        [[np.nan if v is None else v for v in row] for row in np.asarray(matrix, dtype=object)],
        dtype=float,
    )
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square [K, K], got shape {m.shape}")
    k = m.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    fig = Figure(figsize=(1.9 + 0.3 * k, 1.3 + 0.3 * k), layout="constrained")
    ax = fig.add_subplot()
    if diverging and log:
        raise ValueError(
            "pass diverging=True (signed values) or log=True (probabilities), not both"
        )
    if diverging:
        lim = float(np.nanmax(np.abs(m))) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    elif log:
        if not 0 < floor < 1:
            raise ValueError(f"floor must be in (0, 1) for a log scale, got {floor}")
        im = ax.imshow(np.clip(m, floor, 1.0), cmap="viridis", norm=LogNorm(vmin=floor, vmax=1.0))
    else:
        im = ax.imshow(m, cmap="viridis")
    bar = fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    bar.ax.tick_params(labelsize=_TEXT - 1)
    bar.ax.yaxis.label.set_size(_TEXT - 1)
    ax.set_xticks(range(k), names, rotation=90 if k > 10 or max(map(len, names)) > 3 else 0)
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    _larger(ax, _TEXT - 1)
    return fig


def similarity_heatmaps(
    matrices: dict,
    class_names=None,
    floor: float = 1e-4,
    ncols: int = 2,
    label: str = "mean probability (log scale)",
) -> Figure:
    """Class-similarity matrices of several runs side by side on one log colour scale.

    One figure, one colour bar and the class names once per row, so that each matrix gets the
    room (two runs at once fill a screen's width legibly).

    Args:
        matrices: run name -> ``[K, K]`` ``metrics.class_similarity(...)["mean_prob"]``.
        class_names: K labels (default 0..K-1).
        floor: smallest probability the log scale shows.
        ncols: matrices per row; label: colour-bar label.

    Returns:
        Figure.
    """
    if not matrices:
        raise ValueError("matrices is empty; pass {run name: [K, K] matrix}")
    if not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1) for a log scale, got {floor}")
    ms = {
        n: np.array(
            [[np.nan if v is None else v for v in row] for row in np.asarray(m, dtype=object)],
            dtype=float,
        )
        for n, m in matrices.items()
    }
    k = next(iter(ms.values())).shape[0]
    if any(m.shape != (k, k) for m in ms.values()):
        raise ValueError(
            f"every matrix must be square [K, K] of one K, got {[m.shape for m in ms.values()]}"
        )
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    n = len(ms)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    side = 0.32 * k + 0.5
    fig = Figure(figsize=(side * ncols + 2.6, (side + 1.2) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    norm = LogNorm(vmin=floor, vmax=1.0)
    rotate = 90 if k > 10 or max(map(len, names)) > 3 else 0
    for i, (ax, (name, m)) in enumerate(zip(axes, ms.items())):
        im = ax.imshow(np.clip(m, floor, 1.0), cmap="viridis", norm=norm)
        ax.set_xticks(range(k), names, rotation=rotate)
        ax.set_yticks(range(k), names if i % ncols == 0 else [])
        ax.set(title=name, xlabel="predicted class", ylabel="true class" if i % ncols == 0 else "")
        _larger(ax)
    for ax in axes[n:]:
        ax.set_visible(False)
    bar = fig.colorbar(im, ax=axes[:n], shrink=0.8, label=label)
    bar.ax.tick_params(labelsize=_TEXT - 1)
    bar.ax.yaxis.label.set_size(_TEXT)
    return fig


def _show(ax, img: torch.Tensor, title: str) -> None:
    img = torch.as_tensor(img).detach().float().cpu().clamp(0, 1)  # [C, H, W]
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=_TEXT + 1)
    ax.set_xticks([])
    ax.set_yticks([])


def swap_pair_figure(
    x_a, x_b, out_a, out_b, decision, max_pairs: int = 4, notes: list[tuple[str, str]] | None = None
) -> Figure:
    """Pairs before and after a patch swap.

    Before the swap the images are shown as they are, with a thin dashed frame around the cells
    that will move; after it, the cells each image took from its partner are tinted and
    outlined in :data:`SWAP_COLOR`. A pair that drew no swap says so in its titles.

    Args:
        x_a, x_b: the pair before swapping, ``[B, C, H, W]`` in [0, 1].
        out_a, out_b: after ``ipskit.swap.apply_swap`` (same shape).
        decision: the ``ipskit.swap.SwapDecision`` that was applied.
        max_pairs: rows to show (the first pairs of the batch).
        notes: per pair shown, the text under its two after-swap panels (e.g. each side's
            p(true class) and which side teaches), or None.

    Returns:
        Figure with one row per pair: a, b, a after swap, b after swap.
    """
    from ipskit.swap import cell_index  # lazy: plots should import without the training core

    if not (x_a.shape == x_b.shape == out_a.shape == out_b.shape) or x_a.dim() != 4:
        raise ValueError(
            f"x_a, x_b, out_a, out_b must be [B, C, H, W] of one shape, got {tuple(x_a.shape)}, "
            f"{tuple(x_b.shape)}, {tuple(out_a.shape)}, {tuple(out_b.shape)}"
        )
    if len(decision) != x_a.shape[0]:
        raise ValueError(
            f"decision is for {len(decision)} pairs but the batch holds {x_a.shape[0]}"
        )
    h, w = x_a.shape[-2:]
    n = min(max_pairs, x_a.shape[0])
    if notes is not None and len(notes) != n:
        raise ValueError(
            f"notes must hold one (after a, after b) pair of texts per pair shown ({n}), "
            f"got {len(notes)}"
        )
    rows, cols = cell_index(h, decision.grid).tolist(), cell_index(w, decision.grid).tolist()
    fig = Figure(figsize=(9, 2.6 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    tint = (*_hex_to_rgb(SWAP_COLOR), 0.15)  # light: the image must still read under it
    for i in range(n):
        swapped = bool(decision.swapped[i])
        after = "after swap" if swapped else "(no swap drawn)"
        panels = [(x_a[i], "a"), (x_b[i], "b"), (out_a[i], f"a {after}"), (out_b[i], f"b {after}")]
        for j, (img, title) in enumerate(panels):
            ax = axes[i, j]
            _show(ax, img, title)
            for r, c in decision.cells[i].nonzero().tolist():  # every exchanged cell
                r0, c0 = rows.index(r), cols.index(c)
                box = (c0 - 0.5, r0 - 0.5), cols.count(c), rows.count(r)
                if j < 2:  # before: a thin frame of the cells that will move
                    ax.add_patch(
                        Rectangle(
                            *box,
                            facecolor="none",
                            edgecolor=SWAP_COLOR,
                            linewidth=1.0,
                            linestyle=(0, (2, 2)),
                        )
                    )
                else:  # after: tinted and outlined
                    ax.add_patch(
                        Rectangle(*box, facecolor=tint, edgecolor=SWAP_COLOR, linewidth=2.0)
                    )
        if notes is not None:
            for j, text in ((2, notes[i][0]), (3, notes[i][1])):
                axes[i, j].set_xlabel(text, fontsize=_TEXT + 1)
        if n > 1:
            axes[i, 0].set_ylabel(f"pair {i}", fontsize=_TEXT + 1)
        k = int(decision.cells[i].sum())
        if not swapped:
            axes[i, 0].set_xlabel("no cells swapped", fontsize=_TEXT)
        elif notes is None:
            axes[i, 3].set_xlabel(f"{k}/{decision.grid**2} cells swapped", fontsize=_TEXT)
    fig.suptitle(
        f"Intra-class patch swap, grid {decision.grid}x{decision.grid}: after the swap, the "
        f"cells taken from the partner are tinted",
        fontsize=_TEXT + 1,
    )
    return fig


def pair_probabilities(
    probs_a,
    probs_b,
    class_names,
    true_class: int,
    labels: tuple[str, str] = ("a", "b"),
    top: int = 10,
) -> Figure:
    """Both sides' class probabilities as grouped bars (the true class marked).

    Args:
        probs_a, probs_b: ``[K]`` softmax outputs of the two sides.
        class_names: K names; true_class: the pair's class id.
        labels: legend names of the two sides.
        top: with more than ``top`` classes, only the ``top`` most probable (and the true class).

    Returns:
        Figure.
    """
    pa, pb = np.asarray(probs_a, dtype=float).ravel(), np.asarray(probs_b, dtype=float).ravel()
    k = len(pa)
    if len(pb) != k or len(class_names) != k:
        raise ValueError(
            f"probs_a, probs_b and class_names must have one entry per class, got "
            f"{len(pa)}, {len(pb)} and {len(class_names)}"
        )
    if not 0 <= int(true_class) < k:
        raise ValueError(f"true_class must be in [0, {k - 1}], got {true_class}")
    shown = np.arange(k)
    if k > top:
        order = np.argsort(-np.maximum(pa, pb), kind="stable")[:top]
        shown = np.sort(np.union1d(order, [int(true_class)]))
    names = [str(class_names[i]) for i in shown]
    x = np.arange(len(shown))
    fig = Figure(figsize=(max(5.0, 0.6 * len(shown) + 2.0), 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(x - 0.2, pa[shown], width=0.4, label=labels[0], color="tab:blue")
    ax.bar(x + 0.2, pb[shown], width=0.4, label=labels[1], color="tab:orange")
    ax.set_xticks(
        x,
        names,
        rotation=45 if max(map(len, names)) > 3 else 0,
        ha="right" if max(map(len, names)) > 3 else "center",
    )
    for tick, i in zip(ax.get_xticklabels(), shown):
        if i == int(true_class):
            tick.set_fontweight("bold")
    ax.set(
        ylim=(0, 1),
        ylabel="probability",
        title="Class probabilities (true class in bold)" + (f", top {top}" if k > top else ""),
    )
    ax.grid(axis="y", alpha=0.3)
    _larger(ax)
    fig.legend(loc="outside right upper", fontsize=_TEXT - 1, frameon=False)
    return fig


def colour_limits(means, sds=None, centre: float | None = None) -> tuple[float, float]:
    """Colour-scale limits for a heatmap of means that does not make seed noise look dramatic.

    With a ``centre`` (a baseline such as the CE run's value) the limits are symmetric around
    it, so a colour's strength is the distance from the baseline; otherwise they span the
    data. Either way the span is at least four standard deviations (the largest over cells),
    so cells that differ by less than their seed spread get nearly the same colour.

    Args:
        means: cell values; sds: their standard deviations over seeds (NaN / None: one seed).
        centre: value at the middle of a diverging scale, or None.
    Returns:
        (vmin, vmax).
    """
    m = np.asarray(means, dtype=float)
    m = m[np.isfinite(m)]
    if m.size == 0:
        raise ValueError("means holds no finite value")
    sd = np.asarray([np.nan] if sds is None else sds, dtype=float)
    noise = 2.0 * float(np.nanmax(sd)) if np.isfinite(sd).any() else 0.0
    if centre is not None:
        half = max(float(np.abs(m - centre).max()), noise) or 1e-6
        return float(centre) - half, float(centre) + half
    lo, hi = float(m.min()), float(m.max())
    if hi - lo < 2 * noise:
        mid = (lo + hi) / 2
        lo, hi = mid - noise, mid + noise
    return (lo, hi) if hi > lo else (lo - 1e-6, hi + 1e-6)


def ablation_heatmap(
    df,
    value: str = "value",
    row: str = "grid",
    col: str = "pr",
    fmt: str = ".3f",
    title: str | None = None,
    lower_is_better: bool = False,
    label: str | None = None,
    baseline: float | None = None,
    baseline_label: str = "CE",
) -> Figure:
    """Heatmap of a metric over a two-way ablation (default grid x pr): mean ± sd per cell.

    Repeats of a cell (several seeds) are averaged; a cell of several runs shows its mean and
    standard deviation, so a difference can be read against the seed spread. The colour limits
    come from :func:`colour_limits`: at least four standard deviations wide.

    Args:
        df: pandas DataFrame with columns ``row``, ``col`` and ``value``.
        value, row, col: column names.
        fmt: number format of the annotations.
        title: axes title (default: the value column).
        lower_is_better: reverse the colour map (ECE, NLL), so that better always reads the same.
        label: colour-bar label (default: the value column).
        baseline: a reference value (e.g. the CE runs' mean): the map becomes red-blue centred
            on it (blue: better than the baseline) and the colour bar marks it.
        baseline_label: the reference's name on the colour bar.

    Returns:
        Figure.
    """
    missing = [c for c in (row, col, value) if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks column(s) {missing}; it has {list(df.columns)}")
    stats = df.dropna(subset=[value]).groupby([row, col])[value].agg(["mean", "std", "count"])
    if stats.empty:
        raise ValueError(f"df has no rows with a {value} value")
    table = stats["mean"].unstack(col).sort_index().sort_index(axis=1)
    sd = stats["std"].unstack(col).reindex_like(table)
    count = stats["count"].unstack(col).reindex_like(table).fillna(0)
    vmin, vmax = colour_limits(table.to_numpy(dtype=float), sd.to_numpy(dtype=float), baseline)
    if baseline is None:
        cmap = "viridis_r" if lower_is_better else "viridis"
    else:
        cmap = "RdBu_r" if lower_is_better else "RdBu"
    fig = Figure(
        figsize=(2.2 + 1.25 * table.shape[1], 1.6 + 0.9 * table.shape[0]), layout="constrained"
    )
    ax = fig.add_subplot()
    im = ax.imshow(table.to_numpy(dtype=float), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    bar = fig.colorbar(im, ax=ax, label=label or value)
    if baseline is not None:
        bar.ax.axhline(baseline, color="black", linewidth=2.5)
        bar.set_ticks(
            sorted(
                {
                    *[
                        t
                        for t in bar.get_ticks()
                        if vmin <= t <= vmax and abs(t - baseline) > (vmax - vmin) / 8
                    ],
                    baseline,
                }
            )
        )
        bar.ax.set_yticklabels(
            [
                f"{baseline_label} {t:{fmt}}" if t == baseline else f"{t:{fmt}}"
                for t in bar.get_ticks()
            ]
        )
    bar.ax.tick_params(labelsize=_TEXT - 1)
    bar.ax.yaxis.label.set_size(_TEXT)
    ax.set_xticks(
        range(table.shape[1]), [f"{c:g}" if isinstance(c, float) else str(c) for c in table.columns]
    )
    ax.set_yticks(
        range(table.shape[0]), [f"{r:g}" if isinstance(r, float) else str(r) for r in table.index]
    )
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = table.iat[i, j]
            if np.isnan(v):
                continue
            text = format(v, fmt)
            if count.iat[i, j] > 1 and np.isfinite(sd.iat[i, j]):
                text += f"\n± {sd.iat[i, j]:{fmt}}"
            r, g, b_, _ = im.cmap(im.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b_ < 0.5
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=_TEXT,
                color="white" if dark else "black",
            )
    ax.set(xlabel=col, ylabel=row, title=title or f"{value} over {row} x {col}")
    _larger(ax)
    return fig


CURVE_LABELS = {
    "train_loss": "training loss",
    "train_ce": "training cross-entropy",
    "train_kd": "training KD term",
    "train_acc": "training accuracy",
    "test_loss": "test loss (NLL)",
    "test_acc": "test accuracy",
    "ece": "test ECE",
    "mean_max_prob": "test mean max-probability",
    "lr": "learning rate",
}


def training_curves(
    runs, keys=("train_loss", "test_loss", "test_acc", "ece"), ncols: int = 2
) -> Figure:
    """Per-epoch curves from ``metrics.jsonl`` rows, one panel per key, one line per run.

    Args:
        runs: a list of row dicts (one run) or run name -> list of row dicts.
        keys: metrics to plot (rows lacking a key are skipped for it).
        ncols: panels per row.

    Returns:
        Figure.
    """
    runs = {"run": runs} if isinstance(runs, list) else dict(runs)
    if not runs or not keys:
        raise ValueError("need at least one run and one key to plot")
    fig, axes = _grid(len(keys), ncols, size=3.8)
    for ax, key in zip(axes, keys):
        for name, rows in runs.items():
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and "epoch" in r]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=name)
        name = CURVE_LABELS.get(key, key.replace("_", " "))
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _larger(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(labels), 3) or 1,
        fontsize=_TEXT - 1,
        frameon=False,
    )
    return fig


# One run's curves grouped by what they measure: panel title -> metrics.jsonl keys.
RUN_PANELS = {
    "accuracy": ("train_acc", "test_acc"),
    "loss": ("train_loss", "train_ce", "train_kd", "test_loss"),
    "test ECE": ("ece",),
    "test mean max-probability": ("mean_max_prob",),
}
_PERCENT_KEYS = {"train_acc", "test_acc"}


def run_curves(
    rows: list[dict],
    panels: dict[str, tuple] | None = None,
    ncols: int = 2,
    title: str | None = None,
    first_epoch: int = 1,
) -> Figure:
    """One run's per-epoch curves, a panel per kind (default :data:`RUN_PANELS`), legible when
    projected: each y axis fits its own data (accuracy in %, so 97-99.7 % is not a flat line
    at the top of 0-1) and each panel's legend sits under it, outside the plot.

    Args:
        rows: ``metrics.jsonl`` rows (dicts with ``epoch``); keys a row lacks are skipped.
        panels: panel title -> keys drawn in it; panels with no data are left out.
        ncols: panels per row.
        title: figure title.
        first_epoch: leave out earlier epochs, so that the axes zoom on the end of training
            (where 97 % and 99.7 % differ).

    Returns:
        Figure.
    """
    panels = dict(RUN_PANELS if panels is None else panels)
    series = {
        name: {
            k: [
                (r["epoch"], r[k])
                for r in rows
                if r.get(k) is not None and r.get("epoch", 0) >= first_epoch
            ]
            for k in keys
        }
        for name, keys in panels.items()
    }
    # a series that is zero throughout (the KD term of a CE run) says nothing: left out
    series = {
        name: {k: pts for k, pts in by_key.items() if pts and any(v != 0 for _, v in pts)}
        for name, by_key in series.items()
    }
    series = {name: by_key for name, by_key in series.items() if by_key}
    if not series:
        raise ValueError(
            f"no rows with an epoch and any of {sorted({k for v in panels.values() for k in v})}"
        )
    fig, axes = _grid(len(series), ncols, size=4.3)
    fig.set_size_inches(4.6 * min(ncols, len(series)), 4.1 * math.ceil(len(series) / ncols))
    for ax, (name, by_key) in zip(axes, series.items()):
        for key, pts in by_key.items():
            xs, ys = zip(*pts)
            pct = key in _PERCENT_KEYS
            ax.plot(
                xs,
                [100 * y for y in ys] if pct else ys,
                marker="o",
                markersize=4,
                linewidth=2,
                label=CURVE_LABELS.get(key, key.replace("_", " ")),
            )
        if all(k in _PERCENT_KEYS for k in by_key):
            ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=None))
        ax.set(xlabel="epoch", title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.grid(alpha=0.3)
        _larger(ax)
        if len(by_key) > 1:
            ax.legend(
                loc="upper center",
                bbox_to_anchor=(0.5, -0.2),
                ncols=2,
                fontsize=_TEXT - 1,
                frameon=False,
            )
    if title:
        fig.suptitle(title, fontsize=_TEXT + 2)
    return fig


def image_rows_figure(
    rows: list[tuple[str, list, list[str]]], title: str | None = None, size: float = 2.0
) -> Figure:
    """Rows of images with a caption under each and a label on each row: what the explorer
    shows as image lists, as one figure (to save for a slide).

    Args:
        rows: (row label, images, captions) per row; images are uint8 ``[H, W, 3]`` arrays
            (:func:`to_rgb`, Grad-CAM overlays), captions one string per image.
        title: figure title.
        size: inches per image.

    Returns:
        Figure.
    """
    if not rows or not all(len(r[1]) for r in rows):
        raise ValueError(
            "rows must be a non-empty list of (label, images, captions) with images in every row"
        )
    ncols = max(len(r[1]) for r in rows)
    fig = Figure(
        figsize=(size * ncols + 0.6, (size + 0.7) * len(rows) + (0.4 if title else 0)),
        layout="constrained",
    )
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for (label, images, captions), ax_row in zip(rows, axes):
        if len(captions) != len(images):
            raise ValueError(f"row {label!r} has {len(images)} images but {len(captions)} captions")
        for j, ax in enumerate(ax_row):
            if j >= len(images):
                ax.set_visible(False)
                continue
            ax.imshow(np.asarray(images[j]))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(captions[j], fontsize=_TEXT - 1)
        ax_row[0].set_ylabel(label, fontsize=_TEXT)
    if title:
        fig.suptitle(title, fontsize=_TEXT + 1)
    return fig


# ----- pixel helpers: uint8 RGB arrays for image lists (st.image) ------------------------------
def to_rgb(x01) -> np.ndarray:
    """An image ``[C, H, W]`` in [0, 1] (C = 1 or 3) as uint8 RGB ``[H, W, 3]``."""
    x = torch.as_tensor(x01).detach().float().cpu().clamp(0, 1)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected one image [C, H, W] with C = 1 or 3, got {tuple(x.shape)}")
    return (x.expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an ``[H, W]`` or ``[H, W, 3]`` image by an integer factor:
    a browser or viewer would blur a 16-pixel image it enlarges."""
    scale = max(int(scale), 1)
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def outline_cells(
    rgb: np.ndarray, cells, scale: int = 1, color: tuple = SWAP_RGB, thickness: int = 2
) -> np.ndarray:
    """Draw the border of every True cell of a g x g mask on an (upscaled) RGB image.

    Cells follow ``ipskit.swap.cell_index``, so a grid that does not divide the image size is
    outlined exactly as the swap cut it.

    Args:
        rgb: uint8 ``[H * scale, W * scale, 3]`` (from :func:`to_rgb` and :func:`upscale`).
        cells: bool ``[g, g]``, e.g. ``SwapDecision.cells[i]``.
        scale: the upscaling factor applied to the ``H x W`` image.
        color, thickness: of the outline (default :data:`SWAP_RGB`), in pixels of ``rgb``.
    Returns:
        A copy of ``rgb`` with the outlines drawn.
    """
    from ipskit.swap import cell_index  # lazy: plots should import without the training core

    cells = np.asarray(cells, dtype=bool)
    if cells.ndim != 2 or cells.shape[0] != cells.shape[1]:
        raise ValueError(f"cells must be a square [g, g] mask, got shape {cells.shape}")
    out = rgb.copy()
    g, t = cells.shape[0], int(thickness)
    h, w = rgb.shape[0] // scale, rgb.shape[1] // scale
    rows, cols = cell_index(h, g).numpy(), cell_index(w, g).numpy()
    for r, c in np.argwhere(cells):
        rr, cc = np.flatnonzero(rows == r), np.flatnonzero(cols == c)
        y0, y1, x0, x1 = rr[0] * scale, (rr[-1] + 1) * scale, cc[0] * scale, (cc[-1] + 1) * scale
        out[y0 : y0 + t, x0:x1] = out[y1 - t : y1, x0:x1] = color
        out[y0:y1, x0 : x0 + t] = out[y0:y1, x1 - t : x1] = color
    return out


def add_margin(rgb: np.ndarray, px: int = 8, value: int = 255) -> np.ndarray:
    """A white margin on the right of an ``[H, W, 3]`` image, so that images listed edge to edge
    (two swapped digits, say) do not read as one picture."""
    return np.pad(rgb, ((0, 0), (0, px), (0, 0)), constant_values=value)
