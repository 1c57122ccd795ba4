"""Speed of ipskit's patch swap against a per-sample loop and against the two-`where` floor.

Three ways to swap the same pairs, timed side by side in interleaved rounds (medians):
  - ipskit:  ``patch_swap`` (draws the decision, builds the pixel mask, two ``torch.where``);
  - loop:    a per-sample Python loop in the style of the blog post the project started from
             (unfold to patches, per pair a host-side coin flip and ``randperm`` moved to the
             device, swap columns, fold back); written here for comparison only;
  - floor:   two ``torch.where`` calls on a pixel mask that is already built.
Also the build time of ``SameClassPairSampler`` for 50,000 labels.

Usage:
    python benchmarks/bench_swap.py                 # CPU, default sizes
    python benchmarks/bench_swap.py --device cuda   # on a GPU (synchronised timings)
    python benchmarks/bench_swap.py --quick --json swap.json   # 32x32 sizes only, 3 rounds;
                                                    # the table also as JSON
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ipskit import SameClassPairSampler, draw_swap, patch_swap


def loop_swap(x_a, x_b, patch, pr):
    """Per-sample loop baseline (only valid when `patch` divides H and W)."""
    B, C, H, W = x_a.shape
    n = (H // patch) * (W // patch)
    pa = F.unfold(x_a, kernel_size=patch, stride=patch)  # (B, C*p*p, n)
    pb = F.unfold(x_b, kernel_size=patch, stride=patch)  # (B, C*p*p, n)
    for i in range(B):
        if random.random() < pr:
            k = random.randint(1, n - 1)
            cols = torch.randperm(n)[:k].to(x_a.device)
            tmp = pa[i, :, cols].clone()
            pa[i, :, cols] = pb[i, :, cols]
            pb[i, :, cols] = tmp
    return (F.fold(pa, (H, W), kernel_size=patch, stride=patch),
            F.fold(pb, (H, W), kernel_size=patch, stride=patch))


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_case(B, C, H, grid, device, rounds, pr=0.5):
    x_a = torch.rand(B, C, H, H, device=device)
    x_b = torch.rand(B, C, H, H, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    mask = draw_swap(B, grid, pr, generator=gen).pixel_mask(H, H)  # (B, 1, H, H)
    fns = {
        "ipskit": lambda: patch_swap(x_a, x_b, grid=grid, pr=pr, generator=gen),
        "loop": lambda: loop_swap(x_a, x_b, H // grid, pr),
        "floor": lambda: (torch.where(mask, x_b, x_a), torch.where(mask, x_a, x_b)),
    }
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):  # interleaved so that machine load hits all three alike
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def bench_sampler(n=50_000, classes=100, rounds=7):
    labels = np.random.default_rng(0).integers(0, classes, n)
    ts = [timed(lambda: SameClassPairSampler(labels, 128), torch.device("cpu")) for _ in range(rounds)]
    s = SameClassPairSampler(labels, 128)
    te = [timed(lambda: s.epoch_pairs(1), torch.device("cpu")) for _ in range(rounds)]
    return statistics.median(ts) * 1e3, statistics.median(te) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds per size (default: 15, or 3 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="32x32 sizes only and 3 rounds: a smoke run in seconds, not a measurement")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 15)
    device = torch.device(args.device)
    random.seed(0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# patch swap benchmark on {name} (torch {torch.__version__}); median ms of "
          f"{args.rounds} interleaved rounds, pr=0.5\n")
    print("| batch | image | grid | ipskit ms | loop ms | floor ms | ipskit / floor | loop / ipskit |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    cases = [(64, 3, 32, 8), (256, 3, 32, 8), (1024, 3, 32, 8), (64, 3, 224, 2), (256, 3, 224, 2)]
    if args.quick:
        cases = cases[:2]
    rows = []
    for B, C, H, g in cases:
        r = bench_case(B, C, H, g, device, args.rounds)
        rows.append({"batch": B, "image": [C, H, H], "grid": g,
                     **{f"{k}_ms": v for k, v in r.items()}})
        print(f"| {B} | {C}x{H}x{H} | {g} | {r['ipskit']:.3f} | {r['loop']:.3f} | {r['floor']:.3f} "
              f"| {r['ipskit'] / r['floor']:.2f}x | {r['loop'] / r['ipskit']:.1f}x |", flush=True)
    build, epoch = bench_sampler(rounds=3 if args.quick else 7)
    print(f"\nSameClassPairSampler, 50,000 labels / 100 classes: build {build:.1f} ms, "
          f"one epoch of pairs {epoch:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "device_name": name, "torch": torch.__version__,
                       "rounds": args.rounds, "pr": 0.5, "swap": rows,
                       "sampler": {"labels": 50_000, "classes": 100, "build_ms": build,
                                   "epoch_ms": epoch}}, f, indent=1)


if __name__ == "__main__":
    main()
