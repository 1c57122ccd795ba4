"""Ablation: patch grid x swap probability heatmaps from a sweep, down to the runs behind a cell.

Part of the ipskit explorer (``streamlit run app/Home.py``). Reads the tidy CSV that
``ipskit sweep`` writes (``runs/<sweep>/results.csv``: one row per run with its settings, its
last-epoch metrics and its folder; ``ipskit.sweep.read_results``), averages a metric over seeds
for every (grid, pr) cell (``ipskit.sweep.cell_summary``) and draws the heatmap (click a cell, or pick it below) of the two axes the IPS paper (Choi et al.,
arXiv 2505.14124) studies; the runs behind a cell link to the Runs page.
"""
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

import common
from ipskit.sweep import cell_summary, read_results

METRICS = {"test_acc": "test accuracy", "ece": "ECE", "mean_max_prob": "mean max-prob",
           "test_loss": "test NLL", "train_loss": "train loss"}


@st.cache_data(show_spinner=False, max_entries=16)
def load_sweep(path: str, stamp: int) -> pd.DataFrame:
    """``ipskit.sweep.read_results`` of a sweep CSV, cached until the file changes."""
    return read_results(path)


def run_name(run_dir: str) -> str | None:
    """The run's name relative to the runs folder (what the Runs page selects), if it is there."""
    try:
        return Path(run_dir).resolve().relative_to(common.runs_root().resolve()).as_posix()
    except (ValueError, OSError, TypeError):
        return None


def main() -> None:
    root = common.runs_root()
    csvs = sorted(root.rglob("*.csv")) if root.is_dir() else []
    if not csvs:
        common.require_runs()  # no runs at all: the demo offer
        st.info(f"No sweep table under `{root}`. Run for example `ipskit sweep --name grid-pr "
                f"--method ips --grid 2 4 8 --pr 0.25 0.5 0.75 1.0 --seed 0 1` and come back.")
        return
    with st.sidebar:
        path = st.selectbox("Sweep table", csvs, key="abl_csv",
                            format_func=lambda p: p.relative_to(root).as_posix())
    try:
        df = load_sweep(str(path), common.file_stamp(path))
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        st.error(f"Cannot read {path}: {common.one_line(e)}")
        return
    metrics = [m for m in METRICS if m in df.columns]
    if not metrics:
        st.error(f"{path} holds none of the metric columns {', '.join(METRICS)}")
        return
    with st.sidebar:
        metric = st.selectbox("Metric", metrics, format_func=METRICS.get, key="abl_metric")
        if "method" in df.columns and df["method"].nunique() > 1:
            methods = sorted(df["method"].dropna().unique())
            method = st.selectbox("Method", methods, index=methods.index("ips") if "ips" in methods else 0,
                                  key="abl_method")
            baseline = df[df["method"] != method]
            df = df[df["method"] == method]
        else:
            baseline = df.iloc[:0]
        # a baseline sweep of its own, e.g. the "<sweep>-ce" table notebook 4 writes
        others = [c for c in csvs if c != path]
        sibling = next((i + 1 for i, c in enumerate(others) if c.parent.name == f"{path.parent.name}-ce"), 0)
        extra = st.selectbox("Baseline table (optional)", [None, *others], index=sibling, key="abl_base",
                             format_func=lambda p: "none" if p is None else p.relative_to(root).as_posix())
    if extra is not None:
        try:
            baseline = pd.concat([baseline, load_sweep(str(extra), common.file_stamp(extra))])
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            st.error(f"Cannot read the baseline table {extra}: {common.one_line(e)}")
    st.caption(f"`{path}`: {len(df)} run(s); each cell is the mean over its seeds.")
    cells = cell_summary(df, metric)
    if cells.empty:
        st.warning("No finished run with a grid and a pr in this table yet.")
        return
    if metric in baseline:
        for m, group in baseline.groupby("method"):
            st.write(f"Baseline **{m}**: {METRICS[metric]} {group[metric].mean():.4f} "
                     f"(mean of {group[metric].notna().sum()} run(s)).")

    clicked = heatmap(cells, metric)
    labels = {f"grid {g:g}, pr {p:g}": (float(g), float(p)) for g, p in zip(cells["grid"], cells["pr"])}
    # A new click on the chart selects its cell; the selectbox stays free to change afterwards.
    if clicked != st.session_state.get("abl_clicked"):
        st.session_state["abl_clicked"] = clicked
        match = [label for label, cell in labels.items() if cell == clicked]
        if match:
            st.session_state["abl_cell"] = match[0]
    pick = st.selectbox("Runs behind a cell (or click one)", list(labels), key="abl_cell")
    g, p = labels[pick]
    behind = df[(df["grid"] == g) & (df["pr"] == p)]
    show = [c for c in ("seed", "method", "model", "epochs", *METRICS, "status", "run_dir") if c in behind]
    st.dataframe(behind[show], hide_index=True, width="stretch")
    for run_dir in behind["run_dir"]:
        name = run_name(run_dir)
        if name is None:
            st.write(f"`{run_dir}` is outside the runs folder `{root}`.")
        else:
            st.page_link("pages/5_Runs.py", label=f"Open {name} in Runs", query_params={"run": name})


def heatmap(cells: pd.DataFrame, metric: str) -> tuple | None:
    """Clickable grid x pr heatmap; returns the clicked (grid, pr) or None."""
    cells = cells.assign(grid_s=cells["grid"].map(lambda v: f"{v:g}"),
                         pr_s=cells["pr"].map(lambda v: f"{v:g}"),
                         label=cells["mean"].map(lambda v: f"{v:.3f}"))
    select = alt.selection_point(fields=["grid", "pr"], name="cell", on="click")
    base = alt.Chart(cells).encode(
        x=alt.X("pr_s:O", title="swap probability pr", sort=sorted(set(cells["pr_s"]), key=float),
                axis=alt.Axis(labelAngle=0)),
        y=alt.Y("grid_s:O", title="patch grid g", sort=sorted(set(cells["grid_s"]), key=float)))
    rect = base.mark_rect().encode(
        color=alt.Color("mean:Q", title=METRICS[metric], scale=alt.Scale(scheme="viridis")),
        opacity=alt.condition(select, alt.value(1.0), alt.value(0.5)),
        tooltip=["grid", "pr", alt.Tooltip("mean:Q", format=".4f"),
                 alt.Tooltip("std:Q", format=".4f"), "count"]).add_params(select)
    mid = float(cells["mean"].min() + cells["mean"].max()) / 2  # dark text on light (high) cells
    text = base.mark_text(fontSize=14).encode(
        text="label:N", color=alt.condition(alt.datum.mean > mid, alt.value("black"), alt.value("white")))
    event = st.altair_chart((rect + text).properties(height=55 * cells["grid"].nunique() + 130,
                                                      title=f"{METRICS[metric]} over grid x pr"),
                            on_select="rerun", key="abl_chart", width="stretch")
    points = (event or {}).get("selection", {}).get("cell", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "cell", None) or []
    if points:
        return float(points[0]["grid"]), float(points[0]["pr"])
    return None


common.page("Ablation", icon="🧮", intro="Patch grid x swap probability, from a sweep table")
common.guard(main)
