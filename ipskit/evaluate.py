"""``ipskit eval`` and ``ipskit compare``: evaluate trained runs and put them side by side.

The IPS paper (Choi et al., arXiv 2505.14124) claims more than top-1: better calibration and
smoother logits, robustness to FGSM and to common corruptions (CIFAR-100-C). This module runs
those measurements (:mod:`ipskit.metrics`, :mod:`ipskit.robustness`) on a run folder and
stores them in ``eval.json`` next to the checkpoint, so nothing is computed twice:

``eval.json`` = ``{kind: {"settings": {...}, "result": {...}}}`` for kind in

* ``calibration``: ``result["test"]`` = ``metrics.calibration_report`` on the whole test set;
  temperature scaling is fitted on a seeded random half of the test set (``result["temperature"]``)
  and reported on the *other* half, before (``heldout``) and after (``heldout_scaled``). The
  test set is used because ipskit runs keep no separate validation split, and logits on the
  training set are over-confident (memorised), which would give a wrong temperature.
* ``smoothing``: ``metrics.smoothing_report`` (max-probability, entropy, mass off the true
  class, logit norm, class similarity, histograms).
* ``fgsm``: ``{"epsilons": [...], "accuracy": [...]}`` (``robustness.fgsm_curve``).
* ``corruptions``: ``robustness.corruption_accuracy`` on the run's own test set.
* ``cifar_c``: the same structure from the published CIFAR-10-C / CIFAR-100-C arrays.

A kind is recomputed only when its settings (including the checkpoint's size and mtime)
differ from the stored ones, or with ``force=True``. ``eval.json`` is rewritten atomically
after each kind, so an interrupted evaluation keeps what it finished.

Usage::

    ipskit eval runs/demo/ce runs/demo/ips --max-samples 2000
    ipskit compare runs/demo/ce runs/demo/ips --out runs/demo/compare

    from ipskit.evaluate import evaluate_run, compare_runs
    ev = evaluate_run("runs/demo/ips", what=("calibration", "fgsm"))
    print(compare_runs(["runs/demo/ce", "runs/demo/ips"], out_dir="runs/demo/compare"))
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ipskit import metrics, plots, robustness
from ipskit.checks import InputError, check_device, check_int
from ipskit.runs import (
    CHECKPOINT,
    CONFIG,
    EVAL,
    atomic_write_json,
    atomic_write_text,
    load_model,
    read_json,
)

__all__ = [
    "KINDS",
    "DEFAULT_WHAT",
    "DEFAULT_EPSILONS",
    "CIFAR_C_15",
    "evaluate_run",
    "compare_runs",
    "main_eval",
    "main_compare",
]

KINDS = ("calibration", "smoothing", "fgsm", "corruptions", "cifar_c")
DEFAULT_WHAT = ("calibration", "smoothing", "fgsm", "corruptions")
# Around the paper's eps 0.01 (about 2.5/255), up to where small models are mostly fooled.
DEFAULT_EPSILONS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05)
# The 15 corruptions over which CIFAR-C's mean corruption accuracy is usually reported.
CIFAR_C_15 = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
SPLIT_SEED = (
    0  # seeds the test-subset choice and the temperature-fitting half; fixed so runs compare
)


# ----------------------------------------------------------------------------- helpers


def _check_settings(
    what, epsilons, corruptions, severities, max_samples, cifar_c, n_bins, batch_size, device
) -> None:
    check_device(device)
    check_int("n_bins", n_bins, minimum=1, maximum=1000)
    check_int("batch_size", batch_size, minimum=1)
    unknown = [w for w in what if w not in KINDS]
    if unknown or not what:
        raise InputError(f"unknown evaluation {unknown or what!r}; choose from {', '.join(KINDS)}")
    for e in epsilons:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= float(e) <= 1.0:
            raise InputError(
                f"epsilons must be numbers in [0, 1] (pixel units of a [0, 1] image), got {e!r}"
            )
    known = robustness.CORRUPTIONS if "corruptions" in what else robustness.CIFAR_C_NAMES
    for n in corruptions or ():
        if n not in known:
            raise InputError(f"unknown corruption {n!r}; known corruptions: {', '.join(known)}")
    for s in severities:
        check_int("corruption severity", s, minimum=1, maximum=5)
    if max_samples is not None:
        check_int("max_samples", max_samples, minimum=2, why="(or None for all)")
    if "cifar_c" in what and not cifar_c:
        raise InputError(
            "the cifar_c evaluation needs the folder of the CIFAR-10-C/100-C .npy files (--cifar-c PATH)"
        )


def _check_run(run_dir: Path) -> None:
    if not (run_dir / CONFIG).is_file():
        raise InputError(
            f"{run_dir} is not an ipskit run folder (no {CONFIG}); pass a folder made by ipskit train"
        )
    if not (run_dir / CHECKPOINT).is_file():
        raise InputError(
            f"{run_dir} has no {CHECKPOINT} (training has not finished an epoch); nothing to evaluate"
        )


def _test_set(
    config: dict, model, max_samples: int | None, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test images ``[N, C, H, W]`` in [0, 1] and labels ``[N]`` (a seeded subset if asked)."""
    from ipskit.data import DatasetUnavailableError, load_dataset

    name = config.get("dataset", "digits")
    try:
        bundle = load_dataset(
            name, root=config.get("data_root", "data"), image_size=config.get("image_size")
        )
    except DatasetUnavailableError as e:
        raise InputError(
            f"cannot load the test set of {name!r}: {str(e).splitlines()[0]}"
        ) from None
    if bundle.in_channels != model.in_channels or bundle.num_classes != model.num_classes:
        raise InputError(
            f"the checkpoint is for {model.in_channels}-channel images and {model.num_classes} classes, but dataset "
            f"{name!r} has {bundle.in_channels} channels and {bundle.num_classes} classes"
        )
    n = len(bundle.test_targets)
    idx = torch.arange(n)
    if max_samples is not None and max_samples < n:
        idx = (
            torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))[:max_samples]
            .sort()
            .values
        )
    if bundle.test_x is not None:
        x = bundle.test_x[idx]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x, bundle.test_targets[idx].long()
    items = [
        bundle.test_dataset[i]
        for i in tqdm(idx.tolist(), desc="test set", disable=not progress, leave=False)
    ]
    return torch.stack([im for im, _ in items]), torch.tensor(
        [lab for _, lab in items], dtype=torch.long
    )


def _fingerprint(run_dir: Path) -> dict:
    st = (run_dir / CHECKPOINT).stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cifar_c_result(
    model, x, y, root, names, severities, max_samples, batch_size, device, progress
) -> dict:
    if model.in_channels != 3:
        raise InputError(f"CIFAR-C images have 3 channels but this model takes {model.in_channels}")
    table: dict[str, dict[str, float]] = {}
    for n in tqdm(names, desc="CIFAR-C", disable=not progress, leave=False):
        for s in severities:
            xc, yc = robustness.load_cifar_c(root, n, s)
            if int(yc.max()) >= model.num_classes:
                raise InputError(
                    f"CIFAR-C labels go up to {int(yc.max())} but the model has "
                    f"{model.num_classes} classes"
                )
            if max_samples is not None and max_samples < len(yc):
                keep = torch.randperm(len(yc), generator=torch.Generator().manual_seed(SPLIT_SEED))[
                    :max_samples
                ]
                xc, yc = xc[keep], yc[keep]
            table.setdefault(n, {})[str(s)] = metrics.accuracy(
                metrics.predict(model, xc, batch_size, device), yc
            )
    cells = [a for row in table.values() for a in row.values()]
    return {
        "clean": metrics.accuracy(metrics.predict(model, x, batch_size, device), y),
        "accuracy": table,
        "mean_per_corruption": {n: sum(r.values()) / len(r) for n, r in table.items()},
        "mean_per_severity": {
            str(s): sum(table[n][str(s)] for n in names) / len(names) for s in severities
        },
        "mean_corruption_accuracy": sum(cells) / len(cells),
    }


# ----------------------------------------------------------------------------- evaluate


def evaluate_run(
    run_dir: str | os.PathLike,
    what=DEFAULT_WHAT,
    epsilons=DEFAULT_EPSILONS,
    corruptions=None,
    severities=(1, 2, 3, 4, 5),
    max_samples: int | None = None,
    n_bins: int = 15,
    cifar_c: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    force: bool = False,
    progress: bool = False,
) -> dict:
    """Evaluate one run and store the results in its ``eval.json``.

    Args:
        run_dir: a run folder (``config.json`` + ``checkpoint.pt``).
        what: kinds to evaluate, from :data:`KINDS`.
        epsilons: FGSM epsilons in [0, 1] (pixel units of the [0, 1] image).
        corruptions: corruption names (default: all of ``robustness.CORRUPTIONS`` for
            ``corruptions``, :data:`CIFAR_C_15` for ``cifar_c``).
        severities: corruption severities in 1..5.
        max_samples: evaluate on a seeded random subset of this many test images (None: all).
        n_bins: ECE bins.
        cifar_c: folder of the published CIFAR-10-C/100-C ``.npy`` files (for ``cifar_c``).
        seed: seed of the random corruptions.
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda``, ``mps`` or ``auto``.
        force: recompute even when ``eval.json`` holds results with the same settings.
        progress: show tqdm progress bars.

    Returns:
        the whole ``eval.json`` content: ``{kind: {"settings": ..., "result": ...}}``.
    """
    what = (what,) if isinstance(what, str) else tuple(what)
    epsilons = [
        float(e) if isinstance(e, (int, float)) and not isinstance(e, bool) else e for e in epsilons
    ]
    severities = list(severities)
    _check_settings(
        what, epsilons, corruptions, severities, max_samples, cifar_c, n_bins, batch_size, device
    )
    run_dir = Path(run_dir)
    _check_run(run_dir)
    common = {"max_samples": max_samples, "checkpoint": _fingerprint(run_dir)}
    wanted = {
        "calibration": {
            **common,
            "n_bins": n_bins,
            "temperature_fit": f"random half of the test set (seed {SPLIT_SEED})",
        },
        "smoothing": dict(common),
        "fgsm": {**common, "epsilons": epsilons},
        "corruptions": {
            **common,
            "names": list(corruptions or robustness.CORRUPTIONS),
            "severities": severities,
            "seed": seed,
        },
        "cifar_c": {
            **common,
            "root": str(cifar_c),
            "names": list(corruptions or CIFAR_C_15),
            "severities": severities,
        },
    }
    try:
        stored = read_json(run_dir / EVAL, {}) or {}
    except InputError as e:  # torn or foreign: --force starts it again, otherwise say so
        if not force:
            raise InputError(f"{e}; pass --force to recompute it") from None
        stored = {}
    todo = [k for k in what if force or stored.get(k, {}).get("settings") != wanted[k]]
    if not todo:
        return stored

    from ipskit.train import resolve_device

    dev = resolve_device(device)
    model, config = load_model(run_dir, dev)
    if config.get("model") and str(config["model"]).lower() != model.name:
        raise InputError(
            f"{run_dir / CHECKPOINT} holds a {model.name} but {CONFIG} says model {config['model']!r}"
        )
    x, y = _test_set(config, model, max_samples, progress)
    logits = None
    for kind in todo:
        if kind in ("calibration", "smoothing") and logits is None:
            logits = metrics.predict(model, x, batch_size, dev, progress)
        if kind == "calibration":
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
            fit, held = perm[: len(y) // 2], perm[len(y) // 2 :]
            t = metrics.fit_temperature(logits[fit], y[fit])
            result = {
                "test": metrics.calibration_report(logits, y, n_bins),
                "temperature": t,
                "heldout": metrics.calibration_report(logits[held], y[held], n_bins),
                "heldout_scaled": metrics.calibration_report(logits[held] / t, y[held], n_bins),
            }
        elif kind == "smoothing":
            result = metrics.smoothing_report(logits, y, model.num_classes)
        elif kind == "fgsm":
            accs = robustness.fgsm_curve(model, x, y, epsilons, batch_size, dev, progress)
            result = {"epsilons": epsilons, "accuracy": accs}
        elif kind == "corruptions":
            s = wanted[kind]
            result = robustness.corruption_accuracy(
                model, x, y, s["names"], severities, seed, batch_size, dev, progress
            )
        else:
            names = wanted[kind]["names"]
            result = _cifar_c_result(
                model, x, y, cifar_c, names, severities, max_samples, batch_size, dev, progress
            )
        stored[kind] = {"settings": wanted[kind], "result": result}
        atomic_write_json(run_dir / EVAL, stored)
    return stored


# ----------------------------------------------------------------------------- compare


def _names(run_dirs: list[Path]) -> list[str]:
    """Short unique labels: the folder name, or parent/name where folder names repeat."""
    short = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if short.count(p.name) > 1 else p.name for p in run_dirs]


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def _save_figure(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def compare_runs(
    run_dirs, out_dir: str | os.PathLike | None = None, what=DEFAULT_WHAT, **eval_kwargs
) -> str:
    """Evaluate several runs (cached in each ``eval.json``) and tabulate them.

    Args:
        run_dirs: run folders.
        out_dir: if given, writes ``compare.md`` and PNG figures there (reliability diagrams,
            confidence and entropy histograms, FGSM and corruption curves, as available).
        what: kinds to evaluate (see :func:`evaluate_run`).
        **eval_kwargs: passed to :func:`evaluate_run` (epsilons, max_samples, device, ...).

    Returns:
        a markdown table, one row per run (accuracies in %).
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise InputError("no run folders given; pass one or more folders made by ipskit train")
    names = _names(run_dirs)
    evals = {n: evaluate_run(r, what=what, **eval_kwargs) for n, r in zip(names, run_dirs)}
    configs = {n: read_json(r / CONFIG, {}) for n, r in zip(names, run_dirs)}

    header = ["run", "method", "model", "seed", "top-1 %", "NLL", "Brier", "ECE", "T", "ECE@T (held-out)",
              "mean max-p", "entropy", "FGSM@0.01 %", "mCA %"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in names:
        ev, cfg = evals[n], configs[n]
        cal = ev.get("calibration", {}).get("result", {})
        smo = ev.get("smoothing", {}).get("result", {}).get("overall", {})
        fg = ev.get("fgsm", {}).get("result")
        fgsm01 = (
            fg["accuracy"][fg["epsilons"].index(0.01)] if fg and 0.01 in fg["epsilons"] else None
        )
        cor = ev.get("corruptions", ev.get("cifar_c", {})).get("result", {})
        test = cal.get("test", {})
        row = [n, cfg.get("method", "-"), cfg.get("model", "-"), cfg.get("seed", "-"), _fmt(test.get("top1"), True),
               _fmt(test.get("nll")), _fmt(test.get("brier")), _fmt(test.get("ece")), _fmt(cal.get("temperature")),
               _fmt(cal.get("heldout_scaled", {}).get("ece")), _fmt(smo.get("max_prob")), _fmt(smo.get("entropy")),
               _fmt(fgsm01, True), _fmt(cor.get("mean_corruption_accuracy"), True)]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    table = "\n".join(lines) + "\n"

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "compare.md", table)
        pick = lambda kind: {n: e[kind]["result"] for n, e in evals.items() if kind in e}  # noqa: E731
        figures = {}
        if cal_all := pick("calibration"):
            figures["reliability.png"] = plots.reliability_diagrams(
                {n: r["test"] for n, r in cal_all.items()}
            )
        if smo_all := pick("smoothing"):
            figures["confidence.png"] = plots.confidence_histograms(smo_all, kind="max_prob")
            figures["entropy.png"] = plots.confidence_histograms(smo_all, kind="entropy")
        if fg_all := pick("fgsm"):
            figures["fgsm.png"] = plots.fgsm_curves(fg_all)
        if cor_all := pick("corruptions"):
            figures["corruptions.png"] = plots.corruption_curves(cor_all)
        if cc_all := pick("cifar_c"):
            figures["cifar_c.png"] = plots.corruption_curves(cc_all)
        for fname, fig in figures.items():
            _save_figure(fig, out / fname)
    return table


# ----------------------------------------------------------------------------- command line

_ADVICE = """advice:
  Start with --max-samples 1000 for a quick look; drop it for the numbers you report.
  Results are cached in each run's eval.json; change a setting or pass --force to recompute.
  The paper's FGSM number is at eps 0.01 (about 2.5/255). On-the-fly corruptions work for any
  dataset; for the published CIFAR-10-C/100-C pass --cifar-c DATA/CIFAR-100-C.
  Compare methods over several seeds under one recipe; one run is not a result."""


EVAL_DESCRIPTION = (
    "Evaluate trained runs: calibration (NLL, Brier, ECE, temperature), logit "
    "smoothing, FGSM and corruption robustness. Writes RUN_DIR/eval.json."
)
COMPARE_DESCRIPTION = (
    "Compare runs side by side: evaluates each (cached in eval.json), prints a "
    "markdown table and saves compare.md plus PNG figures to --out."
)


def add_eval_arguments(p: argparse.ArgumentParser, compare: bool = False) -> None:
    """The flags of ``ipskit eval`` (and, with ``compare``, of ``ipskit compare``)."""
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run folders made by ipskit train"
    )
    p.add_argument(
        "--what",
        nargs="+",
        default=list(DEFAULT_WHAT),
        choices=KINDS,
        metavar="KIND",
        help=f"what to evaluate, from {', '.join(KINDS)} (default: %(default)s)",
    )
    p.add_argument(
        "--epsilons",
        nargs="+",
        type=float,
        default=list(DEFAULT_EPSILONS),
        help="FGSM epsilons in [0, 1], pixel units of a [0, 1] image (default: %(default)s)",
    )
    p.add_argument(
        "--corruptions",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"corruption names (default all: {', '.join(robustness.CORRUPTIONS)})",
    )
    p.add_argument(
        "--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="severities in 1..5"
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="evaluate on a seeded random subset of this many test images (default: all)",
    )
    p.add_argument(
        "--bins", type=int, default=15, help="ECE bins (default: 15, as Guo et al. 2017)"
    )
    p.add_argument(
        "--cifar-c",
        default=None,
        metavar="PATH",
        help="folder of CIFAR-10-C/100-C .npy files; adds the cifar_c evaluation",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random corruptions")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument(
        "--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps"
    )
    p.add_argument(
        "--force", action="store_true", help="recompute even if eval.json holds these results"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if compare:
        p.add_argument(
            "--out",
            default=None,
            metavar="DIR",
            help="folder for compare.md and figures (default: none)",
        )


def _eval_kwargs(ns: argparse.Namespace) -> dict:
    what = list(ns.what) + (["cifar_c"] if ns.cifar_c and "cifar_c" not in ns.what else [])
    return {"what": tuple(what), "epsilons": ns.epsilons, "corruptions": ns.corruptions, "severities": ns.severities,
            "max_samples": ns.max_samples, "n_bins": ns.bins, "cifar_c": ns.cifar_c, "seed": ns.seed,
            "batch_size": ns.batch_size, "device": ns.device, "force": ns.force,
            "progress": not ns.no_progress}  # fmt: skip


def eval_command(ns: argparse.Namespace) -> int:
    """``ipskit eval RUN_DIR ...``: evaluate runs into their eval.json; prints a short summary."""
    kwargs = _eval_kwargs(ns)
    for run_dir in ns.run_dirs:
        ev = evaluate_run(run_dir, **kwargs)
        parts = []
        if "calibration" in ev:
            t = ev["calibration"]["result"]["test"]
            parts.append(f"top-1 {100 * t['top1']:.1f}%  NLL {t['nll']:.3f}  ECE {t['ece']:.3f}")
        if "fgsm" in ev:
            r = ev["fgsm"]["result"]
            parts.append(
                "FGSM "
                + " ".join(f"{e:g}:{100 * a:.1f}%" for e, a in zip(r["epsilons"], r["accuracy"]))
            )
        for kind in ("corruptions", "cifar_c"):
            if kind in ev:
                parts.append(
                    f"{kind} mCA {100 * ev[kind]['result']['mean_corruption_accuracy']:.1f}%"
                )
        print(f"{run_dir}: " + " | ".join(parts) + f"  -> {Path(run_dir) / EVAL}")
    return 0


def compare_command(ns: argparse.Namespace) -> int:
    """``ipskit compare RUN_DIR ... --out DIR``: evaluate (cached), print a markdown table, save figures."""
    print(compare_runs(ns.run_dirs, out_dir=ns.out, **_eval_kwargs(ns)), end="")
    if ns.out:
        print(f"saved compare.md and figures to {ns.out}")
    return 0


def main_eval(argv: list[str] | None = None) -> int:
    """``ipskit eval`` from Python: the same as ``ipskit.cli.main(["eval", *argv])``."""
    from ipskit.cli import main

    return main(["eval", *(argv or [])])


def main_compare(argv: list[str] | None = None) -> int:
    """``ipskit compare`` from Python: the same as ``ipskit.cli.main(["compare", *argv])``."""
    from ipskit.cli import main

    return main(["compare", *(argv or [])])


if __name__ == "__main__":
    import sys

    raise SystemExit(main_eval(sys.argv[1:]))
