"""Data-parallel training: ``torchrun --nproc_per_node=2 -m ipskit train`` on CPU (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from train_helpers import cache_datasets, tiny

from ipskit.train import prepare_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)
@pytest.mark.parametrize("procs", [2, 1])
def test_processes_on_gloo_write_one_run(tmp_path, procs):
    """Two ranks split the data; one rank still joins a process group and trains under DDP
    (what benchmarks/gpu_check.py runs over nccl on a one-GPU machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        "-m",
        "ipskit",
        "train",
        "--method",
        "ips",
        "--model",
        "smallcnn",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-train-samples",
        "256",
        "--grid",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--out-dir",
        str(tmp_path),
        "--name",
        "ddp",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "ddp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    # each process trains on its share of the 256 images: 256 // procs // 32 steps
    assert rows[0]["steps"] == 256 // procs // 32
    assert json.loads((run / "env.json").read_text())["world_size"] == procs
    assert f"x{procs} (DDP)" in r.stdout
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert r.stdout.count("epoch   1/1") == 1  # only rank 0 logs


@pytest.mark.parametrize("method", ["ce", "ips"])
def test_ranks_split_the_anchors_without_overlap(tmp_path, monkeypatch, method):
    """What each of 2 processes loads (DistributedSampler for ce, the pair sampler for ips)."""
    cache_datasets(monkeypatch)
    cfg = tiny(tmp_path, method=method, max_train_samples=256, augment=False)
    seen = []
    for rank in (0, 1):
        data = prepare_data(cfg, torch.device("cpu"), world=2, rank=rank)
        for s in data.samplers:
            s.set_epoch(1)
        assert len(data.train_loader) == 4
        xs = torch.cat([x[: len(x) // 2] if method == "ips" else x for x, _ in data.train_loader])
        seen.append({tuple(img.flatten().tolist()) for img in xs})
    assert len(seen[0]) > 100 and len(seen[1]) > 100
    assert not seen[0] & seen[1]
