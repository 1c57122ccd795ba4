"""The run directory on disk: atomic writes, and reading runs back.

A run folder (``runs/<name>/``, see docs/ARCHITECTURE.md) holds ``config.json``,
``metrics.jsonl``, ``summary.json``, ``env.json``, ``checkpoint.pt`` and, after
``ipskit eval``, ``eval.json``. Every file is written atomically (a temporary file in the same
folder, then ``os.replace``), so a run killed at any moment leaves either the old file or the
new one, never half of one. Like minGPT and nanoGPT, the resolved config sits next to every
checkpoint so each number can be traced to its settings.

Usage:
    run = load_run("runs/demo/ips")           # {"config", "metrics", "summary", "eval", "path"}
    model, config = load_model("runs/demo/ips")
    for r in list_runs("runs"): print(r["name"], r["method"], r["test_acc"])
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ipskit.config import swaps_patches

__all__ = ["CONFIG", "METRICS", "SUMMARY", "ENV", "CHECKPOINT", "EVAL", "atomic_write",
           "atomic_write_text", "atomic_write_json", "atomic_write_jsonl", "atomic_torch_save",
           "read_json", "load_checkpoint", "load_run", "list_runs", "load_model"]

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
ENV, CHECKPOINT, EVAL = "env.json", "checkpoint.pt", "eval.json"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "model_info")


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``path``, then move it into place.

    Example: ``atomic_write("fig.png", lambda f: fig.savefig(f, format="png"))``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Interrupted or failed: the old file (if any) is untouched; drop the partial one.
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write one JSON object per line to ``path`` atomically (the whole file each time)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temp file: a crash mid-write keeps the old file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: str | os.PathLike, default=None):
    """Parsed JSON from ``path``, or ``default`` if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and check an ipskit checkpoint with ``weights_only=True``.

    Args:
        path: a ``checkpoint.pt`` file.
        map_location: where tensors go.
    Returns:
        The checkpoint dict (keys include model, optimizer, scheduler, epoch, rng, model_info).
    Raises:
        FileNotFoundError if missing; ValueError (one line) if unreadable or not ipskit's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: the run has not finished an epoch "
                                f"yet")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {path} cannot be read (corrupt, truncated or not saved "
                         f"by ipskit): {first[:200]}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is not an ipskit checkpoint: missing "
                         f"{', '.join(missing)}")
    return ckpt


def _check_run_dir(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} is not an ipskit run: no {CONFIG} in it")
    return run_dir


def load_run(run_dir: str | os.PathLike) -> dict:
    """Everything a run folder holds except the weights.

    Returns:
        dict with ``path`` (str), ``config`` (dict), ``metrics`` (list of per-epoch dicts),
        ``summary`` (dict, empty while training), ``eval`` (dict, empty before ipskit eval),
        ``env`` (dict).
    """
    run_dir = _check_run_dir(run_dir)
    metrics_path = run_dir / METRICS
    metrics = []
    if metrics_path.exists():
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    return {"path": str(run_dir), "config": read_json(run_dir / CONFIG),
            "metrics": metrics, "summary": read_json(run_dir / SUMMARY, {}),
            "eval": read_json(run_dir / EVAL, {}), "env": read_json(run_dir / ENV, {})}


def list_runs(root: str | os.PathLike = "runs") -> list[dict]:
    """Every run folder under ``root`` (at any depth), sorted by name.

    Returns:
        list of dicts: ``name`` (path relative to root), ``path``, ``method``, ``model``,
        ``dataset``, ``seed``, ``epochs``, ``epochs_done``, ``status`` ("finished", "failed",
        or "unfinished" while training or after an interruption), ``test_acc`` and ``ece`` of the last epoch (None
        before the first), ``grid`` and ``pr`` (None for methods that swap no patches), and the
        full ``config`` and ``summary``.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for cfg_path in sorted(root.rglob(CONFIG)):
        run_dir = cfg_path.parent
        try:
            run = load_run(run_dir)
        except (ValueError, OSError):
            continue  # a stray or broken folder is not a run to show
        cfg, summary, metrics = run["config"] or {}, run["summary"], run["metrics"]
        last = metrics[-1] if metrics else {}
        out.append({
            "name": run_dir.relative_to(root).as_posix(), "path": str(run_dir),
            **{k: cfg.get(k) for k in ("method", "model", "dataset", "seed", "epochs")},
            "epochs_done": len(metrics),
            "status": summary.get("status", "unfinished"),
            "test_acc": last.get("test_acc"), "ece": last.get("ece"),
            **{k: cfg.get(k) if swaps_patches(cfg.get("method")) else None for k in ("grid", "pr")},
            "config": cfg, "summary": summary,
        })
    return out


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The trained model of a run, in eval mode, and its config.

    Args:
        run_dir: a run folder holding ``checkpoint.pt``.
        device: where to put the model.
    Returns:
        (Classifier, config dict).
    Raises:
        FileNotFoundError (no run / no checkpoint), ValueError (corrupt or foreign checkpoint).
    """
    from ipskit.models import build_model

    run_dir = _check_run_dir(run_dir)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    try:
        model = build_model(**ckpt["model_info"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"checkpoint {run_dir / CHECKPOINT} does not match its model_info: "
                         f"{first[:200]}") from None
    return model.to(device).eval(), read_json(run_dir / CONFIG)
