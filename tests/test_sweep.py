"""Tests for ipskit.sweep: one tidy CSV, resumable without recomputation, and the demo."""

import csv
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import ipskit.train as T
from ipskit.cli import main
from ipskit.runs import claim_run_dir, list_runs
from ipskit.sweep import (
    SweepFailed,
    cell_summary,
    format_table,
    read_results,
    run_demo,
    run_sweep,
    sweep_cells,
)

TINY = dict(
    model=["smallcnn"],
    image_size=[8],
    epochs=[1],
    batch_size=[32],
    max_train_samples=[200],
    grid=[2],
)


pytestmark = pytest.mark.usefixtures("cached_datasets")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cells_are_the_product_of_the_axes():
    cells = sweep_cells(
        {"method": ["ips"], "grid": [2, 4], "pr": [0.25, 0.5, 0.75], "seed": [0]}, "g"
    )
    assert len(cells) == 6
    assert cells[0][0] == {"grid": 2, "pr": 0.25} and cells[0][1].name == "g/grid=2_pr=0.25"
    assert all(c.method == "ips" and c.seed == 0 for _, c in cells)
    with pytest.raises(ValueError, match="pr must be in"):
        sweep_cells({"pr": [0.5, 3.0]}, "g")  # a bad cell is caught before anything runs


def test_the_same_grid_names_the_same_runs_in_any_order():
    """Axes given in another order (a dict built differently) name the same run folders in
    the same cell order, so a sweep resumed from Python or the command line reuses them."""
    a = sweep_cells({"seed": [0, 1], "pr": [0.25, 0.5], "method": ["ips"], "grid": [2, 4]}, "g")
    b = sweep_cells({"grid": [2, 4], "method": ["ips"], "pr": [0.25, 0.5], "seed": [0, 1]}, "g")
    assert [c.name for _, c in a] == [c.name for _, c in b]
    assert a[1][1].name == "g/grid=2_pr=0.25_seed=1"  # TrainConfig's field order
    with pytest.raises(ValueError, match="unknown setting 'grids' in the sweep values"):
        sweep_cells({"grids": [2, 4]}, "g")


def test_sweep_writes_one_tidy_csv_and_resumes_without_recomputing(tmp_path, monkeypatch):
    values = {
        **TINY,
        "method": ["ips"],
        "pr": [0.25, 0.75],
        "seed": [0, 1],
        "out_dir": [str(tmp_path)],
    }
    path = run_sweep(values, "s", progress=False)
    assert path == tmp_path / "s" / "results.csv"
    rows = _read(path)
    assert len(rows) == 4
    assert [(r["pr"], r["seed"]) for r in rows] == [
        ("0.25", "0"),
        ("0.25", "1"),
        ("0.75", "0"),
        ("0.75", "1"),
    ]
    for r in rows:
        assert r["status"] == "finished" and r["method"] == "ips" and r["epoch"] == "1"
        assert 0 <= float(r["test_acc"]) <= 1 and float(r["ece"]) >= 0
        assert r["run_dir"].startswith(str(tmp_path / "s"))
    assert len(list_runs(tmp_path)) == 4

    # the same sweep again: every cell is finished, so no epoch may run
    def no_training(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(T, "train_one_epoch", no_training)
    assert _read(run_sweep(values, "s", progress=False)) == rows


def test_sweep_command_line(tmp_path, capsys):
    argv = [
        "sweep",
        "--name",
        "cli",
        "--method",
        "ce",
        "--model",
        "smallcnn",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-train-samples",
        "200",
        "--lr",
        "0.05",
        "0.1",
        "--out-dir",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 0
    rows = _read(tmp_path / "cli" / "results.csv")
    assert [r["lr"] for r in rows] == ["0.05", "0.1"]
    assert main([*argv[:-3], "--out-dir", str(tmp_path), "--pr", "7", "--no-progress"]) == 2
    assert "error: pr must be in [0, 1], got 7.0" in capsys.readouterr().err
    # run again: both cells are reused, and say so
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 runs, 2 finished before" in out and out.count("finished before, reused: test") == 2
    # a cell that fails is a row and one line with status 1, not a traceback
    capsys.readouterr()
    assert main([*argv[:-3], "--lr", "1e6", "--out-dir", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of 1 runs failed (the table has the others): cli/run: ")
    assert "non-finite loss" in err and "Traceback" not in err and err.count("\n") == 1


def test_sweep_true_false_flags_alone_or_as_an_axis():
    from ipskit.cli import build_parser

    ns = build_parser().parse_args(
        ["sweep", "--name", "b", "--skip-bad-files", "--augment", "true", "false"]
    )
    assert ns.skip_bad_files == [True] and ns.augment == [True, False]
    ns = build_parser().parse_args(["sweep", "--name", "b", "--amp", "none", "true"])
    assert ns.amp == [None, True]


def test_ctrl_c_says_how_each_command_continues(monkeypatch, capsys):
    import ipskit.cli as cli

    def interrupted(ns):
        raise KeyboardInterrupt

    for command, argv, hint in [
        ("_train", ["train"], "continue the run with --resume"),
        ("_sweep", ["sweep", "--name", "s"], "run the same command again to continue"),
        ("_demo", ["demo"], "run it again to continue"),
    ]:
        monkeypatch.setattr(cli, command, interrupted)
        assert main(argv) == 130
        err = capsys.readouterr().err
        assert err.startswith("\ninterrupted; ") and hint in err, (command, err)


def test_demo_trains_ce_and_ips_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "demo"
    run_demo(
        out=str(out),
        epochs=1,
        progress=False,
        model="smallcnn",
        image_size=8,
        max_train_samples=200,
    )
    text = capsys.readouterr().out
    assert "| method | test acc % |" in text and "| ce |" in text and "| ips |" in text
    assert "ONE seed" in text
    assert {r["name"] for r in list_runs(tmp_path)} == {"demo/ce", "demo/ips"}


def test_format_table():
    t = format_table(
        [{"a": "x", "b": 0.12345}, {"a": "y", "b": None}], [("a", "A", "s"), ("b", "B", ".2f")]
    )
    assert t.splitlines() == ["| A | B |", "| --- | --- |", "| x | 0.12 |", "| y | - |"]


def test_results_table_carries_ips_axes_and_summarises_cells(tmp_path):
    values = {**TINY, "method": ["ips"], "pr": [0.5], "seed": [0, 1], "out_dir": [str(tmp_path)]}
    path = run_sweep(values, "fixed", progress=False)
    df = read_results(path)
    # grid and pr were fixed by the sweep, yet every IPS row names them
    assert list(df["grid"]) == [2, 2] and list(df["pr"]) == [0.5, 0.5]
    cells = cell_summary(df, "test_acc")
    assert len(cells) == 1 and int(cells["count"][0]) == 2
    assert cells["mean"][0] == pytest.approx(df["test_acc"].mean())
    assert cells["std"][0] == pytest.approx(df["test_acc"].std())

    # a table without the axes (an older sweep): read_results fills them from config.json
    df.drop(columns=["grid", "pr"]).to_csv(tmp_path / "old.csv", index=False)
    old = read_results(tmp_path / "old.csv")
    assert list(old["grid"]) == [2, 2] and list(old["pr"]) == [0.5, 0.5]
    with pytest.raises(ValueError, match="lacks column"):
        cell_summary(old, "no_such_metric")
    (tmp_path / "foreign.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a table written by ipskit sweep"):
        read_results(tmp_path / "foreign.csv")


def test_demo_reports_every_epoch_to_on_epoch(tmp_path):
    seen = []
    run_demo(
        out=str(tmp_path / "demo"),
        epochs=2,
        progress=False,
        model="smallcnn",
        image_size=8,
        max_train_samples=200,
        on_epoch=lambda cfg, row: seen.append((cfg.method, row["epoch"])),
    )
    assert seen == [("ce", 1), ("ce", 2), ("ips", 1), ("ips", 2)]
    seen.clear()
    run_demo(
        out=str(tmp_path / "demo"),
        epochs=2,
        progress=False,
        model="smallcnn",
        image_size=8,
        max_train_samples=200,
        on_epoch=lambda cfg, row: seen.append(cfg),
    )
    assert seen == []  # both runs finished: reused, nothing trained


def test_method_table_over_seeds_is_what_the_readme_quotes_from_results():
    """The README's GPU-scale table is method_table() of the shipped reference runs."""
    from pathlib import Path

    from ipskit.sweep import method_table

    repo = Path(__file__).resolve().parents[1]
    table = method_table(repo / "results" / "cifar10-resnet18-h200")
    lines = table.splitlines()
    assert lines[2] == "| ce | 3 | 87.57 ± 0.49 | 0.371 | 0.030 | 0.906 |"
    assert lines[3].startswith("| ips | 3 | 89.07 ± 0.13 |")
    assert len(lines) == 2 + 6
    assert table in (repo / "README.md").read_text()


def test_method_table_refuses_a_folder_without_finished_runs(tmp_path):
    from ipskit.sweep import method_table

    with pytest.raises(ValueError, match="no finished runs under"):
        method_table(tmp_path)


SMALL = dict(
    model=["smallcnn"],
    image_size=[8],
    epochs=[1],
    batch_size=[32],
    max_train_samples=[200],
    method=["ips"],
    grid=[2],
    seed=[0, 1],
    pr=[0.0, 0.5],
)


def _table(path):
    import pandas as pd

    df = pd.read_csv(path)
    return df[["method", "seed", "pr", "status", "run_dir"]].to_dict("records"), df


def test_jobs_train_runs_at_once_into_the_same_table(tmp_path):
    """--jobs 2: the same rows in the same (cell) order as one at a time, every run finished."""
    one = run_sweep({**SMALL, "out_dir": [str(tmp_path / "a")]}, "s", progress=False)
    two = run_sweep({**SMALL, "out_dir": [str(tmp_path / "b")]}, "s", progress=False, jobs=2)
    rows_one, _ = _table(one)
    rows_two, df = _table(two)
    assert len(rows_two) == 4 and (df["status"] == "finished").all()
    strip = [{**r, "run_dir": r["run_dir"].replace(str(tmp_path / "b"), "X")} for r in rows_two]
    assert strip == [
        {**r, "run_dir": r["run_dir"].replace(str(tmp_path / "a"), "X")} for r in rows_one
    ]


def test_a_job_process_returns_its_result_its_error_or_how_it_died():
    """What --jobs relies on: a cell's process sends back its result, or its error as one line,
    and a process that dies without either (a crash, a kill) is reported, never waited on."""
    from ipskit.sweep import _in_own_process

    assert _in_own_process(os.getpid, (), 1, None) != os.getpid()
    assert _in_own_process(os.getenv, ("OMP_NUM_THREADS",), 1, None) == "1"
    with pytest.raises(RuntimeError, match=r"^ValueError: invalid literal for int"):
        _in_own_process(int, ("x",), 1, None)
    with pytest.raises(RuntimeError, match=r"ended without a result \(exit 3\)"):
        _in_own_process(os._exit, (3,), 1, None)


def test_job_processes_never_run_the_callers_script_again(tmp_path, monkeypatch):
    """multiprocessing re-runs the caller's __main__ in each child; a script calling
    run_sweep(jobs=2) without a main guard (or a tool that left another script as __main__)
    would run again in every job. Jobs need only ipskit."""
    from ipskit.sweep import _in_own_process

    script = tmp_path / "caller.py"
    script.write_text("raise SystemExit('the caller ran again')\n")
    caller = types.ModuleType("__main__")
    caller.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", caller)
    assert _in_own_process(os.getpid, (), 1, None) != os.getpid()
    assert sys.modules["__main__"] is caller


def test_a_failed_run_is_a_row_and_the_sweep_goes_on(tmp_path):
    """A diverging run (lr 1e6) is recorded as failed; the others finish, the table is intact,
    and running the sweep again retrains only what is missing."""
    values = {**SMALL, "pr": [0.5], "lr": [0.05, 1e6], "out_dir": [str(tmp_path)]}
    with pytest.raises(SweepFailed, match=r"2 of 4 runs failed .*lr=1000000.0.*non-finite loss"):
        run_sweep(values, "f", progress=False, jobs=2)
    rows, df = _table(tmp_path / "f" / "results.csv")
    # cell order: the lr axis outside the seed axis (TrainConfig's field order)
    assert list(df["status"]) == ["finished", "finished", "failed", "failed"]
    finished = {r["run_dir"] for r in rows if r["status"] == "finished"}
    stamps = {d: (Path(d) / "summary.json").stat().st_mtime_ns for d in finished}
    with pytest.raises(RuntimeError):
        run_sweep(values, "f", progress=False)
    assert {d: (Path(d) / "summary.json").stat().st_mtime_ns for d in finished} == stamps


def test_an_interrupted_sweep_still_tables_the_runs_that_finished(tmp_path, monkeypatch):
    """Ctrl-C while runs train: the runs finished on disk by then get their rows."""
    import ipskit.sweep as S

    values = {**SMALL, "pr": [0.5], "out_dir": [str(tmp_path)]}
    path = run_sweep(values, "i", progress=False)
    path.unlink()
    cells, real = S.sweep_cells(values, "i"), S._finished_summary
    monkeypatch.setattr(S, "_finished_summary", lambda cfg: None)  # nothing finished yet

    def interrupted(*args, **kwargs):
        monkeypatch.setattr(S, "_finished_summary", real)  # the runs finish meanwhile ...
        raise KeyboardInterrupt  # ... and the user presses Ctrl-C
        yield  # a generator, as _submit is

    monkeypatch.setattr(S, "_submit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(values, "i", progress=False)
    rows = _read(path)
    assert [r["run_dir"] for r in rows] == [str(tmp_path / c.run_name) for _, c in cells]
    assert all(r["status"] == "finished" for r in rows)


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_its_running_jobs(tmp_path):
    """kill (or a cluster's pre-emption) of `ipskit sweep --jobs 2`: one line, status 130, and
    the job processes stopped with it (their run folders free for the next call)."""
    argv = [sys.executable, "-m", "ipskit", "sweep", "--name", "t", "--seed", "0", "1"]
    argv += ["--model", "smallcnn", "--image-size", "8", "--max-train-samples", "200"]
    argv += ["--batch-size", "32", "--epochs", "2000", "--jobs", "2", "--no-progress"]
    argv += ["--out-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    metrics = [tmp_path / "t" / f"seed={s}" / "metrics.jsonl" for s in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(m.exists() and m.read_text().strip() for m in metrics):
        assert time.monotonic() < deadline and proc.poll() is None, "the jobs never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted; run the same command again")
    for s in (0, 1):  # the jobs are gone: their locks are free
        with claim_run_dir(tmp_path / "t" / f"seed={s}"):
            pass


def test_submitit_launcher_with_its_local_executor(tmp_path):
    pytest.importorskip("submitit")
    values = {**SMALL, "seed": [0], "out_dir": [str(tmp_path)]}
    path = run_sweep(
        values,
        "slurm",
        progress=False,
        launcher="submitit",
        launcher_options={"cluster": "local", "timeout_min": 10},
    )
    rows, df = _table(path)
    assert len(rows) == 2 and (df["status"] == "finished").all()
    assert (tmp_path / "slurm" / ".submitit").is_dir()  # the jobs' logs


def test_sweep_cli_jobs_and_launcher_flags(tmp_path, capsys):
    from ipskit.cli import main

    argv = [
        "sweep",
        "--name",
        "c",
        "--out-dir",
        str(tmp_path),
        "--model",
        "smallcnn",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--max-train-samples",
        "200",
        "--method",
        "ce",
        "--seed",
        "0",
        "1",
        "--no-progress",
    ]
    assert main(argv + ["--jobs", "2"]) == 0
    assert "2 runs, 2 at once" in capsys.readouterr().out
    assert main(argv + ["--launcher-opt", "oops"]) == 2
    assert "--launcher-opt takes KEY=VALUE" in capsys.readouterr().err
    assert main(argv + ["--jobs", "0"]) == 2
