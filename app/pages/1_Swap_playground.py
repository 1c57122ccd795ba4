"""Swap playground: exchange patches between two images of one class and see who teaches whom.

Part of the ipskit explorer (``streamlit run app/Home.py``) for Intra-class Patch Swap
(Choi et al., arXiv 2505.14124). Pick a dataset, a class, two of its test images, the patch
grid g, the swap probability pr and a seed: the swap is drawn once with a seeded
``torch.Generator`` (``ipskit.swap.draw_swap``) and applied with ``apply_swap``. With a trained
run picked, both swapped images go through the model: their class probabilities, which side
acts as the teacher (``ipskit.losses.pair_teacher``) and the KD term of that pair
(``ipskit.losses.ips_loss`` with the run's temperature). View options only redraw.
"""
import random
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

import common
from ipskit import plots
from ipskit.losses import ips_loss, pair_teacher
from ipskit.swap import SwapDecision, apply_swap, draw_swap

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def available_datasets(runs: list[dict]) -> list[str]:
    """The datasets of trained IPS runs first (natural images before digits: a swap is easier
    to see on them), then digits, CIFAR when present on disk, and the other runs' datasets."""
    root = Path(common.data_root())
    ips = [r["dataset"] for r in common.model_runs(runs)
           if str(r.get("method")).startswith("ips") and r.get("dataset")]
    ips.sort(key=lambda d: d == "digits")
    names = [*ips, "digits", *(n for n, folder in CIFAR_FOLDERS.items() if (root / folder).is_dir()),
             *(r["dataset"] for r in runs if r.get("dataset"))]
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


def reset_pair() -> None:
    """Class changed: start again from its first two images."""
    st.session_state["swap_ia"], st.session_state["swap_ib"] = 0, 1


def main() -> None:
    runs = common.list_runs()
    with st.sidebar:
        st.header("Pair")
        dataset = st.selectbox("Dataset", available_datasets(runs), key="swap_dataset")
        ds_runs = [r for r in common.model_runs(runs) if r.get("dataset") == dataset]
        ips_first = sorted(ds_runs, key=lambda r: "ips" not in str(r.get("method")))
        run = common.pick_run("Trained run (optional)", ips_first, key="swap_run",
                              index=1 if ips_first else 0, allow_none="no model",
                              help="Shows each side's class probabilities and the KD term")
    config = None
    if run is not None:
        try:
            model, config = common.load_model(run["path"])
        except (OSError, ValueError) as e:
            st.error(f"Cannot use run {run['name']}: {common.one_line(e)}")
            run = None
    try:
        data = (common.run_test_split(config, run["path"]) if config is not None
                else common.dataset_test_split(dataset, runs))
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
        cls = st.selectbox("Class", range(len(classes)), format_func=lambda c: classes[c],
                           key="swap_class", on_change=reset_pair)
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
        st.header("Swap")
        grid = st.slider("Patch grid g (g x g cells)", 2, gmax, min(4, gmax), key="swap_grid")
        pr = st.slider("Swap probability pr", 0.0, 1.0, 0.5, 0.05, key="swap_pr")
        seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="swap_seed")
        st.header("View")
        show_mask = st.checkbox("Show the swap mask", key="swap_show_mask")
        width = st.select_slider("Figure size", ["small", "medium", "large"], "large",
                                 key="swap_width")

    swapped, cells = drawn_swap(int(grid), float(pr), int(seed))
    decision = SwapDecision(torch.tensor([swapped]), torch.from_numpy(cells)[None], int(grid))
    x_a = common.to_float(x[members[[ia]]])  # [1, C, H, W]
    x_b = common.to_float(x[members[[ib]]])
    out_a, out_b = apply_swap(x_a, x_b, decision)

    cell_list = ", ".join(f"({r},{c})" for r, c in np.argwhere(cells).tolist())
    if swapped:
        st.markdown(f"Seed {seed} drew **swap**: {int(cells.sum())} of {grid * grid} cells "
                    f"exchanged at the same positions (tinted and outlined).")
    else:
        st.markdown(f"Seed {seed} drew **no swap** for this pair (each pair is swapped with "
                    f"probability pr = {pr:.2f}); it still enters the loss as a plain "
                    f"same-class pair.")
    st.caption(f"swapped cells (row, col): {cell_list or 'none'}")
    if ia == ib:
        st.warning("Images a and b are the same image: a swap changes nothing.")

    fig = plots.swap_pair_figure(x_a, x_b, out_a, out_b, decision)
    cols = st.columns({"small": [1, 1], "medium": [3, 1], "large": [1, 0.001]}[width])
    with cols[0]:
        st.pyplot(fig, width="stretch")
    if show_mask:
        mask = decision.pixel_mask(h, w)[0, 0].numpy().astype(np.uint8) * 255  # [H, W]
        st.image(plots.upscale(mask, 160 // max(h, w) or 1),
                 caption="swap mask: white pixels come from the partner image")

    if not runs:
        common.offer_demo()
        return
    if run is None:
        st.info("Pick a trained run in the sidebar to see each side's class probabilities, "
                "which side teaches, and the KD term of this pair.")
        return
    show_model_view(model, config, run, out_a, out_b, int(cls), classes)


def show_model_view(model, config, run, out_a, out_b, cls: int, classes: list[str]) -> None:
    """Probabilities of both swapped images under the run's model, the teacher, the KD term."""
    st.subheader(f"Under {run['name']} ({config.get('method')})")
    with common.MODEL_LOCK, torch.no_grad():
        logits = model(torch.cat([out_a, out_b]))  # [2, K]
    za, zb = logits[:1], logits[1:]
    labels = torch.tensor([cls])
    p_a, p_b, a_teaches = pair_teacher(za, zb, labels)
    temperature = float(config.get("temperature", 4.0))
    loss = ips_loss(za, zb, labels, temperature=temperature,
                    kd_direction=config.get("kd_direction", "symmetric"),
                    t2_scale=bool(config.get("t2_scale", False)))
    teacher = "a" if bool(a_teaches[0]) else "b"
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("p(true class) a after swap", f"{float(p_a[0]):.3f}")
    c2.metric("p(true class) b after swap", f"{float(p_b[0]):.3f}")
    c3.metric("teacher", f"{teacher} after swap")
    c4.metric(f"KD term (T = {temperature:g})", f"{float(loss.kd):.3g}")
    st.markdown(
        f"The side more confident on the true class (**{classes[cls]}**) acts as the teacher: "
        f"training pulls the softened prediction of the other side towards it. The KD term is "
        f"the {config.get('kd_direction', 'symmetric')} KL at T = {temperature:g} for this one "
        f"pair; cross-entropy of the pair: {float(loss.ce):.4f}.")
    probs = logits.softmax(dim=1).numpy()
    st.bar_chart(pd.DataFrame({"a after swap": probs[0], "b after swap": probs[1]},
                              index=pd.Index(classes, name="class")), stack=False, height=260)


common.page("Swap playground", icon="🔀",
            intro="Intra-class patch swap on two images of one class, before and after")
common.guard(main)
