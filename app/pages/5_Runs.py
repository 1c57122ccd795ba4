"""Runs: every run folder on disk with its settings, training curves and evaluation results.

Part of the ipskit explorer (``streamlit run app/Home.py``) for Intra-class Patch Swap
(Choi et al., arXiv 2505.14124). Reads run folders (docs/ARCHITECTURE.md) under
``$IPSKIT_RUNS`` through ``ipskit.runs``; a run without ``eval.json`` can be evaluated from here
(``ipskit.evaluate.evaluate_run``). Other pages link here with ``?run=<name>``.
"""
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

import common

CALIBRATION_KEYS = ("n", "top1", "nll", "brier", "ece", "mce", "mean_max_prob")
CURVES = {
    "accuracy": ["train_acc", "test_acc"],
    "loss": ["train_loss", "train_ce", "train_kd", "test_loss"],
    "confidence": ["ece", "mean_max_prob"],
}


def main() -> None:
    runs = common.require_runs()
    st.dataframe(pd.DataFrame([{
        "run": r["name"], "method": r.get("method"), "model": r.get("model"),
        "dataset": r.get("dataset"), "seed": r.get("seed"),
        "grid": r.get("grid"), "pr": r.get("pr"),
        "epochs": f"{r.get('epochs_done')}/{r.get('epochs')}", "test acc": r.get("test_acc"),
        "ECE": r.get("ece"), "status": r.get("status")} for r in runs]),
        hide_index=True, width="stretch")

    names = [r["name"] for r in runs]
    wanted = st.query_params.get("run")
    if wanted in names and st.session_state.get("runs_linked") != wanted:
        st.session_state["runs_pick"] = wanted  # a link from another page selects its run
        st.session_state["runs_linked"] = wanted
    left, right = st.columns([2, 1])
    with left:
        run = common.pick_run("Run", runs, key="runs_pick")
    with right:
        typed = st.text_input("…or open a run folder by path", key="runs_path",
                              placeholder="demo/ips or runs/demo/ips")
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
    st.subheader(f"{cfg.get('method')} · {cfg.get('model')} · {cfg.get('dataset')} · seed "
                 f"{cfg.get('seed')}")
    status = summary.get("status", "unfinished")
    st.caption(f"`{path}` · {status} · {len(metrics)} of {cfg.get('epochs')} epochs")
    if status == "failed":
        st.warning(f"This run failed: {summary.get('error', 'no reason recorded')}")
    cols = st.columns(4)
    for col, (label, key, fmt) in zip(cols, [("test accuracy", "test_acc", "{:.2%}"),
                                             ("ECE", "ece", "{:.4f}"),
                                             ("mean max-prob", "mean_max_prob", "{:.3f}"),
                                             ("train time", "wall_time_s", "{:.0f} s")]):
        value = summary.get(key, last.get(key))
        col.metric(label, fmt.format(value) if isinstance(value, (int, float)) else "–")

    curves, settings, evaluation, checkpoint = st.tabs(
        ["Curves", "Settings", "Evaluation", "Checkpoint"])
    with curves:
        if not metrics:
            st.info("No finished epoch yet.")
        else:
            df = pd.DataFrame(metrics).set_index("epoch")
            for col, (title, keys) in zip(st.columns(len(CURVES)), CURVES.items()):
                keys = [k for k in keys if k in df]
                if keys:
                    col.altair_chart(curve_chart(df, keys, f"{title} per epoch"), width="stretch")
    with settings:
        st.json(cfg, expanded=True)
    with evaluation:
        show_eval(path, run["eval"])
    with checkpoint:
        try:
            model, _ = common.load_model(path)
        except (OSError, ValueError) as e:
            st.error(f"The checkpoint cannot be used: {common.one_line(e)}")
        else:
            n_params = sum(p.numel() for p in model.parameters())
            st.write(f"{model.name}: {n_params:,} parameters, {model.in_channels} channel(s), "
                     f"{model.image_size}x{model.image_size} input, {model.num_classes} classes; "
                     f"Grad-CAM layers: {', '.join(model.cam_layer_names())}.")
            st.json(model.model_info, expanded=False)


def curve_chart(df: pd.DataFrame, keys: list[str], title: str) -> alt.Chart:
    """Lines with a point per epoch (a one-epoch run still shows its values)."""
    long = df.reset_index().melt("epoch", value_vars=keys, var_name="metric")
    return alt.Chart(long, title=title).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("value:Q", title=None),
        color=alt.Color("metric:N", legend=alt.Legend(orient="bottom", columns=2, title=None)),
        tooltip=["epoch", "metric", alt.Tooltip("value:Q", format=".4f")]).properties(height=280)


def show_eval(path: str, results: dict) -> None:
    """The run's eval.json (``ipskit eval``), kind by kind, and a button to compute more."""
    from ipskit import evaluate, plots

    name = Path(path).name
    for kind, entry in results.items():
        result = entry.get("result", entry) if isinstance(entry, dict) else entry
        st.markdown(f"**{kind}**")
        if kind == "calibration" and "test" in result:
            rows = [{"split": split, **{k: result[split].get(k) for k in CALIBRATION_KEYS}}
                    for split in ("test", "heldout", "heldout_scaled") if split in result]
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
            st.caption(f"Temperature fitted on half of the test set: T = {result.get('temperature', float('nan')):.3f}; "
                       f"heldout_scaled is the other half after dividing the logits by T.")
            col, _ = st.columns([1, 2])
            col.pyplot(plots.reliability_diagram(result["test"], title=name))
        elif kind == "smoothing" and "overall" in result:
            st.dataframe(pd.DataFrame([result["overall"]]), hide_index=True, width="stretch")
        elif kind == "fgsm" and "epsilons" in result:
            col, _ = st.columns([1, 1])
            col.pyplot(plots.fgsm_curves({name: result}))
        elif kind in ("corruptions", "cifar_c") and "accuracy" in result:
            st.write(f"clean accuracy {result.get('clean', float('nan')):.4f}, mean corruption "
                     f"accuracy {result.get('mean_corruption_accuracy', float('nan')):.4f}")
            st.pyplot(plots.corruption_curves({name: result}))
        else:
            st.json(result, expanded=False)

    missing = [k for k in evaluate.DEFAULT_WHAT if k not in results]
    if not results:
        st.info("No evaluation results for this run yet (`ipskit eval` writes eval.json).")
    if missing:
        kinds = st.multiselect("Compute", missing, default=[k for k in missing if k != "corruptions"],
                               key="runs_eval_kinds",
                               help="corruptions applies 15 corruptions at 5 severities: slow on a CPU")
        if st.button("Compute the evaluation", key="runs_eval", disabled=not kinds):
            bar = st.progress(0.0, text="Evaluating…")
            try:
                for i, kind in enumerate(kinds):
                    bar.progress(i / len(kinds), text=f"Evaluating: {kind}")
                    evaluate.evaluate_run(path, what=(kind,))
            except Exception as e:
                st.error(f"The evaluation failed: {common.one_line(e)}")
                return
            bar.progress(1.0, text="Done")
            st.rerun()


common.page("Runs", icon="📁", intro="Every run on disk: settings, curves and evaluation")
common.guard(main)
