"""Speed of ipskit's patch swap against a per-sample loop and against the two-`where` floor.

Three ways to swap the same pairs, timed side by side in interleaved rounds (medians):
  - ipskit:  ``patch_swap`` (draws the decision, builds the pixel mask, two ``torch.where``);
  - loop:    a per-sample Python loop in the style of the blog post the project started from
             (unfold to patches, per pair a host-side coin flip and ``randperm`` moved to the
             device, swap columns, fold back); written here for comparison only;
  - floor:   two ``torch.where`` calls on a pixel mask that is already built;
  - baseline (with ``--baseline FILE``): ``patch_swap`` of another swap.py, e.g. an older one
             (``git show HEAD~3:ipskit/swap.py > /tmp/old_swap.py``), in the same rounds;
  - graph (on CUDA): ``patch_swap`` captured once in a CUDA graph, then replayed.
Also the build time of ``SameClassPairSampler`` for 50,000 labels, and ops per call: the ATen
calls of one swap, augmentation or mixer call counted at the dispatcher (kernels, that is calls
that compute; views, that only change metadata; host syncs such as ``.item()``), and on CUDA
whether the call runs under ``torch.cuda.set_sync_debug_mode("error")``.

Usage:
    python benchmarks/bench_swap.py                 # CPU, default sizes
    python benchmarks/bench_swap.py --device cuda   # on a GPU (synchronised timings)
    python benchmarks/bench_swap.py --quick --json swap.json   # 32x32 sizes only, 3 rounds;
                                                    # the table also as JSON
    python benchmarks/bench_swap.py --baseline /tmp/old_swap.py   # before/after, interleaved
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from ipskit import SameClassPairSampler, draw_swap, opcount, patch_swap
from ipskit.augment import AugmentSpec, augment_batch
from ipskit.methods import Cutout, TorchvisionMix


def count_ops(fn) -> dict:
    """ATen calls of one ``fn()`` (``ipskit.opcount``): kernels, views, syncs and kernels by name."""
    calls = opcount.count_ops(fn)
    return {
        "kernels": sum(calls.kernels.values()),
        "views": calls.views,
        "syncs": sum(calls.syncs.values()),
        "ops": dict(calls.kernels),
    }


def cuda_sync_check(fn) -> str:
    """'none' if ``fn()`` runs under CUDA's sync debug mode "error", else the error's first line."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "none"
    except RuntimeError as err:
        return str(err).splitlines()[0][:80]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def ops_rows(device, swap_fn=patch_swap):
    """One row per random op of a training step: a 256 x 3 x 32 x 32 batch (a pair of them for
    the swap and the mixers, as IPS runs them), generator on the device."""
    B, C, H = 256, 3, 32
    gen = torch.Generator(device=device).manual_seed(0)
    x_a, x_b = torch.rand(2, B, C, H, H, device=device).unbind(0)
    x_u8 = (x_a * 255).to(torch.uint8)
    y = torch.randint(10, (B,), device=device)
    cutout, cutmix, mixup = Cutout(16), TorchvisionMix("cutmix", 10), TorchvisionMix("mixup", 10)
    calls = {
        "patch_swap (grid 8, pr 0.5)": lambda: swap_fn(x_a, x_b, grid=8, pr=0.5, generator=gen),
        "augment_batch (uint8, crop 4, flip)": lambda: augment_batch(
            x_u8, AugmentSpec(4, flip=True), gen
        ),
        "Cutout on a pair of batches": lambda: cutout([x_a, x_b], y, gen),
        # draw + apply: the path of a generator on a GPU (a CPU one skips unmixed batches)
        "CutMix on a pair of batches (prob 0.5)": lambda: cutmix.apply(
            [x_a, x_b], y, cutmix.draw(H, H, gen)
        ),
        "MixUp on a pair of batches (prob 0.5)": lambda: mixup.apply(
            [x_a, x_b], y, mixup.draw(H, H, gen)
        ),
    }
    rows = []
    for name, fn in calls.items():
        row = {"op": name, **count_ops(fn)}
        if device.type == "cuda":
            row["cuda_syncs"] = cuda_sync_check(fn)
        rows.append(row)
    return rows


def load_swap(path):
    """``patch_swap`` of another swap.py (it imports ipskit.checks, so the ipskit here must have it)."""
    spec = importlib.util.spec_from_file_location("baseline_swap", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.patch_swap


def graph_swap(x_a, x_b, grid, pr, device):
    """``patch_swap`` captured in a CUDA graph with its own generator: (replay, check) where
    ``check()`` says whether two replays drew different cells (the RNG moves on)."""
    gen = torch.Generator(device=device).manual_seed(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (fills the cell tables)
        for _ in range(3):
            patch_swap(x_a, x_b, grid=grid, pr=pr, generator=gen)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    with torch.cuda.graph(graph):
        out = patch_swap(x_a, x_b, grid=grid, pr=pr, generator=gen)

    def check():
        graph.replay()
        first = out[2].cells.clone()
        graph.replay()
        return not torch.equal(first, out[2].cells)

    return graph.replay, check


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
    return (
        F.fold(pa, (H, W), kernel_size=patch, stride=patch),
        F.fold(pb, (H, W), kernel_size=patch, stride=patch),
    )


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_case(B, C, H, grid, device, rounds, pr=0.5, baseline=None):
    x_a = torch.rand(B, C, H, H, device=device)
    x_b = torch.rand(B, C, H, H, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    mask = draw_swap(B, grid, pr, generator=gen).pixel_mask(H, H)  # (B, 1, H, H)
    fns = {
        "ipskit": lambda: patch_swap(x_a, x_b, grid=grid, pr=pr, generator=gen),
        "loop": lambda: loop_swap(x_a, x_b, H // grid, pr),
        "floor": lambda: (torch.where(mask, x_b, x_a), torch.where(mask, x_a, x_b)),
    }
    if baseline is not None:
        fns["baseline"] = lambda: baseline(x_a, x_b, grid=grid, pr=pr, generator=gen)
    extra = {}
    if device.type == "cuda":
        try:
            fns["graph"], check = graph_swap(x_a, x_b, grid, pr, device)
            extra["graph_draws_move_on"] = check()
        except Exception as err:  # report, do not stop the benchmark
            extra["graph_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):  # interleaved so that machine load hits all of them alike
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}, extra


def bench_sampler(n=50_000, classes=100, rounds=7):
    labels = np.random.default_rng(0).integers(0, classes, n)
    ts = [
        timed(lambda: SameClassPairSampler(labels, 128), torch.device("cpu")) for _ in range(rounds)
    ]
    s = SameClassPairSampler(labels, 128)
    te = [timed(lambda: s.epoch_pairs(1), torch.device("cpu")) for _ in range(rounds)]
    return statistics.median(ts) * 1e3, statistics.median(te) * 1e3


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved timing rounds per size (default: 15, or 3 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="32x32 sizes only and 3 rounds: a smoke run in seconds, not a measurement",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--baseline",
        default=None,
        metavar="SWAP_PY",
        help="also time (and count the ops of) patch_swap from this swap.py, e.g. "
        "the version before a change, in the same interleaved rounds",
    )
    args = p.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 15)
    device = torch.device(args.device)
    random.seed(0)
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"# patch swap benchmark on {name} (torch {torch.__version__}); median ms of "
        f"{args.rounds} interleaved rounds, pr=0.5\n"
    )
    baseline = load_swap(args.baseline) if args.baseline else None
    cols = [
        "ipskit",
        *(["baseline"] if baseline else []),
        "loop",
        "floor",
        *(["graph"] if device.type == "cuda" else []),
    ]
    print(
        "| batch | image | grid | "
        + " | ".join(f"{c} ms" for c in cols)
        + " | ipskit / floor | loop / ipskit |"
        + (" ipskit / baseline |" if baseline else "")
    )
    print("|---:|---|---:|" + "---:|" * (len(cols) + 2 + bool(baseline)))
    cases = [(64, 3, 32, 8), (256, 3, 32, 8), (1024, 3, 32, 8), (64, 3, 224, 2), (256, 3, 224, 2)]
    if args.quick:
        cases = cases[:2]
    rows, notes = [], set()
    for B, C, H, g in cases:
        r, extra = bench_case(B, C, H, g, device, args.rounds, baseline=baseline)
        rows.append(
            {
                "batch": B,
                "image": [C, H, H],
                "grid": g,
                **{f"{k}_ms": v for k, v in r.items()},
                **extra,
            }
        )
        if "graph_error" in extra:
            notes.add(f"CUDA graph capture failed: {extra['graph_error']}")
        elif extra.get("graph_draws_move_on") is False:
            notes.add("CUDA graph: two replays drew the same cells (the generator did not move on)")
        print(
            f"| {B} | {C}x{H}x{H} | {g} | "
            + " | ".join(f"{r[c]:.3f}" if c in r else "n/a" for c in cols)
            + f" | {r['ipskit'] / r['floor']:.2f}x | {r['loop'] / r['ipskit']:.1f}x |"
            + (f" {r['ipskit'] / r['baseline']:.2f}x |" if baseline else ""),
            flush=True,
        )
    for note in sorted(notes):
        print(f"\n{note}")

    ops = ops_rows(device)
    print(
        "\nOps per call (ATen calls of one call after a warm-up; kernels compute, views only "
        "change metadata; syncs wait for the device):\n"
    )
    sync_col = " | CUDA sync debug" if device.type == "cuda" else ""
    print(f"| op | kernels | views | host syncs{sync_col} |")
    print("|---|---:|---:|---:|" + ("---|" if sync_col else ""))
    for row in ops:
        print(
            f"| {row['op']} | {row['kernels']} | {row['views']} | {row['syncs']}"
            + (f" | {row['cuda_syncs']}" if sync_col else "")
            + " |"
        )
    if baseline:
        old = ops_rows(device, baseline)[0]
        ops.append({**old, "op": f"baseline {old['op']}"})
        print(
            f"| baseline patch_swap ({args.baseline}) | {old['kernels']} | {old['views']} | "
            f"{old['syncs']}" + (f" | {old['cuda_syncs']}" if sync_col else "") + " |"
        )
    build, epoch = bench_sampler(rounds=3 if args.quick else 7)
    print(
        f"\nSameClassPairSampler, 50,000 labels / 100 classes: build {build:.1f} ms, "
        f"one epoch of pairs {epoch:.1f} ms"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": str(device),
                    "device_name": name,
                    "torch": torch.__version__,
                    "rounds": args.rounds,
                    "pr": 0.5,
                    "swap": rows,
                    "ops": ops,
                    "baseline": args.baseline,
                    "sampler": {
                        "labels": 50_000,
                        "classes": 100,
                        "build_ms": build,
                        "epoch_ms": epoch,
                    },
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
