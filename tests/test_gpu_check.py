"""Tests for benchmarks/gpu_check.py: its --tiny rehearsal runs every stage on the CPU and
leaves the summary, run folders and bundle the GPU check promises; a budget too small for a
stage skips it; asking for CUDA without one stops at once with one line."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    """One --tiny run of the whole check (about 30-80 s on 2 CPU cores), shared by the tests."""
    root = tmp_path_factory.mktemp("gpu-check")
    out, bundle = root / "out", root / "bundle"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IPSKIT_CACHE_DIR": str(root / "cache")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--bundle", str(bundle)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, out, bundle


@pytest.mark.slow
def test_tiny_check_passes_every_stage(tiny_check):
    proc, out, _ = tiny_check
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiny"] and summary["info"]["device"] == "cpu"
    assert summary["info"]["git_commit"]  # a commit, or "unknown" outside a git checkout
    stages = summary["stages"]
    assert [stages[s]["status"] for s in ("data", "bench", "runs", "compare")] == ["passed"] * 4
    # the CUDA tests were invoked: all skipped on a CPU (run and passed where there is a GPU)
    assert stages["tests"]["status"] == ("passed" if torch.cuda.is_available() else "skipped")
    counts = summary["info"]["cuda_tests"]
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0
    for name in ("data", "bench", "runs", "tests", "compare"):  # wall time of every stage
        assert stages[name]["seconds"] > 0
        assert f"== {name}: {stages[name]['status']} in " in proc.stdout
    assert summary["bench"]["swap"]["swap"] and summary["bench"]["train"]["steps"][0]["ips_ms"] > 0


@pytest.mark.slow
def test_tiny_check_tables_and_run_folders(tiny_check):
    _, out, _ = tiny_check
    summary = json.loads((out / "summary.json").read_text())
    methods = {m["method"]: m for m in summary["methods"]}
    assert set(methods) == {"ce", "ips"}
    for m in methods.values():  # two seeds each: a mean and a standard deviation
        assert m["seeds"] == [0, 1] and m["n"] == 2
        assert 0 <= m["test_acc_mean"] <= 1 and m["test_acc_sd"] is not None
        assert m["test_loss_mean"] > 0 and m["ece_sd"] is not None
    assert len(summary["runs"]) == 4
    for r in summary["runs"]:
        assert r["status"] == "finished" and r["eval"] == "finished" and r["epochs_done"] == 1
        run_dir = out / "runs" / r["name"]
        for f in ("config.json", "metrics.jsonl", "summary.json", "env.json", "eval.json"):
            assert (run_dir / f).is_file(), run_dir / f
        assert json.loads((run_dir / "config.json").read_text())["seed"] == r["seed"]
        assert (out / r["log"]).stat().st_size > 0
    md = (out / "summary.md").read_text()
    assert "| method | seeds | top-1 % | NLL | ECE | train s |" in md
    assert f"| ce | 0,1 | {100 * methods['ce']['test_acc_mean']:.2f} ± " in md
    assert "| stage | status | wall s | detail |" in md and "| runs | passed |" in md
    assert "## Evaluation (ipskit compare" in md and "| run | method | model |" in md
    assert (out / "compare" / "compare.md").is_file() and (out / "cuda-tests.xml").is_file()
    assert (out / "bench" / "swap.md").is_file() and (out / "bench" / "train.json").is_file()


@pytest.mark.slow
def test_tiny_check_bundle_holds_three_files_and_no_checkpoints(tiny_check):
    _, out, bundle = tiny_check
    assert sorted(p.name for p in bundle.iterdir()) == [
        "gpu-check.tgz",
        "summary.json",
        "summary.md",
    ]
    assert (bundle / "summary.md").read_text() == (out / "summary.md").read_text()
    with tarfile.open(bundle / "gpu-check.tgz") as tar:
        names = tar.getnames()
    assert f"{out.name}/runs/ce-s0/metrics.jsonl" in names
    assert f"{out.name}/logs/ips-s1.log" in names
    assert not [n for n in names if n.endswith(".pt") or "/data/" in n or n.endswith(".tgz")]


def test_a_budget_too_small_skips_every_stage(tmp_path, capsys):
    gpu_check = _load_script()
    out = tmp_path / "out"
    assert gpu_check.main(["--tiny", "--out", str(out), "--budget", "1"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert {s["status"] for s in summary["stages"].values()} == {"skipped"}
    assert summary["stages"]["runs"]["detail"] == "out of time"
    assert not (out / "runs").exists()
    assert "| ce | none finished |" in (out / "summary.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_stops_with_one_line(tmp_path, capsys):
    gpu_check = _load_script()
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda but torch sees no CUDA device") and "--tiny" in err
