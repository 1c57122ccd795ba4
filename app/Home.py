"""ipskit explorer, home page: what IPS is, what each page shows, and the runs on disk.

Start it from the repository root with ``streamlit run app/Home.py`` (or ``make app``). The
pages show Intra-class Patch Swap (Choi et al., "Intra-class Patch Swap for Self-Distillation",
arXiv 2505.14124) on runs trained by ``ipskit train`` / ``ipskit demo``, read from
``$IPSKIT_RUNS`` (default ``runs/``), and on the runs shipped in ``results/``. With no runs of
your own yet, this page offers to train the demo runs.
"""

import common
import streamlit as st


def main() -> None:
    st.markdown(
        "**Intra-class Patch Swap (IPS)** trains one network with no teacher. Two training "
        "images of the *same* class are cut into the same grid of patches and exchange a random "
        "subset of patches. One result usually keeps the telling parts and becomes confident, "
        "the other keeps weak parts; training adds a KL term that pulls their softened "
        "predictions together, so the confident sample teaches the weak one inside one model."
    )
    st.subheader("Pages")
    pages = [
        (
            "pages/1_Swap_playground.py",
            "Swap playground",
            "swap patches between two images of a class and see which side becomes the teacher",
        ),
        (
            "pages/2_Logit_smoothing.py",
            "Logit smoothing",
            "confidence, entropy, calibration and class similarity of CE against IPS",
        ),
        (
            "pages/3_Grad-CAM.py",
            "Grad-CAM",
            "where two models look, on test images, swapped pairs and your own image",
        ),
        ("pages/4_Ablation.py", "Ablation", "patch grid x swap probability from a sweep"),
        ("pages/5_Runs.py", "Runs", "every run on disk: settings, curves and evaluation"),
    ]
    for path, name, what in pages:
        st.page_link(path, label=f"**{name}**: {what}")

    st.subheader("Runs")
    runs = common.list_runs()
    mine = [r for r in runs if not r.get("shipped")]
    if not mine:
        common.offer_demo()
        if not runs:
            return
    finished = sum(r.get("status") == "finished" for r in mine)
    shipped = len(runs) - len(mine)
    st.write(
        f"{len(mine)} run(s) under `{common.runs_root()}`, {finished} finished"
        + (
            f"; {shipped} shipped with ipskit under `results/` (a CE / IPS pair on "
            f"CIFAR-10 images to explore, and GPU reference runs with their numbers only)"
            if shipped
            else ""
        )
        + "."
    )
    st.dataframe(
        [
            {
                "run": r["name"],
                "method": r.get("method"),
                "model": r.get("model"),
                "dataset": r.get("dataset"),
                "epochs": r.get("epochs_done"),
                "test acc": r.get("test_acc"),
                "ECE": r.get("ece"),
                "status": r.get("status"),
            }
            for r in runs
        ],
        hide_index=True,
        width="stretch",
    )


common.page("IPS explorer", intro="Intra-class Patch Swap self-distillation, on your own runs")
common.guard(main)
