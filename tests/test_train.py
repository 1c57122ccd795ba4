"""Tests for ipskit.train and ipskit.config: the run folder, resume equivalence, atomic
checkpoints, divergence, the schedule, and every bad-input message."""

import json
import math

import pytest
import torch
from train_helpers import cache_datasets, tiny

import ipskit.train as T
from ipskit import runs
from ipskit.config import TrainConfig
from ipskit.methods import CrossEntropy
from ipskit.train import fit, lr_factor


@pytest.fixture(autouse=True)
def _cached(monkeypatch):
    cache_datasets(monkeypatch)


def _metrics(run_dir):
    rows = runs.load_run(run_dir)["metrics"]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


def test_run_folder_contract(tmp_path):
    run_dir = tmp_path / "ips-digits-smallcnn-s0"
    on_disk = []  # on_epoch fires once the epoch's row is in metrics.jsonl
    s = fit(
        tiny(tmp_path, method="ips", epochs=2),
        progress=False,
        verbose=False,
        on_epoch=lambda cfg, row: on_disk.append(
            (cfg.epochs, row["epoch"], runs.load_run(run_dir)["metrics"][-1] == row)
        ),
    )
    assert on_disk == [(2, 1, True), (2, 2, True)]
    assert s["run_dir"] == str(run_dir) and s["status"] == "finished"
    cfg = json.loads((run_dir / "config.json").read_text())
    for key in (
        "dataset",
        "model",
        "method",
        "seed",
        "epochs",
        "grid",
        "pr",
        "temperature",
        "alpha",
        "gamma",
        "label_noise",
        "label_noise_kind",
        "ipskit_version",
    ):
        assert key in cfg
    rows = runs.load_run(run_dir)["metrics"]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "train_loss",
        "train_ce",
        "train_kd",
        "train_acc",
        "test_acc",
        "test_loss",
        "ece",
        "mean_max_prob",
        "lr",
        "epoch_time_s",
    ):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[0]["train_kd"] > 0  # IPS has a KL part
    assert abs(rows[0]["train_loss"] - rows[0]["train_ce"] - rows[0]["train_kd"]) < 1e-4
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("method", "model", "dataset", "seed", "epochs", "wall_time_s", "status"):
        assert key in summary
    assert summary["test_acc"] == rows[-1]["test_acc"]
    env = json.loads((run_dir / "env.json").read_text())
    assert {"python", "torch", "torchvision", "ipskit", "device"} <= set(env)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and set(ckpt["model_info"]) >= {
        "name",
        "num_classes",
        "in_channels",
        "image_size",
        "mean",
        "std",
    }
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


class _Kill(Exception):
    pass


def test_resume_gives_the_same_metrics_and_weights(tmp_path, monkeypatch):
    straight = tiny(tmp_path, method="ips+cutmix", epochs=3, name="straight", mix_prob=0.5)
    fit(straight, progress=False, verbose=False)

    # 1. A run killed in the middle of epoch 3 (after a few optimisation steps)...
    broken = straight.replace(name="broken")
    real = T.train_one_epoch

    def dies_in_epoch_3(*args, **kwargs):
        if args[6] == 3:
            method = args[1]
            step = method.step
            calls = iter(range(100))

            def dying_step(*a, **k):
                if next(calls) == 4:
                    raise _Kill
                return step(*a, **k)

            monkeypatch.setattr(method, "step", dying_step)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", dies_in_epoch_3)
    with pytest.raises(_Kill):
        fit(broken, progress=False, verbose=False)
    monkeypatch.setattr(T, "train_one_epoch", real)
    assert len(_metrics(tmp_path / "broken")) == 2
    assert not (tmp_path / "broken" / "summary.json").exists()
    # 2. ... and resumed ends exactly where the uninterrupted run ended.
    fit(broken, resume=True, progress=False, verbose=False)
    assert _metrics(tmp_path / "broken") == _metrics(tmp_path / "straight")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # 3. resuming a finished run trains nothing
    monkeypatch.setattr(T, "train_one_epoch", None)
    assert fit(broken, resume=True, progress=False, verbose=False)["status"] == "finished"


def test_killed_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, method="ce", epochs=2)
    path = tmp_path / cfg.run_name / "checkpoint.pt"
    real_save, calls = torch.save, iter(range(10))

    def dies_writing_epoch_2(obj, f, *a, **k):
        if next(calls) == 1:
            f.write(b"PK\x03\x04 partial bytes")  # what a kill mid-write leaves behind
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dies_writing_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, progress=False, verbose=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the old one, intact
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert fit(cfg, resume=True, progress=False, verbose=False)["epoch"] == 2


def test_non_finite_loss_names_epoch_and_step(tmp_path, monkeypatch):
    real = CrossEntropy.step
    calls = iter(range(1000))

    def nan_at_third(self, *a, **k):
        out = real(self, *a, **k)
        if next(calls) == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(CrossEntropy, "step", nan_at_third)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 1, step 3"):
        fit(tiny(tmp_path, method="ce"), progress=False, verbose=False)
    summary = json.loads((tmp_path / "ce-digits-smallcnn-s0" / "summary.json").read_text())
    assert summary["status"] == "failed"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(dataset="mnist"), r"unknown dataset 'mnist'; choose one of: digits, cifar10"),
        (dict(model="resnet9"), r"unknown model 'resnet9'; choose one of: .*resnet8"),
        (dict(method="mixcut"), r"unknown method 'mixcut'; choose one of: ce, ips, "),
        (dict(schedule="linear"), r"unknown schedule 'linear'; choose one of: cosine, step"),
        (dict(epochs=0), r"epochs must be >= 1, got 0"),
        (dict(pr=1.5), r"pr must be in \[0, 1\], got 1.5"),
        (dict(grid=1), r"grid must be >= 2"),
        (dict(lr=-0.1), r"lr must be > 0"),
        (dict(label_noise=1.0), r"label_noise must be in \[0, 1\)"),
        (dict(device="gpu"), r"device 'gpu' is not one of"),
        (dict(batch_size=3.5), r"batch_size must be int, got float 3.5"),
        (dict(name="../x"), r"must be a relative folder name"),
        (dict(warmup_epochs=5, epochs=5), r"warmup_epochs 5 must be below epochs 5"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(**changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(grid=32, image_size=16), r"grid 32 cannot split 16x16 images"),
        (dict(patch_size=3, image_size=16), r"patch_size 3 does not split 16x16"),
        (dict(dataset="imagefolder:/no/such/folder"), r"imagefolder path .* is not a directory"),
        (dict(batch_size=500), r"batch_size 500 is larger than the 400 training samples"),
    ],
)
def test_bad_data_settings_leave_no_run_folder(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        fit(tiny(tmp_path, method="ips", **changes), progress=False, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_run_folder_and_bad_checkpoints(tmp_path):
    cfg = tiny(tmp_path, method="ce")
    fit(cfg, progress=False, verbose=False)
    run_dir = tmp_path / cfg.run_name
    with pytest.raises(ValueError, match=r"already exists; pass --resume .* --overwrite"):
        fit(cfg, progress=False, verbose=False)
    with pytest.raises(
        ValueError,
        match=r"does not match these settings \(lr: 0.05 in the "
        r"run, 0.1 now\)",
    ):
        fit(cfg.replace(lr=0.1), resume=True, progress=False, verbose=False)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"checkpoint .* cannot be read \(corrupt"):
        fit(cfg.replace(epochs=2), resume=True, progress=False, verbose=False)
    torch.save({"weights": torch.zeros(2)}, run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"not an ipskit checkpoint: missing model"):
        fit(cfg.replace(epochs=2), resume=True, progress=False, verbose=False)
    # the folder was left as it was by every refusal; overwrite starts over
    assert (run_dir / "config.json").exists()
    s = fit(cfg, overwrite=True, progress=False, verbose=False)
    assert s["status"] == "finished"


def test_label_noise_and_subset_are_seeded(tmp_path):
    a = T.prepare_data(tiny(tmp_path, label_noise=0.4), torch.device("cpu"))
    b = T.prepare_data(tiny(tmp_path, label_noise=0.4), torch.device("cpu"))
    assert torch.equal(a.train_labels, b.train_labels) and len(a.train_labels) == 400
    assert 0.3 < a.flipped.float().mean() < 0.5


def test_lr_schedule():
    total = 100
    assert lr_factor(0, total, 0, "cosine") == 1.0
    assert abs(lr_factor(50, total, 0, "cosine") - 0.5) < 1e-9
    assert lr_factor(99, total, 0, "cosine") < 1e-3
    assert [lr_factor(s, total, 10, "cosine") for s in (0, 9)] == [0.1, 1.0]
    assert [lr_factor(s, total, 0, "step") for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_data_loader_path_equals_the_fast_path(tmp_path):
    """Without augmentation the two pipelines feed the same batches: same metrics exactly."""
    fast = tiny(tmp_path, method="cskd", augment=False, name="fast")
    fit(fast, progress=False, verbose=False)
    fit(fast.replace(fast_path=False, name="slow"), progress=False, verbose=False)
    assert _metrics(tmp_path / "fast") == _metrics(tmp_path / "slow")


def test_fit_or_reuse_returns_a_finished_run_whatever_its_settings(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, name="shared")
    run_dir = T.fit_or_reuse(cfg, progress=False, verbose=False)
    assert run_dir == tmp_path / "shared" and (run_dir / "summary.json").exists()

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(T, "fit", no_training)
    # other settings, same folder: reused as it is (fit would refuse to resume it)
    assert T.fit_or_reuse(tiny(tmp_path, name="shared", lr=0.2)) == run_dir
    monkeypatch.undo()
    (run_dir / "summary.json").unlink()  # interrupted: resumed from its checkpoint
    cache_datasets(monkeypatch)
    assert T.fit_or_reuse(cfg, progress=False, verbose=False) == run_dir
    assert (run_dir / "summary.json").exists()


def test_env_commit_only_from_ipskits_own_checkout(tmp_path):
    """env.json's git_commit names ipskit's commit, never that of a repo that merely encloses
    an installed or vendored copy."""
    import subprocess

    from ipskit.train import _git_commit

    def git(cwd, *args):
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()

    for layout in ("own", "foreign"):
        repo = tmp_path / layout
        pkg = repo / "ipskit" if layout == "own" else repo / "vendor" / "lib" / "ipskit"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        git(repo, "init", "-q")
        git(repo, "add", ".")
        git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
        expected = git(repo, "rev-parse", "HEAD") if layout == "own" else None
        assert _git_commit(pkg) == expected, layout
    assert _git_commit(tmp_path / "not-a-repo") is None


def test_evaluate_is_a_deprecated_alias_of_evaluate_epoch():
    from ipskit.data import InMemoryLoader
    from ipskit.models import build_model
    from ipskit.train import evaluate, evaluate_epoch

    torch.manual_seed(0)
    model = build_model("smallcnn", 3, 1, 8)
    x, y = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8), torch.arange(20) % 3
    loader = InMemoryLoader(x, y, 8, shuffle=False)
    with pytest.warns(DeprecationWarning, match="renamed evaluate_epoch"):
        old = evaluate(model, loader, torch.device("cpu"))
    assert old == evaluate_epoch(model, loader, torch.device("cpu"))


# ----- run folders: nothing lost, nothing interleaved ------------------------------------------
@pytest.mark.parametrize("name", [".", "a/./b", "a//b", "./", "..", "a/.."])
def test_names_with_empty_dot_or_dotdot_parts_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="must be a relative folder name inside out_dir"):
        tiny(tmp_path, name=name)


def test_overwrite_never_removes_a_folder_of_runs_or_a_link(tmp_path):
    outer = fit(tiny(tmp_path, method="ce", name="a"), progress=False, verbose=False)
    fit(tiny(tmp_path, method="ce", name="a/inner"), progress=False, verbose=False)
    with pytest.raises(ValueError, match=r"holds other runs .*never a folder of runs"):
        fit(tiny(tmp_path, method="ce", name="a"), overwrite=True, progress=False, verbose=False)
    assert (tmp_path / "a" / "inner" / "summary.json").is_file()
    assert runs.read_json(tmp_path / "a" / "summary.json")["wall_time_s"] == outer["wall_time_s"]
    (tmp_path / "link").symlink_to(tmp_path / "a" / "inner")
    with pytest.raises(ValueError, match="is a symbolic link"):
        fit(tiny(tmp_path, method="ce", name="link"), overwrite=True, progress=False, verbose=False)
    assert (tmp_path / "a" / "inner" / "checkpoint.pt").is_file()


def test_overwrite_keeps_the_old_run_until_the_new_one_is_written(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, method="ce", name="r")
    fit(cfg, progress=False, verbose=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    monkeypatch.setattr(runs.os, "access", lambda path, mode: False)  # a read-only folder
    with pytest.raises(ValueError, match="cannot write to .* nothing was changed"):
        fit(cfg, overwrite=True, progress=False, verbose=False)
    monkeypatch.undo()

    def disk_full(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(runs, "atomic_write_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fit(cfg, overwrite=True, progress=False, verbose=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # nothing left aside


def test_a_second_process_on_the_same_run_folder_is_refused_at_once(tmp_path):
    """Two ``ipskit train`` on one --out-dir/--name: the second gets one line and status 2
    while the first holds the folder, instead of both writing into it."""
    import subprocess
    import sys

    cfg = tiny(tmp_path, method="ce", name="shared")
    with runs.claim_run_dir(tmp_path / "shared"):
        with pytest.raises(runs.RunBusyError, match="being written by another ipskit process"):
            fit(cfg, progress=False, verbose=False)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "ipskit",
                "train",
                "--model",
                "smallcnn",
                "--image-size",
                "8",
                "--epochs",
                "1",
                "--max-train-samples",
                "200",
                "--out-dir",
                str(tmp_path),
                "--name",
                "shared",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: run folder {tmp_path / 'shared'} is being written by another ipskit process; "
        "wait for it to finish or choose another --name"
    ]
    assert not (tmp_path / "shared").exists()
    fit(cfg, progress=False, verbose=False)  # released: the folder can be claimed again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no lock file left


def test_run_files_follow_the_umask(tmp_path):
    import os
    import stat

    fit(tiny(tmp_path, method="ce", name="r"), progress=False, verbose=False)
    expected = 0o666 & ~runs._UMASK
    for p in (tmp_path / "r").iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) == expected, p.name
