"""Several runs at once: ``run_sweep`` (a grid of settings into one tidy CSV) and ``run_demo``.

The IPS paper (Choi et al., 2025) studies its method along axes such as the patch grid and the
swap probability ``pr``; peers' numbers differ more by recipe than by method (docs/METHOD.md,
"Comparing methods fairly"). A sweep trains every combination of the values given, each in its
own run folder under ``out_dir/<sweep>/``, all with one recipe, and writes ``results.csv``: one
row per run with its settings, its last-epoch metrics (never the best epoch picked on the test
set) and its folder.

Resumable: every cell is trained with ``fit(resume=True)``, so re-running the same sweep skips
finished runs without loading any data and continues an interrupted one from its checkpoint.

    path = run_sweep({"method": ["ips"], "grid": [2, 4], "pr": [0.25, 0.5], "seed": [0, 1]},
                     "grid-pr")                       # -> runs/grid-pr/results.csv
    run_demo()                                        # ce vs ips on digits, a table

Several runs at once: ``jobs=N`` trains N cells at a time as separate processes on this
machine (CPU threads split between them, GPUs shared or spread), and ``launcher="submitit"``
sends every cell to a Slurm cluster as its own job; the table is the same either way.

Command line: ``ipskit sweep --name grid-pr --grid 2 4 --pr 0.25 0.5 --seed 0 1 --jobs 4``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import os
import sys
import threading
import traceback
import types
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ipskit.checks import InputError, check_choice, check_int
from ipskit.config import TrainConfig
from ipskit.data import DatasetUnavailableError
from ipskit.registry import swaps_patches
from ipskit.runs import atomic_write_text, finished_summary
from ipskit.train import fit

__all__ = [
    "run_sweep",
    "SweepFailed",
    "sweep_cells",
    "read_results",
    "cell_summary",
    "method_table",
    "run_demo",
    "format_table",
    "DEMO_SETTINGS",
]

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_ce",
    "train_kd",
    "train_acc",
    "test_acc",
    "test_loss",
    "ece",
    "mean_max_prob",
    "wall_time_s",
)


def _value_name(v) -> str:
    return str(v).replace("/", "_").replace(":", "-")


def sweep_cells(values: dict[str, list], sweep_name: str) -> list[tuple[dict, TrainConfig]]:
    """Every combination of ``values`` as (varied settings, TrainConfig), validated up front.

    Args:
        values: field name -> list of values; a one-element list sets the field for every run,
            a longer list makes it an axis of the grid.
        sweep_name: folder under ``out_dir``; each run is ``<sweep_name>/<k>=<v>_...``.
    Returns:
        One (axis values, config) per cell, in the order of the product over the axes, the
        axes taken in TrainConfig's field order.
    """
    if "name" in values:
        raise InputError(
            "a sweep names its runs itself (<sweep>/<axis>=<value>_...); drop "
            "'name' from the values"
        )
    empty = [k for k, v in values.items() if len(v) == 0]
    if empty:
        raise InputError(f"sweep values for {empty[0]!r} are empty; give at least one value")
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise InputError(
            f"unknown setting {unknown[0]!r} in the sweep values; use TrainConfig field names "
            f"(ipskit train --help lists them, with - for _)"
        )
    fixed = {k: v[0] for k, v in values.items() if len(v) == 1}
    # Axes in TrainConfig's field order, whatever order they were given in: the same grid
    # always names (and so reuses) the same run folders, from Python or the command line.
    axes = {k: list(values[k]) for k in fields if k in values and len(values[k]) > 1}
    cells = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo))
        label = "_".join(f"{k}={_value_name(v)}" for k, v in point.items()) or "run"
        cfg = TrainConfig(**fixed, **point, name=f"{sweep_name}/{label}")
        cells.append((point, cfg))
    return cells


def _row(point: dict, cfg: TrainConfig, summary: dict) -> dict:
    settings = {
        "method": cfg.method,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
    }
    if swaps_patches(cfg.method):  # IPS's own axes are columns even when the sweep fixes them
        settings.update(grid=cfg.grid, pr=cfg.pr)
    settings.update(point)
    return {
        **settings,
        **{k: summary.get(k) for k in METRIC_COLUMNS},
        "status": summary.get("status"),
        "run_dir": summary.get("run_dir"),
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


LAUNCHERS = ("local", "submitit")


def _train_cell(cfg: TrainConfig, progress: bool = False) -> dict:
    """One sweep cell: train (or resume, or reuse a finished run); what a job runs."""
    return fit(cfg, resume=True, progress=progress, verbose=False)


# Every cell its own process, forked from a server that has imported ipskit once: a crash or a
# leak stays in that process, and a job starts in a fraction of a second instead of paying the
# 3 s import of torch and torchvision again (which made --jobs 2 slower than --jobs 1 on small
# runs). The server never runs torch ops or touches CUDA, so forking from it is safe.
_PRELOAD = ["ipskit.train", "ipskit.methods", "ipskit.models", "ipskit.data"]


@functools.cache
def _job_context():
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


# A cell failing with one of these is a failed row and the sweep goes on; anything else is a
# bug (in --jobs processes its traceback goes to stderr first).
_USER_ERRORS = (InputError, FloatingPointError, OSError, DatasetUnavailableError)


class SweepFailed(RuntimeError):
    """Some cells of a sweep failed; the table has every row (``ipskit sweep``: status 1)."""


def _one_line(e: BaseException) -> str:
    """An exception as the command line would print it: a user's error as its message, a bug
    with its type."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, _USER_ERRORS) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _job_main(conn, fn, args, threads: int, gpu: int | None) -> None:
    """Inside a job's process: ``fn(*args)`` with ``threads`` CPU threads and only GPU ``gpu``
    visible; sends back ("ok", result) or ("error", one line)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["TQDM_DISABLE"] = "1"  # data loading's bars of jobs side by side would interleave
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before this process first uses CUDA
    import torch

    torch.set_num_threads(threads)
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 - every failure becomes the cell's row
        if not isinstance(e, _USER_ERRORS + (KeyboardInterrupt,)):
            traceback.print_exc()  # a bug: its traceback, as a run on its own would show
        conn.send(("error", _one_line(e)))
    finally:
        conn.close()


_STARTING = threading.Lock()
_LIVE: set = set()  # job processes running now: stopped if the sweep is interrupted


def _start_without_main(proc) -> None:
    """Start ``proc`` without telling it the caller's ``__main__``. multiprocessing would run
    that script again in every job (all of it, in a script without a ``__main__`` guard; a
    tool such as Streamlit's AppTest may even leave another script there), while a job needs
    only ipskit, which it imports by name."""
    main = sys.modules["__main__"]
    with _STARTING:
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            proc.start()
        finally:
            sys.modules["__main__"] = main


def _in_own_process(fn, args: tuple, threads: int, gpu: int | None):
    """``fn(*args)`` in a process of its own (see _job_context); its result, or a RuntimeError
    with its one-line error, or saying how the process ended if it died without one."""
    ctx = _job_context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_job_main, args=(send, fn, args, threads, gpu))
    _start_without_main(proc)
    send.close()  # only the child holds the sending end: its death ends recv() with EOFError
    _LIVE.add(proc)
    try:
        kind, value = receive.recv()
    except EOFError:
        kind, value = None, None
    finally:
        receive.close()
        proc.join()
        _LIVE.discard(proc)
    if kind == "ok":
        return value
    if kind == "error":
        raise RuntimeError(value)
    how = f"killed by signal {-proc.exitcode}" if proc.exitcode < 0 else f"exit {proc.exitcode}"
    raise RuntimeError(f"the run's process ended without a result ({how})")


def _finished_summary(cfg: TrainConfig) -> dict | None:
    """The summary of the cell's run if it has finished, else None."""
    return finished_summary(Path(cfg.out_dir) / cfg.run_name)


def _reuse(cfg: TrainConfig):
    """A finished cell's summary, through ``fit(resume=True)``, which checks that the run was
    trained with these settings and returns without loading data; or the error."""
    try:
        return _train_cell(cfg)
    except _USER_ERRORS as e:
        return e


def _submit(todo, jobs: int, launcher: str, launcher_options: dict, folder: Path, progress: bool):
    """Submit ``todo`` ((index, cfg) pairs); yield (index, summary or exception) as jobs end."""
    if launcher == "submitit":
        import submitit

        opts = dict(launcher_options)
        executor = submitit.AutoExecutor(
            folder=folder / ".submitit", cluster=opts.pop("cluster", None)
        )
        executor.update_parameters(**opts)
        with executor.batch():
            handles = [(i, executor.submit(_train_cell, cfg)) for i, cfg in todo]
        for i, job in handles:
            try:
                yield i, job.result()
            except Exception as e:  # the job's own exception, or submitit's report of it
                yield i, e
        return
    if jobs == 1:
        for i, cfg in todo:
            try:
                yield i, _train_cell(cfg, progress)
            except _USER_ERRORS as e:  # recorded as a failed row, as with --jobs N
                yield i, e
        return
    # Each cell its own process (_in_own_process), started from threads that only wait for it;
    # CPU threads are split between the jobs, GPUs spread over round-robin.
    from concurrent.futures import ThreadPoolExecutor

    import torch

    threads = max(1, (os.cpu_count() or 1) // jobs)
    gpus = torch.cuda.device_count() if todo and todo[0][1].device in ("auto", "cuda") else 0
    with ThreadPoolExecutor(jobs) as pool:
        try:
            yield from _as_they_end(pool, todo, threads, gpus)
        except BaseException:  # interrupted: no new jobs, and the running ones stopped (their
            pool.shutdown(wait=False, cancel_futures=True)  # last epoch's checkpoint stays)
            _stop_jobs()
            raise


def _stop_jobs(grace_s: float = 10.0) -> None:
    """Interrupt every running job as Ctrl-C would (it exits cleanly); kill what is left after
    ``grace_s`` seconds."""
    import signal

    live = list(_LIVE)
    for proc in live:
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGINT)
    for proc in live:
        proc.join(grace_s)
        if proc.is_alive():
            proc.kill()


def _as_they_end(pool, todo, threads: int, gpus: int):
    """Each cell of ``todo`` as its own process from ``pool``'s threads; (index, summary or
    exception) as each ends."""
    from concurrent.futures import as_completed

    futures = {
        pool.submit(
            _in_own_process, _train_cell, (cfg,), threads, k % gpus if gpus > 1 else None
        ): i
        for k, (i, cfg) in enumerate(todo)
    }
    for f in as_completed(futures):
        try:
            yield futures[f], f.result()
        except Exception as e:
            yield futures[f], e


def run_sweep(
    values: dict[str, list],
    sweep_name: str,
    csv_path: str | Path | None = None,
    progress: bool = True,
    epoch_bars: bool = False,
    jobs: int = 1,
    launcher: str = "local",
    launcher_options: dict | None = None,
) -> Path:
    """Train every cell of a grid (skipping finished ones) and write one tidy CSV.

    Args:
        values: TrainConfig field -> list of values (see :func:`sweep_cells`).
        sweep_name: folder under ``out_dir`` for the runs and the CSV.
        csv_path: where to write the table (default ``out_dir/sweep_name/results.csv``).
        progress: a bar over the cells (and one printed line per finished run).
        epoch_bars: also a bar per epoch of each run (the command line's default; off by
            default because a notebook would keep every one of them in its saved outputs;
            always off with several jobs, whose bars would interleave).
        jobs: runs trained at once by the ``local`` launcher, each in its own process (forked
            from a server that imports ipskit once, so a job starts in well under a second),
            with ``cores // jobs`` CPU threads each and, on a machine with several
            GPUs, spread over them (several jobs may share one GPU: small runs leave it idle
            much of the time).
        launcher: ``local`` (this machine) or ``submitit``: every cell is a job of a Slurm
            cluster through submitit (``pip install submitit``), or of its local executor with
            ``launcher_options={"cluster": "local"}``.
        launcher_options: ``submitit`` executor parameters, e.g. ``{"slurm_partition": "gpu",
            "gpus_per_node": 1, "timeout_min": 120}``.
    Returns:
        Path of the CSV. It is rewritten atomically whenever a run ends, in the order of the
        cells, so a sweep killed at any point leaves a valid table of the runs done; running
        the same sweep again trains only what is missing.
    Raises:
        SweepFailed (a RuntimeError) after the table is written, if any run failed (each is
        named in one line); a run failing with a bug raises its own error (``jobs=1``).
    """
    if not sweep_name or sweep_name.startswith("/") or ".." in sweep_name.split("/"):
        raise InputError(f"sweep name {sweep_name!r} must be a relative folder name")
    jobs = check_int("jobs", jobs, minimum=1)
    check_choice("launcher", launcher, LAUNCHERS)
    cells = sweep_cells(values, sweep_name)  # every cell validated before anything runs
    out_dir = cells[0][1].out_dir
    path = Path(csv_path) if csv_path else Path(out_dir) / sweep_name / "results.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[int, dict] = {}
    failed = []
    # Cells finished before (by an earlier call of this sweep) are reused here, without
    # starting a process, and said to be; the others are trained.
    finished = [i for i, (_, cfg) in enumerate(cells) if _finished_summary(cfg)]
    todo = [(i, cfg) for i, (_, cfg) in enumerate(cells) if i not in set(finished)]
    bar = tqdm(total=len(cells), desc=f"sweep {sweep_name}", disable=not progress)
    if jobs > 1 or launcher != "local" or finished:
        tqdm.write(
            f"sweep {sweep_name}: {len(cells)} runs"
            + (f", {len(finished)} finished before" if finished else "")
            + (f", {jobs} at once" if launcher == "local" else f", as {launcher} jobs")
        )
    reused = ((i, _reuse(cells[i][1])) for i in finished)
    trained = _submit(
        todo,
        jobs,
        launcher,
        launcher_options or {},
        path.parent,
        progress and epoch_bars and jobs == 1 and launcher == "local",
    )
    try:
        _collect(itertools.chain(reused, trained), cells, finished, rows, failed, path, bar)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM from the command line): runs that
        for i, (point, cfg) in enumerate(cells):  # finished meanwhile still get their rows
            done = _finished_summary(cfg) if i not in rows else None
            if done:
                rows[i] = _row(point, cfg, done)
        if rows:
            _write_csv(path, [rows[k] for k in sorted(rows)])
        raise
    bar.close()
    if failed:
        raise SweepFailed(
            f"{len(failed)} of {len(cells)} runs failed (the table has the others): "
            + "; ".join(failed)
        )
    return path


def _collect(results, cells, finished, rows, failed, path, bar) -> None:
    """Record each (cell index, summary or exception) as it comes: a line, a row, the CSV."""
    for i, result in results:
        point, cfg = cells[i]
        where = f"[{len(rows) + 1}/{len(cells)}] {cfg.run_name}"
        if isinstance(result, BaseException):
            text = str(result).strip()  # a job's own one line, or an exception here
            line = text.splitlines()[0] if isinstance(result, RuntimeError) and text else None
            line = line or _one_line(result)
            failed.append(f"{cfg.run_name}: {line}")
            summary = {"status": "failed", "run_dir": str(Path(cfg.out_dir) / cfg.run_name)}
            tqdm.write(f"{where}: FAILED: {line}")
        else:
            summary = result
            tqdm.write(
                f"{where}: {'finished before, reused: ' if i in finished else ''}test "
                f"{100 * summary['test_acc']:.2f}%  ece {summary['ece']:.4f}"
            )
        rows[i] = _row(point, cfg, summary)
        _write_csv(path, [rows[k] for k in sorted(rows)])
        bar.update(1)


def read_results(path: str | Path, axes: tuple[str, ...] = ("grid", "pr")):
    """A sweep's ``results.csv`` as a pandas DataFrame, one row per run.

    An axis in ``axes`` that the CSV lacks (a table written before every IPS row carried its
    grid and pr) is filled from each IPS run's ``config.json``; other methods, and runs whose
    config cannot be read, get a missing value.

    Raises:
        ValueError: the file is not a table written by ``run_sweep`` (no ``run_dir`` column).
        OSError, pandas' ParserError / EmptyDataError: the file cannot be read.
    """
    import pandas as pd

    from ipskit.runs import CONFIG, read_json

    df = pd.read_csv(path)
    if "run_dir" not in df.columns:
        raise InputError(f"{path} has no run_dir column: not a table written by ipskit sweep")

    def setting(run_dir, axis):
        try:
            cfg = read_json(Path(str(run_dir)) / CONFIG, {}) or {}
        except (OSError, ValueError):
            return None
        return cfg.get(axis) if swaps_patches(cfg.get("method")) else None

    for axis in axes:
        if axis not in df.columns:
            df[axis] = [setting(d, axis) for d in df["run_dir"]]
    return df


def cell_summary(df, metric: str, by: tuple[str, ...] = ("grid", "pr")):
    """Mean, standard deviation (over seeds) and count of ``metric`` per cell of ``by``.

    Rows missing ``metric`` or an axis (unfinished runs, CE baselines) are left out.
    Returns a DataFrame with the ``by`` columns and ``mean``, ``std``, ``count``.
    """
    missing = [c for c in (*by, metric) if c not in df.columns]
    if missing:
        raise InputError(f"the table lacks column(s) {missing}; it has {list(df.columns)}")
    return (
        df.dropna(subset=[*by, metric])
        .groupby(list(by))[metric]
        .agg(["mean", "std", "count"])
        .reset_index()
    )


def method_table(root: str | Path) -> str:
    """A markdown table of the finished runs under ``root``, one row per method, over seeds.

    Columns: method, seeds, top-1 % (mean ± sd over seeds; sd needs two seeds), NLL, ECE and
    mean max-probability (means), all of the last epoch; methods in order of first appearance
    with ``ce`` and ``ips`` first. This is how the README's tables are made from ``results/``:
    ``python -c "from ipskit.sweep import method_table; print(method_table('results/X'))"``.
    """
    import statistics

    from ipskit.runs import list_runs

    finished = [r for r in list_runs(root) if r["status"] == "finished"]
    if not finished:
        raise InputError(f"no finished runs under {root}")
    by_method: dict[str, list[dict]] = {}
    for r in sorted(
        finished, key=lambda r: (r["method"] not in ("ce", "ips"), r["method"] != "ce")
    ):
        by_method.setdefault(r["method"], []).append(r["summary"])
    rows = []
    for method, ss in by_method.items():
        acc = [100 * s["test_acc"] for s in ss]
        spread = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        rows.append(
            {
                "method": method,
                "seeds": len(ss),
                "top1": f"{statistics.mean(acc):.2f}{spread}",
                **{
                    k: statistics.mean(s[k] for s in ss)
                    for k in ("test_loss", "ece", "mean_max_prob")
                },
            }
        )
    return format_table(
        rows,
        [
            ("method", "method", ""),
            ("seeds", "seeds", "d"),
            ("top1", "top-1 % (mean ± sd)", ""),
            ("test_loss", "NLL", ".3f"),
            ("ece", "ECE", ".3f"),
            ("mean_max_prob", "mean max-prob", ".3f"),
        ],
    )


# ----- demo -----------------------------------------------------------------------------------
# Chosen so that both runs together take about a minute on 2 CPU cores (measured in the
# report of the training issue) while IPS has enough epochs for the KL term to matter.
DEMO_SETTINGS = dict(dataset="digits", model="resnet8", epochs=15, batch_size=64, lr=0.05)


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table. ``columns``: (key, header, format spec) per column."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = [
        "| "
        + " | ".join(format(r[k], f) if r.get(k) is not None else "-" for k, _, f in columns)
        + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])


def run_demo(
    out: str = "runs/demo",
    epochs: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[TrainConfig, dict], None] | None = None,
    **settings,
) -> list[dict]:
    """Train ``ce`` and ``ips`` on digits under one recipe and print a comparison table.

    The runs are ``<out>/ce`` and ``<out>/ips``; runs that already finished are reused unless
    ``overwrite``.

    Args:
        out: folder of the two runs. epochs: override DEMO_SETTINGS' epochs. seed: of both.
        overwrite: retrain existing runs. progress: progress bars.
        on_epoch: passed to :func:`ipskit.train.fit` for both runs (``on_epoch(cfg, row)``;
            ``cfg.method`` says which run).
        settings: other TrainConfig fields to override (e.g. a smaller model for tests).
    Returns:
        The two summaries (with ``run_dir``).
    """
    settings = dict(DEMO_SETTINGS, seed=seed, **({"epochs": epochs} if epochs else {}), **settings)
    out = Path(out)
    summaries = []
    for method in ("ce", "ips"):
        cfg = TrainConfig(
            method=method, out_dir=str(out.parent), name=f"{out.name}/{method}", **settings
        )
        summaries.append(
            fit(
                cfg, resume=not overwrite, overwrite=overwrite, progress=progress, on_epoch=on_epoch
            )
        )
    rows = [{**s, "test_acc_pct": 100 * s["test_acc"]} for s in summaries]
    print()
    print(
        format_table(
            rows,
            [
                ("method", "method", "s"),
                ("test_acc_pct", "test acc %", ".2f"),
                ("test_loss", "test NLL", ".4f"),
                ("ece", "ECE", ".4f"),
                ("mean_max_prob", "mean max-prob", ".3f"),
                ("wall_time_s", "train time s", ".1f"),
            ],
        )
    )
    print(
        f"\n{settings['model']} on {settings['dataset']}, {settings['epochs']} epochs, ONE "
        f"seed ({seed}): differences of a few tenths of a percent are noise; compare "
        f"several seeds with ipskit sweep --seed 0 1 2 ..."
    )
    print(f"runs: {out / 'ce'}  {out / 'ips'}")
    return summaries
