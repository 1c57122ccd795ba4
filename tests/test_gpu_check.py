"""Tests for benchmarks/gpu_check.py: its --tiny rehearsal (one invocation, shared by the tests)
runs every stage on the CPU and leaves the summary, run folders and bundle the GPU check
promises: the solo IPS run first, the one-process torchrun run (gloo on the CPU), the Targets
section; a budget too small for a stage skips it; asking for CUDA without one stops at once
with one line."""

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
    passed = ("data", "bench", "runs", "ddp", "compare")
    assert [stages[s]["status"] for s in passed] == ["passed"] * 5
    # the CUDA tests were invoked: all skipped on a CPU (run and passed where there is a GPU)
    assert stages["tests"]["status"] == ("passed" if torch.cuda.is_available() else "skipped")
    counts = summary["info"]["cuda_tests"]
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0
    for name in ("data", "bench", "runs", "tests", "ddp", "compare"):  # wall time of each
        assert stages[name]["seconds"] > 0
        assert f"== {name}: {stages[name]['status']} in " in proc.stdout
    assert summary["bench"]["swap"]["swap"] and summary["bench"]["train"]["steps"][0]["ips_ms"] > 0
    # the captured step needs CUDA: eager times only on the CPU, captured ones null
    step = summary["bench"]["train"]["steps"][0]
    assert step["ce_ms"] > 0 and step["ips_over_ce"] > 0 and step["ips_over_ce_2x_batch"] > 0
    graph = ("ce_graph_ms", "ips_graph_ms", "ce_2x_batch_graph_ms", "ips_over_ce_graph")
    assert [step[k] for k in graph] == [None] * 4
    train_md = (out / "bench" / "train.md").read_text()
    assert "| ms / step eager | ms / step captured | x ce | x ce at 2x batch |" in train_md
    assert "The captured step (a CUDA graph) needs CUDA" in train_md


@pytest.mark.slow
def test_tiny_check_trains_ips_alone_first(tiny_check):
    proc, out, _ = tiny_check
    summary = json.loads((out / "summary.json").read_text())
    solo = summary["solo"]
    assert solo["name"] == "ips-s0" and solo["status"] == "finished" and solo["alone"]
    assert solo["wall_time_s"] > 0 and solo["train_step"] == "eager"  # "graph" on a GPU
    runs = {r["name"]: r for r in summary["runs"]}
    others = [r["started_s"] for name, r in runs.items() if name != "ips-s0"]
    assert runs["ips-s0"]["started_s"] == solo["started_s"] < solo["ended_s"] <= min(others)
    trained = [line for line in proc.stdout.splitlines() if "[train " in line]
    assert "[train 1/4] ips-s0 finished alone in " in trained[0]
    # the CUDA tests and the torchrun run start only once the solo run is done
    for stage in ("tests", "ddp"):
        assert summary["stages"][stage]["started_s"] >= solo["ended_s"]


@pytest.mark.slow
def test_tiny_check_torchrun_one_process_under_ddp(tiny_check):
    _, out, _ = tiny_check
    summary = json.loads((out / "summary.json").read_text())
    ddp = summary["ddp"]
    assert ddp["status"] == "passed" and ddp["backend"] == "gloo" and ddp["ddp_wrapped"]
    assert "torch.distributed.run --standalone --nproc_per_node=1 -m ipskit train" in ddp["command"]
    assert "--method ips --seed 0 --epochs 1" in ddp["command"] and ddp["epoch_time_s"] > 0
    assert "x1 (DDP)" in (out / "logs" / "torchrun.log").read_text()
    run = out / "ddp" / "ips-torchrun-x1"
    assert json.loads((run / "env.json").read_text())["world_size"] == 1
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert summary["stages"]["ddp"]["detail"].startswith("1 rank over gloo, DDP: 1 ips epoch in ")
    md = (out / "summary.md").read_text()
    assert "## torchrun, one process (DDP)" in md and "**passed**; one rank over gloo" in md
    assert "cannot run two nccl ranks" in md
    assert not [r for r in summary["runs"] if "torchrun" in r["name"]]  # not a reference run


@pytest.mark.slow
def test_tiny_check_targets(tiny_check):
    _, out, _ = tiny_check
    summary = json.loads((out / "summary.json").read_text())
    targets = {t["target"]: t for t in summary["targets"]}
    assert list(targets) == [
        "CE step at batch 128, captured",
        "IPS step / CE step at batch 256, captured",
        "15-epoch IPS run alone, evaluation each epoch (CIFAR-10)",
        "patch_swap kernels a call",
        "patch_swap time / two-`where` floor at B=256 (3x32x32, grid 8), GPU",
    ]
    assert [t["goal"] for t in targets.values()] == [
        "<= 2.8 ms",
        "<= 1.1x",
        "<= 45 s",
        "<= 10",
        "<= 2x",
    ]
    # timings are judged on a GPU at full scale only: the CPU's values, not measured
    for name, t in list(targets.items())[:3] + list(targets.items())[4:]:
        assert t["status"] == "not measured", name
    ce, ratio, solo, kernels, swap = targets.values()
    assert ce["value"] is None and "no captured step on cpu; eager " in ce["measured"]
    assert "at batch 16" in ce["measured"] and "at batch 16" in ratio["measured"]
    assert (
        solo["value"] == summary["solo"]["wall_time_s"] and "train step eager" in solo["measured"]
    )
    assert swap["value"] > 0 and "on cpu: the target is for a GPU" in swap["measured"]
    # a kernel count is a count on any device: judged
    ops = summary["bench"]["swap"]["ops"][0]
    assert ops["op"].startswith("patch_swap") and kernels["value"] == ops["kernels"]
    assert kernels["status"] == ("met" if ops["kernels"] <= 10 else "not met")
    md = (out / "summary.md").read_text()
    assert "## Targets (" in md and "| target | goal | measured | status |" in md
    for t in targets.values():
        assert f"| {t['target']} | {t['goal']} | {t['measured']} | {t['status']} |" in md
    assert "### Training step, ms: captured (CUDA graph) vs eager" in md
    step = summary["bench"]["train"]["steps"][0]
    assert f"| 16 | {step['ce_ms']:.2f} | - | {step['ips_ms']:.2f} | - |" in md


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
    assert f"{out.name}/logs/ips-s1.log" in names and f"{out.name}/logs/torchrun.log" in names
    assert f"{out.name}/ddp/ips-torchrun-x1/summary.json" in names
    assert not [n for n in names if n.endswith(".pt") or "/data/" in n or n.endswith(".tgz")]


def test_a_budget_too_small_skips_every_stage(tmp_path, capsys):
    gpu_check = _load_script()
    out = tmp_path / "out"
    assert gpu_check.main(["--tiny", "--out", str(out), "--budget", "1"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert {s["status"] for s in summary["stages"].values()} == {"skipped"}
    assert summary["stages"]["runs"]["detail"] == "out of time"
    assert summary["stages"]["ddp"]["detail"] == "out of time" and summary["ddp"] is None
    assert {t["status"] for t in summary["targets"]} == {"not measured"}
    assert not (out / "runs").exists()
    assert "| ce | none finished |" in (out / "summary.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_stops_with_one_line(tmp_path, capsys):
    gpu_check = _load_script()
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda but torch sees no CUDA device") and "--tiny" in err
