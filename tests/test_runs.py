"""Tests for ipskit.runs: atomic writes, reading runs back, and loading a trained model."""

import json

import pytest
import torch
from train_helpers import cache_datasets, tiny

from ipskit import runs
from ipskit.train import fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run (and its config) shared by the read-back tests."""
    mp = pytest.MonkeyPatch()
    cache_datasets(mp)
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny(root, method="ips", name="group/ips")
    fit(cfg, progress=False, verbose=False)
    mp.undo()
    return root, root / "group" / "ips", cfg


def test_atomic_json_and_failed_write_keeps_old(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    runs.atomic_write_json(path, {"x": 1})
    assert runs.read_json(path) == {"x": 1}

    def broken_dumps(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(runs.json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError):
        runs.atomic_write_json(path, {"x": 2})
    assert runs.read_json(path) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert runs.read_json(tmp_path / "missing.json", {"d": 0}) == {"d": 0}
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        runs.read_json(tmp_path / "bad.json")


def test_jsonl_round_trip(tmp_path):
    rows = [{"epoch": 1, "a": 0.5}, {"epoch": 2, "a": 0.25}]
    runs.atomic_write_jsonl(tmp_path / "m.jsonl", rows)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_load_run_and_list_runs(trained, tmp_path):
    root, run_dir, cfg = trained
    run = runs.load_run(run_dir)
    assert run["config"]["method"] == "ips" and run["config"]["grid"] == 2
    assert len(run["metrics"]) == 1 and run["summary"]["status"] == "finished"
    assert run["eval"] == {} and run["env"]["torch"] == torch.__version__
    listed = runs.list_runs(root)
    assert [r["name"] for r in listed] == ["group/ips"]  # nested folders are found
    r = listed[0]
    assert r["method"] == "ips" and r["epochs_done"] == 1 and r["status"] == "finished"
    assert r["test_acc"] == run["metrics"][-1]["test_acc"]
    assert (r["grid"], r["pr"]) == (2, cfg.pr)
    # a method that swaps no patches lists no grid or pr, whatever its config holds
    ce_dir = tmp_path / "ce"
    ce_dir.mkdir()
    runs.atomic_write_json(ce_dir / runs.CONFIG, {**run["config"], "method": "ce"})
    (ce_row,) = runs.list_runs(tmp_path)
    assert ce_row["method"] == "ce" and (ce_row["grid"], ce_row["pr"]) == (None, None)
    assert runs.list_runs(tmp_path / "nothing here") == []
    with pytest.raises(FileNotFoundError, match="is not an ipskit run: no config.json"):
        runs.load_run(tmp_path)


def test_load_model_gives_the_trained_predictions(trained):
    from ipskit.data import load_dataset

    _, run_dir, cfg = trained
    model, config = runs.load_model(run_dir)
    assert not model.training and config["method"] == "ips"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())
    bundle = load_dataset("digits", image_size=config["image_size"])
    with torch.no_grad():
        acc = (model(bundle.test_x.float() / 255).argmax(1) == bundle.test_y).float().mean()
    assert abs(float(acc) - runs.load_run(run_dir)["summary"]["test_acc"]) < 1e-6


def test_load_model_errors(trained, tmp_path):
    _, run_dir, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*has not finished an epoch"):
        runs.load_model(bad)
    (bad / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot be read \\(corrupt, truncated"):
        runs.load_model(bad)
    torch.save({"state_dict": {}}, bad / "checkpoint.pt")
    with pytest.raises(ValueError, match="not an ipskit checkpoint: missing model, model_info"):
        runs.load_model(bad)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["model_info"] = {**ckpt["model_info"], "num_classes": 3}
    torch.save(ckpt, bad / "checkpoint.pt")
    with pytest.raises(ValueError, match="does not match its model_info"):
        runs.load_model(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs.load_model(tmp_path / "nope")


def test_export_run_keeps_the_numbers_and_the_weights_only(trained, tmp_path):
    _, run_dir, _ = trained
    dest = runs.export_run(run_dir, tmp_path / "shipped" / "ips")
    assert {p.name for p in dest.iterdir()} == {
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "env.json",
        "checkpoint.pt",
    }
    assert runs.read_json(dest / "summary.json") == runs.read_json(run_dir / "summary.json")
    slim = torch.load(dest / "checkpoint.pt", weights_only=True)
    assert slim["model_only"] and "optimizer" not in slim
    assert (dest / "checkpoint.pt").stat().st_size < (run_dir / "checkpoint.pt").stat().st_size
    original, _ = runs.load_model(run_dir)
    exported, config = runs.load_model(dest)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(original(x), exported(x)) and config["method"] == "ips"
    listed = runs.list_runs(tmp_path / "shipped")
    assert [(r["name"], r["has_model"], r["status"]) for r in listed] == [("ips", True, "finished")]
    with pytest.raises(ValueError, match="weights only .* cannot be resumed"):
        runs.load_checkpoint(dest / "checkpoint.pt")
    with pytest.raises(ValueError, match="limit is 0.001 MB"):
        runs.export_run(run_dir, tmp_path / "too-big", max_bytes=1000)
    assert not (tmp_path / "too-big").exists()


def test_test_sample_round_trip_and_lookup(tmp_path):
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    path = runs.write_test_sample(tmp_path / runs.TEST_SAMPLE, x, y, ["cat", "dog", "frog"])
    back = runs.read_test_sample(path)
    assert (back["x"] == x.numpy()).all() and back["y"].tolist() == y.tolist()
    assert back["classes"] == ["cat", "dog", "frog"]
    (tmp_path / "ips").mkdir()
    assert runs.find_test_sample(tmp_path / "ips") == path  # the folder above the run
    assert runs.find_test_sample(tmp_path.parent) is None
    with pytest.raises(ValueError, match="uint8"):
        runs.write_test_sample(tmp_path / "bad.npz", x.float(), y, ["a"])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a test sample"):
        runs.read_test_sample(tmp_path / "junk.npz")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("config.json", b"[1]", "config.json holds a JSON list, not the object ipskit writes"),
        ("summary.json", b'"done"', "summary.json holds a JSON str"),
        ("summary.json", b"\xff\xfe{}", "summary.json is not UTF-8 text"),
        ("metrics.jsonl", b'{"epoch": 1}\n[2]\n', "metrics.jsonl line 2 holds a JSON list"),
        ("eval.json", b'{"calibration": ', "eval.json is not valid JSON"),
    ],
)
def test_a_broken_run_is_listed_as_broken_and_never_hides_the_others(
    trained, tmp_path, name, content, message
):
    _, run_dir, _ = trained
    root = tmp_path / "runs"
    for run in ("good", "bad"):
        (root / run).mkdir(parents=True)
        for f in run_dir.iterdir():
            (root / run / f.name).write_bytes(f.read_bytes())
    (root / "bad" / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        runs.load_run(root / "bad")
    listed = {r["name"]: r for r in runs.list_runs(root)}
    assert listed["good"]["status"] == "finished" and listed["good"]["test_acc"] is not None
    assert listed["bad"]["status"] == "broken" and message in listed["bad"]["error"]
    assert listed["bad"]["has_model"] is False and listed["bad"]["epochs_done"] == 0


def test_a_torn_eval_json_does_not_block_eval_force(trained, tmp_path):
    from ipskit.evaluate import evaluate_run

    _, run_dir, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "eval.json").write_bytes(b'{"calibration": {"sett')
    with pytest.raises(ValueError, match="eval.json is not valid JSON .*pass --force to recompute"):
        evaluate_run(copy, what=("calibration",), max_samples=50)
    ev = evaluate_run(copy, what=("calibration",), max_samples=50, force=True)
    assert set(ev) == {"calibration"} and runs.read_json(copy / "eval.json") == ev
