"""Training speed on one machine: IPS vs CE step time, eager and captured in a CUDA graph, and
the in-memory fast path vs a DataLoader.

IPS (Choi et al., 2025) forwards and back-propagates two images per sample (the two swapped
sides of a pair), so at the same batch size its step does 2x the work of a CE step. How much
time that takes depends on how the model scales with the batch on the machine (often not
exactly 2x), so the table also times CE at twice the batch: IPS's step divided by that is the
cost of pairing, swapping and the KL term alone.

Steps are timed as training runs them: ``ipskit.step.TrainStep`` (the method's forward, loss,
backward, optimizer update and the running sums) followed by ``scheduler.step()``, on one
fixed batch already on the device. On CUDA every side is timed twice: eager (fused SGD, a
float learning rate: training with ``--capture off``) and captured (``CapturedStep``: the
whole step in one CUDA graph, fused SGD with the learning rate in a device tensor: training's
default on one GPU); the warm-up steps and the capture happen before the timing. The captured
step needs CUDA: on the CPU only the eager step is timed, with default SGD and a float learning
rate (the setup earlier versions of this benchmark timed, so CPU numbers stay comparable).

The second table compares one training epoch fed by ``ipskit.data.InMemoryLoader`` (uint8
tensor on the device, batch augmentation) with the standard ``torch.utils.data.DataLoader``
pipeline (per-item augmentation) on the same data, model and method (eager steps).

Rounds are interleaved (A, B, A, B, ...) so that a machine that gets busier or quieter affects
every side alike; the tables give medians over rounds.

    python benchmarks/bench_train.py                      # digits 16x16, resnet8, batch 64
    python benchmarks/bench_train.py --device cuda --dataset cifar10 --batch-size 128
    python benchmarks/bench_train.py --device cuda --dataset imagefolder:data/cifar10 \
        --model resnet18 --batch-size 128 256 512 --quick --json train.json

On CUDA the steps run as training runs them by default: bf16 autocast and channels-last
(``--no-amp``, ``--no-channels-last`` to turn them off). ``--quick`` (3 rounds of 3 steps, the
epoch comparison on at most 1,024 training images) is a smoke run, not a measurement. The JSON
(``--json``) has, per batch size, ce_ms, ips_ms, ce_2x_batch_ms, ips_over_ce and
ips_over_ce_2x_batch (eager), and ce_graph_ms, ips_graph_ms, ce_2x_batch_graph_ms,
ips_over_ce_graph and ips_over_ce_2x_batch_graph (captured; null on the CPU).
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
from ipskit.step import CapturedStep, TrainStep, use_tensor_lr
from ipskit.train import prepare_data, resolve_device, train_one_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Every side of every table loads the same data: decode it once per process (an image folder
# such as CIFAR-10 as 60k JPEGs takes seconds each time). prepare_data looks the loader up on
# ipskit.data at call time, so a cached one put there is the one it uses.
ipskit.data.load_dataset = functools.lru_cache(maxsize=None)(ipskit.data.load_dataset)


def _parts(data, cfg: TrainConfig, device, channels_last: bool = False, fused: bool = False):
    """Model (seed 0: the same initial weights for every side), method, SGD and a constant
    schedule for ``cfg`` on ``data``; ``fused``: fused SGD, as training uses on CUDA."""
    b = data.bundle
    torch.manual_seed(0)
    model = build_model(cfg.model, b.num_classes, b.in_channels, b.image_size, b.mean, b.std).to(
        device
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(cfg, b.num_classes, b.image_size, b.mean)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, method, opt, sched


def _setup(cfg: TrainConfig, device: torch.device, channels_last: bool = False):
    data = prepare_data(cfg, device)
    return (data, *_parts(data, cfg, device, channels_last))


MODES = ("eager", "graph")  # graph: the step captured in a CUDA graph (CUDA only)


def _step_side(data, cfg: TrainConfig, device: torch.device, amp: bool, channels_last: bool, mode):
    """A model, optimizer, scheduler and step for one side of the step table, as training
    builds them: on CUDA fused SGD (and, captured, the learning rate in a device tensor); on
    the CPU default SGD with a float learning rate (as this benchmark always timed)."""
    model, method, opt, sched = _parts(data, cfg, device, channels_last, device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    if mode == "graph":
        use_tensor_lr(opt, device)
    step = TrainStep(model, method, opt, gen, amp=amp)
    if mode == "graph":
        step = CapturedStep(step, fallback=True, log=lambda line: None)
    return step, sched


def step_times(
    base: TrainConfig,
    device,
    rounds: int,
    steps: int,
    amp: bool = False,
    channels_last: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Median seconds per optimisation step (data already on the device), as training runs it
    (``TrainStep``, then ``scheduler.step()``): ce and ips at batch B, and ce at 2B images (the
    same images per step as ips: its floor on this machine, since a model rarely costs exactly
    2x at twice the batch). ``amp``: bf16 autocast; ``channels_last``: model and batch in
    channels-last memory format (as training does).

    Returns ``({"eager": {side: s}, "graph": {side: s}}, notes)``: "graph" (the step captured
    in a CUDA graph, warmed up and captured before the timing) only on CUDA, and only for the
    sides whose capture worked; ``notes`` says why a side has no captured time."""
    modes = MODES if device.type == "cuda" else MODES[:1]
    b = base.batch_size
    sides, notes = {}, {}
    for name, cfg in (
        ("ce", base.replace(method="ce")),
        ("ips", base.replace(method="ips")),
        (f"ce, batch {2 * b}", base.replace(method="ce", batch_size=2 * b)),
    ):
        data = prepare_data(cfg, device)
        data.train_loader.set_epoch(1)
        x, y = next(iter(data.train_loader))  # one fixed batch: B (ce) or 2B (ips) images
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for mode in modes:
            step, sched = _step_side(data, cfg, device, amp, channels_last, mode)
            try:
                # Eager: 2 warm-up steps. Captured: the eager warm-up, the capture, a replay.
                for _ in range(step.warmup + 2 if mode == "graph" else 2):
                    step(x, y)
                    sched.step()
                _sync(device)
            except Exception as err:  # a capture that fails is reported, not fatal
                if mode != "graph":
                    raise
                notes[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:120]}"
                continue
            if mode == "graph" and step.mode != "graph":
                notes[name] = f"capture failed: {step.error}"
                continue
            sides[name, mode] = (step, sched, x, y)
    times = {key: [] for key in sides}

    def run(key, n):
        step, sched, x, y = sides[key]
        for _ in range(n):
            step(x, y)
            sched.step()

    for _ in range(rounds):
        for key in sides:
            _sync(device)
            t = time.perf_counter()
            run(key, steps)
            _sync(device)
            times[key].append((time.perf_counter() - t) / steps)
    out = {mode: {} for mode in modes}
    for (name, mode), v in times.items():
        out[mode][name] = statistics.median(v)
    return out, notes


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


def _ms(t: float | None) -> str:
    return "-" if t is None else f"{1000 * t:.2f}"


def _ratio(t: float | None, ref: float | None) -> str:
    return "-" if t is None or ref is None else f"{t / ref:.2f}"


def step_table(batch: int, st: dict, notes: dict) -> str:
    """The markdown step table of one batch size: ms per step eager and captured ("-" where
    not timed), x ce and x ce at 2x batch (eager, and captured where timed)."""
    eager, graph = st["eager"], st.get("graph")
    floor = f"ce, batch {2 * batch}"
    cols = ["ms / step eager", "ms / step captured"]
    cols += (
        ["x ce eager", "x ce captured", "x ce at 2x batch eager", "x ce at 2x batch captured"]
        if graph is not None
        else ["x ce", "x ce at 2x batch"]
    )
    lines = [
        f"| method (batch {batch}) | " + " | ".join(cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    for side, t in eager.items():
        g = None if graph is None else graph.get(side)
        cells = [_ms(t), _ms(g)]
        if graph is None:
            cells += [_ratio(t, eager["ce"]), _ratio(t, eager[floor])]
        else:
            cells += [
                _ratio(t, eager["ce"]),
                _ratio(g, graph.get("ce")),
                _ratio(t, eager[floor]),
                _ratio(g, graph.get(floor)),
            ]
        lines.append(f"| {side} | " + " | ".join(cells) + " |")
    lines += [f"\n{side}: no captured time ({why})" for side, why in notes.items()]
    return "\n".join(lines) + "\n"


def step_row(batch: int, st: dict, notes: dict) -> dict:
    """The JSON of one batch size: eager times under the keys earlier versions wrote, captured
    ones under *_graph_* (None where not timed, as on the CPU)."""
    floor = f"ce, batch {2 * batch}"

    def ms(t):
        return None if t is None else 1000 * t

    def ratio(t, ref):
        return None if t is None or ref is None else t / ref

    e, g = st["eager"], st.get("graph") or {}
    return {
        "batch_size": batch,
        "ce_ms": ms(e["ce"]),
        "ips_ms": ms(e["ips"]),
        "ce_2x_batch_ms": ms(e[floor]),
        "ips_over_ce": ratio(e["ips"], e["ce"]),
        "ips_over_ce_2x_batch": ratio(e["ips"], e[floor]),
        "ce_graph_ms": ms(g.get("ce")),
        "ips_graph_ms": ms(g.get("ips")),
        "ce_2x_batch_graph_ms": ms(g.get(floor)),
        "ips_over_ce_graph": ratio(g.get("ips"), g.get("ce")),
        "ips_over_ce_2x_batch_graph": ratio(g.get("ips"), g.get(floor)),
        "graph_errors": notes,
    }


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
    if device.type == "cuda":
        print(
            "Steps as training runs them (TrainStep, then the scheduler): eager with fused SGD "
            "and a float lr (--capture off), and captured in a CUDA graph (CapturedStep, fused "
            "SGD, lr in a device tensor: training's default on one GPU), warmed up and captured "
            "before the timing.\n"
        )
    else:
        print(
            "Steps as training runs them (TrainStep, then the scheduler), eager, with default "
            f"SGD and a float lr. The captured step (a CUDA graph) needs CUDA: not timed on "
            f"{device.type}.\n"
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
        "captured": device.type == "cuda",
        "steps": [],
    }
    for batch in a.batch_size:
        st, notes = step_times(
            base.replace(batch_size=batch), device, a.rounds, a.steps, amp, channels_last
        )
        print(step_table(batch, st, notes), flush=True)
        report["steps"].append(step_row(batch, st, notes))
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
