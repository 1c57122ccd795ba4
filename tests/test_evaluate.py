"""Tests for ipskit.evaluate: eval.json on a real (tiny) run, caching, compare, CLI, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

from ipskit.evaluate import _cifar_c_result, compare_runs, evaluate_run, main_compare, main_eval
from ipskit.runs import atomic_torch_save

FAST = {
    "max_samples": 120,
    "epsilons": [0.0, 0.01, 0.1],
    "corruptions": ["gaussian_noise", "contrast"],
    "severities": [1, 5],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run folder: smallcnn trained for 2 short epochs on digits."""
    from ipskit.config import TrainConfig
    from ipskit.train import fit

    root = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(dataset="digits", model="smallcnn", method="ce", epochs=2, max_train_samples=300,
                      out_dir=str(root), name="ce", device="cpu", seed=0)  # fmt: skip
    fit(cfg, progress=False, verbose=False)
    return root / "ce"


@pytest.fixture
def fresh(run_dir, tmp_path):
    """A private copy of the run (tests that write eval.json must not share it)."""
    dst = tmp_path / "ce"
    shutil.copytree(run_dir, dst)
    (dst / "eval.json").unlink(missing_ok=True)
    return dst


def test_evaluate_writes_consistent_strict_json(fresh):
    ev = evaluate_run(fresh, **FAST)
    on_disk = json.loads((fresh / "eval.json").read_text())
    json.dumps(on_disk, allow_nan=False)  # strict JSON: no NaN
    assert on_disk == ev and set(ev) == {"calibration", "smoothing", "fgsm", "corruptions"}
    cal = ev["calibration"]["result"]
    assert cal["test"]["n"] == 120 and cal["heldout"]["n"] == 60 and cal["temperature"] > 0
    top1 = cal["test"]["top1"]
    assert ev["fgsm"]["result"]["accuracy"][0] == pytest.approx(top1)  # eps 0 = clean, same images
    assert ev["corruptions"]["result"]["clean"] == pytest.approx(top1)
    assert set(ev["corruptions"]["result"]["accuracy"]["contrast"]) == {"1", "5"}
    assert len(ev["smoothing"]["result"]["similarity"]) == 10
    assert ev["calibration"]["settings"]["max_samples"] == 120


def test_cached_unless_settings_change_or_force(fresh):
    evaluate_run(
        fresh, what=("calibration", "fgsm"), **{k: FAST[k] for k in ("max_samples", "epsilons")}
    )
    first = json.loads((fresh / "eval.json").read_text())
    # same settings: nothing recomputed (mark the stored result to detect a rewrite)
    first["fgsm"]["result"]["marker"] = 1
    (fresh / "eval.json").write_text(json.dumps(first))
    again = evaluate_run(
        fresh, what=("calibration", "fgsm"), max_samples=120, epsilons=FAST["epsilons"]
    )
    assert again["fgsm"]["result"].get("marker") == 1
    # new epsilons: fgsm recomputed, calibration kept
    changed = evaluate_run(
        fresh, what=("calibration", "fgsm"), max_samples=120, epsilons=[0.0, 0.02]
    )
    assert "marker" not in changed["fgsm"]["result"] and changed["fgsm"]["settings"][
        "epsilons"
    ] == [0.0, 0.02]
    assert changed["calibration"] == first["calibration"]
    forced = evaluate_run(fresh, what=("fgsm",), max_samples=120, epsilons=[0.0, 0.02], force=True)
    assert forced["fgsm"]["result"]["epsilons"] == [0.0, 0.02]


def test_compare_table_and_figures(fresh, tmp_path):
    evaluate_run(fresh, **FAST)
    other = tmp_path / "other" / "ce"
    shutil.copytree(fresh, other)  # copy2 keeps the checkpoint's mtime: its eval.json stays valid
    out = tmp_path / "cmp"
    table = compare_runs([fresh, other], out_dir=out, **FAST)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| run | method | model |") and len(lines) == 4
    assert "| other/ce |" in table  # repeated folder names get their parent folder
    for name in (
        "compare.md",
        "reliability.png",
        "confidence.png",
        "entropy.png",
        "fgsm.png",
        "corruptions.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_eval_and_compare(fresh, tmp_path, capsys):
    args = [
        str(fresh),
        "--max-samples",
        "120",
        "--epsilons",
        "0",
        "0.01",
        "--what",
        "calibration",
        "fgsm",
        "--no-progress",
    ]
    assert main_eval(args) == 0
    assert "top-1" in capsys.readouterr().out
    assert main_compare(args + ["--out", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.startswith("| run |")
    assert main_eval(["--help"]) == 0
    assert "advice:" in capsys.readouterr().out


def test_cli_bad_input_is_one_error_line(fresh, capsys):
    from ipskit.cli import main

    assert main(["eval", str(fresh), "--epsilons", "0", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: epsilons must be numbers in [0, 1] (pixel units of a [0, 1] image), got 2.0"
    ]


def test_bad_runs(fresh, tmp_path):
    with pytest.raises(ValueError, match="is not an ipskit run folder"):
        evaluate_run(tmp_path / "nowhere", what=("calibration",))
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(fresh / "config.json", no_ckpt / "config.json")
    with pytest.raises(
        ValueError, match=r"has no checkpoint.pt \(training has not finished an epoch\)"
    ):
        evaluate_run(no_ckpt, what=("calibration",))
    # a checkpoint whose weights belong to another architecture
    ckpt = torch.load(fresh / "checkpoint.pt", weights_only=True)
    ckpt["model_info"]["name"] = "resnet8"
    atomic_torch_save(ckpt, fresh / "checkpoint.pt")
    with pytest.raises(ValueError, match="does not match its model_info"):
        evaluate_run(fresh, what=("calibration",))


def test_config_and_checkpoint_disagree(fresh):
    cfg = json.loads((fresh / "config.json").read_text())
    cfg["model"] = "resnet8"
    (fresh / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="holds a smallcnn but config.json says model 'resnet8'"):
        evaluate_run(fresh, what=("calibration",))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilons": [-0.1]}, r"epsilons must be numbers in \[0, 1\]"),
        ({"corruptions": ["fog"]}, "unknown corruption 'fog'; known corruptions: gaussian_noise"),
        ({"severities": [0]}, "corruption severity must be >= 1 and <= 5, got 0"),
        ({"what": ("accuracy",)}, "unknown evaluation"),
        ({"what": ("cifar_c",)}, "needs the folder of the CIFAR-10-C/100-C"),
        ({"max_samples": 1}, r"max_samples must be >= 2 \(or None for all\), got 1"),
        ({"device": "foo"}, "device 'foo' is not one of: auto, cpu, cuda, cuda:N, mps"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ],
)
def test_bad_settings(run_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_run(run_dir, **kwargs)


def test_cifar_c_evaluation(tmp_path):
    from ipskit.models import build_model

    model = build_model("smallcnn", num_classes=10, in_channels=3, image_size=32).eval()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "fog.npy", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.arange(10) % 10)
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    res = _cifar_c_result(model, x, y, tmp_path, ["fog"], [1, 5], None, 8, "cpu", False)
    assert set(res["accuracy"]["fog"]) == {"1", "5"} and 0 <= res["mean_corruption_accuracy"] <= 1
    np.save(tmp_path / "fog.npy", rng.integers(0, 256, (10, 32, 32), dtype=np.uint8))
    with pytest.raises(
        ValueError,
        match=r"fog.npy has shape \(10, 32, 32\) dtype uint8; expected uint8 \[5n, 32, 32, 3\]",
    ):
        _cifar_c_result(model, x, y, tmp_path, ["fog"], [1], None, 8, "cpu", False)
    gray = build_model("smallcnn", num_classes=10, in_channels=1, image_size=32)
    with pytest.raises(ValueError, match="CIFAR-C images have 3 channels but this model takes 1"):
        _cifar_c_result(gray, x, y, tmp_path, ["fog"], [1], None, 8, "cpu", False)
