"""Wall time of a small sweep trained one run at a time (``--jobs 1``) and several at once.

``ipskit sweep --jobs N`` trains N cells at a time, each in its own process with its share of
the CPU threads (ipskit.sweep). This times the whole command, as a user waits for it: process
start-up, data loading and training of 4 small runs (digits, ResNet-8 for 15 epochs by default,
ce and ips x seeds 0 and 1, each about 10-20 s on a 2-core machine), with ``--jobs 1`` and with
``--jobs 2`` (``--jobs N`` to change), in interleaved rounds (1, N, then N, 1, ...) so that a
machine getting busier or quieter hits both alike; the table gives medians over rounds. It
also checks that both write the same table: the same rows (settings, status, run folder) in
the same order, and says whether the metrics are equal (threads split differently can change
the last digits of a float sum).

The threads each process uses follow the environment (``OMP_NUM_THREADS``; unset, PyTorch
takes every core in ``--jobs 1`` and ``cores // N`` per job with ``--jobs N``); the header
says which. On a machine other work keeps busy the numbers swing widely, both ways (two
OpenMP threads in one process can crawl when the cores are shared): say so with the numbers.

    python benchmarks/bench_sweep.py                      # 2 rounds, about 3-4 minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py --rounds 3 --json sweep.json
    python benchmarks/bench_sweep.py --quick              # 1 round of 1-epoch smallcnn runs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ipskit.sweep import METRIC_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
METRICS = tuple(c for c in METRIC_COLUMNS if c != "wall_time_s")  # it differs by nature


def sweep_command(out_dir: Path, jobs: int, model: str, epochs: int) -> list[str]:
    """The ``ipskit sweep`` command of one timing: 4 runs (ce, ips x seeds 0, 1) on digits."""
    return [
        sys.executable,
        "-m",
        "ipskit",
        "sweep",
        "--name",
        "bench",
        "--out-dir",
        str(out_dir),
        "--dataset",
        "digits",
        "--model",
        model,
        "--epochs",
        str(epochs),
        "--method",
        "ce",
        "ips",
        "--seed",
        "0",
        "1",
        "--jobs",
        str(jobs),
        "--no-progress",
    ]


def timed_sweep(out_dir: Path, jobs: int, model: str, epochs: int) -> tuple[float, list[dict]]:
    """(wall seconds, rows of results.csv) of one sweep into a fresh ``out_dir``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        sweep_command(out_dir, jobs, model, epochs),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise SystemExit(f"ipskit sweep --jobs {jobs} failed (exit {proc.returncode}):\n{tail}")
    with open(out_dir / "bench" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # the run folder relative to the sweep's own out_dir
        r["run_dir"] = str(Path(r["run_dir"]).relative_to(out_dir))
    return wall, rows


def compare_tables(a: list[dict], b: list[dict]) -> tuple[bool, float]:
    """(same rows apart from the metrics and wall times, largest |difference| of a metric)."""

    def key(r):
        return {k: v for k, v in r.items() if k not in METRICS and k != "wall_time_s"}

    same = len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b))
    diff = max(
        (
            abs(float(x[m]) - float(y[m]))
            for x, y in zip(a, b)
            for m in METRICS
            if x.get(m) not in (None, "") and y.get(m) not in (None, "")
        ),
        default=0.0,
    )
    return same, diff


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=2, help="the parallel side (default 2)")
    p.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 2, or 1 with --quick)"
    )
    p.add_argument("--model", default=None, help="default resnet8 (smallcnn with --quick)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per run (default 15: 10-20 s a run on 2 cores; 1 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 1-epoch smallcnn runs: a smoke run, not a measurement",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args()
    if args.jobs < 2:
        p.error("--jobs must be >= 2 (it is compared with --jobs 1)")
    rounds = args.rounds or (1 if args.quick else 2)
    model = args.model or ("smallcnn" if args.quick else "resnet8")
    epochs = args.epochs or (1 if args.quick else 15)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        f"# ipskit sweep --jobs 1 vs --jobs {args.jobs}: 4 runs (digits, {model}, {epochs} "
        f"epochs, ce and ips x seeds 0 and 1); {os.cpu_count()} cores, OMP_NUM_THREADS="
        f"{threads}; median wall s of {rounds} interleaved round(s)\n",
        flush=True,
    )
    walls: dict[int, list[float]] = {1: [], args.jobs: []}
    tables: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for r in range(rounds):
            order = (1, args.jobs) if r % 2 == 0 else (args.jobs, 1)
            for jobs in order:
                wall, rows = timed_sweep(Path(tmp) / f"r{r}-j{jobs}", jobs, model, epochs)
                walls[jobs].append(wall)
                tables.setdefault(jobs, rows)
                print(f"round {r + 1}: --jobs {jobs}: {wall:.1f} s", flush=True)
    t1, tn = statistics.median(walls[1]), statistics.median(walls[args.jobs])
    same, diff = compare_tables(tables[1], tables[args.jobs])
    # each run's own training time, as its table row reports it (no start-up, no data loading)
    run_s = {j: statistics.median(float(r["wall_time_s"]) for r in tables[j]) for j in tables}
    print(
        f"\n| jobs | wall s | speed-up | median run s (training only) |\n|---:|---:|---:|---:|\n"
        f"| 1 | {t1:.1f} | 1.00x | {run_s[1]:.1f} |\n"
        f"| {args.jobs} | {tn:.1f} | {t1 / tn:.2f}x | {run_s[args.jobs]:.1f} |"
    )
    print(
        f"\nsame table (settings, status, run folders, order): {'yes' if same else 'NO'}; "
        f"metrics {'identical' if diff == 0 else f'differ by at most {diff:.2g}'}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "jobs": args.jobs,
                    "rounds": rounds,
                    "model": model,
                    "epochs": epochs,
                    "cores": os.cpu_count(),
                    "omp_num_threads": threads,
                    "wall_s": {str(k): v for k, v in walls.items()},
                    "median_s": {"1": t1, str(args.jobs): tn},
                    "speedup": t1 / tn,
                    "median_run_train_s": {str(k): v for k, v in run_s.items()},
                    "same_rows": same,
                    "max_metric_diff": diff,
                },
                f,
                indent=1,
            )
    if not same:
        raise SystemExit("the two sweeps wrote different tables")


if __name__ == "__main__":
    main()
