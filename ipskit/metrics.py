"""Classification metrics on logits: accuracy, NLL, Brier, ECE, temperature scaling, smoothing.

Everything here is a pure function of a logits tensor ``[N, K]`` and a label tensor ``[N]``
(plus :func:`predict`, which produces the logits from a model). The IPS paper (Choi et al.,
arXiv 2505.14124) argues that self-distillation between a confident and a weak view of the
same class both improves accuracy and *smooths* the logits; this module measures both:

* calibration: negative log-likelihood, Brier score, expected calibration error (ECE) with
  the reliability-diagram data behind it (Guo et al., "On Calibration of Modern Neural
  Networks", ICML 2017), and temperature scaling fitted on held-out logits (same paper);
* smoothing: mean max-probability, mean entropy, probability mass outside the true class,
  mean logit norm, and the class-to-class similarity of mean predictions, per class and
  overall.

Usage::

    logits = predict(model, x_test, batch_size=256)          # [N, K], CPU float32
    report = calibration_report(logits, y_test, n_bins=15)   # plain dict, JSON-ready
    t = fit_temperature(logits_val, y_val)                   # float, > 0
    report_t = calibration_report(logits / t, y_test)

Conventions (pinned by tests):

* Brier score = mean over samples of the *sum* over classes of ``(p_k - onehot_k)^2``, so it
  ranges over [0, 2] (Brier's original multi-class definition; some libraries divide by K).
* ECE uses ``n_bins`` equal-width confidence bins ``(lo, hi]`` (the first also holds 0);
  confidence is the max softmax probability; ECE = sum_b (n_b / N) |acc_b - conf_b|.
* Entropy is in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "confidence_verdict",
    "seed_verdict",
    "CLEAR_TEACHER_MARGIN",
    "teacher_side",
    "LopsidedPair",
    "most_lopsided_pair",
    "predict",
    "accuracy",
    "nll",
    "brier_score",
    "reliability_data",
    "expected_calibration_error",
    "fit_temperature",
    "class_similarity",
    "smoothing_stats",
    "calibration_report",
    "smoothing_report",
]


def _check_logits_labels(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``logits [N, K]`` and ``labels [N]``; return them as float64 / int64 on CPU."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"logits and labels must be torch.Tensors, got {type(logits).__name__} and {type(labels).__name__}"
        )
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits [N, K] and labels [N], got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("logits and labels are empty (N = 0); at least one sample is needed")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class ids, got dtype {labels.dtype}")
    k = logits.shape[1]
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(
            f"labels must lie in [0, {k - 1}] for {k} classes, got values in [{lo}, {hi}]"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf; metrics need finite logits")
    return logits.detach().double().cpu(), labels.detach().long().cpu()


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    x: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Run a model over images in eval mode and gather its logits.

    The model's train/eval mode is restored afterwards.

    Args:
        model: a classifier taking float images in [0, 1] (normalisation is inside the model).
        x: images ``[N, C, H, W]`` in [0, 1].
        batch_size: images per forward pass.
        device: where to run; ``x`` is moved batch by batch.
        progress: show a tqdm progress bar.

    Returns:
        logits ``[N, K]``, float32 on the CPU.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be an image tensor [N, C, H, W], got {shape}")
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"x must be float images in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    outs = []
    try:
        starts = range(0, x.shape[0], batch_size)
        for s in tqdm(starts, desc="predict", disable=not progress, leave=False):
            xb = x[s : s + batch_size].to(device, non_blocking=True).float()
            outs.append(model(xb).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("x is empty (N = 0); nothing to predict")
    return torch.cat(outs)  # [N, K]


def accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Top-k accuracy: share of samples whose label is among the k largest logits.

    Args:
        logits: ``[N, K]``.
        labels: ``[N]`` class ids.
        k: 1 for top-1, 5 for top-5; must satisfy 1 <= k <= K.

    Returns:
        accuracy in [0, 1].
    """
    logits, labels = _check_logits_labels(logits, labels)
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(
            f"k must be in [1, {logits.shape[1]}] for {logits.shape[1]} classes, got {k}"
        )
    topk = logits.topk(k, dim=1).indices  # [N, k]
    return float((topk == labels[:, None]).any(dim=1).double().mean())


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood (cross-entropy) of the true class, in nats.

    Args:
        logits: ``[N, K]``.
        labels: ``[N]`` class ids.

    Returns:
        mean over samples of ``-log softmax(logits)[label]``.
    """
    logits, labels = _check_logits_labels(logits, labels)
    return float(F.cross_entropy(logits, labels))


def brier_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: mean over samples of ``sum_k (p_k - onehot_k)^2``.

    Args:
        logits: ``[N, K]``.
        labels: ``[N]`` class ids.

    Returns:
        Brier score in [0, 2] (not divided by K).
    """
    logits, labels = _check_logits_labels(logits, labels)
    p = logits.softmax(dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).double()
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def reliability_data(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Per-bin confidence, accuracy and count for a reliability diagram.

    Bins are equal-width over [0, 1] and right-closed, ``(lo, hi]``; a confidence of
    exactly 0 falls into the first bin.

    Args:
        logits: ``[N, K]``.
        labels: ``[N]`` class ids.
        n_bins: number of bins (>= 1); 15 as in Guo et al. 2017.

    Returns:
        dict with lists of length ``n_bins``: ``bin_lower``, ``bin_upper``, ``confidence``
        (mean max-probability in the bin, None when empty), ``accuracy`` (None when empty),
        ``count``; and floats ``ece`` and ``mce`` (max calibration gap over non-empty bins).
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    logits, labels = _check_logits_labels(logits, labels)
    conf, pred = logits.softmax(dim=1).max(dim=1)  # [N], [N]
    correct = (pred == labels).double()
    # ceil(conf * n) - 1 puts conf in (lo, hi]; clamp sends conf = 0 to bin 0.
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    nonempty = count > 0
    conf_mean = torch.where(nonempty, conf_sum / count.clamp_min(1), torch.nan)
    acc_mean = torch.where(nonempty, acc_sum / count.clamp_min(1), torch.nan)
    gap = (acc_mean - conf_mean).abs()
    ece = float((count[nonempty] / count.sum() * gap[nonempty]).sum())
    mce = float(gap[nonempty].max())
    edges = [i / n_bins for i in range(n_bins + 1)]
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "confidence": [None if math.isnan(v) else v for v in conf_mean.tolist()],
        "accuracy": [None if math.isnan(v) else v for v in acc_mean.tolist()],
        "count": [int(c) for c in count.tolist()],
        "ece": ece,
        "mce": mce,
    }


def expected_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> float:
    """Expected calibration error with equal-width bins (see :func:`reliability_data`).

    Args:
        logits: ``[N, K]``.
        labels: ``[N]`` class ids.
        n_bins: number of equal-width confidence bins.

    Returns:
        ECE in [0, 1].
    """
    return reliability_data(logits, labels, n_bins)["ece"]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """Fit the temperature T minimising the NLL of ``logits / T`` (temperature scaling).

    Fit on held-out logits (a validation split), never on the samples you report on.
    Optimises ``log T`` with L-BFGS (strong Wolfe line search) in float64, starting at T = 1;
    the NLL is smooth in log T, so this converges in a few steps.

    Args:
        logits: held-out logits ``[N, K]``.
        labels: ``[N]`` class ids.
        max_iter: L-BFGS iteration cap.

    Returns:
        T > 0 (T > 1 softens over-confident predictions), clipped to [1e-2, 1e2].
    """
    logits, labels = _check_logits_labels(logits, labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):  # all-tied logits give a flat NLL; T = 1 is as good as any
        return 1.0
    return min(max(t, 1e-2), 1e2)


def class_similarity(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> dict:
    """Class-to-class similarity of mean predictions.

    Args:
        logits: ``[N, K]``.
        labels: ``[N]`` class ids.
        num_classes: K (defaults to ``logits.shape[1]``).

    Returns:
        dict with two ``[K, K]`` float64 tensors: ``mean_prob`` (row c = mean softmax over the
        samples whose true class is c; rows sum to 1; NaN rows for classes without samples) and
        ``cosine`` (cosine similarity between those rows; diagonal 1).
    """
    logits, labels = _check_logits_labels(logits, labels)
    k = num_classes if num_classes is not None else logits.shape[1]
    if k != logits.shape[1]:
        raise ValueError(f"num_classes={k} does not match logits with {logits.shape[1]} columns")
    p = logits.softmax(dim=1)
    sums = torch.zeros(k, k, dtype=torch.float64).index_add_(0, labels, p)
    counts = torch.bincount(labels, minlength=k).double()
    mean_prob = sums / counts[:, None]  # [K, K]; 0/0 -> NaN for absent classes
    unit = F.normalize(mean_prob, dim=1)
    return {"mean_prob": mean_prob, "cosine": unit @ unit.T}


def smoothing_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-sample logit-smoothing statistics.

    Args:
        logits: ``[N, K]``.
        labels: ``[N]`` class ids.

    Returns:
        dict of ``[N]`` float64 tensors: ``max_prob`` (confidence), ``entropy`` (nats),
        ``off_true_mass`` (1 - p[true class]), ``logit_norm`` (L2 norm of the logit vector).
    """
    logits, labels = _check_logits_labels(logits, labels)
    logp = logits.log_softmax(dim=1)
    p = logp.exp()
    return {
        "max_prob": p.max(dim=1).values,
        "entropy": -(p * logp).sum(dim=1),
        "off_true_mass": 1.0 - p.gather(1, labels[:, None]).squeeze(1),
        "logit_norm": logits.norm(dim=1),
    }


def _nan_to_none(values: list) -> list:
    """Replace NaN floats (also in nested lists) with None so json.dump writes strict JSON."""
    out = []
    for v in values:
        if isinstance(v, list):
            out.append(_nan_to_none(v))
        else:
            out.append(None if isinstance(v, float) and math.isnan(v) else v)
    return out


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Accuracy and calibration metrics as a plain, JSON-serialisable dict.

    Args:
        logits: ``[N, K]`` (divide by a fitted temperature first for the calibrated report).
        labels: ``[N]`` class ids.
        n_bins: ECE bins.

    Returns:
        dict with ``n``, ``top1``, ``top5`` (None when K < 5), ``nll``, ``brier``, ``ece``,
        ``mce``, ``mean_max_prob`` and ``reliability`` (see :func:`reliability_data`).
    """
    rel = reliability_data(logits, labels, n_bins)
    k = logits.shape[1]
    return {
        "n": int(logits.shape[0]),
        "top1": accuracy(logits, labels, 1),
        "top5": accuracy(logits, labels, 5) if k >= 5 else None,
        "nll": nll(logits, labels),
        "brier": brier_score(logits, labels),
        "ece": rel["ece"],
        "mce": rel["mce"],
        "mean_max_prob": float(logits.double().softmax(dim=1).max(dim=1).values.mean()),
        "reliability": {
            key: rel[key] for key in ("bin_lower", "bin_upper", "confidence", "accuracy", "count")
        },
    }


def _histogram(values: torch.Tensor, lo: float, hi: float, bins: int) -> dict:
    counts = torch.histc(values.double().clamp(lo, hi), bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]}


def smoothing_report(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, bins: int = 20
) -> dict:
    """Logit-smoothing statistics, overall and per true class, as a JSON-serialisable dict.

    Args:
        logits: ``[N, K]``.
        labels: ``[N]`` class ids.
        num_classes: K (defaults to ``logits.shape[1]``).

    Returns:
        dict with ``overall`` (means of :func:`smoothing_stats` over all samples),
        ``per_class`` (same keys, lists of length K, None for classes without samples),
        ``class_counts`` (list of K ints), ``similarity`` and ``cosine_similarity``
        (``[K, K]`` nested lists, see :func:`class_similarity`), and ``histograms``
        (``max_prob`` over [1/K, 1] and ``entropy`` over [0, ln K], each ``{"edges", "counts"}``
        with ``bins`` bins) so distributions can be plotted without the logits.
    """
    stats = smoothing_stats(logits, labels)
    sim = class_similarity(logits, labels, num_classes)
    k = sim["mean_prob"].shape[0]
    labels = labels.long().cpu()
    counts = torch.bincount(labels, minlength=k).double()
    per_class = {}
    for name, values in stats.items():
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, values)
        per_class[name] = _nan_to_none((sums / counts).tolist())
    return {
        "overall": {name: float(values.mean()) for name, values in stats.items()},
        "per_class": per_class,
        "class_counts": [int(c) for c in counts.tolist()],
        "similarity": _nan_to_none(sim["mean_prob"].tolist()),
        "cosine_similarity": _nan_to_none(sim["cosine"].tolist()),
        "histograms": {
            "max_prob": _histogram(stats["max_prob"], 1.0 / k, 1.0, bins),
            "entropy": _histogram(stats["entropy"], 0.0, math.log(k), bins),
        },
    }


def confidence_verdict(mean_max_prob: float, accuracy: float, tolerance: float = 0.02) -> str:
    """Whether a model is over- or under-confident on average, from its report's numbers.

    ECE cannot tell the two apart; the signed gap ``mean_max_prob - accuracy`` can. Logit
    smoothing (label smoothing, the KL term of IPS) moves it down: it cures cross-entropy's
    over-confidence, and too much of it leaves a model under-confident ("over-smoothed").

    Args:
        mean_max_prob: mean confidence (``calibration_report(...)["mean_max_prob"]``).
        accuracy: top-1 accuracy in [0, 1] on the same images.
        tolerance: gaps within ``+-tolerance`` count as calibrated.
    Returns:
        ``"over-confident"``, ``"under-confident"`` or ``"calibrated"``.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    gap = float(mean_max_prob) - float(accuracy)
    if gap > tolerance:
        return "over-confident"
    if gap < -tolerance:
        return "under-confident"
    return "calibrated"


def seed_verdict(gaps, tolerance: float = 0.02) -> dict:
    """:func:`confidence_verdict` for one setting trained with one or several seeds.

    One run cannot tell a setting's calibration from seed noise; several seeds can. The
    verdict over- / under-confident holds only when the mean gap lies beyond ``tolerance`` by
    more than two standard errors over seeds; "calibrated" only when it lies inside by as
    much; otherwise "unclear". With one seed the verdict is :func:`confidence_verdict`'s on
    that run (``sd`` is None: say so when quoting it).

    Args:
        gaps: ``mean_max_prob - accuracy`` of each seed's run (one float per seed).
        tolerance: gaps within ``+-tolerance`` count as calibrated.
    Returns:
        dict: ``verdict`` ("over-confident", "under-confident", "calibrated" or "unclear"),
        ``mean`` gap, ``sd`` over seeds (None for one seed), ``n`` seeds.
    """
    gaps = [float(g) for g in gaps]
    if not gaps or not all(math.isfinite(g) for g in gaps):
        raise ValueError(f"gaps must be one or more finite numbers, got {gaps}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    n, mean = len(gaps), sum(gaps) / len(gaps)
    if n == 1:
        return {
            "verdict": confidence_verdict(mean, 0.0, tolerance),
            "mean": mean,
            "sd": None,
            "n": 1,
        }
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (n - 1))
    se2 = 2 * sd / math.sqrt(n)
    if mean - se2 > tolerance:
        verdict = "over-confident"
    elif mean + se2 < -tolerance:
        verdict = "under-confident"
    elif abs(mean) + se2 <= tolerance:
        verdict = "calibrated"
    else:
        verdict = "unclear"
    return {"verdict": verdict, "mean": mean, "sd": sd, "n": n}


# ----- which side of a swapped pair teaches ---------------------------------------------------
# Two sides whose p(true class) differ by less than this have no clear teacher: on the shipped
# CIFAR-10 ResNet-8 pair (results/cifar10-resnet8-cpu, its 300 test images) a one-pixel shift
# of an image alone moves p(true class) by 0.03 (IPS) to 0.05 (CE) on average, so a smaller
# difference says nothing about which side kept the telling parts.
CLEAR_TEACHER_MARGIN = 0.05


def teacher_side(p_a: float, p_b: float, margin: float = CLEAR_TEACHER_MARGIN) -> str | None:
    """The side more confident on the true class ("a" or "b"), or None within ``margin``.

    ``ipskit.losses.pair_teacher`` always names a side (``p_a >= p_b``), as training does; this
    is for telling a person which side teaches, where a 0.993 vs 0.994 tie is no teacher.

    Args:
        p_a, p_b: p(true class) of the two sides, in [0, 1].
        margin: differences below this (not above it) name no side.
    Returns:
        "a", "b" or None.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if abs(float(p_a) - float(p_b)) < margin:
        return None
    return "a" if p_a > p_b else "b"


@dataclass(frozen=True)
class LopsidedPair:
    """The pair :func:`most_lopsided_pair` found.

    Attributes:
        index_a, index_b: positions of the two images in the images searched.
        decision: the ``ipskit.swap.SwapDecision`` drawn for this pair (one pair).
        p_a, p_b: p(true class) of each side after its swap.
        gaps: ``|p_a - p_b|`` of every pair searched, float ``[n_pairs]``.
    """

    index_a: int
    index_b: int
    decision: object
    p_a: float
    p_b: float
    gaps: torch.Tensor


@torch.no_grad()
def most_lopsided_pair(
    model: torch.nn.Module,
    x: torch.Tensor,
    label: int,
    grid: int,
    pr: float = 0.5,
    generator: torch.Generator | None = None,
    n_pairs: int = 64,
    batch_size: int = 256,
    swapped_only: bool = False,
) -> LopsidedPair:
    """Among random pairs of one class, the one whose sides differ most after a patch swap.

    A clear teacher / student example of IPS on demand: ``n_pairs`` pairs of distinct images
    are drawn, each gets its own swap (``ipskit.swap.draw_swap`` with ``grid`` and ``pr``),
    and the model scores both sides; the pair with the largest ``|p_a - p_b|`` on ``label``
    wins (the first such pair on ties). Everything random comes from ``generator``.

    Args:
        model: classifier taking float images in [0, 1] (left in the mode it was in).
        x: images of one class ``[N, C, H, W]`` in [0, 1], N >= 2.
        label: their class id.
        grid: cells per side g of the swap; pr: swap probability per pair, in [0, 1].
        generator: source of the pairs and swaps.
        n_pairs: pairs to search (>= 1); batch_size: images per forward pass.
        swapped_only: pick among the pairs that drew a swap (with ``pr < 1`` some do not), so
            that the example shows a swap; all pairs when none did.
    Returns:
        :class:`LopsidedPair`.
    """
    from ipskit.swap import SwapDecision, apply_swap, draw_swap  # lazy: metrics stays light

    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"x must be at least two images of one class [N >= 2, C, H, W], got {shape}"
        )
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
        raise ValueError(f"n_pairs must be an int >= 1, got {n_pairs!r}")
    k = getattr(model, "num_classes", None)
    if (
        isinstance(label, bool)
        or not isinstance(label, int)
        or label < 0
        or (k is not None and label >= k)
    ):
        raise ValueError(f"label must be a class id in [0, {k - 1 if k else 'K-1'}], got {label!r}")
    n = x.shape[0]
    # 1. Pairs of distinct images: b is a, moved on by 1..N-1 places.
    idx_a = torch.randint(0, n, (n_pairs,), generator=generator)
    idx_b = (idx_a + torch.randint(1, n, (n_pairs,), generator=generator)) % n
    # 2. A swap per pair, then apply it.
    decision = draw_swap(n_pairs, grid, pr, generator=generator)
    out_a, out_b = apply_swap(x[idx_a], x[idx_b], decision)
    # 3. Score both sides on the true class.
    was_training = model.training
    model.eval()
    try:
        both = torch.cat([out_a, out_b])  # [2 * n_pairs, C, H, W]
        logits = torch.cat(
            [model(both[s : s + batch_size]) for s in range(0, len(both), batch_size)]
        )
    finally:
        model.train(was_training)
    p = logits.float().softmax(dim=1)[:, label]
    p_a, p_b = p[:n_pairs], p[n_pairs:]
    gaps = (p_a - p_b).abs()
    use_all = not (swapped_only and bool(decision.swapped.any()))
    eligible = torch.ones_like(gaps, dtype=torch.bool) if use_all else decision.swapped
    best = int(torch.where(eligible, gaps, -1.0).argmax())
    one = SwapDecision(
        decision.swapped[best : best + 1], decision.cells[best : best + 1], decision.grid
    )
    return LopsidedPair(
        int(idx_a[best]), int(idx_b[best]), one, float(p_a[best]), float(p_b[best]), gaps
    )
