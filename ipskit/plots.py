"""Matplotlib figures shared by the notebooks, the Streamlit app and ``ipskit compare``.

Every function takes plain results (the dicts of :mod:`ipskit.metrics`,
:mod:`ipskit.robustness`, ``metrics.jsonl`` rows, tensors) and returns a
``matplotlib.figure.Figure`` built without pyplot, so it works under any backend (Agg on a
server), leaks no global figure state, and can be shown (``st.pyplot(fig)``, a notebook cell
ending in ``fig``) or saved (``fig.savefig("x.png")``). Axes are labelled and titled for
projection in a lecture room.

Figures: reliability diagrams (Guo et al. 2017), confidence / entropy histograms, FGSM and
corruption curves, a class-similarity heatmap, a patch-swap pair with the swapped cells
outlined (the IPS operation of Choi et al., arXiv 2505.14124), a grid x pr ablation heatmap,
and training curves. Pixel helpers for image lists (the explorer's ``st.image``): ``to_rgb``,
``upscale`` (nearest neighbour, so 16-pixel images stay crisp), ``outline_cells`` (the swapped
cells of a pair) and ``add_margin``.

Usage::

    from ipskit import plots
    fig = plots.reliability_diagrams({"ce": report_ce, "ips": report_ips})
    fig.savefig("reliability.png", dpi=150)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = [
    "reliability_diagram",
    "reliability_diagrams",
    "confidence_histograms",
    "fgsm_curves",
    "corruption_curves",
    "similarity_heatmap",
    "swap_pair_figure",
    "ablation_heatmap",
    "training_curves",
    "to_rgb",
    "upscale",
    "outline_cells",
    "add_margin",
]


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
        raise ValueError("expected a calibration_report() or reliability_data() dict "
                         "(bin_lower, bin_upper, accuracy, confidence, count)")
    return rel, report.get("ece", rel.get("ece"))


def _draw_reliability(ax, report: dict, title: str) -> None:
    rel, ece = _reliability(report)
    lo, hi = np.asarray(rel["bin_lower"]), np.asarray(rel["bin_upper"])
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in rel["confidence"]], dtype=float)
    count = np.array([0 if c is None else c for c in rel["count"]], dtype=float)
    width, centers = hi - lo, (lo + hi) / 2
    ax.bar(centers, np.nan_to_num(acc), width=width, edgecolor="black", color="tab:blue", label="accuracy")
    # The gap is hatched, not filled: under-confident bins (accuracy above confidence) have it
    # inside the blue bar, where a translucent fill would vanish.
    gap_lo = np.nan_to_num(np.minimum(acc, conf))
    ax.bar(centers, np.nan_to_num(np.abs(conf - acc)), bottom=gap_lo, width=width, facecolor="none",
           edgecolor="tab:red", hatch="////", linewidth=0.8, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    total = count.sum()
    for x, n in zip(centers, count):  # how many images each bin holds: sparse bins are noisy
        if n > 0:
            ax.text(x, 0.015, f"{100 * n / total:.0f}%" if n / total >= 0.005 else "<1%",
                    ha="center", va="bottom", fontsize=6, rotation=90,
                    bbox=dict(boxstyle="square,pad=0.1", facecolor="white", alpha=0.7, linewidth=0))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy")
    ax.set_title(title + (f"  (ECE {ece:.3f})" if ece is not None else ""))
    ax.legend(loc="upper left", fontsize="small", title="labels: share of images per bin",
              title_fontsize="x-small")


def reliability_diagram(report: dict, title: str = "Reliability diagram") -> Figure:
    """One reliability diagram: accuracy per confidence bin against the diagonal.

    Args:
        report: ``metrics.calibration_report(...)`` or ``metrics.reliability_data(...)``.
        title: axes title (the ECE is appended when known).

    Returns:
        Figure.
    """
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    _draw_reliability(fig.add_subplot(), report, title)
    return fig


def reliability_diagrams(reports: dict[str, dict], ncols: int = 3) -> Figure:
    """Reliability diagrams side by side, one per run.

    Args:
        reports: run name -> ``calibration_report`` (or ``reliability_data``) dict.
        ncols: diagrams per row.

    Returns:
        Figure.
    """
    if not reports:
        raise ValueError("reports is empty; pass {run name: calibration_report(...)}")
    fig, axes = _grid(len(reports), ncols, size=4.0)
    for ax, (name, rep) in zip(axes, reports.items()):
        _draw_reliability(ax, rep, name)
    return fig


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
        raise ValueError("data_by_run is empty; pass {run name: logits [N, K] or smoothing_report(...)}")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, data in data_by_run.items():
        if not isinstance(data, dict):
            logits = torch.as_tensor(data).double()
            data = smoothing_report(logits, logits.argmax(dim=1), bins=bins)  # labels do not enter the histograms
        hist = data["histograms"][kind]
        edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], dtype=float)
        density = counts / max(counts.sum(), 1) / np.diff(edges)
        ax.stairs(density, edges, linewidth=2, label=name)
    k = round(1 / edges[0]) if kind == "max_prob" else round(math.exp(edges[-1]))
    if kind == "max_prob":
        ax.set(xlabel="confidence (max probability)", title="Confidence of test predictions")
    else:
        ax.set(xlabel=f"entropy (nats, at most ln {k} = {math.log(k):.2f})", title="Entropy of test predictions")
    ax.set_ylabel("density")
    ax.legend()
    return fig


def fgsm_curves(curves: dict) -> Figure:
    """Top-1 accuracy against FGSM epsilon, one line per run.

    Args:
        curves: run name -> ``{"epsilons": [...], "accuracy": [...]}`` or ``(epsilons, accuracies)``.

    Returns:
        Figure.
    """
    if not curves:
        raise ValueError("curves is empty; pass {run name: {'epsilons': [...], 'accuracy': [...]}}")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, c in curves.items():
        eps, acc = (c["epsilons"], c["accuracy"]) if isinstance(c, dict) else c
        ax.plot(eps, acc, marker="o", label=name)
    ax.set(xlabel="FGSM epsilon (pixel units of a [0, 1] image)", ylabel="top-1 accuracy",
           title="Accuracy under FGSM attack", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
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
    fig, axes = _grid(len(names) + 1, ncols, size=3.2)
    for ax, cname in zip(axes, names + ["mean over corruptions"]):
        for run, res in results.items():
            table = res["mean_per_severity"] if cname == "mean over corruptions" else res["accuracy"].get(cname)
            if not table:
                continue
            sev = sorted(table, key=int)
            ax.plot([int(s) for s in sev], [table[s] for s in sev], marker="o", label=run)
            ax.axhline(res["clean"], linestyle=":", linewidth=1, color=ax.lines[-1].get_color())
        ax.set(title=cname.replace("_", " "), xlabel="severity", ylabel="top-1 accuracy", ylim=(0, 1))
        ax.set_xticks(range(1, 6))
    axes[0].legend(fontsize="small", title="run (dotted: clean)")
    return fig


def similarity_heatmap(matrix, class_names=None, title: str = "Mean prediction per true class",
                       diverging: bool = False, label: str | None = None) -> Figure:
    """Heatmap of a ``[K, K]`` class-similarity matrix (``metrics.class_similarity``).

    Args:
        matrix: ``[K, K]`` (row = true class, column = predicted class), tensor, array or lists.
        class_names: K labels for the axes (default 0..K-1).
        title: axes title.
        diverging: for signed values (a difference or log-ratio of two matrices): a red-blue
            map centred at 0 with symmetric limits, so the sign reads off the colour.
        label: colour-bar label.

    Returns:
        Figure.
    """
    m = np.array([[np.nan if v is None else v for v in row] for row in np.asarray(matrix, dtype=object)], dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square [K, K], got shape {m.shape}")
    k = m.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    fig = Figure(figsize=(1.0 + 0.45 * k, 0.6 + 0.45 * k), layout="constrained")
    ax = fig.add_subplot()
    if diverging:
        lim = float(np.nanmax(np.abs(m))) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    else:
        im = ax.imshow(m, cmap="viridis")
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    ax.set_xticks(range(k), names, rotation=90 if k > 10 else 0)
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return fig


def _show(ax, img: torch.Tensor, title: str) -> None:
    img = torch.as_tensor(img).detach().float().cpu().clamp(0, 1)  # [C, H, W]
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])


def swap_pair_figure(x_a, x_b, out_a, out_b, decision, max_pairs: int = 4) -> Figure:
    """Pairs before and after a patch swap, with the exchanged cells outlined.

    Args:
        x_a, x_b: the pair before swapping, ``[B, C, H, W]`` in [0, 1].
        out_a, out_b: after ``ipskit.swap.apply_swap`` (same shape).
        decision: the ``ipskit.swap.SwapDecision`` that was applied.
        max_pairs: rows to show (the first pairs of the batch).

    Returns:
        Figure with one row per pair: a, b, a swapped, b swapped.
    """
    from ipskit.swap import cell_index  # lazy: plots should import without the training core

    if not (x_a.shape == x_b.shape == out_a.shape == out_b.shape) or x_a.dim() != 4:
        raise ValueError(f"x_a, x_b, out_a, out_b must be [B, C, H, W] of one shape, got {tuple(x_a.shape)}, "
                         f"{tuple(x_b.shape)}, {tuple(out_a.shape)}, {tuple(out_b.shape)}")
    if len(decision) != x_a.shape[0]:
        raise ValueError(f"decision is for {len(decision)} pairs but the batch holds {x_a.shape[0]}")
    h, w = x_a.shape[-2:]
    n = min(max_pairs, x_a.shape[0])
    rows, cols = cell_index(h, decision.grid).tolist(), cell_index(w, decision.grid).tolist()
    fig = Figure(figsize=(9, 2.4 * n), layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        k = int(decision.cells[i].sum())
        status = f"{k}/{decision.grid ** 2} cells swapped" if bool(decision.swapped[i]) else "not swapped"
        panels = [(x_a[i], "a"), (x_b[i], "b"), (out_a[i], "a after swap"), (out_b[i], "b after swap")]
        for j, (img, title) in enumerate(panels):
            ax = axes[i, j]
            _show(ax, img, f"pair {i}: {title}" if j == 0 else title)
            for r, c in decision.cells[i].nonzero().tolist():  # outline every exchanged cell
                r0, c0 = rows.index(r), cols.index(c)
                hh, ww = rows.count(r), cols.count(c)
                ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), ww, hh, facecolor=(1.0, 0.23, 0.19, 0.22),
                                       edgecolor="#ff3b30", linewidth=1.6))
        axes[i, 3].set_xlabel(status)
    fig.suptitle(f"Intra-class patch swap, grid {decision.grid}x{decision.grid} (tinted and outlined: exchanged cells)")
    return fig


def ablation_heatmap(df, value: str = "value", row: str = "grid", col: str = "pr", fmt: str = ".3f",
                     title: str | None = None, lower_is_better: bool = False,
                     label: str | None = None) -> Figure:
    """Heatmap of a metric over a two-way ablation (default grid x pr), cells annotated.

    Args:
        df: pandas DataFrame with columns ``row``, ``col`` and ``value`` (repeats are averaged,
            e.g. several seeds).
        value, row, col: column names.
        fmt: number format of the annotations.
        title: axes title (default: the value column).
        lower_is_better: reverse the colour map (ECE, NLL), so bright always means better.
        label: colour-bar label (default: the value column).

    Returns:
        Figure.
    """
    missing = [c for c in (row, col, value) if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks column(s) {missing}; it has {list(df.columns)}")
    table = df.pivot_table(index=row, columns=col, values=value, aggfunc="mean").sort_index().sort_index(axis=1)
    fig = Figure(figsize=(1.5 + 1.0 * table.shape[1], 1.2 + 0.7 * table.shape[0]), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(table.to_numpy(dtype=float), cmap="viridis_r" if lower_is_better else "viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label=label or value)
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
    mid = np.nanmean(table.to_numpy(dtype=float))
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = table.iat[i, j]
            if not np.isnan(v):
                dark = (v > mid) if lower_is_better else (v < mid)  # viridis is dark at its low end
                ax.text(j, i, format(v, fmt), ha="center", va="center", color="white" if dark else "black")
    ax.set(xlabel=col, ylabel=row, title=title or f"{value} over {row} x {col}")
    return fig


CURVE_LABELS = {"train_loss": "training loss", "train_ce": "training cross-entropy",
                "train_kd": "training KD term", "train_acc": "training accuracy",
                "test_loss": "test loss (NLL)", "test_acc": "test accuracy", "ece": "test ECE",
                "mean_max_prob": "test mean max-probability", "lr": "learning rate"}


def training_curves(runs, keys=("train_loss", "test_loss", "test_acc", "ece"), ncols: int = 2) -> Figure:
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
    axes[0].legend(fontsize="small")
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


def outline_cells(rgb: np.ndarray, cells, scale: int = 1, color: tuple = (255, 230, 0),
                  thickness: int = 2) -> np.ndarray:
    """Draw the border of every True cell of a g x g mask on an (upscaled) RGB image.

    Cells follow ``ipskit.swap.cell_index``, so a grid that does not divide the image size is
    outlined exactly as the swap cut it.

    Args:
        rgb: uint8 ``[H * scale, W * scale, 3]`` (from :func:`to_rgb` and :func:`upscale`).
        cells: bool ``[g, g]``, e.g. ``SwapDecision.cells[i]``.
        scale: the upscaling factor applied to the ``H x W`` image.
        color, thickness: of the outline, in pixels of ``rgb``.
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
        out[y0:y0 + t, x0:x1] = out[y1 - t:y1, x0:x1] = color
        out[y0:y1, x0:x0 + t] = out[y0:y1, x1 - t:x1] = color
    return out


def add_margin(rgb: np.ndarray, px: int = 8, value: int = 255) -> np.ndarray:
    """A white margin on the right of an ``[H, W, 3]`` image, so that images listed edge to edge
    (two swapped digits, say) do not read as one picture."""
    return np.pad(rgb, ((0, 0), (0, px), (0, 0)), constant_values=value)
