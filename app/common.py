"""UI helpers shared by the explorer's pages: page setup, cached loaders, run picker, errors.

The explorer (``streamlit run app/Home.py``) shows Intra-class Patch Swap (Choi et al.,
"Intra-class Patch Swap for Self-Distillation", arXiv 2505.14124) on trained runs. It is only
UI (docs/ARCHITECTURE.md, Conventions, "The app is only UI"): every number and figure comes
from a call into ``ipskit``. This module holds the glue every page needs, following Streamlit's
caching split: a model is a resource (``st.cache_resource``, one shared object per checkpoint),
data and results are values (``st.cache_data``, keyed by the files' modification times so a
retrained run is picked up).

Usage in a page::

    import common
    common.page("Runs")                       # page config + title
    runs = common.require_runs()              # stops the page with the demo offer when empty
    run = common.pick_run("Run", runs, key="runs_pick")
    model, config = common.load_model(run["path"])   # raises ValueError on a bad checkpoint

The runs folder is ``$IPSKIT_RUNS`` (default ``runs``, relative to the working directory).
Beside it, the explorer lists the runs shipped in the repository's ``results/`` folder
(``$IPSKIT_RESULTS`` moves it; set it empty to hide them), named ``results/<folder>/<run>``:
the natural-image CE / IPS pair, whose test images travel with it as ``test_sample.npz``, and
the GPU reference runs, which keep their numbers but no weights (``has_model`` is False).
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from ipskit import runs as ipsruns
from ipskit.data import to_float01

RUNS_ENV = "IPSKIT_RUNS"
RESULTS_ENV = "IPSKIT_RESULTS"
RESULTS_PREFIX = "results/"  # how shipped runs are named in pickers and tables
DATA_ENV = "IPSKIT_DATA"
MAX_EVAL_SAMPLES = 2000  # test images per run the pages predict on (keeps CIFAR pages quick)
# Models are cached once per process and shared by every session; Grad-CAM hangs hooks on
# them, so every forward pass in the app takes this lock (one at a time).
MODEL_LOCK = threading.Lock()
# One demo training per server process, whichever tab asked for it.
DEMO_LOCK = threading.Lock()
# One sweep started from the Ablation page per server process.
SWEEP_LOCK = threading.Lock()
# Figures are shown at most this many screen pixels per inch of figure (ipskit.plots sizes its
# text in points for that: 12 pt is ~17 px), and saved at twice that for slides.
FIGURE_PX_PER_INCH = 100
FIGURE_DPI = 200


# ------------------------------------------------------------------------------------ pages
def page(title: str, icon: str = "🔀", intro: str | None = None) -> None:
    """Set the page config (browser title ``"<title> · ipskit"``, wide layout) and draw the title."""
    st.set_page_config(page_title=f"{title} · ipskit", page_icon=icon, layout="wide")
    st.title(title)
    if intro:
        st.caption(intro)


def guard(body: Callable[[], None]) -> None:
    """Run a page body; an unexpected exception becomes one ``st.error`` line, not a traceback.

    Streamlit's own control flow (``st.stop``, ``st.rerun``, ``st.switch_page``) derives from
    BaseException and passes through untouched.
    """
    try:
        body()
    except Exception as e:  # last resort: expected bad input is handled where it happens
        where = traceback.extract_tb(e.__traceback__)[-1]
        st.error(
            f"This page hit an unexpected problem: {one_line(e)} "
            f"({type(e).__name__} at {Path(where.filename).name}:{where.lineno}). "
            f"The other pages keep working."
        )


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes at ``FIGURE_DPI`` (tight bounding box)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def download_png(fig, name: str, png: bytes | None = None) -> None:
    """A "Download PNG" button for a figure (for slides); ``name`` names the file and keys the
    button, so it must be unique on the page."""
    st.download_button(
        "Download PNG",
        png if png is not None else figure_png(fig),
        file_name=f"{name}.png",
        mime="image/png",
        key=f"png_{name}",
        on_click="ignore",
        icon=":material/download:",
    )


def figure(fig, name: str) -> None:
    """Show a matplotlib figure (from ``ipskit.plots``) at a legible size, ``FIGURE_PX_PER_INCH``
    pixels per inch at most (a narrower column shrinks it), with a "Download PNG" button under
    it that saves exactly what is shown."""
    png = figure_png(fig)
    width_px = int.from_bytes(png[16:20], "big")  # the PNG header's width field
    st.image(png, width=max(1, width_px * FIGURE_PX_PER_INCH // FIGURE_DPI))
    download_png(fig, name, png)


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(e).strip()
    if isinstance(e, KeyError) and text.startswith("'"):
        text = f"missing key {text}"
    return text.splitlines()[0][:300] if text else type(e).__name__


# ------------------------------------------------------------------------------------ runs
def runs_root() -> Path:
    """The folder holding run folders: ``$IPSKIT_RUNS`` or ``runs``."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


def results_root() -> Path | None:
    """The shipped runs: ``$IPSKIT_RESULTS``, else the repository's ``results/``; None when
    ``$IPSKIT_RESULTS`` is set empty or the folder is missing."""
    env = os.environ.get(RESULTS_ENV)
    root = Path(env) if env else Path(__file__).resolve().parents[1] / "results"
    return root if env != "" and root.is_dir() else None


def data_root() -> str:
    """Where datasets are looked for: ``$IPSKIT_DATA`` or ``data``."""
    return os.environ.get(DATA_ENV) or "data"


def _stamp(root: Path, pattern: str) -> tuple:
    """(path, mtime_ns, size) of matching files under ``root``: a cheap cache key that changes
    whenever a run is written, finished, evaluated or deleted."""
    if not root.is_dir():
        return ()
    out = []
    for p in root.rglob(pattern):
        try:
            st_ = p.stat()
        except OSError:
            continue
        out.append((str(p), st_.st_mtime_ns, st_.st_size))
    return tuple(sorted(out))


@st.cache_data(show_spinner=False, max_entries=8)
def _list_runs(root: str, stamp: tuple) -> list[dict]:
    return ipsruns.list_runs(root)


def user_runs() -> list[dict]:
    """Every run under the runs folder (``ipskit.runs.list_runs`` rows), cached until a file
    changes."""
    root = runs_root()
    return _list_runs(str(root), _stamp(root, "*.json*"))


def list_runs() -> list[dict]:
    """The runs folder's runs, then the shipped runs of ``results/`` (``shipped`` is True and
    ``name`` starts with ``results/``)."""
    shipped = results_root()
    extra = [] if shipped is None else _list_runs(str(shipped), _stamp(shipped, "*.json*"))
    return user_runs() + [{**r, "name": RESULTS_PREFIX + r["name"], "shipped": True} for r in extra]


def model_runs(runs: list[dict]) -> list[dict]:
    """The runs whose weights are on disk (a finished epoch and a checkpoint)."""
    return [r for r in runs if r.get("epochs_done") and r.get("has_model", True)]


@st.cache_data(show_spinner=False, max_entries=64)
def _load_run(path: str, stamp: tuple) -> dict:
    return ipsruns.load_run(path)


def load_run(run_dir: str | Path) -> dict:
    """``ipskit.runs.load_run`` (config, metrics, summary, eval, env), cached until a file
    changes. Raises FileNotFoundError/ValueError with one line for a broken run folder."""
    return _load_run(str(run_dir), _stamp(Path(run_dir), "*.json*"))


def file_stamp(path: str | Path) -> int:
    """Modification time of a file in ns (0 when missing): part of a cache key."""
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return 0


def resolve_run_dir(path: str) -> Path:
    """A user-given run folder, resolved and checked to lie inside the runs folder.

    Args:
        path: absolute, relative to the runs folder (``demo/ips``) or to the working directory.
    Returns:
        The resolved folder.
    Raises:
        ValueError: empty, outside the runs folder, or not an ipskit run folder.
    """
    text = str(path).strip()
    if not text:
        raise ValueError("no run folder given; type a folder under the runs folder")
    root = runs_root().resolve()
    shipped = results_root()
    roots = [root] + ([shipped.resolve()] if shipped is not None else [])
    p = Path(text).expanduser()
    if not p.is_absolute():
        if (
            shipped is not None
            and text.startswith(RESULTS_PREFIX)
            and (shipped / text[len(RESULTS_PREFIX) :]).exists()
        ):
            p = shipped / text[len(RESULTS_PREFIX) :]
        else:
            p = runs_root() / p if (runs_root() / p).exists() else Path.cwd() / p
    p = p.resolve()
    if not any(p == r or r in p.parents for r in roots):
        raise ValueError(
            f"{text} is outside the runs folder {root}: the explorer only opens "
            f"runs under it or the shipped results (set {RUNS_ENV} to use "
            f"another folder)"
        )
    if not (p / ipsruns.CONFIG).is_file():
        raise ValueError(f"{text} is not an ipskit run folder (no {ipsruns.CONFIG} in it)")
    return p


def run_label(run: dict) -> str:
    """One line naming a run for pickers: name, method, model, dataset and last accuracy."""
    acc = run.get("test_acc")
    acc_s = f"acc {acc:.3f}" if isinstance(acc, (int, float)) else run.get("status", "")
    extra = f", grid {run['grid']}, pr {run['pr']}" if run.get("grid") is not None else ""
    return f"{run['name']} · {run.get('method')}{extra} · {run.get('model')} · {acc_s}"


def pick_run(
    label: str,
    runs: list[dict],
    key: str,
    index: int = 0,
    allow_none: str | None = None,
    help: str | None = None,
) -> dict | None:
    """A selectbox of runs; returns the chosen run's row (None for the ``allow_none`` entry)."""
    names = ([""] if allow_none else []) + [r["name"] for r in runs]
    by_name = {r["name"]: r for r in runs}
    choice = st.selectbox(
        label,
        names,
        index=min(index, len(names) - 1) if names else None,
        key=key,
        help=help,
        format_func=lambda n: allow_none if n == "" else run_label(by_name[n]),
    )
    return by_name.get(choice) if choice else None


def default_pair(runs: list[dict]) -> tuple[int, int]:
    """Indices of a CE run and an IPS run to compare by default (the first two otherwise)."""
    methods = [r.get("method") for r in runs]
    a = methods.index("ce") if "ce" in methods else 0
    b = methods.index("ips") if "ips" in methods else min(1, len(runs) - 1)
    return a, b


def require_runs() -> list[dict]:
    """The runs on disk and the shipped ones; with none at all, explain and offer to train
    the demo runs, then stop."""
    runs = list_runs()
    if not runs:
        offer_demo()
        st.stop()
    return runs


def offer_demo() -> None:
    """Say that no runs exist and offer a button training the demo runs on the CPU."""
    root = runs_root()
    st.info(
        f"No runs found under `{root}`. Train the two demo runs (cross-entropy and IPS "
        f"on the built-in digits data, about a minute on a CPU) with the button below, or "
        f"run `ipskit demo` in a terminal."
    )
    if st.button("Train the demo runs", type="primary", key="train_demo"):
        try:
            train_demo(root / "demo")
        except Exception as e:
            st.error(f"Training the demo runs failed: {one_line(e)}")
            return
        st.success("Demo runs trained.")
        st.rerun()


def train_demo(out: Path) -> None:
    """Train the demo runs (``ipskit.sweep.run_demo``) with a progress bar per epoch.

    The training runs in a worker thread, so it finishes and writes its runs even if the page
    is left; its ``on_epoch`` callback records the epochs done, and this script thread (the
    only one allowed to update Streamlit elements) moves the bar.
    """
    from ipskit import sweep

    methods, epochs = ("ce", "ips"), int(sweep.DEMO_SETTINGS.get("epochs", 1))
    total = len(methods) * epochs
    done: dict[str, int] = {}
    result: dict = {}

    def work() -> None:
        try:
            result["summaries"] = sweep.run_demo(
                out=str(out),
                progress=False,
                on_epoch=lambda cfg, row: done.__setitem__(cfg.method, int(row["epoch"])),
            )
        except Exception as e:  # re-raised in the script thread below
            result["error"] = e
        finally:
            DEMO_LOCK.release()

    if not DEMO_LOCK.acquire(blocking=False):
        raise RuntimeError(
            "the demo runs are already being trained (another tab asked first); "
            "reload this page in a minute"
        )
    worker = threading.Thread(target=work, name="ipskit-demo", daemon=True)
    worker.start()
    bar = st.progress(0.0, text="Starting…")
    while worker.is_alive():
        n = sum(done.values())
        bar.progress(min(n / total, 1.0), text=f"Training the demo runs: epoch {n} of {total}")
        worker.join(0.5)
    if "error" in result:
        raise result["error"]
    bar.progress(1.0, text=f"Trained {total} epochs")


# ------------------------------------------------------------------------------------ models
@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _load_model(path: str, stamp: int):
    return ipsruns.load_model(path, "cpu")


def load_model(run_dir: str | Path):
    """(Classifier in eval mode, config dict) of a run, shared across sessions.

    Raises:
        FileNotFoundError or ValueError with one line (missing, corrupt or foreign checkpoint).
    """
    return _load_model(str(run_dir), file_stamp(Path(run_dir) / ipsruns.CHECKPOINT))


# ------------------------------------------------------------------------------------ data
@st.cache_data(show_spinner="Loading the data…", max_entries=6)
def test_split(dataset: str, image_size: int | None, root: str) -> dict:
    """The test split of a dataset as numpy arrays.

    Returns:
        dict: ``x`` uint8 [N, C, H, W], ``y`` int64 [N], ``classes`` list of names.
    """
    from ipskit.data import load_dataset

    bundle = load_dataset(dataset, root=root, image_size=image_size, download=False)
    if bundle.test_x is None:
        raise ValueError(
            f"{dataset} is too large to hold in memory; the explorer needs its "
            f"test images as one array"
        )
    return {
        "x": np.asarray(bundle.test_x),
        "y": np.asarray(bundle.test_y).astype(np.int64),
        "classes": [str(c) for c in bundle.classes],
    }


@st.cache_data(show_spinner=False, max_entries=6)
def _read_sample(path: str, stamp: int) -> dict:
    return ipsruns.read_test_sample(path)


def run_test_split(config: dict, run_dir: str | Path | None = None) -> dict:
    """The test split a run was evaluated on (its dataset at its image size), or, when that
    dataset is not on this machine, the ``test_sample.npz`` shipped with the run (its ``note``
    says so)."""
    try:
        return test_split(
            config["dataset"], config.get("image_size"), config.get("data_root") or data_root()
        )
    except (OSError, ValueError, RuntimeError):  # missing folder, offline CIFAR
        sample = ipsruns.find_test_sample(run_dir) if run_dir is not None else None
        if sample is None:
            raise
        out = dict(_read_sample(str(sample), file_stamp(sample)))
        out["note"] = (
            f"{config['dataset']} is not on this machine; showing the "
            f"{len(out['y'])} test images shipped with the run"
        )
        return out


def dataset_test_split(dataset: str, runs: list[dict]) -> dict:
    """A dataset's test split, or the sample shipped with a run trained on it."""
    for r in runs:
        if r.get("dataset") == dataset and ipsruns.find_test_sample(r["path"]) is not None:
            return run_test_split(r["config"], r["path"])
    return test_split(dataset, None, data_root())


def to_float(x_uint8: np.ndarray) -> torch.Tensor:
    """uint8 images [B, C, H, W] (numpy, as cached) -> float tensor in [0, 1], what the models
    take."""
    return to_float01(torch.from_numpy(np.ascontiguousarray(x_uint8)))


@st.cache_data(show_spinner="Running the model on the test images…", max_entries=32)
def _test_logits(path: str, stamp: int, max_samples: int) -> dict:
    from ipskit.metrics import predict

    model, config = load_model(path)
    data = run_test_split(config, path)
    n = min(max_samples, len(data["y"]))
    with MODEL_LOCK:
        logits = predict(model, to_float(data["x"][:n]), batch_size=256)
    return {"logits": logits.numpy(), "labels": data["y"][:n], "classes": data["classes"]}


def test_logits(run_dir: str | Path, max_samples: int = MAX_EVAL_SAMPLES) -> dict:
    """A run's logits on (the first ``max_samples``) test images, cached per checkpoint.

    Returns:
        dict: ``logits`` float32 [N, K], ``labels`` int64 [N], ``classes``.
    """
    return _test_logits(
        str(run_dir), file_stamp(Path(run_dir) / ipsruns.CHECKPOINT), int(max_samples)
    )


@st.cache_data(show_spinner=False, max_entries=32)
def _reports(path: str, stamp: int, max_samples: int) -> dict:
    from ipskit.metrics import calibration_report, smoothing_report

    out = test_logits(path, max_samples)
    logits, labels = torch.from_numpy(out["logits"]), torch.from_numpy(out["labels"])
    return {
        "calibration": calibration_report(logits, labels),
        "smoothing": smoothing_report(logits, labels),
    }


def reports(run_dir: str | Path, max_samples: int = MAX_EVAL_SAMPLES) -> dict:
    """``ipskit.metrics.calibration_report`` and ``smoothing_report`` of a run on its test
    images, cached per checkpoint: dict with keys ``calibration`` and ``smoothing``."""
    return _reports(str(run_dir), file_stamp(Path(run_dir) / ipsruns.CHECKPOINT), int(max_samples))


@st.cache_data(show_spinner="Computing Grad-CAM…", max_entries=64)
def _cams(path: str, stamp: int, layer: str, x01: np.ndarray, targets: tuple | None) -> np.ndarray:
    from ipskit.cam import gradcam

    model, _ = load_model(path)
    with MODEL_LOCK:  # hooks on a model other sessions share
        maps = gradcam(
            model,
            torch.from_numpy(x01),
            targets=None if targets is None else list(targets),
            layer=model.get_layer(layer),
        )
    return maps.numpy()


def cams(run_dir: str | Path, layer: str, x01: torch.Tensor, targets=None) -> np.ndarray:
    """``ipskit.cam.gradcam`` maps of a run's model, cached per (checkpoint, layer, images).

    Args:
        layer: a name from ``model.cam_layer_names()``.
        x01: images [B, C, H, W] in [0, 1]; targets: class ids [B] or None (top-1 class).
    Returns:
        float32 [B, H, W] in [0, 1].
    """
    t = None if targets is None else tuple(int(v) for v in targets)
    return _cams(
        str(run_dir),
        file_stamp(Path(run_dir) / ipsruns.CHECKPOINT),
        layer,
        np.ascontiguousarray(x01.detach().float().cpu().numpy()),
        t,
    )
