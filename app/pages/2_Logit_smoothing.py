"""Logit smoothing: how confident, how spread and how well calibrated CE and IPS runs are.

Part of the ipskit explorer (``streamlit run app/Home.py``). Intra-class Patch Swap (Choi et
al., arXiv 2505.14124) pulls the softened predictions of two views of a class together, which
smooths the model's logits: usually a cure for cross-entropy's over-confidence, but too much
(high pr, a T^2 factor) leaves the model under-confident. For the chosen runs this page shows,
on their test images, histograms of max-probability and entropy, reliability diagrams with
ECE and the image count of every bin, and the class-similarity matrix on a log scale: all
computed by ``ipskit.metrics`` and drawn by ``ipskit.plots``. A verdict (over- / under-confident)
is given per setting: from the spread over seeds when several seeds of it are picked
(``ipskit.metrics.seed_verdict``), and marked as one run's when only one is.
"""

import common
import pandas as pd
import streamlit as st
import torch

from ipskit import plots
from ipskit.metrics import class_similarity, seed_verdict

GAP = 0.02  # |confidence - accuracy| above this is called over- or under-confident
VERDICTS = {
    "over-confident": "over-confident (predictions sharper than its accuracy)",
    "under-confident": "under-confident (predictions flatter than its accuracy; what "
    "too much smoothing does)",
    "calibrated": "about calibrated",
    "unclear": "not clearly over- or under-confident: the seeds disagree",
}
# Runs that agree on these config fields count as seeds of one setting (pooled in a verdict).
SETTING_KEYS = (
    "method",
    "model",
    "dataset",
    "epochs",
    "grid",
    "pr",
    "temperature",
    "alpha",
    "gamma",
    "label_noise",
    "image_size",
    "max_train_samples",
)


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
        chosen = st.multiselect(
            "Runs (e.g. CE and IPS, or a pr sweep)",
            list(by_name),
            default=list(dict.fromkeys([runs[a]["name"], runs[b]["name"]])),
            format_func=lambda n: common.run_label(by_name[n]),
            key="smooth_runs",
        )
        n_max = st.select_slider(
            "Test images per run",
            [200, 500, 1000, 2000, 5000, 10000],
            common.MAX_EVAL_SAMPLES,
            key="smooth_n",
        )
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
        rows.append(
            {
                "run": name,
                "method": run.get("method"),
                "seed": run.get("seed"),
                "pr": run.get("pr"),
                "setting": tuple(
                    str((run.get("config") or {}).get(k, run.get(k))) for k in SETTING_KEYS
                ),
                "test images": cal["n"],
                "accuracy": cal["top1"],
                "ECE": cal["ece"],
                "mean max-prob": cal["mean_max_prob"],
                "mean entropy": smooth["entropy"],
                "confidence - accuracy": cal["mean_max_prob"] - cal["top1"],
            }
        )
    if not rows:
        return
    st.dataframe(pd.DataFrame(rows).drop(columns="setting"), hide_index=True, width="stretch")
    st.markdown(story(rows))

    st.subheader("Confidence and entropy")
    left, right = st.columns(2)
    with left:
        common.figure(
            plots.confidence_histograms(logits_by_run, kind="max_prob"), "confidence_histogram"
        )
    with right:
        common.figure(
            plots.confidence_histograms(logits_by_run, kind="entropy"), "entropy_histogram"
        )

    st.subheader("Reliability diagrams")
    st.caption(
        f"Bars: accuracy per confidence bin; hatched: the gap to the bin's confidence. Bars "
        f"under the diagonal mean over-confident, above it under-confident. Under each "
        f"diagram, the test images in each bin (log scale): bins under "
        f"{plots.RELIABILITY_MIN_COUNT} images are grey, their bars are too noisy to read."
    )
    common.figure(
        plots.reliability_diagrams({name: r["calibration"] for name, r in reps.items()}),
        "reliability",
    )

    st.subheader("Class similarity")
    st.caption(
        "Row c: the mean predicted distribution over the test images of class c, on a log "
        "colour scale (on a linear one only the diagonal shows). Smoothing moves mass off the "
        "diagonal, onto the classes that look alike."
    )
    sims = {}
    for name, logits in list(logits_by_run.items())[:4]:
        labels = torch.from_numpy(common.test_logits(by_name[name]["path"], n_max)["labels"])
        sims[name] = class_similarity(torch.from_numpy(logits), labels)["mean_prob"]
    if len(logits_by_run) > len(sims):
        st.caption(f"The first {len(sims)} of the {len(logits_by_run)} runs picked.")
    common.figure(plots.similarity_heatmaps(sims, classes), "similarity")


def story(rows: list[dict]) -> str:
    """A few sentences reading the table: which setting is over- or under-confident, and how
    sure that is (one run, or the spread over seeds)."""
    parts, single = [], []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["setting"], []).append(r)
    for group in groups.values():
        gaps = [r["mean max-prob"] - r["accuracy"] for r in group]
        v = seed_verdict(gaps, GAP)
        seeds = ", ".join(str(r["seed"]) for r in group)
        if v["n"] == 1:
            r = group[0]
            single.append(r["run"])
            parts.append(
                f"**{r['run']}** ({r['method']}, seed {seeds}): mean max-probability "
                f"{r['mean max-prob']:.3f} at accuracy {r['accuracy']:.3f} on "
                f"{r['test images']:,} test images, a gap of {v['mean']:+.3f}: "
                f"{VERDICTS[v['verdict']]}."
            )
        else:
            parts.append(
                f"**{group[0]['method']}** over {v['n']} seeds ({seeds}): confidence - "
                f"accuracy {v['mean']:+.3f} ± {v['sd']:.3f} (sd over seeds): "
                f"{VERDICTS[v['verdict']]} (a verdict needs the mean beyond ±{GAP} by two "
                f"standard errors)."
            )
    if single:
        parts.append(
            "*"
            + (
                "These verdicts come from one run (one seed) each"
                if len(single) > 1
                else "This verdict comes from one run (one seed)"
            )
            + ": one seed cannot tell a setting's calibration from seed noise. Pick runs "
            "of several seeds of a setting to pool them.*"
        )
    ce = [r for r in rows if r["method"] == "ce"]
    ips = [r for r in rows if "ips" in str(r["method"])]
    if ce and ips:
        c, i = ce[0], ips[0]
        parts.append(
            f"The KL term of IPS pulls the softened predictions of the two sides of a "
            f"pair together; between {c['run']} and {i['run']} mean max-probability goes "
            f"from {c['mean max-prob']:.3f} (CE) to {i['mean max-prob']:.3f} and ECE from "
            f"{c['ECE']:.3f} to {i['ECE']:.3f}."
        )
    parts.append(
        "A little smoothing corrects cross-entropy's over-confidence; too much (a high "
        "pr, or the T² factor on the KL) leaves the model under-confident and ECE rises "
        "again: compare runs of a pr sweep to see where that starts."
    )
    return " ".join(parts)


common.page(
    "Logit smoothing",
    icon="📉",
    intro="Confidence, entropy, calibration and class similarity of the chosen runs",
)
common.guard(main)
