"""The run directory on disk: atomic writes, and reading runs back.

A run folder (``runs/<name>/``, see docs/ARCHITECTURE.md) holds ``config.json``,
``metrics.jsonl``, ``summary.json``, ``env.json``, ``checkpoint.pt`` and, after
``ipskit eval``, ``eval.json``. A run exported with :func:`export_run` (the natural-image
pair shipped in ``results/``) keeps every JSON file but only the weights in ``checkpoint.pt``,
and may carry a small ``test_sample.npz`` (in its folder or the one above) that stands in for
its test set on machines without the dataset. Every file is written atomically (a temporary file in the same
folder, then ``os.replace``), so a run killed at any moment leaves either the old file or the
new one, never half of one. Like minGPT and nanoGPT, the resolved config sits next to every
checkpoint so each number can be traced to its settings.

Usage:
    run = load_run("runs/demo/ips")           # {"config", "metrics", "summary", "eval", "path"}
    model, config = load_model("runs/demo/ips")
    for r in list_runs("runs"): print(r["name"], r["method"], r["test_acc"])
    export_run("runs/natural/ips", "results/natural/ips")   # JSON files + weights only
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ipskit.checks import InputError
from ipskit.registry import swaps_patches

__all__ = [
    "finished_summary",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "ENV",
    "CHECKPOINT",
    "EVAL",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_torch_save",
    "read_json",
    "read_jsonl",
    "claim_run_dir",
    "check_replaceable",
    "replace_run_dir",
    "RunBusyError",
    "load_checkpoint",
    "load_run",
    "list_runs",
    "load_model",
    "export_run",
    "TEST_SAMPLE",
    "write_test_sample",
    "read_test_sample",
    "find_test_sample",
]

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
ENV, CHECKPOINT, EVAL = "env.json", "checkpoint.pt", "eval.json"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "model_info")
MODEL_KEYS = ("model", "model_info")  # all that load_model needs (exported runs hold only these)
TEST_SAMPLE = "test_sample.npz"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``path``, then move it into place.

    Example: ``atomic_write("fig.png", lambda f: fig.savefig(f, format="png"))``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(
            os, "fchmod"
        ):  # mkstemp makes 0600; a run folder follows the umask (shared labs)
            os.fchmod(fd, 0o666 & ~_UMASK)
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


class RunBusyError(InputError):
    """Another process is writing this run folder."""


@contextmanager
def claim_run_dir(run_dir: str | os.PathLike):
    """Hold ``run_dir`` for this process while a run is trained or replaced.

    An exclusive ``flock`` on ``.<name>.lock`` beside the folder (it survives the folder being
    replaced, and the system releases it when the process ends, even by ``kill -9``). A second
    process asking for the same folder gets :class:`RunBusyError` at once, before it loads any
    data. Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    run_dir = Path(run_dir)
    try:
        import fcntl
    except ImportError:
        yield
        return
    created = [d for d in (run_dir.parent, *run_dir.parent.parents) if not d.exists()]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = run_dir.parent / f".{run_dir.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusyError(
                f"run folder {run_dir} is being written by another ipskit process; "
                f"wait for it to finish or choose another --name"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: start again
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it, so nobody locks a removed file
        os.close(fd)
        for d in created:  # folders made only for a run that never started
            try:
                d.rmdir()
            except OSError:
                break


def check_replaceable(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Refuse (InputError, one line) to replace ``run_dir`` when that would lose more than one
    run or cannot be completed: the output folder itself, a folder holding other runs, a
    symbolic link, or a folder (or parent) this process cannot write."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise InputError(
            f"{run_dir} is a symbolic link; ipskit does not replace a run through a "
            f"link: remove the link or choose another --name"
        )
    if run_dir.resolve() == Path(out_dir).resolve():
        raise InputError(
            f"{run_dir} is the output folder itself; --overwrite replaces one run folder inside it"
        )
    others = [c.parent for c in run_dir.rglob(CONFIG) if c.parent != run_dir]
    if others:
        raise InputError(
            f"{run_dir} holds other runs (e.g. {others[0]}); --overwrite replaces "
            f"one run folder, never a folder of runs"
        )
    for folder in (run_dir.parent, run_dir):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"cannot write to {folder} (permission denied); nothing was changed")


def replace_run_dir(run_dir: str | os.PathLike, write_first) -> None:
    """Make ``run_dir`` a new, empty run folder and call ``write_first(run_dir)`` in it; an old
    folder there is moved aside first and deleted only once that write succeeded (on failure
    it is moved back), so an old run is never lost to a replacement that cannot be written."""
    run_dir = Path(run_dir)
    aside = None
    if run_dir.exists():
        aside = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        os.replace(run_dir, aside)
    try:
        run_dir.mkdir(parents=True)
        write_first(run_dir)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        if aside is not None:
            os.replace(aside, run_dir)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def read_json(path: str | os.PathLike, default=None) -> dict:
    """The JSON object (a dict) in ``path``, or ``default`` if the file does not exist.

    Every JSON file of a run is one object; anything else (not UTF-8, not JSON, torn, ``[1]``)
    raises InputError with one line naming the file.
    """
    path = Path(path)
    if not path.exists():
        return default
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text: not a file ipskit wrote") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise InputError(
            f"{path} holds a JSON {type(value).__name__}, not the object ipskit writes there"
        )
    return value


def finished_summary(run_dir: str | os.PathLike) -> dict | None:
    """The summary of the run in ``run_dir`` (with ``run_dir`` added) if it has finished, else
    None: no summary yet, a failed run, or a torn summary (train or resume it instead)."""
    try:
        summary = read_json(Path(run_dir) / SUMMARY, {}) or {}
    except ValueError:
        return None
    return {**summary, "run_dir": str(run_dir)} if summary.get("status") == "finished" else None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a ``.jsonl`` file, one a line (an empty list if it is missing);
    InputError naming the file and line for anything else."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text: not a file ipskit wrote") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {i} is not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path} line {i} holds a JSON {type(row).__name__}, not an object")
        rows.append(row)
    return rows


def load_checkpoint(
    path: str | os.PathLike, map_location="cpu", required: tuple[str, ...] = CHECKPOINT_KEYS
) -> dict:
    """Load and check an ipskit checkpoint with ``weights_only=True``.

    Args:
        path: a ``checkpoint.pt`` file.
        map_location: where tensors go.
        required: keys the checkpoint must hold: all of a training checkpoint by default
            (resuming needs them), :data:`MODEL_KEYS` to use the weights only.
    Returns:
        The checkpoint dict (keys include model, optimizer, scheduler, epoch, rng, model_info).
    Raises:
        FileNotFoundError if missing; ValueError (one line) if unreadable or not ipskit's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: the run has not finished an epoch yet")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"checkpoint {path} cannot be read (corrupt, truncated or not saved "
            f"by ipskit): {first[:200]}"
        ) from None
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        what = (
            "holds the weights only (an exported run): it cannot be resumed"
            if isinstance(ckpt, dict) and ckpt.get("model_only")
            else "is not an ipskit checkpoint"
        )
        raise InputError(f"checkpoint {path} {what}: missing {', '.join(missing)}")
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
    return {
        "path": str(run_dir),
        "config": read_json(run_dir / CONFIG),
        "metrics": read_jsonl(run_dir / METRICS),
        "summary": read_json(run_dir / SUMMARY, {}),
        "eval": read_json(run_dir / EVAL, {}),
        "env": read_json(run_dir / ENV, {}),
    }


def list_runs(root: str | os.PathLike = "runs") -> list[dict]:
    """Every run folder under ``root`` (at any depth), sorted by name.

    Returns:
        list of dicts: ``name`` (path relative to root), ``path``, ``method``, ``model``,
        ``dataset``, ``seed``, ``epochs``, ``epochs_done``, ``status`` ("finished", "failed",
        "unfinished" while training or after an interruption, or "broken" when a file of the
        folder cannot be read: then ``error`` says which and why, and the rest is empty), ``test_acc`` and ``ece`` of the last epoch (None
        before the first), ``has_model`` (a checkpoint is there; reference runs may keep their
        numbers only), ``grid`` and ``pr`` (None for methods that swap no patches), and the
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
        except (ValueError, OSError) as e:  # one broken run must not hide the others
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            out.append(
                {
                    "name": run_dir.relative_to(root).as_posix(),
                    "path": str(run_dir),
                    **{
                        k: None
                        for k in (
                            "method",
                            "model",
                            "dataset",
                            "seed",
                            "epochs",
                            "test_acc",
                            "ece",
                            "grid",
                            "pr",
                        )
                    },
                    "epochs_done": 0,
                    "status": "broken",
                    "error": first,
                    "has_model": False,
                    "config": {},
                    "summary": {},
                }
            )
            continue
        cfg, summary, metrics = run["config"] or {}, run["summary"], run["metrics"]
        last = metrics[-1] if metrics else {}
        out.append(
            {
                "name": run_dir.relative_to(root).as_posix(),
                "path": str(run_dir),
                **{k: cfg.get(k) for k in ("method", "model", "dataset", "seed", "epochs")},
                "epochs_done": len(metrics),
                "status": summary.get("status", "unfinished"),
                "test_acc": last.get("test_acc"),
                "ece": last.get("ece"),
                "has_model": (run_dir / CHECKPOINT).is_file(),
                **{
                    k: cfg.get(k) if swaps_patches(cfg.get("method")) else None
                    for k in ("grid", "pr")
                },
                "config": cfg,
                "summary": summary,
            }
        )
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
    ckpt = load_checkpoint(run_dir / CHECKPOINT, required=MODEL_KEYS)
    try:
        model = build_model(**ckpt["model_info"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(
            f"checkpoint {run_dir / CHECKPOINT} does not match its model_info: {first[:200]}"
        ) from None
    return model.to(device).eval(), read_json(run_dir / CONFIG)


def export_run(
    run_dir: str | os.PathLike, dest: str | os.PathLike, max_bytes: int = 2_000_000
) -> Path:
    """Copy a finished run to ``dest`` with its weights only: small enough to ship in a repo.

    Every JSON file of the run is copied; ``checkpoint.pt`` keeps ``model`` and ``model_info``
    (plus ``epoch`` and ``config`` for the record, and ``model_only=True``) and drops the
    optimizer, scheduler and RNG state, so the copy can be loaded (:func:`load_model`, the
    explorer, ``ipskit eval``) but not resumed.

    Args:
        run_dir: a finished run folder. dest: the folder to create or replace.
        max_bytes: refuse weights larger than this (ValueError), before anything is written.
    Returns:
        ``dest`` as a Path.
    """
    run_dir, dest = _check_run_dir(run_dir), Path(dest)
    ckpt = load_checkpoint(run_dir / CHECKPOINT, required=MODEL_KEYS)
    slim = {
        "model": ckpt["model"],
        "model_info": ckpt["model_info"],
        "epoch": ckpt.get("epoch"),
        "config": ckpt.get("config"),
        "ipskit_version": ckpt.get("ipskit_version"),
        "model_only": True,
    }
    size = sum(t.numel() * t.element_size() for t in ckpt["model"].values())
    if size > max_bytes:
        raise InputError(
            f"the weights of {run_dir} take {size / 1e6:.1f} MB; the limit is "
            f"{max_bytes / 1e6:g} MB (use a smaller model)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, METRICS, SUMMARY, ENV, EVAL):
        if (run_dir / name).is_file():
            atomic_write(dest / name, lambda f, src=run_dir / name: f.write(src.read_bytes()))
    atomic_torch_save(slim, dest / CHECKPOINT)
    return dest


def write_test_sample(
    path: str | os.PathLike, x: torch.Tensor, y: torch.Tensor, classes: list[str]
) -> Path:
    """Save test images as a compressed ``.npz`` (``x`` uint8 [N, C, H, W], ``y`` [N], class names).

    A sample next to a shipped run lets the explorer show that run on a machine without its
    dataset (see :func:`find_test_sample`).
    """
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8 or x.dim() != 4 or len(y) != len(x):
        raise InputError(
            f"x must be uint8 [N, C, H, W] with one label each, got {x.dtype} "
            f"{tuple(x.shape)} and {len(y)} labels"
        )
    path = Path(path)
    atomic_write(
        path,
        lambda f: np.savez_compressed(
            f, x=x.numpy(), y=np.asarray(y, dtype=np.int64), classes=np.asarray(classes, dtype=str)
        ),
    )
    return path


def read_test_sample(path: str | os.PathLike) -> dict:
    """A sample written by :func:`write_test_sample`: dict ``x`` uint8 [N, C, H, W] (numpy),
    ``y`` int64 [N], ``classes`` list of names. ValueError (one line) if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {
                "x": f["x"],
                "y": f["y"].astype(np.int64),
                "classes": [str(c) for c in f["classes"]],
            }
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"{path} is not a test sample written by ipskit ({e})") from None
    if out["x"].dtype != np.uint8 or out["x"].ndim != 4 or len(out["y"]) != len(out["x"]):
        raise InputError(f"{path} is not a test sample written by ipskit (bad shapes)")
    return out


def find_test_sample(run_dir: str | os.PathLike) -> Path | None:
    """The ``test_sample.npz`` shipped with a run: in its folder or the folder above, or None."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir.parent):
        if (folder / TEST_SAMPLE).is_file():
            return folder / TEST_SAMPLE
    return None
