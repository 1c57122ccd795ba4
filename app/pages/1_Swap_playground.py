"""Swap playground: exchange patches between two images of one class and see who teaches whom.

Part of the ipskit explorer (``streamlit run app/Home.py``) for Intra-class Patch Swap
(Choi et al., arXiv 2505.14124). Pick a dataset, a class, two of its test images, the patch
grid g, the swap probability pr and a seed: the swap is drawn once with a seeded
``torch.Generator`` (``ipskit.swap.draw_swap``) and applied with ``apply_swap``. With a trained
run picked, both swapped images go through the model: their class probabilities, which side
acts as the teacher (``ipskit.metrics.teacher_side``: none when the two are within
``CLEAR_TEACHER_MARGIN``) and the KD term of that pair (``ipskit.losses.ips_loss`` with the
run's temperature); "Most lopsided pair" searches random pairs of the class for the clearest
teacher / student example (``ipskit.metrics.most_lopsided_pair``). View options only redraw.
"""

import random
from pathlib import Path

import common
import numpy as np
import streamlit as st
import torch

from ipskit import plots
from ipskit.losses import ips_loss
from ipskit.metrics import CLEAR_TEACHER_MARGIN, most_lopsided_pair, teacher_side
from ipskit.swap import SwapDecision, apply_swap, draw_swap

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
LOPSIDED_PAIRS = (
    64  # pairs the "Most lopsided pair" button searches (one forward pass of 128 images)
)


def available_datasets(runs: list[dict]) -> list[str]:
    """The datasets of trained IPS runs first (natural images before digits: a swap is easier
    to see on them), then digits, CIFAR when present on disk, and the other runs' datasets."""
    root = Path(common.data_root())
    ips = [
        r["dataset"]
        for r in common.model_runs(runs)
        if str(r.get("method")).startswith("ips") and r.get("dataset")
    ]
    ips.sort(key=lambda d: d == "digits")
    names = [
        *ips,
        "digits",
        *(n for n, folder in CIFAR_FOLDERS.items() if (root / folder).is_dir()),
        *(r["dataset"] for r in runs if r.get("dataset")),
    ]
    return list(dict.fromkeys(names))


@st.cache_data(show_spinner=False, max_entries=256)
def drawn_swap(grid: int, pr: float, seed: int) -> tuple[bool, np.ndarray]:
    """One pair's swap decision, drawn from a generator seeded with ``seed``: (swapped, cells [g, g])."""
    d = draw_swap(1, grid, pr, generator=torch.Generator().manual_seed(seed))
    return bool(d.swapped[0]), d.cells[0].numpy()


def random_pair(n: int) -> None:
    """Button callback: two different random images of the class."""
    a, b = random.sample(range(n), 2) if n > 1 else (0, 0)
    st.session_state["swap_ia"], st.session_state["swap_ib"] = a, b
    st.session_state.pop("swap_lopsided", None)


def reset_pair() -> None:
    """Class changed: start again from its first two images."""
    st.session_state["swap_ia"], st.session_state["swap_ib"] = 0, 1
    st.session_state.pop("swap_lopsided", None)


def find_lopsided(run_path: str, x_cls: np.ndarray, cls: int, default_grid: int) -> None:
    """Button callback: select the most lopsided of ``LOPSIDED_PAIRS`` random pairs of the class
    under the run's model (grid, pr and seed as set in the sidebar), and keep the swap drawn for
    it while the settings stay."""
    state = st.session_state
    grid, pr = int(state.get("swap_grid", default_grid)), float(state.get("swap_pr", 0.5))
    seed = int(state.get("swap_seed", 0))
    try:
        model, _ = common.load_model(run_path)
        with common.MODEL_LOCK:
            found = most_lopsided_pair(
                model,
                common.to_float(x_cls),
                cls,
                grid,
                pr,
                generator=torch.Generator().manual_seed(seed),
                n_pairs=LOPSIDED_PAIRS,
                swapped_only=True,
            )
    except (OSError, ValueError) as e:
        st.session_state["swap_lopsided_error"] = common.one_line(e)
        return
    st.session_state["swap_ia"], st.session_state["swap_ib"] = found.index_a, found.index_b
    st.session_state["swap_lopsided"] = {
        "match": (run_path, cls, grid, pr, seed, found.index_a, found.index_b),
        "swapped": bool(found.decision.swapped[0]),
        "cells": found.decision.cells[0].numpy(),
    }


def main() -> None:
    runs = common.list_runs()
    with st.sidebar:
        st.header("Pair")
        dataset = st.selectbox("Dataset", available_datasets(runs), key="swap_dataset")
        ds_runs = [r for r in common.model_runs(runs) if r.get("dataset") == dataset]
        ips_first = sorted(ds_runs, key=lambda r: "ips" not in str(r.get("method")))
        run = common.pick_run(
            "Trained run (optional)",
            ips_first,
            key="swap_run",
            index=1 if ips_first else 0,
            allow_none="no model",
            help="Shows each side's class probabilities and the KD term",
        )
    config = None
    if run is not None:
        try:
            model, config = common.load_model(run["path"])
        except (OSError, ValueError) as e:
            st.error(f"Cannot use run {run['name']}: {common.one_line(e)}")
            run = None
    try:
        data = (
            common.run_test_split(config, run["path"])
            if config is not None
            else common.dataset_test_split(dataset, runs)
        )
    except Exception as e:
        st.error(f"Cannot load the {dataset} data: {common.one_line(e)}")
        return
    classes, y, x = data["classes"], data["y"], data["x"]
    h, w = x.shape[-2:]
    if data.get("note"):
        st.caption(data["note"])

    gmax = int(min(h, w, 16))
    # another dataset or image size may cut the ranges the widgets remember
    for key, limit, reset in (("swap_class", len(classes) - 1, 0), ("swap_grid", gmax, gmax)):
        if st.session_state.get(key, 0) > limit:
            st.session_state[key] = reset
    with st.sidebar:
        cls = st.selectbox(
            "Class",
            range(len(classes)),
            format_func=lambda c: classes[c],
            key="swap_class",
            on_change=reset_pair,
        )
        members = np.flatnonzero(y == cls)
        n = len(members)
        if n < 2:
            st.error(f"class {classes[cls]} has {n} test image(s); a pair needs two")
            return
        for k, default in (("swap_ia", 0), ("swap_ib", 1)):  # a smaller class may cut the range
            st.session_state[k] = min(int(st.session_state.get(k, default)), n - 1)
        ia = st.number_input(f"Image a (0-{n - 1} in this class)", 0, n - 1, key="swap_ia")
        ib = st.number_input(f"Image b (0-{n - 1} in this class)", 0, n - 1, key="swap_ib")
        st.button("Random pair", on_click=random_pair, args=(n,), key="swap_random")
        st.button(
            "Most lopsided pair",
            key="swap_lopsided_button",
            disabled=run is None,
            on_click=find_lopsided,
            args=(run["path"] if run else "", x[members], int(cls), min(4, gmax)),
            help=f"Among {LOPSIDED_PAIRS} random pairs of this class, each with a swap drawn "
            f"from the seed (grid and pr as set below), pick the swapped pair whose two "
            f"sides differ most in p(true class) under the trained run's model"
            + ("" if run else " (pick a trained run first)"),
        )
        st.header("Swap")
        grid = st.slider("Patch grid g (g x g cells)", 2, gmax, min(4, gmax), key="swap_grid")
        pr = st.slider("Swap probability pr", 0.0, 1.0, 0.5, 0.05, key="swap_pr")
        seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="swap_seed")
        st.header("View")
        show_mask = st.checkbox("Show the swap mask", key="swap_show_mask")
        width = st.select_slider(
            "Figure size", ["small", "medium", "large"], "large", key="swap_width"
        )

    error = st.session_state.pop("swap_lopsided_error", None)
    if error:
        st.error(f"The search for a lopsided pair failed: {error}")
    found = st.session_state.get("swap_lopsided")
    lopsided = bool(
        found
        and run is not None
        and found["match"] == (run["path"], int(cls), int(grid), float(pr), int(seed), ia, ib)
    )
    if lopsided:  # the swap the search drew for this pair, until a setting changes
        swapped, cells = found["swapped"], found["cells"]
    else:
        swapped, cells = drawn_swap(int(grid), float(pr), int(seed))
    decision = SwapDecision(torch.tensor([swapped]), torch.from_numpy(cells)[None], int(grid))
    x_a = common.to_float(x[members[[ia]]])  # [1, C, H, W]
    x_b = common.to_float(x[members[[ib]]])
    out_a, out_b = apply_swap(x_a, x_b, decision)

    cell_list = ", ".join(f"({r},{c})" for r, c in np.argwhere(cells).tolist())
    where = (
        f"The most lopsided of {LOPSIDED_PAIRS} random pairs of class {classes[cls]} under "
        f"{run['name']} (searched with seed {seed}): images {ia} and {ib}, which"
        if lopsided
        else f"Seed {seed}"
    )
    if swapped:
        st.markdown(
            f"{where} drew **a swap**: {int(cells.sum())} of {grid * grid} cells "
            f"exchanged at the same positions (framed in {plots.SWAP_COLOR_NAME} dashes before the "
            f"swap, tinted after it)."
        )
    else:
        st.markdown(
            f"{where} drew **no swap** for this pair (each pair is swapped with "
            f"probability pr = {pr:.2f}); it still enters the loss as a plain "
            f"same-class pair."
            + (" None of the pairs searched drew a swap at this pr." if lopsided else "")
        )
    st.caption(f"swapped cells (row, col): {cell_list or 'none'}")
    if ia == ib:
        st.warning("Images a and b are the same image: a swap changes nothing.")

    probs = None
    if run is not None:
        with common.MODEL_LOCK, torch.no_grad():
            logits = model(torch.cat([out_a, out_b]))  # [2, K]
        probs = logits.softmax(dim=1)
    notes = None
    if probs is not None:
        p_a, p_b = float(probs[0, cls]), float(probs[1, cls])
        side = teacher_side(p_a, p_b)
        tag = {"a": ("teacher", ""), "b": ("", "teacher"), None: ("no clear teacher",) * 2}[side]
        notes = [
            (f"p({classes[cls]}) = {p_a:.3f}\n{tag[0]}", f"p({classes[cls]}) = {p_b:.3f}\n{tag[1]}")
        ]
    fig = plots.swap_pair_figure(x_a, x_b, out_a, out_b, decision, notes=notes)
    cols = st.columns({"small": [1, 1], "medium": [3, 1], "large": [1, 0.001]}[width])
    with cols[0]:
        common.figure(fig, "swap_pair")
    if show_mask:
        if swapped:
            mask = decision.pixel_mask(h, w)[0, 0].numpy().astype(np.uint8) * 255  # [H, W]
            st.image(
                plots.upscale(mask, 160 // max(h, w) or 1),
                caption="swap mask: white pixels come from the partner image",
            )
        else:
            st.caption("Swap mask: no cells swapped.")

    if not runs:
        common.offer_demo()
        return
    if run is None:
        st.info(
            "Pick a trained run in the sidebar to see each side's class probabilities, "
            "which side teaches, and the KD term of this pair."
        )
        return
    show_model_view(config, run, logits, swapped, int(cls), classes)


def show_model_view(config, run, logits, swapped: bool, cls: int, classes: list[str]) -> None:
    """Both sides' probabilities under the run's model, the teacher (if clear), the KD term."""
    st.subheader(f"Under {run['name']} ({config.get('method')})")
    za, zb = logits[:1], logits[1:]
    labels = torch.tensor([cls])
    probs = logits.softmax(dim=1)
    p_a, p_b = float(probs[0, cls]), float(probs[1, cls])
    temperature = float(config.get("temperature", 4.0))
    loss = ips_loss(
        za,
        zb,
        labels,
        temperature=temperature,
        kd_direction=config.get("kd_direction", "symmetric"),
        t2_scale=bool(config.get("t2_scale", False)),
    )
    side = teacher_side(p_a, p_b)
    after = " after swap" if swapped else ""
    c1, c2, c3, c4 = st.columns([1, 1, 1.6, 1])  # "no clear teacher" needs the room
    c1.metric(f"p(true class) a{after}", f"{p_a:.3f}")
    c2.metric(f"p(true class) b{after}", f"{p_b:.3f}")
    c3.metric(
        "teacher",
        f"{side}{after}" if side else "no clear teacher",
        help=f"The side more confident on the true class teaches; sides within "
        f"{CLEAR_TEACHER_MARGIN} of each other have no clear teacher (a one-pixel "
        f"shift of an image moves p(true class) about that much)",
    )
    c4.metric(f"KD term (T = {temperature:g})", f"{float(loss.kd):.3g}")
    if side:
        lead = (
            f"Side **{side}** is more confident on the true class (**{classes[cls]}**) by "
            f"{abs(p_a - p_b):.3f} and acts as the teacher: training pulls the softened "
            f"prediction of the other side towards it."
        )
    else:
        lead = (
            f"**No clear teacher**: the two sides' p({classes[cls]}) differ by "
            f"{abs(p_a - p_b):.3f}, under {CLEAR_TEACHER_MARGIN} (within what a one-pixel "
            f"shift does), so neither side holds clearly more of the telling parts; the KD "
            f"term between them is small. Try **Most lopsided pair** in the sidebar."
        )
    st.markdown(
        f"{lead} The KD term is the {config.get('kd_direction', 'symmetric')} KL at "
        f"T = {temperature:g} for this one pair; cross-entropy of the pair: "
        f"{float(loss.ce):.4f}."
    )
    col, _ = st.columns([3, 1])
    with col:
        common.figure(
            plots.pair_probabilities(
                probs[0].numpy(), probs[1].numpy(), classes, cls, labels=(f"a{after}", f"b{after}")
            ),
            "swap_probabilities",
        )


common.page(
    "Swap playground",
    icon="🔀",
    intro="Intra-class patch swap on two images of one class, before and after",
)
common.guard(main)
