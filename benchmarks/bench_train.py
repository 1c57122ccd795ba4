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
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ipskit.config import TrainConfig
from ipskit.methods import build_method
from ipskit.models import build_model
from ipskit.train import prepare_data, resolve_device, train_one_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(cfg: TrainConfig, device: torch.device):
    data = prepare_data(cfg, device)
    b = data.bundle
    torch.manual_seed(0)
    model = build_model(cfg.model, b.num_classes, b.in_channels, b.image_size, b.mean,
                        b.std).to(device)
    method = build_method(cfg, b.num_classes, b.image_size, b.mean)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return data, model, method, opt, sched


def step_times(base: TrainConfig, device, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per optimisation step (data already on the device): ce and ips at
    batch B, and ce at 2B images (the same images per step as ips: its floor on this machine,
    since a model rarely costs exactly 2x at twice the batch)."""
    sides = {}
    b = base.batch_size
    for name, cfg in (("ce", base.replace(method="ce")), ("ips", base.replace(method="ips")),
                      (f"ce, batch {2 * b}", base.replace(method="ce", batch_size=2 * b))):
        data, model, method, opt, _ = _setup(cfg, device)
        data.train_loader.set_epoch(1)
        x, y = next(iter(data.train_loader))  # one fixed batch: B (ce) or 2B (ips) images
        sides[name] = (model, method, opt, x, y)
    gen = torch.Generator(device=device).manual_seed(0)
    times = {name: [] for name in sides}

    def run(name, n):
        model, method, opt, x, y = sides[name]
        for _ in range(n):
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


def epoch_times(base: TrainConfig, device, rounds: int) -> dict[str, tuple[float, float]]:
    """Median seconds per epoch, fast path vs DataLoader: (data only, full training epoch)."""
    sides = {"in-memory fast path": _setup(base.replace(fast_path=True), device),
             f"DataLoader ({base.num_workers} workers)": _setup(base.replace(fast_path=False),
                                                                device)}
    gen = torch.Generator(device=device).manual_seed(0)
    times = {name: ([], []) for name in sides}
    for r in range(rounds + 1):  # round 0 warms up
        for name, (data, model, method, opt, sched) in sides.items():
            for s in data.samplers:
                s.set_epoch(r)
            _sync(device)
            t = time.perf_counter()
            for x, y in data.train_loader:  # the data pipeline alone
                x.to(device).sum()
            _sync(device)
            t_data = time.perf_counter() - t
            t = time.perf_counter()
            train_one_epoch(model, method, data.train_loader, opt, sched, gen, r, device,
                            progress=False)
            _sync(device)
            if r:
                times[name][0].append(t_data)
                times[name][1].append(time.perf_counter() - t)
    return {name: (statistics.median(d), statistics.median(e))
            for name, (d, e) in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="resnet8")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    p.add_argument("--steps", type=int, default=10, help="steps per round (step times)")
    p.add_argument("--epoch-method", default="ce", help="method for the epoch comparison")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    a = p.parse_args()
    device = resolve_device(a.device)
    base = TrainConfig(dataset=a.dataset, model=a.model, image_size=a.image_size,
                       batch_size=a.batch_size, num_workers=a.num_workers, device=str(device),
                       grid=4)
    print(f"{a.model} on {a.dataset}, batch {a.batch_size}, {device}, "
          f"{torch.get_num_threads()} threads, {a.rounds} interleaved rounds (medians)\n")
    st = step_times(base, device, a.rounds, a.steps)
    floor = st[f"ce, batch {2 * a.batch_size}"]
    print(f"| method (batch {a.batch_size}) | ms / step | x ce | x ce at 2x batch |\n"
          f"| --- | --- | --- | --- |")
    for name, t in st.items():
        print(f"| {name} | {1000 * t:.1f} | {t / st['ce']:.2f} | {t / floor:.2f} |")
    print("\nips forwards and back-propagates 2 images per sample: 2.00x the work of ce, and "
          "exactly the work of ce at twice the batch (the last column: IPS's own overhead).\n")
    et = epoch_times(base.replace(method=a.epoch_method), device, a.rounds)
    fast_d, fast_e = next(iter(et.values()))
    print(f"| {a.epoch_method} epoch fed by | data only, s | x fast | training epoch, s "
          f"| x fast |\n| --- | --- | --- | --- | --- |")
    for name, (d, e) in et.items():
        print(f"| {name} | {d:.3f} | {d / fast_d:.1f} | {e:.2f} | {e / fast_e:.2f} |")


if __name__ == "__main__":
    main()
