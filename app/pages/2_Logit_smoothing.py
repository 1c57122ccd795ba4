"""Logit smoothing: how confident, how spread and how well calibrated CE and IPS runs are.

Part of the ipskit explorer (``streamlit run app/Home.py``). Intra-class Patch Swap (Choi et
al., arXiv 2505.14124) pulls the softened predictions of two views of a class together, which
smooths the model's logits: usually a cure for cross-entropy's over-confidence, but too much
(high pr, a T^2 factor) leaves the model under-confident. For the chosen runs this page shows,
on their test images, histograms of max-probability and entropy, reliability diagrams with
ECE, and the class-similarity matrix: all computed by ``ipskit.metrics`` and drawn by
``ipskit.plots``.
"""
import pandas as pd
import streamlit as st
import torch

import common
from ipskit import plots
from ipskit.metrics import class_similarity, confidence_verdict

GAP = 0.02  # |confidence - accuracy| above this is called over- or under-confident
VERDICTS = {"over-confident": "over-confident (predictions sharper than its accuracy)",
            "under-confident": "under-confident: **over-smoothed**, its predictions are flatter "
                               "than its accuracy justifies",
            "calibrated": "about calibrated"}


def main() -> None:
    runs = common.model_runs(common.require_runs())
    if not runs:
        st.info("No run has finished an epoch yet.")
        return
    datasets = list(dict.fromkeys(r.get("dataset") for r in runs))
    with st.sidebar:
        dataset = st.selectbox("Dataset", datasets, key="smooth_dataset")
        runs = [r for r in runs if r.get("dataset") == dataset]
        by_name = {r["name"]: r for r in runs}
        a, b = common.default_pair(runs)
        chosen = st.multiselect("Runs (e.g. CE and IPS, or a pr sweep)", list(by_name),
                                default=list(dict.fromkeys([runs[a]["name"], runs[b]["name"]])),
                                format_func=lambda n: common.run_label(by_name[n]),
                                key="smooth_runs")
        n_max = st.select_slider("Test images per run", [200, 500, 1000, 2000, 5000, 10000],
                                 common.MAX_EVAL_SAMPLES, key="smooth_n")
    if not chosen:
        st.info("Pick at least one run in the sidebar.")
        return

    rows, logits_by_run, reps, classes = [], {}, {}, None
    for name in chosen:
        run = by_name[name]
        try:
            out = common.test_logits(run["path"], n_max)
            rep = common.reports(run["path"], n_max)
        except (OSError, ValueError) as e:
            st.error(f"Skipping {name}: {common.one_line(e)}")
            continue
        logits_by_run[name], reps[name], classes = out["logits"], rep, out["classes"]
        cal, smooth = rep["calibration"], rep["smoothing"]["overall"]
        rows.append({"run": name, "method": run.get("method"), "pr": run.get("pr"),
                     "test images": cal["n"], "accuracy": cal["top1"], "ECE": cal["ece"],
                     "mean max-prob": cal["mean_max_prob"], "mean entropy": smooth["entropy"],
                     "confidence - accuracy": cal["mean_max_prob"] - cal["top1"]})
    if not rows:
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.markdown(story(rows))

    st.subheader("Confidence and entropy")
    left, right = st.columns(2)
    left.pyplot(plots.confidence_histograms(logits_by_run, kind="max_prob"))
    right.pyplot(plots.confidence_histograms(logits_by_run, kind="entropy"))

    st.subheader("Reliability diagrams")
    st.caption("Bars: accuracy per confidence bin; hatched: the gap to the bin's confidence; small "
               "labels: each bin's share of the test images. "
               "Bars under the diagonal mean over-confident, above it under-confident.")
    n_row = min(len(reps), 3)  # the figure puts 3 diagrams on a row; keep each ~300 px wide
    col, _ = st.columns([n_row, 1 if n_row < 3 else 0.001])
    col.pyplot(plots.reliability_diagrams({name: r["calibration"] for name, r in reps.items()}))

    st.subheader("Class similarity")
    st.caption("Row c: the mean predicted distribution over the test images of class c. "
               "Smoothing moves mass off the diagonal, onto the classes that look alike.")
    cols = st.columns(min(len(logits_by_run), 3))
    for col, (name, logits) in zip(cols, list(logits_by_run.items())[:3]):
        labels = torch.from_numpy(common.test_logits(by_name[name]["path"], n_max)["labels"])
        sim = class_similarity(torch.from_numpy(logits), labels)
        col.pyplot(plots.similarity_heatmap(sim["mean_prob"], classes, title=name))


def story(rows: list[dict]) -> str:
    """Two or three sentences reading the table: who is over- or under-confident, and why."""
    parts = []
    for r in rows:
        verdict = VERDICTS[confidence_verdict(r["mean max-prob"], r["accuracy"], GAP)]
        parts.append(f"**{r['run']}** ({r['method']}) is {verdict}: mean max-probability "
                     f"{r['mean max-prob']:.3f} at accuracy {r['accuracy']:.3f}.")
    ce = [r for r in rows if r["method"] == "ce"]
    ips = [r for r in rows if "ips" in str(r["method"])]
    if ce and ips:
        c, i = ce[0], ips[0]
        parts.append(f"The KL term of IPS pulls the softened predictions of the two sides of a "
                     f"pair together; here it moves mean max-probability from {c['mean max-prob']:.3f} "
                     f"(CE) to {i['mean max-prob']:.3f} and ECE from {c['ECE']:.3f} to {i['ECE']:.3f}.")
    parts.append("A little smoothing corrects cross-entropy's over-confidence; too much (a high "
                 "pr, or the T² factor on the KL) leaves the model under-confident and ECE rises "
                 "again: compare runs of a pr sweep to see where that starts.")
    return " ".join(parts)


common.page("Logit smoothing", icon="📉",
            intro="Confidence, entropy, calibration and class similarity of the chosen runs")
common.guard(main)
