"""Ablation: patch grid x swap probability heatmaps from a sweep, down to the runs behind a cell.

Part of the ipskit explorer (``streamlit run app/Home.py``). Reads the tidy CSV that
``ipskit sweep`` writes (``runs/<sweep>/results.csv``: one row per run with its settings, its
last-epoch metrics and its folder; ``ipskit.sweep.read_results``), summarises a metric over
seeds for every (grid, pr) cell (``ipskit.sweep.cell_summary``: mean ± sd) and draws the heatmap
(click a cell, or pick it below) of the two axes the IPS paper (Choi et al., arXiv 2505.14124)
studies, coloured around the CE baseline when there is one (``ipskit.plots.colour_limits``); the
runs behind a cell link to the Runs page. With no sweep yet, it offers to train a small one
(``ipskit.sweep.run_sweep``) and shows the command that does the same in a terminal.
"""

import threading
import time
from pathlib import Path

import altair as alt
import common
import pandas as pd
import streamlit as st

from ipskit import plots
from ipskit.sweep import DEMO_SETTINGS, cell_summary, read_results, run_sweep

METRICS = {
    "test_acc": "test accuracy",
    "ece": "ECE",
    "mean_max_prob": "mean max-prob",
    "test_loss": "test NLL",
    "train_loss": "train loss",
}
LOWER_IS_BETTER = {"ece", "test_loss", "train_loss"}
SWEEP_NAME = "grid-pr"  # the offered sweep: runs/grid-pr/ and its CE baseline runs/grid-pr-ce/
# Seconds per epoch on digits with the demo's recipe, 2 busy CPU cores (measured: resnet8 1.5 s
# for CE and 2.6 s for IPS an epoch, smallcnn 1.6 s for IPS with start-up): for the estimate only.
EPOCH_SECONDS = {"resnet8": 2.0, "smallcnn": 1.0}


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
        offer_sweep(root)
        return
    with st.sidebar:
        path = st.selectbox(
            "Sweep table", csvs, key="abl_csv", format_func=lambda p: p.relative_to(root).as_posix()
        )
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
            method = st.selectbox(
                "Method",
                methods,
                index=methods.index("ips") if "ips" in methods else 0,
                key="abl_method",
            )
            baseline = df[df["method"] != method]
            df = df[df["method"] == method]
        else:
            baseline = df.iloc[:0]
        # a baseline sweep of its own, e.g. the "<sweep>-ce" table notebook 4 writes
        others = [c for c in csvs if c != path]
        sibling = next(
            (i + 1 for i, c in enumerate(others) if c.parent.name == f"{path.parent.name}-ce"), 0
        )
        extra = st.selectbox(
            "Baseline table (optional)",
            [None, *others],
            index=sibling,
            key="abl_base",
            format_func=lambda p: "none" if p is None else p.relative_to(root).as_posix(),
        )
    if extra is not None:
        try:
            baseline = pd.concat([baseline, load_sweep(str(extra), common.file_stamp(extra))])
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            st.error(f"Cannot read the baseline table {extra}: {common.one_line(e)}")
    cells = cell_summary(df, metric)
    if cells.empty:
        st.warning("No finished run with a grid and a pr in this table yet.")
        return
    seeds = f"{int(cells['count'].min())}" + (
        f"-{int(cells['count'].max())}" if cells["count"].nunique() > 1 else ""
    )
    st.caption(
        f"`{path}`: {len(df)} run(s); each cell shows the mean ± standard deviation over "
        f"its {seeds} seed(s). Cells whose difference is within their ± are seed noise."
    )
    reference = None
    if metric in baseline:
        for m, group in baseline.groupby("method"):
            st.write(
                f"Baseline **{m}**: {METRICS[metric]} {group[metric].mean():.4f} "
                f"(mean of {group[metric].notna().sum()} run(s))."
            )
        ref = baseline[baseline["method"] == "ce"] if "ce" in set(baseline["method"]) else baseline
        if ref[metric].notna().any():
            reference = (str(ref["method"].iloc[0]), float(ref[metric].mean()))

    clicked = heatmap(cells, metric, reference)
    common.download_png(
        plots.ablation_heatmap(
            df.dropna(subset=["grid", "pr", metric]),
            value=metric,
            label=METRICS[metric],
            title=f"{METRICS[metric]} over grid x pr (mean ± sd over seeds)",
            lower_is_better=metric in LOWER_IS_BETTER,
            baseline=reference[1] if reference else None,
            baseline_label=reference[0] if reference else "CE",
        ),
        "ablation",
    )
    labels = {
        f"grid {g:g}, pr {p:g}": (float(g), float(p)) for g, p in zip(cells["grid"], cells["pr"])
    }
    # A new click on the chart selects its cell; the selectbox stays free to change afterwards.
    if clicked != st.session_state.get("abl_clicked"):
        st.session_state["abl_clicked"] = clicked
        match = [label for label, cell in labels.items() if cell == clicked]
        if match:
            st.session_state["abl_cell"] = match[0]
    pick = st.selectbox("Runs behind a cell (or click one)", list(labels), key="abl_cell")
    g, p = labels[pick]
    behind = df[(df["grid"] == g) & (df["pr"] == p)]
    show = [
        c
        for c in ("seed", "method", "model", "epochs", *METRICS, "status", "run_dir")
        if c in behind
    ]
    st.dataframe(behind[show], hide_index=True, width="stretch")
    for run_dir in behind["run_dir"]:
        name = run_name(run_dir)
        if name is None:
            st.write(f"`{run_dir}` is outside the runs folder `{root}`.")
        else:
            st.page_link(
                "pages/5_Runs.py", label=f"Open {name} in Runs", query_params={"run": name}
            )


def heatmap(cells: pd.DataFrame, metric: str, reference: tuple[str, float] | None) -> tuple | None:
    """Clickable grid x pr heatmap, "mean ± sd" in each cell, coloured around the baseline
    (``reference``: name, value) when there is one; returns the clicked (grid, pr) or None."""
    lower = metric in LOWER_IS_BETTER
    centre = reference[1] if reference else None
    vmin, vmax = plots.colour_limits(cells["mean"], cells["std"], centre)
    mid = (vmin + vmax) / 2
    cells = cells.assign(
        grid_s=cells["grid"].map(lambda v: f"{v:g}"),
        pr_s=cells["pr"].map(lambda v: f"{v:g}"),
        label=[
            f"{m:.3f}" + (f"\n± {sd:.3f}" if n > 1 and pd.notna(sd) else "\n(1 seed)")
            for m, sd, n in zip(cells["mean"], cells["std"], cells["count"])
        ],
        # dark cells: far from the centre of a red-blue scale, low end of viridis
        dark=[
            (abs(m - mid) > 0.6 * (vmax - vmin) / 2)
            if centre is not None
            else ((m > mid) if lower else (m < mid))
            for m in cells["mean"]
        ],
    )
    if centre is None:
        scale = alt.Scale(scheme="viridis", domain=[vmin, vmax], reverse=lower, clamp=True)
        title = METRICS[metric]
    else:  # blue: better than the baseline, red: worse (for ECE / NLL: lower)
        scale = alt.Scale(
            scheme="redblue", domain=[vmin, vmax], domainMid=centre, reverse=lower, clamp=True
        )
        title = [METRICS[metric], f"white: {reference[0]} {centre:.3f}"]
    select = alt.selection_point(fields=["grid", "pr"], name="cell", on="click")
    base = alt.Chart(cells).encode(
        x=alt.X(
            "pr_s:O",
            title="swap probability pr",
            sort=sorted(set(cells["pr_s"]), key=float),
            axis=alt.Axis(labelAngle=0, labelFontSize=15, titleFontSize=16),
        ),
        y=alt.Y(
            "grid_s:O",
            title="patch grid g",
            sort=sorted(set(cells["grid_s"]), key=float),
            axis=alt.Axis(labelFontSize=15, titleFontSize=16),
        ),
    )
    rect = (
        base.mark_rect(stroke="white", strokeWidth=2)
        .encode(
            color=alt.Color(
                "mean:Q",
                title=title,
                scale=scale,
                legend=alt.Legend(
                    titleFontSize=14, labelFontSize=13, gradientLength=220, titleLimit=400
                ),
            ),
            opacity=alt.condition(select, alt.value(1.0), alt.value(0.5)),
            tooltip=[
                "grid",
                "pr",
                alt.Tooltip("mean:Q", format=".4f"),
                alt.Tooltip("std:Q", format=".4f"),
                "count",
            ],
        )
        .add_params(select)
    )
    text = base.mark_text(fontSize=17, lineBreak="\n").encode(
        text="label:N", color=alt.condition(alt.datum.dark, alt.value("white"), alt.value("black"))
    )
    head = f"{METRICS[metric]} over grid x pr (mean ± sd over seeds)"
    event = st.altair_chart(
        (rect + text).properties(
            height=80 * cells["grid"].nunique() + 110, title=alt.Title(head, fontSize=18)
        ),
        on_select="rerun",
        key="abl_chart",
        width="stretch",
    )
    points = (
        (event or {}).get("selection", {}).get("cell", [])
        if isinstance(event, dict)
        else getattr(getattr(event, "selection", None), "cell", None) or []
    )
    if points:
        return float(points[0]["grid"]), float(points[0]["pr"])
    return None


def sweep_values(
    root: Path, grids: list[int], prs: list[float], seeds: int, epochs: int, model: str
) -> list[tuple[str, dict]]:
    """(sweep name, ``run_sweep`` values) of the offered sweep: IPS over grid x pr, then CE as
    its baseline, both on the demo's recipe (``ipskit.sweep.DEMO_SETTINGS``)."""
    recipe = {k: [v] for k, v in DEMO_SETTINGS.items() if k not in ("epochs", "model")}
    common_ = {
        **recipe,
        "model": [model],
        "epochs": [int(epochs)],
        "seed": list(range(int(seeds))),
        "out_dir": [str(root)],
    }
    return [
        (SWEEP_NAME, {**common_, "method": ["ips"], "grid": list(grids), "pr": list(prs)}),
        (f"{SWEEP_NAME}-ce", {**common_, "method": ["ce"]}),
    ]


def command(name: str, values: dict) -> str:
    """The ``ipskit sweep`` command line training the same runs as ``run_sweep(values, name)``,
    three flags to a line."""
    flags = [
        f"--{k.replace('_', '-')} "
        + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vs)
        for k, vs in sorted(values.items(), key=lambda kv: kv[0] not in ("method", "grid", "pr"))
    ]
    lines = [" ".join([f"ipskit sweep --name {name}", *flags[:3]])]
    lines += [" ".join(flags[i : i + 3]) for i in range(3, len(flags), 3)]
    return " \\\n    ".join(lines)


def offer_sweep(root: Path) -> None:
    """No sweep table yet: offer a small sweep, its command line, and train it with a bar."""
    st.info(
        f"No sweep table under `{root}`. A sweep trains IPS at every patch grid x pr (and "
        f"plain CE as the baseline), a run per seed, and writes one results.csv: train a "
        f"small one here on the built-in digits data, or run the commands below in a terminal "
        f"and come back."
    )
    c1, c2 = st.columns(2)
    c3, c4, c5 = st.columns(3)
    grids = c1.multiselect("Patch grids g", [2, 4, 8], [2, 4], key="abl_new_grids")
    prs = c2.multiselect(
        "Swap probabilities pr", [0.25, 0.5, 0.75, 1.0], [0.25, 1.0], key="abl_new_prs"
    )
    seeds = c3.number_input(
        "Seeds",
        1,
        5,
        2,
        key="abl_new_seeds",
        help="Two or more give each cell a spread to read differences against",
    )
    epochs = c4.number_input("Epochs per run", 1, 50, 5, key="abl_new_epochs")
    model = c5.selectbox(
        "Model",
        ["resnet8", "smallcnn"],
        key="abl_new_model",
        help="resnet8 as in the demo runs; smallcnn trains about twice as fast",
    )
    if not grids or not prs:
        st.error("Pick at least one patch grid and one swap probability.")
        return
    plan = sweep_values(root, grids, prs, seeds, epochs, model)
    n_runs = (len(grids) * len(prs) + 1) * int(seeds)
    st.code("\n\n".join(command(name, values) for name, values in plan), language="bash")
    seconds = n_runs * int(epochs) * EPOCH_SECONDS[model]
    st.write(
        f"{n_runs} runs of {int(epochs)} epoch(s): about "
        + (f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s")
        + " on 2 CPU cores."
    )
    if st.button("Train this sweep", type="primary", key="abl_train_sweep"):
        try:
            train_sweep(root, plan, n_runs * int(epochs))
        except Exception as e:
            st.error(f"The sweep failed: {common.one_line(e)}")
            return
        st.rerun()


def train_sweep(root: Path, plan: list[tuple[str, dict]], total_epochs: int) -> None:
    """``run_sweep`` over the plan in a worker thread (it keeps going if the page is left);
    the bar counts the epochs finished, read from the runs' metrics.jsonl files."""
    result: dict = {}

    def work() -> None:
        try:
            for name, values in plan:
                run_sweep(values, name, progress=False)
        except Exception as e:  # re-raised in the script thread below
            result["error"] = e
        finally:
            common.SWEEP_LOCK.release()

    def epochs_done() -> int:
        n = 0
        for name, _ in plan:
            for f in (root / name).glob("*/metrics.jsonl"):
                try:
                    n += sum(1 for line in f.read_text().splitlines() if line.strip())
                except OSError:
                    pass
        return n

    if not common.SWEEP_LOCK.acquire(blocking=False):
        raise RuntimeError(
            "a sweep started from this page is already training (another tab "
            "asked first); reload this page when it is done"
        )
    start, done0 = time.monotonic(), epochs_done()  # a resumed sweep starts part way
    worker = threading.Thread(target=work, name="ipskit-sweep", daemon=True)
    worker.start()
    bar = st.progress(0.0, text="Starting the sweep…")
    while worker.is_alive():
        n = epochs_done()
        bar.progress(
            min(n / total_epochs, 1.0),
            text=f"Training the sweep: epoch {n} of {total_epochs}, "
            f"{time.monotonic() - start:.0f} s" + (" (resumed)" if done0 else ""),
        )
        worker.join(0.5)
    if "error" in result:
        raise result["error"]
    bar.progress(1.0, text=f"Trained {total_epochs} epochs in {time.monotonic() - start:.0f} s")


common.page("Ablation", icon="🧮", intro="Patch grid x swap probability, from a sweep table")
common.guard(main)
