"""Train, evaluate and export the natural-image CE / IPS pair that ships in ``results/``.

The explorer and the notebooks need two models trained on natural images (CE and IPS, same
seed, same recipe) to show what digits cannot: a swap you can see, one side of a pair that is
sure of its class while the other is not, Grad-CAM maps on objects. This script makes them:

1. trains ``ce`` and ``ips`` on CIFAR-10 (15 epochs, batch 128, lr 0.1, seed 0; ResNet-20 on a
   GPU, ResNet-8 on a CPU, where the pair takes about 35-60 minutes) into ``--work``, reusing
   finished runs there;
2. evaluates both (``ipskit eval``: calibration, smoothing, FGSM, corruptions on 2,000 test
   images);
3. exports each run with its weights only (``ipskit.runs.export_run``, < 2 MB) to
   ``--out/cifar10-<model>-<device>/{ce,ips}`` together with ``test_sample.npz``: 30 test
   images per class (300 in all, < 1 MB) that stand in for the test set on machines without
   CIFAR-10, so the explorer shows these runs from a fresh clone with no network.

Usage (``make natural-pair`` runs the first line)::

    python scripts/natural_pair.py                                   # data/cifar10 JPEG folder
    python scripts/natural_pair.py --dataset cifar10                 # torchvision's CIFAR-10
    python scripts/natural_pair.py --device cuda --model resnet20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ipskit import runs
from ipskit.config import TrainConfig
from ipskit.data import load_dataset
from ipskit.evaluate import evaluate_run
from ipskit.train import fit_or_reuse, resolve_device

METHODS = ("ce", "ips")
PER_CLASS = 30  # test images per class in the shipped sample (300 for CIFAR-10)
RECIPE = dict(seed=0, epochs=15, batch_size=128, lr=0.1)


def sample_indices(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """A seeded choice of ``per_class`` indices of every class, sorted: ``[K * per_class]``."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        default="imagefolder:data/cifar10",
        help="CIFAR-10 as an image folder (default) or 'cifar10' (torchvision)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--model", default=None, help="default: resnet20 on a GPU, resnet8 on a CPU")
    p.add_argument("--work", default="runs/natural", help="where the full runs are trained")
    p.add_argument("--out", default="results", help="where the exported pair goes")
    ns = p.parse_args(argv)

    device = resolve_device(ns.device)
    model = ns.model or ("resnet20" if device.type == "cuda" else "resnet8")
    dest = Path(ns.out) / f"cifar10-{model}-{device.type}"
    run_dirs = []
    for method in METHODS:  # 1. train (or reuse) and 2. evaluate
        cfg = TrainConfig(
            dataset=ns.dataset,
            model=model,
            method=method,
            device=ns.device,
            channels_last=True,
            out_dir=ns.work,
            name=method,
            **RECIPE,
        )
        run_dir = fit_or_reuse(cfg)
        evaluate_run(run_dir, max_samples=2000, device=ns.device, progress=True)
        run_dirs.append(run_dir)

    # 3. export the weights-only runs and the test sample they are shown on
    for method, run_dir in zip(METHODS, run_dirs):
        runs.export_run(run_dir, dest / method)
    bundle = load_dataset(ns.dataset, download=False)
    pick = sample_indices(bundle.test_targets, PER_CLASS)
    runs.write_test_sample(
        dest / runs.TEST_SAMPLE, bundle.test_x[pick], bundle.test_y[pick], bundle.classes
    )
    print(f"exported to {dest}:")
    for method in METHODS:
        s = runs.read_json(dest / method / runs.SUMMARY)
        print(
            f"  {method:4s} top-1 {100 * s['test_acc']:.2f}%  ECE {s['ece']:.3f}  "
            f"mean max-prob {s['mean_max_prob']:.3f}  ({s['epochs']} epochs, "
            f"{s['wall_time_s'] / 60:.0f} min)"
        )
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"  {size / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
