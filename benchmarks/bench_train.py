"""Training speed on one machine: IPS vs CE step time, and the in-memory fast path vs a DataLoader.

IPS (Choi et al., 2025) forwards and back-propagates two images per sample (the two swapped
sides of a pair), so at the same batch size its step does 2x the work of a CE step. How much
time that takes depends on how the model scales with the batch on the machine (often not
exactly 2x), so the table also times CE at twice the batch: IPS's step divided by that is the
cost of pairing, swapping and the KL term alone. The second table compares one training
epoch fed by ``ipskit.data.InMemoryLoader`` (uint8 tensor on the device, batch augmentation)
with the standard ``torch.utils.data.DataLoader`` pipeline (per-item augmentation) on the same
data, model and method.

Rounds are interleaved (A, B, A, B, ...) so that a machine that gets busier or quieter affects
both sides alike; the tables give medians over rounds.

    python benchmarks/bench_train.py                      # digits 16x16, resnet8, batch 64
    python benchmarks/bench_train.py --device cuda --dataset cifar10 --batch-size 128
    python benchmarks/bench_train.py --device cuda --dataset imagefolder:data/cifar10 \
        --model resnet18 --batch-size 128 256 512 --quick --json train.json

On CUDA the steps run as training runs them by default: bf16 autocast and channels-last
(``--no-amp``, ``--no-channels-last`` to turn them off). ``--quick`` (3 rounds of 3 steps, the
epoch comparison on at most 1,024 training images) is a smoke run, not a measurement.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch

import ipskit.data
from ipskit.config import TrainConfig
from ipskit.methods import build_method
from ipskit.models import build_model
from ipskit.train import prepare_data, resolve_device, train_one_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Every side of every table loads the same data: decode it once per process (an image folder
# such as CIFAR-10 as 60k JPEGs takes seconds each time). prepare_data looks the loader up on
# ipskit.data at call time, so a cached one put there is the one it uses.
ipskit.data.load_dataset = functools.lru_cache(maxsize=None)(ipskit.data.load_dataset)


def _setup(cfg: TrainConfig, device: torch.device, channels_last: bool = False):
    data = prepare_data(cfg, device)
    b = data.bundle
    torch.manual_seed(0)
    model = build_model(cfg.model, b.num_classes, b.in_channels, b.image_size, b.mean, b.std).to(
        device
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(cfg, b.num_classes, b.image_size, b.mean)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return data, model, method, opt, sched


def step_times(
    base: TrainConfig,
    device,
    rounds: int,
    steps: int,
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Median seconds per optimisation step (data already on the device): ce and ips at
    batch B, and ce at 2B images (the same images per step as ips: its floor on this machine,
    since a model rarely costs exactly 2x at twice the batch). ``amp``: bf16 autocast;
    ``channels_last``: model and batch in channels-last memory format (as training does)."""
    sides = {}
    b = base.batch_size
    for name, cfg in (
        ("ce", base.replace(method="ce")),
        ("ips", base.replace(method="ips")),
        (f"ce, batch {2 * b}", base.replace(method="ce", batch_size=2 * b)),
    ):
        data, model, method, opt, _ = _setup(cfg, device, channels_last)
        data.train_loader.set_epoch(1)
        x, y = next(iter(data.train_loader))  # one fixed batch: B (ce) or 2B (ips) images
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sides[name] = (model, method, opt, x, y)
    gen = torch.Generator(device=device).manual_seed(0)
    times = {name: [] for name in sides}

    def run(name, n):
        model, method, opt, x, y = sides[name]
        for _ in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = method.step(model, x, y, gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

    for name in sides:
        run(name, 2)  # warm-up
    for _ in range(rounds):
        for name in sides:
            _sync(device)
            t = time.perf_counter()
            run(name, steps)
            _sync(device)
            times[name].append((time.perf_counter() - t) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def epoch_times(
    base: TrainConfig, device, rounds: int, amp: bool = False, channels_last: bool = False
) -> dict[str, tuple[float, float]]:
    """Median seconds per epoch, fast path vs DataLoader: (data only, full training epoch)."""
    sides = {
        "in-memory fast path": _setup(base.replace(fast_path=True), device, channels_last),
        f"DataLoader ({base.num_workers} workers)": _setup(
            base.replace(fast_path=False), device, channels_last
        ),
    }
    gen = torch.Generator(device=device).manual_seed(0)
    times = {name: ([], []) for name in sides}
    for r in range(rounds + 1):  # round 0 warms up
        for name, (data, model, method, opt, sched) in sides.items():
            for s in data.samplers:
                s.set_epoch(r)
            _sync(device)
            t = time.perf_counter()
            for x, _ in data.train_loader:  # the data pipeline alone
                x.to(device).sum()
            _sync(device)
            t_data = time.perf_counter() - t
            t = time.perf_counter()
            train_one_epoch(
                model,
                method,
                data.train_loader,
                opt,
                sched,
                gen,
                r,
                device,
                amp=amp,
                channels_last=channels_last,
                progress=False,
            )
            _sync(device)
            if r:
                times[name][0].append(t_data)
                times[name][1].append(time.perf_counter() - t)
    return {name: (statistics.median(d), statistics.median(e)) for name, (d, e) in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="resnet8")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[64],
        help="one or more batch sizes, one step table each (default: 64)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds (median; default: 7, or 3 with --quick)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per round (step times; default: 10, or 3 with --quick)",
    )
    p.add_argument("--epoch-method", default="ce", help="method for the epoch comparison")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on for CUDA, as in training)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format (default: on for CUDA, as in training)",
    )
    p.add_argument(
        "--max-train-samples",
        type=int,
        default=None,
        help="training images in the epoch comparison (default: all, or at most "
        "1,024 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds of 3 steps, a small epoch comparison: a smoke run in seconds",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    a = p.parse_args()
    a.rounds = a.rounds or (3 if a.quick else 7)
    a.steps = a.steps or (3 if a.quick else 10)
    device = resolve_device(a.device)
    amp = device.type == "cuda" if a.amp is None else a.amp
    channels_last = device.type == "cuda" if a.channels_last is None else a.channels_last
    base = TrainConfig(
        dataset=a.dataset,
        model=a.model,
        image_size=a.image_size,
        batch_size=a.batch_size[0],
        num_workers=a.num_workers,
        device=str(device),
        grid=4,
    )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"{a.model} on {a.dataset}, batch {', '.join(map(str, a.batch_size))}, {device} "
        f"({name}), amp {amp}, channels-last {channels_last}, {a.rounds} interleaved rounds "
        f"(medians)\n"
    )
    report = {
        "model": a.model,
        "dataset": a.dataset,
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "amp": amp,
        "channels_last": channels_last,
        "rounds": a.rounds,
        "steps_per_round": a.steps,
        "steps": [],
    }
    for batch in a.batch_size:
        st = step_times(
            base.replace(batch_size=batch), device, a.rounds, a.steps, amp, channels_last
        )
        floor = st[f"ce, batch {2 * batch}"]
        print(
            f"| method (batch {batch}) | ms / step | x ce | x ce at 2x batch |\n"
            f"| --- | --- | --- | --- |"
        )
        for side, t in st.items():
            print(f"| {side} | {1000 * t:.1f} | {t / st['ce']:.2f} | {t / floor:.2f} |")
        print(flush=True)
        report["steps"].append(
            {
                "batch_size": batch,
                "ce_ms": 1000 * st["ce"],
                "ips_ms": 1000 * st["ips"],
                "ce_2x_batch_ms": 1000 * floor,
                "ips_over_ce": st["ips"] / st["ce"],
                "ips_over_ce_2x_batch": st["ips"] / floor,
            }
        )
    print(
        "ips forwards and back-propagates 2 images per sample: 2.00x the work of ce, and "
        "exactly the work of ce at twice the batch (the last column: IPS's own overhead).\n"
    )
    limit = a.max_train_samples or (1024 if a.quick else None)
    et = epoch_times(
        base.replace(method=a.epoch_method, max_train_samples=limit),
        device,
        a.rounds,
        amp,
        channels_last,
    )
    fast_d, fast_e = next(iter(et.values()))
    print(
        f"| {a.epoch_method} epoch fed by | data only, s | x fast | training epoch, s "
        f"| x fast |\n| --- | --- | --- | --- | --- |"
    )
    for side, (d, e) in et.items():
        print(f"| {side} | {d:.3f} | {d / fast_d:.1f} | {e:.2f} | {e / fast_e:.2f} |")
    report["epochs"] = {
        "method": a.epoch_method,
        "batch_size": a.batch_size[0],
        "max_train_samples": limit,
        "pipelines": [{"pipeline": side, "data_s": d, "epoch_s": e} for side, (d, e) in et.items()],
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
