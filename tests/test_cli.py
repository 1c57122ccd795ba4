"""Tests for the ipskit command line: train end to end, one-line errors, dispatch."""

import json
import os
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision

from ipskit.cli import build_parser, config_from_args, main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
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
    "--grid",
    "2",
    "--no-progress",
]


pytestmark = pytest.mark.usefixtures("cached_datasets")


def test_train_end_to_end_as_a_module(tmp_path):
    """``python -m ipskit train`` in a fresh process: exit 0, a complete run folder."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ipskit",
            "train",
            "--method",
            "ips",
            *TINY,
            "--out-dir",
            str(tmp_path),
            "--name",
            "cli",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "epoch   1/1" in r.stdout and "done: test accuracy" in r.stdout
    run = tmp_path / "cli"
    for name in ("config.json", "metrics.jsonl", "summary.json", "env.json", "checkpoint.pt"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["grid"] == 2


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    cases = [
        (["train", "--model", "resnet9"], "error: unknown model 'resnet9'; choose one of: "),
        (["train", "--method", "nope"], "error: argument --method: invalid choice: 'nope'"),
        (["train", "--epochs", "many"], "error: argument --epochs: invalid int value"),
        (["train", "--pr", "2"], "error: pr must be in [0, 1], got 2.0"),
        (
            ["train", *TINY, "--dataset", "imagefolder:/no/such", "--out-dir", str(tmp_path)],
            "error: imagefolder path '/no/such' is not a directory",
        ),
        (
            ["train", *TINY, "--image-size", "16", "--grid", "32", "--out-dir", str(tmp_path)],
            "error: grid 32 cannot split 16x16 images",
        ),
        (["frobnicate"], "error: argument COMMAND: invalid choice"),
    ]
    for argv, start in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(start), (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_skip_bad_files_from_the_command_line(tmp_path, capsys, monkeypatch):
    """An image folder with one unreadable file: one line and status 2, or with
    --skip-bad-files the file is left out (counted in one warning) and the run trains."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 8)):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    (tmp_path / "data" / "train" / "dog" / "notes.png").write_text("not an image")
    monkeypatch.setenv("IPSKIT_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["train", *TINY, "--dataset", f"imagefolder:{tmp_path / 'data'}", "--batch-size", "16"]
    argv += ["--out-dir", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reading image headers" not in err  # --no-progress: no bar
    assert "TQDM_DISABLE" not in os.environ  # only for the command
    last = err.strip()
    assert last.startswith("error: bad image file ") and "notes.png" in last
    assert last.endswith("(--skip-bad-files, skip_bad_files=True)")
    assert not (tmp_path / "runs").exists()
    assert main([*argv, "--skip-bad-files"]) == 0
    out = capsys.readouterr()
    assert "notes.png" in out.err and "done: test accuracy" in out.out


def test_existing_run_then_resume_and_overwrite(tmp_path, capsys):
    argv = ["train", "--method", "ce", *TINY, "--out-dir", str(tmp_path), "--name", "r"]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already exists; pass --resume to continue it" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"junk")
    assert main([*argv, "--epochs", "2", "--resume"]) == 2
    assert "cannot be read (corrupt" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_every_config_field_is_a_flag_with_help():
    parser = build_parser()
    text = " ".join(parser._subparsers._group_actions[0].choices["train"].format_help().split())
    for flag in (
        "--grid",
        "--patch-size",
        "--pr",
        "--temperature",
        "--kd-direction",
        "--no-detach-target",
        "--t2-scale",
        "--label-noise",
        "--fast-path",
        "--channels-last",
        "--amp",
        "--compile",
        "--max-train-samples",
        "--resume",
        "--overwrite",
        "--cskd-lambda",
        "--mix-alpha",
        "--cutout-size",
    ):
        assert flag in text, flag
    assert "0.5 is the paper's best value" in text
    ns = parser.parse_args(
        [
            "train",
            "--no-detach-target",
            "--patch-size",
            "none",
            "--pr",
            "0.25",
            "--kd-direction",
            "confident",
        ]
    )
    cfg = config_from_args(ns)
    assert (cfg.detach_target, cfg.patch_size, cfg.pr, cfg.kd_direction) == (
        False,
        None,
        0.25,
        "confident",
    )
    assert cfg.lr == 0.05  # untouched fields keep the dataclass default


def test_eval_and_compare_are_subcommands_of_the_one_parser(monkeypatch):
    from ipskit import evaluate

    seen = []
    monkeypatch.setattr(
        evaluate, "eval_command", lambda ns: seen.append(("eval", ns.run_dirs, ns.what)) or 0
    )
    monkeypatch.setattr(
        evaluate, "compare_command", lambda ns: seen.append(("compare", ns.run_dirs, ns.out)) or 0
    )
    assert main(["eval", "runs/a", "--what", "calibration"]) == 0
    assert main(["compare", "runs/a", "runs/b", "--out", "o"]) == 0
    assert seen == [("eval", ["runs/a"], ["calibration"]), ("compare", ["runs/a", "runs/b"], "o")]
    assert main(["eval", "runs/a", "--what", "nonsense"]) == 2  # argparse's one line


def test_a_bug_keeps_its_traceback_bad_input_gets_one_line(monkeypatch, capsys):
    """A ValueError from deep inside (a bug, e.g. a shape mismatch in a new method) is not bad
    input: the CLI lets its traceback through. InputError and OSError are one line, status 2;
    --debug (or IPSKIT_DEBUG=1) shows every traceback."""
    from ipskit import cli
    from ipskit.checks import InputError

    def raiser(exc):
        def run(ns):
            raise exc

        return run

    monkeypatch.setattr(
        cli, "_demo", raiser(ValueError("mat1 and mat2 shapes cannot be multiplied"))
    )
    with pytest.raises(ValueError, match="shapes cannot be multiplied"):
        main(["demo"])
    monkeypatch.setattr(cli, "_demo", raiser(InputError("epochs must be >= 1, got 0")))
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == "error: epochs must be >= 1, got 0\n"
    monkeypatch.setattr(cli, "_demo", raiser(PermissionError(13, "Permission denied", "/ro/runs")))
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == "error: [Errno 13] Permission denied: '/ro/runs'\n"
    with pytest.raises(PermissionError):
        main(["--debug", "demo"])
    monkeypatch.setenv("IPSKIT_DEBUG", "1")
    with pytest.raises(PermissionError):
        main(["demo"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["swap-demo", "--pairs", "100000"],
            "--pairs must be >= 1 and <= 64 (one figure row a pair",
        ),
        (["swap-demo", "--image-size", "100000"], "--image-size must be >= 4 and <= 1024"),
        (
            ["train", "--image-size", "100000"],
            "image_size must be <= 1024 (every image is held in memory",
        ),
        (
            ["eval", "runs/x", "--device", "foo"],
            "device 'foo' is not one of: auto, cpu, cuda, cuda:N, mps",
        ),
    ],
)
def test_sizes_and_devices_are_bounded_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "demo", "sweep", "swap-demo", "eval", "compare", "download"):
        assert cmd in out


def test_swap_demo_saves_a_png(tmp_path, capsys):
    out = tmp_path / "swap.png"
    assert main(["swap-demo", "--grid", "2", "--pairs", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["swap-demo", "--grid", "40", "--out", str(out)]) == 2
    assert "error: grid 40 has more cells per side" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, archive",
    [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz")],
)
def test_download_offline_is_one_line_and_status_2(tmp_path, monkeypatch, capsys, name, archive):
    def no_network(url, root, **kwargs):  # where torchvision's CIFAR download meets the network
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    assert main(["download", name, "--root", str(tmp_path / "data")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(
        f"error: {name} is missing or corrupted in {tmp_path / 'data'}/ and could not be "
        "fetched (URLError: <urlopen error [Errno -3] Temporary failure in name resolution>); "
        f"put {archive} (from https://"
    )
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_download_says_where_the_data_is_and_what_to_run_next(tmp_path, monkeypatch, capsys):
    def fake_download(url, root, **kwargs):  # a miniature cifar-10-batches-py, as the archive holds
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(folder / name, "wb") as f:
                pickle.dump(
                    {
                        "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                        "labels": [0, 1, 0, 1],
                    },
                    f,
                )
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": ["airplane", "automobile"]}, f)

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )
    root = tmp_path / "data"
    assert main(["download", "cifar10", "--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"cifar10: 20 training and 4 test images in {root / 'cifar-10-batches-py'}/",
        f"next: ipskit train --dataset cifar10 --data-root {root} --method ips",
    ]
    assert main(["download", "cifar20"]) == 2
    assert "error: argument dataset: invalid choice: 'cifar20'" in capsys.readouterr().err


def test_config_to_argv_rebuilds_the_config():
    """Every setting survives the round trip through flags (what a sweep job is started with)."""
    from ipskit.cli import config_to_argv
    from ipskit.config import TrainConfig

    for cfg in (
        TrainConfig(),
        TrainConfig(
            method="ips+cutmix",
            amp=True,
            channels_last=False,
            image_size=8,
            name="a/b",
            t2_scale=True,
            detach_target=False,
            swap_fraction=0.25,
            lr=0.3,
        ),
    ):
        argv = config_to_argv(cfg)
        assert config_from_args(build_parser().parse_args(["train", *argv])) == cfg
