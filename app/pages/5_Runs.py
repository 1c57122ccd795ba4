"""Runs: every run folder on disk with its settings, training curves and evaluation results.

Part of the ipskit explorer (``streamlit run app/Home.py``) for Intra-class Patch Swap
(Choi et al., arXiv 2505.14124). Reads run folders (docs/ARCHITECTURE.md) under
``$IPSKIT_RUNS`` through ``ipskit.runs``; the evaluation a run lacks can be computed from here
(``ipskit.evaluate.evaluate_run``, with a progress bar). Curves are ``ipskit.plots.run_curves``.
Other pages link here with ``?run=<name>``.
"""

import threading
import time
from pathlib import Path

import common
import pandas as pd
import streamlit as st

from ipskit import plots

CALIBRATION_KEYS = ("n", "top1", "nll", "brier", "ece", "mce", "mean_max_prob")


def main() -> None:
    runs = common.require_runs()
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "run": r["name"],
                    "method": r.get("method"),
                    "model": r.get("model"),
                    "dataset": r.get("dataset"),
                    "seed": r.get("seed"),
                    "grid": r.get("grid"),
                    "pr": r.get("pr"),
                    "epochs": f"{r.get('epochs_done')}/{r.get('epochs')}",
                    "test acc": r.get("test_acc"),
                    "ECE": r.get("ece"),
                    "status": r.get("status"),
                }
                for r in runs
            ]
        ),
        hide_index=True,
        width="stretch",
    )

    names = [r["name"] for r in runs]
    wanted = st.query_params.get("run")
    if wanted in names and st.session_state.get("runs_linked") != wanted:
        st.session_state["runs_pick"] = wanted  # a link from another page selects its run
        st.session_state["runs_linked"] = wanted
    left, right = st.columns([2, 1])
    with left:
        run = common.pick_run("Run", runs, key="runs_pick")
    with right:
        typed = st.text_input(
            "…or open a run folder by path",
            key="runs_path",
            placeholder="demo/ips or runs/demo/ips",
        )
    path = run["path"]
    if typed.strip():
        try:
            path = str(common.resolve_run_dir(typed))
        except ValueError as e:
            st.error(common.one_line(e))
            return
    show_run(path)


def show_run(path: str) -> None:
    """Everything about one run: headline numbers, curves, settings, evaluation, checkpoint."""
    try:
        run = common.load_run(path)
    except (OSError, ValueError) as e:
        st.error(f"Cannot read this run: {common.one_line(e)}")
        return
    cfg, summary, metrics = run["config"] or {}, run["summary"], run["metrics"]
    last = metrics[-1] if metrics else {}
    st.subheader(
        f"{cfg.get('method')} · {cfg.get('model')} · {cfg.get('dataset')} · seed {cfg.get('seed')}"
    )
    status = summary.get("status", "unfinished")
    st.caption(f"`{path}` · {status} · {len(metrics)} of {cfg.get('epochs')} epochs")
    if status == "failed":
        st.warning(f"This run failed: {summary.get('error', 'no reason recorded')}")
    cols = st.columns(4)
    for col, (label, key, fmt) in zip(
        cols,
        [
            ("test accuracy", "test_acc", "{:.2%}"),
            ("ECE", "ece", "{:.4f}"),
            ("mean max-prob", "mean_max_prob", "{:.3f}"),
            ("train time", "wall_time_s", "{:.0f} s"),
        ],
    ):
        value = summary.get(key, last.get(key))
        col.metric(label, fmt.format(value) if isinstance(value, (int, float)) else "–")

    curves, settings, evaluation, checkpoint = st.tabs(
        ["Curves", "Settings", "Evaluation", "Checkpoint"]
    )
    with curves:
        if not metrics:
            st.info("No finished epoch yet.")
        else:
            epochs = sorted({int(r["epoch"]) for r in metrics if "epoch" in r})
            first = 1
            if len(epochs) > 2:
                col, _ = st.columns([1, 2])
                first = col.select_slider(
                    "Show from epoch",
                    epochs[:-1],
                    epochs[0],
                    key="runs_from",
                    help="Leave out the first epochs to zoom the axes on the end of training",
                )
            try:
                fig = plots.run_curves(metrics, first_epoch=first)
            except ValueError as e:
                st.info(f"No curves to draw: {common.one_line(e)}")
            else:
                common.figure(fig, "curves")
    with settings:
        st.json(cfg, expanded=True)
    with evaluation:
        show_eval(path, run["eval"], has_model=(Path(path) / "checkpoint.pt").is_file())
    with checkpoint:
        if not (Path(path) / "checkpoint.pt").is_file():
            st.info(
                "No weights in this run folder: "
                + (
                    "a reference run shipped with its numbers only (see results/README.md)."
                    if is_shipped(path)
                    else "the run has not finished an epoch yet."
                )
            )
            return
        try:
            model, _ = common.load_model(path)
        except (OSError, ValueError) as e:
            st.error(f"The checkpoint cannot be used: {common.one_line(e)}")
        else:
            n_params = sum(p.numel() for p in model.parameters())
            st.write(
                f"{model.name}: {n_params:,} parameters, {model.in_channels} channel(s), "
                f"{model.image_size}x{model.image_size} input, {model.num_classes} classes; "
                f"Grad-CAM layers: {', '.join(model.cam_layer_names())}."
            )
            st.json(model.model_info, expanded=False)


def is_shipped(path: str) -> bool:
    """Whether a run folder is one of the runs shipped in ``results/`` (read-only here)."""
    root = common.results_root()
    return root is not None and root.resolve() in Path(path).resolve().parents


def show_eval(path: str, results: dict, has_model: bool = True) -> None:
    """The run's eval.json (``ipskit eval``), kind by kind, and an offer to compute the rest."""
    from ipskit import evaluate

    name = Path(path).name
    for kind, entry in results.items():
        result = entry.get("result", entry) if isinstance(entry, dict) else entry
        st.markdown(f"**{kind}**")
        if kind == "calibration" and "test" in result:
            rows = [
                {"split": split, **{k: result[split].get(k) for k in CALIBRATION_KEYS}}
                for split in ("test", "heldout", "heldout_scaled")
                if split in result
            ]
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
            st.caption(
                f"Temperature fitted on half of the test set: T = {result.get('temperature', float('nan')):.3f}; "
                f"heldout_scaled is the other half after dividing the logits by T."
            )
            col, _ = st.columns([1, 1])
            with col:
                common.figure(
                    plots.reliability_diagram(result["test"], title=name), "eval_reliability"
                )
        elif kind == "smoothing" and "overall" in result:
            st.dataframe(pd.DataFrame([result["overall"]]), hide_index=True, width="stretch")
        elif kind == "fgsm" and "epsilons" in result:
            col, _ = st.columns([1, 1])
            with col:
                common.figure(plots.fgsm_curves({name: result}), "eval_fgsm")
        elif kind in ("corruptions", "cifar_c") and "accuracy" in result:
            st.write(
                f"clean accuracy {result.get('clean', float('nan')):.4f}, mean corruption "
                f"accuracy {result.get('mean_corruption_accuracy', float('nan')):.4f}"
            )
            common.figure(plots.corruption_curves({name: result}), f"eval_{kind}")
        else:
            st.json(result, expanded=False)

    missing = [k for k in evaluate.DEFAULT_WHAT if k not in results]
    if not missing:
        return
    if not has_model:
        if not results:
            st.info("No evaluation results for this run, and no weights to compute them from.")
        return
    if is_shipped(path):
        if not results:
            st.info(
                "No evaluation results shipped with this run. Shipped runs are read-only "
                "here; evaluate a copy under your runs folder (`ipskit eval RUN_DIR`)."
            )
        return
    from ipskit.robustness import CORRUPTIONS

    if not results:
        st.info(
            "No evaluation results for this run yet. Compute them here (or with "
            f"`ipskit eval {path}` in a terminal); they are stored in its eval.json."
        )
    cost = {
        "calibration": "seconds",
        "smoothing": "seconds",
        "fgsm": f"{len(evaluate.DEFAULT_EPSILONS)} attacks",
        "corruptions": f"{len(CORRUPTIONS)} corruptions x 5 severities: slow on a CPU",
    }
    kinds = st.multiselect(
        "Compute",
        missing,
        default=[k for k in missing if k != "corruptions"],
        key="runs_eval_kinds",
        format_func=lambda k: f"{k} ({cost.get(k, '')})",
        help=f"corruptions applies {len(CORRUPTIONS)} corruptions at 5 severities: slow on a CPU",
    )
    if st.button("Compute the evaluation", key="runs_eval", disabled=not kinds, type="primary"):
        try:
            run_evaluation(path, kinds)
        except Exception as e:
            st.error(f"The evaluation failed: {common.one_line(e)}")
            return
        st.rerun()


def run_evaluation(path: str, kinds: list[str]) -> None:
    """``ipskit.evaluate.evaluate_run`` kind by kind in a worker thread (it finishes and writes
    eval.json even if the page is left), with a bar naming the kind and the time so far."""
    from ipskit import evaluate

    state: dict = {"done": 0}

    def work() -> None:
        try:
            for kind in kinds:
                state["kind"] = kind
                evaluate.evaluate_run(path, what=(kind,))
                state["done"] += 1
        except Exception as e:  # re-raised in the script thread below
            state["error"] = e

    worker = threading.Thread(target=work, name="ipskit-eval", daemon=True)
    start = time.monotonic()
    worker.start()
    bar = st.progress(0.0, text="Evaluating…")
    while worker.is_alive():
        done = state["done"]
        bar.progress(
            done / len(kinds),
            text=f"Evaluating {state.get('kind', kinds[0])} "
            f"({done + 1} of {len(kinds)}), "
            f"{time.monotonic() - start:.0f} s",
        )
        worker.join(0.5)
    if "error" in state:
        raise state["error"]
    bar.progress(1.0, text=f"Evaluated {', '.join(kinds)} in {time.monotonic() - start:.0f} s")


common.page("Runs", icon="📁", intro="Every run on disk: settings, curves and evaluation")
common.guard(main)
