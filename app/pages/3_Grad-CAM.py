"""Grad-CAM: where two trained models look, side by side, on test images, swapped pairs and
an image of your own.

Part of the ipskit explorer (``streamlit run app/Home.py``). Grad-CAM (Selvaraju et al., ICCV
2017) through ``ipskit.cam`` at each model's default layer (or one you choose). The IPS paper
(Choi et al., arXiv 2505.14124) argues that the confident side of a swapped pair keeps the
telling parts; the swapped-pair section shows a pair before and after a swap, which side each
model treats as the teacher (``ipskit.metrics.teacher_side``), outlines the exchanged patches
and reports how much of each map falls inside them (``ipskit.cam.cam_mass_in_mask``) against
their share of the area. Each section's images can be downloaded as one PNG.
"""

import common
import numpy as np
import streamlit as st
import torch

from ipskit import plots
from ipskit.cam import cam_mass_in_mask, overlay
from ipskit.data import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, image_from_bytes
from ipskit.metrics import CLEAR_TEACHER_MARGIN, teacher_side
from ipskit.swap import apply_swap, draw_swap

PAIR_PX = 176  # on-screen size of each image of the swapped pair (4 to a row in ~780 px)


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
        right = common.pick_run(
            "Right run",
            same,
            key="cam_right",
            index=next((i for i, r in enumerate(same) if r["name"] == runs[b]["name"]), 0),
        )
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
        st.error(
            "The two runs take different inputs (channels or image size); pick two runs "
            "trained on the same data at the same size."
        )
        return
    layers = []
    with st.sidebar:
        for side, (_, model, _) in zip(("left", "right"), models):
            names = model.cam_layer_names()
            default = model.cam_layer_name
            layers.append(
                st.selectbox(
                    f"Grad-CAM layer, {side}",
                    names,
                    index=names.index(default) if default in names else len(names) - 1,
                    key=f"cam_layer_{side}",
                    help="Deeper layers give coarser maps centred on the object; "
                    "shallower ones show edges and texture. The default is "
                    "the deepest layer whose map is larger than 1x1",
                    format_func=lambda n, d=default: f"{n} (default)" if n == d else n,
                )
            )
        target = st.radio(
            "Explain", ["true class", "predicted class"], key="cam_target", horizontal=True
        )
        alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="cam_alpha")
    try:
        data = common.run_test_split(c_left, left["path"])
    except Exception as e:
        st.error(f"Cannot load the {c_left.get('dataset')} data: {common.one_line(e)}")
        return
    ctx = dict(
        models=models,
        layers=layers,
        alpha=alpha,
        classes=data["classes"],
        scale=max(128 // m_left.image_size, 1),
    )
    tab_test, tab_pair, tab_upload = st.tabs(["Test images", "Swapped pair", "Your image"])
    with tab_test:
        test_images(ctx, data, target)
    with tab_pair:
        swapped_pair(ctx, data, target)
    with tab_upload:
        upload(ctx, c_left)


def show_rows(
    ctx: dict,
    x01: torch.Tensor,
    labels,
    target: str,
    cells=None,
    names: list[str] | None = None,
    notes=None,
    summary=None,
    scale: int | None = None,
    download: str = "cam",
) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Input row, then one row of Grad-CAM overlays per run, and a "Download PNG" of them all.

    Args:
        x01: [B, C, H, W] in [0, 1]; labels: B class ids (None: unknown, explain the top-1).
        cells: per image a bool [g, g] mask of cells to outline (swapped cells) or None.
        names: captions of the input row (default: the class).
        notes: function (run index, probabilities [B, K]) -> B captions of that run's row
            (default: the predicted class and its probability).
        summary: function (run index, maps, probabilities) -> a line written under that run's row.
        scale: upscaling factor of the images (default ``ctx["scale"]``).
        download: name of the PNG file (unique on the page).
    Returns:
        (each run's maps [B, H, W], each run's probabilities [B, K]).
    """
    classes, scale = ctx["classes"], scale or ctx["scale"]

    def outline(img, i):
        if cells is not None and cells[i] is not None:
            img = plots.outline_cells(img, cells[i], scale)
        return plots.add_margin(img)

    inputs = [outline(plots.upscale(plots.to_rgb(x), scale), i) for i, x in enumerate(x01)]
    captions = names or [f"class {classes[int(y)]}" if y is not None else "" for y in labels]
    st.markdown("**input**")
    st.image(inputs, caption=captions)
    rows = [("input", inputs, captions)]
    all_maps, all_probs = [], []
    for k, ((run, model, _), layer) in enumerate(zip(ctx["models"], ctx["layers"])):
        with common.MODEL_LOCK, torch.no_grad():
            probs = model(x01).softmax(dim=1)  # [B, K]
        targets = (
            [int(y) for y in labels] if target == "true class" and None not in labels else None
        )
        maps = common.cams(run["path"], layer, x01, targets)
        all_maps.append(maps)
        all_probs.append(probs)
        st.markdown(f"**{run['name']}** ({run.get('method')}, layer `{layer}`)")
        pred = probs.argmax(dim=1)
        overlays = [
            outline(plots.upscale(overlay(x, torch.from_numpy(m), ctx["alpha"]), scale), i)
            for i, (x, m) in enumerate(zip(x01, maps))
        ]
        caps = (
            notes(k, probs)
            if notes is not None
            else [f"pred {classes[int(p)]} ({float(q.max()):.2f})" for p, q in zip(pred, probs)]
        )
        st.image(overlays, caption=caps)
        if summary is not None:
            st.markdown(summary(k, maps, probs))
        rows.append((f"{run['name']}\n{layer}", overlays, caps))
    common.download_png(
        plots.image_rows_figure(rows, title=f"Grad-CAM ({target}): input, then one row per model"),
        download,
    )
    return all_maps, all_probs


def test_images(ctx: dict, data: dict, target: str) -> None:
    n_test = len(data["y"])
    c1, c2 = st.columns(2)
    count = c1.slider("Images", 1, 8, 6, key="cam_count")
    last = max(n_test - count, 0)
    if st.session_state.get("cam_start", 0) > last:  # more images asked: keep them in range
        st.session_state["cam_start"] = last
    start = c2.number_input(f"First test image (0-{n_test - 1})", 0, last, key="cam_start")
    idx = np.arange(start, min(start + count, n_test))
    show_rows(
        ctx,
        common.to_float(data["x"][idx]),
        [int(v) for v in data["y"][idx]],
        target,
        download="gradcam_test_images",
    )


def swapped_pair(ctx: dict, data: dict, target: str) -> None:
    classes, y = ctx["classes"], data["y"]
    h = data["x"].shape[-1]
    gmax = int(min(h, 16))
    for key, limit in (("cam_pair_class", len(classes) - 1), ("cam_pair_grid", gmax)):
        if st.session_state.get(key, 0) > limit:  # other runs, other data: keep in range
            st.session_state[key] = limit
    c1, c2, c3 = st.columns(3)
    cls = c1.selectbox(
        "Class", range(len(classes)), format_func=lambda c: classes[c], key="cam_pair_class"
    )
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
    x = torch.cat([x_a, x_b, out_a, out_b])  # [4, C, H, W]: before, then after
    g_cells = decision.cells[0].numpy()  # [g, g]
    name = classes[cls]
    st.caption(
        f"Two test images of class {name} before a swap (pr = 1: always swapped) and after "
        f"it, where the cells each took from the other are outlined in {plots.SWAP_COLOR_NAME}. Under each "
        f"model, Grad-CAM of the {target}, each image's p({name}), and the teacher after the swap: "
        f"the side more confident on {name}, unless the two are within "
        f"{CLEAR_TEACHER_MARGIN} (no clear teacher)."
    )

    mask = decision.pixel_mask(h, h)  # [1, 1, H, W]
    area = float(mask.float().mean())

    def teacher_notes(_k: int, probs: torch.Tensor) -> list[str]:
        """Each image's p(true class); the teacher after the swap marked, when there is one."""
        p = probs[:, cls].tolist()  # a, b, a after, b after
        side = teacher_side(p[2], p[3])
        pred = probs.argmax(dim=1).tolist()
        return [
            f"p({name}) {q:.2f}"
            + (" · teacher" if (i, side) in ((2, "a"), (3, "b")) else "")
            + ("" if pred[i] == cls else f" · pred {classes[pred[i]]}")
            for i, q in enumerate(p)
        ]

    def teacher_line(k: int, maps: np.ndarray, probs: torch.Tensor) -> str:
        run = ctx["models"][k][0]
        p_a, p_b = float(probs[2, cls]), float(probs[3, cls])
        side = teacher_side(p_a, p_b)
        who = (
            f"teacher after the swap: **{side}** (p {max(p_a, p_b):.2f} against "
            f"{min(p_a, p_b):.2f})"
            if side
            else f"**no clear teacher** after the swap (p {p_a:.2f} and {p_b:.2f}, within "
            f"{CLEAR_TEACHER_MARGIN})"
        )
        share = cam_mass_in_mask(torch.from_numpy(maps[2:]), torch.cat([mask, mask])).tolist()
        txt = ", ".join("-" if np.isnan(v) else f"{v:.0%}" for v in share)
        return (
            f"{run['name']}: {who}. Grad-CAM mass inside the swapped cells (a, b after swap): "
            f"{txt}; the cells cover {area:.0%} of the image."
        )

    show_rows(
        ctx,
        x,
        [int(cls)] * 4,
        target,
        cells=[None, None, g_cells, g_cells],
        names=["a", "b", "a after swap", "b after swap"],
        notes=teacher_notes,
        summary=teacher_line,
        scale=max(PAIR_PX // h, 1),
        download="gradcam_swapped_pair",
    )


def upload(ctx: dict, config: dict) -> None:
    _, model, _ = ctx["models"][0]
    st.write(
        f"Any image is turned into the models' input: "
        f"{'greyscale' if model.in_channels == 1 else 'RGB'}, resized to "
        f"{model.image_size}x{model.image_size} pixels (up to "
        f"{MAX_IMAGE_BYTES // 2**20} MB and {MAX_IMAGE_SIDE} pixels a side)."
    )
    file = st.file_uploader(
        "Upload an image",
        type=["png", "jpg", "jpeg", "bmp", "gif", "webp"],
        key="cam_upload",
        max_upload_size=MAX_IMAGE_BYTES // 2**20,
    )
    invert = st.checkbox(
        "Invert (dark ink on light paper; digits were trained light on dark)",
        value=config.get("dataset") == "digits",
        key="cam_invert",
    )
    if file is None:
        return
    try:
        x = image_from_bytes(file.getvalue(), model.in_channels, model.image_size, invert)
    except ValueError as e:
        st.error(f"Cannot use {file.name}: {common.one_line(e)}")
        return
    show_rows(
        ctx,
        x,
        [None],
        "predicted class",
        names=[f"{file.name}, as the model sees it"],
        download="gradcam_upload",
    )


common.page("Grad-CAM", icon="🔥", intro="Where two models look, side by side")
common.guard(main)
