"""Grad-CAM: where two trained models look, side by side, on test images, swapped pairs and
an image of your own.

Part of the ipskit explorer (``streamlit run app/Home.py``). Grad-CAM (Selvaraju et al., ICCV
2017) through ``ipskit.cam`` at each model's default layer (or one you choose). The IPS paper
(Choi et al., arXiv 2505.14124) argues that the confident side of a swapped pair keeps the
telling parts; the swapped-pair section outlines the exchanged patches and reports how much of
each map falls inside them (``ipskit.cam.cam_mass_in_mask``) against their share of the area.
"""
import numpy as np
import streamlit as st
import torch

import common
from ipskit import plots
from ipskit.cam import cam_mass_in_mask, overlay
from ipskit.data import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, image_from_bytes
from ipskit.swap import apply_swap, draw_swap


def main() -> None:
    runs = common.model_runs(common.require_runs())
    if not runs:
        st.info("No run has finished an epoch yet.")
        return
    a, b = common.default_pair(runs)
    with st.sidebar:
        st.header("Models")
        left = common.pick_run("Left run", runs, key="cam_left", index=a)
        same = [r for r in runs if r.get("dataset") == left.get("dataset")]
        right = common.pick_run("Right run", same, key="cam_right",
                                index=next((i for i, r in enumerate(same) if r["name"] == runs[b]["name"]), 0))
    models = []
    for side, run in (("left", left), ("right", right)):
        try:
            model, config = common.load_model(run["path"])
        except (OSError, ValueError) as e:
            st.error(f"Cannot use the {side} run {run['name']}: {common.one_line(e)}")
            return
        models.append((run, model, config))
    (_, m_left, c_left), (_, m_right, _) = models
    if (m_left.in_channels, m_left.image_size) != (m_right.in_channels, m_right.image_size):
        st.error("The two runs take different inputs (channels or image size); pick two runs "
                 "trained on the same data at the same size.")
        return
    layers = []
    with st.sidebar:
        for side, (run, model, _) in zip(("left", "right"), models):
            names = model.cam_layer_names()
            default = model.cam_layer_name
            layers.append(st.selectbox(f"Grad-CAM layer, {side}", names, index=names.index(default)
                                       if default in names else len(names) - 1,
                                       key=f"cam_layer_{side}",
                                       format_func=lambda n, d=default: f"{n} (default)" if n == d else n))
        target = st.radio("Explain", ["true class", "predicted class"], key="cam_target",
                          horizontal=True)
        alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="cam_alpha")
    try:
        data = common.run_test_split(c_left, left["path"])
    except Exception as e:
        st.error(f"Cannot load the {c_left.get('dataset')} data: {common.one_line(e)}")
        return
    ctx = dict(models=models, layers=layers, alpha=alpha, classes=data["classes"],
               scale=max(128 // m_left.image_size, 1))
    tab_test, tab_pair, tab_upload = st.tabs(["Test images", "Swapped pair", "Your image"])
    with tab_test:
        test_images(ctx, data, target)
    with tab_pair:
        swapped_pair(ctx, data, target)
    with tab_upload:
        upload(ctx, c_left)


def show_rows(ctx: dict, x01: torch.Tensor, labels, target: str, cells=None,
              names: list[str] | None = None) -> list[np.ndarray]:
    """Input row, then one row of Grad-CAM overlays per run; returns each run's maps [B, H, W].

    Args:
        x01: [B, C, H, W] in [0, 1]; labels: B class ids (None: unknown, explain the top-1).
        cells: bool [B, g, g] to outline (swapped cells), or None.
        names: captions of the input row (default: the class).
    """
    classes, scale = ctx["classes"], ctx["scale"]
    outline = (lambda img, i: plots.add_margin(img)) if cells is None else (
        lambda img, i: plots.add_margin(plots.outline_cells(img, cells[i], scale)))
    st.markdown("**input**")
    st.image([outline(plots.upscale(plots.to_rgb(x), scale), i) for i, x in enumerate(x01)],
             caption=names or [f"class {classes[int(y)]}" if y is not None else "" for y in labels])
    all_maps = []
    for (run, model, _), layer in zip(ctx["models"], ctx["layers"]):
        with common.MODEL_LOCK, torch.no_grad():
            probs = model(x01).softmax(dim=1)  # [B, K]
        targets = [int(y) for y in labels] if target == "true class" and None not in labels else None
        maps = common.cams(run["path"], layer, x01, targets)
        all_maps.append(maps)
        st.markdown(f"**{run['name']}** ({run.get('method')}, layer `{layer}`)")
        pred = probs.argmax(dim=1)
        st.image([outline(plots.upscale(overlay(x, torch.from_numpy(m), ctx["alpha"]), scale), i)
                  for i, (x, m) in enumerate(zip(x01, maps))],
                 caption=[f"pred {classes[int(p)]} ({float(q.max()):.2f})" for p, q in zip(pred, probs)])
    return all_maps


def test_images(ctx: dict, data: dict, target: str) -> None:
    n_test = len(data["y"])
    c1, c2 = st.columns(2)
    count = c1.slider("Images", 1, 8, 6, key="cam_count")
    last = max(n_test - count, 0)
    if st.session_state.get("cam_start", 0) > last:  # more images asked: keep them in range
        st.session_state["cam_start"] = last
    start = c2.number_input(f"First test image (0-{n_test - 1})", 0, last, key="cam_start")
    idx = np.arange(start, min(start + count, n_test))
    show_rows(ctx, common.to_float(data["x"][idx]), [int(v) for v in data["y"][idx]], target)


def swapped_pair(ctx: dict, data: dict, target: str) -> None:
    classes, y = ctx["classes"], data["y"]
    h = data["x"].shape[-1]
    gmax = int(min(h, 16))
    for key, limit in (("cam_pair_class", len(classes) - 1), ("cam_pair_grid", gmax)):
        if st.session_state.get(key, 0) > limit:  # other runs, other data: keep in range
            st.session_state[key] = limit
    c1, c2, c3 = st.columns(3)
    cls = c1.selectbox("Class", range(len(classes)), format_func=lambda c: classes[c],
                       key="cam_pair_class")
    grid = c2.slider("Patch grid g", 2, gmax, min(4, gmax), key="cam_pair_grid")
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="cam_pair_seed")
    members = np.flatnonzero(y == cls)
    if len(members) < 2:
        st.warning(f"class {classes[cls]} has fewer than two test images")
        return
    pick = np.random.default_rng(int(seed)).choice(members, 2, replace=False)
    x_a, x_b = common.to_float(data["x"][pick[:1]]), common.to_float(data["x"][pick[1:]])
    decision = draw_swap(1, int(grid), 1.0, generator=torch.Generator().manual_seed(int(seed)))
    out_a, out_b = apply_swap(x_a, x_b, decision)
    st.caption("A swap with pr = 1 (always swapped): a and b after the exchange, with yellow "
               "outlines on the cells each took from the other.")
    x = torch.cat([out_a, out_b])  # [2, C, H, W]
    cells = torch.cat([decision.cells, decision.cells]).numpy()  # [2, g, g]
    maps = show_rows(ctx, x, [int(cls)] * 2, target, cells=cells,
                     names=[f"a after swap (class {classes[cls]})", f"b after swap (class {classes[cls]})"])
    mask = torch.cat([decision.pixel_mask(h, h)] * 2)  # [2, 1, H, W]
    area = float(mask.float().mean())
    for (run, _, _), m in zip(ctx["models"], maps):
        share = cam_mass_in_mask(torch.from_numpy(m), mask).tolist()
        txt = ", ".join("-" if np.isnan(s) else f"{s:.0%}" for s in share)
        st.write(f"{run['name']}: Grad-CAM mass inside the swapped cells (a, b): {txt}; the "
                 f"cells cover {area:.0%} of the image.")


def upload(ctx: dict, config: dict) -> None:
    _, model, _ = ctx["models"][0]
    st.write(f"Any image is turned into the models' input: "
             f"{'greyscale' if model.in_channels == 1 else 'RGB'}, resized to "
             f"{model.image_size}x{model.image_size} pixels (up to "
             f"{MAX_IMAGE_BYTES // 2**20} MB and {MAX_IMAGE_SIDE} pixels a side).")
    file = st.file_uploader("Upload an image", type=["png", "jpg", "jpeg", "bmp", "gif", "webp"],
                            key="cam_upload")
    invert = st.checkbox("Invert (dark ink on light paper; digits were trained light on dark)",
                         value=config.get("dataset") == "digits", key="cam_invert")
    if file is None:
        return
    try:
        x = image_from_bytes(file.getvalue(), model.in_channels, model.image_size, invert)
    except ValueError as e:
        st.error(f"Cannot use {file.name}: {common.one_line(e)}")
        return
    show_rows(ctx, x, [None], "predicted class", names=[f"{file.name}, as the model sees it"])


common.page("Grad-CAM", icon="🔥", intro="Where two models look, side by side")
common.guard(main)
