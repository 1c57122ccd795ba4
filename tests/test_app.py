"""The Streamlit explorer (app/) through Streamlit's AppTest: every page, with interactions.

Each test points the app at a folder of tiny trained runs (tests/_app_runs.py) with
``IPSKIT_RUNS`` and checks that pages render without an exception and show what they should;
numbers shown are checked against ipskit computed independently here (the swap drawn from the
same seed, the teacher from the run's model, the accuracy the trainer recorded). Bad input
(corrupt or foreign checkpoints, non-image uploads, paths outside the runs folder) must give
an ``st.error`` line, never an exception. An empty runs folder must offer the demo training.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _app_runs import tiny_runs

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app" / "Home.py"
PAGES = {
    "pages/1_Swap_playground.py": "Swap playground",
    "pages/2_Logit_smoothing.py": "Logit smoothing",
    "pages/3_Grad-CAM.py": "Grad-CAM",
    "pages/4_Ablation.py": "Ablation",
    "pages/5_Runs.py": "Runs",
}
TIMEOUT = 60


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    return tiny_runs(tmp_path_factory)


@pytest.fixture
def app(runs_root, monkeypatch):
    """An AppTest of the explorer reading the tiny runs; call ``open(page)`` to get a page."""
    monkeypatch.setenv("IPSKIT_RUNS", str(runs_root))
    monkeypatch.setenv("IPSKIT_RESULTS", "")  # the shipped runs have tests of their own

    def open_(
        page: str | None = None, root: Path | None = None, results: Path | None = None
    ) -> AppTest:
        if root is not None:
            monkeypatch.setenv("IPSKIT_RUNS", str(root))
        if results is not None:
            monkeypatch.setenv("IPSKIT_RESULTS", str(results))
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
        if page is not None:
            at.switch_page(page).run()
        return at

    return open_


def assert_clean(at: AppTest, title: str) -> None:
    """No exception, no error or warning box, and the page's title."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]
    assert [t.value for t in at.title] == [title]


def texts(at: AppTest) -> str:
    return "\n".join(
        [m.value for m in at.markdown]
        + [c.value for c in at.caption]
        + [i.value for i in at.info]
        + [w.value for w in at.warning]
    )


# ----------------------------------------------------------------------------- every page
def test_home_lists_runs_and_links_every_page(app):
    at = app()
    assert_clean(at, "IPS explorer")
    df = at.dataframe[0].value
    assert set(df["run"]) >= {"demo/ce", "demo/ips", "sweep/grid=2_pr=0.5"}
    assert len(at.page_link) == len(PAGES)


def test_switching_through_every_page(app):
    at = app()
    for page, title in PAGES.items():
        at.switch_page(page).run()
        assert_clean(at, title)
    at.switch_page("Home.py").run()
    assert_clean(at, "IPS explorer")


# ----------------------------------------------------------------------------- swap playground
def swapped_cells_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if c.value.startswith("swapped cells"))


def test_swap_playground_draws_the_seeded_swap_and_keeps_it_when_only_the_view_changes(app):
    from ipskit.swap import draw_swap

    at = app("pages/1_Swap_playground.py")
    at.slider(key="swap_grid").set_value(3).run()
    at.slider(key="swap_pr").set_value(1.0).run()
    at.number_input(key="swap_seed").set_value(7).run()
    assert_clean(at, "Swap playground")
    # independent: the same seeded draw, here
    d = draw_swap(1, 3, 1.0, generator=torch.Generator().manual_seed(7))
    expected = ", ".join(f"({r},{c})" for r, c in d.cells[0].nonzero().tolist())
    assert swapped_cells_caption(at) == f"swapped cells (row, col): {expected}"
    before, n_images = swapped_cells_caption(at), len(at.image)
    at.checkbox(key="swap_show_mask").check().run()
    at.select_slider(key="swap_width").set_value("small").run()
    at.number_input(key="swap_ia").set_value(3).run()  # other images, same swap
    assert_clean(at, "Swap playground")
    assert swapped_cells_caption(at) == before
    assert len(at.image) == n_images + 1  # the mask
    at.number_input(key="swap_seed").set_value(8).run()
    d8 = draw_swap(1, 3, 1.0, generator=torch.Generator().manual_seed(8))
    assert (swapped_cells_caption(at) == before) == bool((d8.cells == d.cells).all())


def test_swap_playground_pr_zero_never_swaps(app):
    at = app("pages/1_Swap_playground.py")
    at.slider(key="swap_pr").set_value(0.0).run()
    assert_clean(at, "Swap playground")
    assert "no swap" in texts(at)
    assert swapped_cells_caption(at).endswith("none")


def test_swap_playground_teacher_and_probabilities_match_the_model(app, runs_root):
    from ipskit.data import load_dataset
    from ipskit.metrics import teacher_side
    from ipskit.runs import load_model
    from ipskit.swap import apply_swap, draw_swap

    at = app("pages/1_Swap_playground.py")
    at.selectbox(key="swap_run").set_value("demo/ips").run()
    at.selectbox(key="swap_class").set_value(3).run()
    at.slider(key="swap_pr").set_value(1.0).run()
    assert_clean(at, "Swap playground")
    metrics = {m.label: m.value for m in at.metric}
    # independent: the same pair through the run's model, here
    model, _ = load_model(runs_root / "demo" / "ips")
    b = load_dataset("digits")
    members = (b.test_y == 3).nonzero().flatten()
    x = b.test_x[members[:2]].float() / 255
    d = draw_swap(1, 4, 1.0, generator=torch.Generator().manual_seed(0))
    out_a, out_b = apply_swap(x[:1], x[1:], d)
    with torch.no_grad():
        p = model(torch.cat([out_a, out_b])).softmax(1)[:, 3]
    assert metrics["p(true class) a after swap"] == f"{float(p[0]):.3f}"
    assert metrics["p(true class) b after swap"] == f"{float(p[1]):.3f}"
    side = teacher_side(float(p[0]), float(p[1]))  # no teacher within CLEAR_TEACHER_MARGIN
    assert metrics["teacher"] == (f"{side} after swap" if side else "no clear teacher")
    assert any(k.startswith("KD term (T = 4)") for k in metrics)
    # random pair, and a class change, keep the page working
    at.button(key="swap_random").click().run()
    at.selectbox(key="swap_class").set_value(5).run()
    assert_clean(at, "Swap playground")
    assert (at.number_input(key="swap_ia").value, at.number_input(key="swap_ib").value) == (0, 1)
    at.selectbox(key="swap_run").set_value("").run()
    assert_clean(at, "Swap playground")
    assert not at.metric and "Pick a trained run" in texts(at)


def test_swap_playground_most_lopsided_pair(app, runs_root):
    """The button picks, under the run's model, the most lopsided of the random pairs of the
    class (ipskit.metrics.most_lopsided_pair, replayed here), shows the swap drawn for it, and
    names its teacher; changing a setting goes back to the seeded swap."""
    from ipskit.data import load_dataset
    from ipskit.metrics import most_lopsided_pair, teacher_side
    from ipskit.runs import load_model

    at = app("pages/1_Swap_playground.py")
    at.selectbox(key="swap_run").set_value("").run()
    assert at.button(key="swap_lopsided_button").disabled  # needs a model
    at.selectbox(key="swap_run").set_value("demo/ips").run()
    at.selectbox(key="swap_class").set_value(2).run()
    at.slider(key="swap_pr").set_value(1.0).run()
    at.number_input(key="swap_seed").set_value(5).run()
    at.button(key="swap_lopsided_button").click().run()
    assert_clean(at, "Swap playground")
    # independent: the same search, here
    model, _ = load_model(runs_root / "demo" / "ips")
    b = load_dataset("digits")
    x = b.test_x[b.test_y == 2].float() / 255
    found = most_lopsided_pair(
        model,
        x,
        2,
        4,
        1.0,
        generator=torch.Generator().manual_seed(5),
        n_pairs=64,
        swapped_only=True,
    )
    assert (at.number_input(key="swap_ia").value, at.number_input(key="swap_ib").value) == (
        found.index_a,
        found.index_b,
    )
    expected = ", ".join(f"({r},{c})" for r, c in found.decision.cells[0].nonzero().tolist())
    assert swapped_cells_caption(at) == f"swapped cells (row, col): {expected}"
    assert "most lopsided of 64 random pairs" in texts(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["p(true class) a after swap"] == f"{found.p_a:.3f}"
    side = teacher_side(found.p_a, found.p_b)
    assert metrics["teacher"] == (f"{side} after swap" if side else "no clear teacher")
    at.number_input(key="swap_seed").set_value(6).run()  # a setting changed: the seeded swap again
    assert "most lopsided" not in texts(at)


def test_swap_playground_no_swap_says_so(app):
    at = app("pages/1_Swap_playground.py")
    at.selectbox(key="swap_run").set_value("demo/ips").run()
    at.slider(key="swap_pr").set_value(0.0).run()
    at.checkbox(key="swap_show_mask").check().run()
    assert_clean(at, "Swap playground")
    assert "Swap mask: no cells swapped." in texts(at)
    labels = [m.label for m in at.metric]
    assert labels[:2] == ["p(true class) a", "p(true class) b"]  # not "after swap"


@pytest.fixture
def pngs(monkeypatch):
    """Every st.download_button call: file name -> the bytes it offers."""
    import streamlit

    got: dict[str, bytes] = {}
    real = streamlit.download_button

    def recording(label, data, file_name=None, *args, **kwargs):
        got[file_name] = data
        return real(label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", recording)
    return got


@pytest.mark.parametrize(
    "page, names",
    [
        ("pages/1_Swap_playground.py", {"swap_pair", "swap_probabilities"}),
        (
            "pages/2_Logit_smoothing.py",
            {"confidence_histogram", "entropy_histogram", "reliability", "similarity"},
        ),
        ("pages/3_Grad-CAM.py", {"gradcam_test_images", "gradcam_swapped_pair"}),
        ("pages/4_Ablation.py", {"ablation"}),
        ("pages/5_Runs.py", {"curves"}),
    ],
)
def test_every_figure_has_a_png_download(app, pngs, page, names):
    at = app(page)
    assert_clean(at, PAGES[page])
    assert {f"{n}.png" for n in names} <= set(pngs), sorted(pngs)
    assert all(b.label == "Download PNG" for b in at.download_button)
    assert len(at.download_button) == len(pngs)
    for name, data in pngs.items():
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        from PIL import Image

        assert min(Image.open(io.BytesIO(data)).size) > 100, name


# ----------------------------------------------------------------------------- logit smoothing
def test_logit_smoothing_table_matches_the_trainer_and_follows_the_run_choice(app, runs_root):
    from ipskit.runs import load_run

    at = app("pages/2_Logit_smoothing.py")
    assert_clean(at, "Logit smoothing")
    df = at.dataframe[0].value
    assert list(df["run"]) == ["demo/ce", "demo/ips"]
    for _, row in df.iterrows():  # the trainer's last-epoch accuracy on the same test set
        recorded = load_run(runs_root / row["run"])["summary"]["test_acc"]
        assert row["accuracy"] == pytest.approx(recorded, abs=1e-6)
    assert "over-smooth" in texts(at) or "calibrated" in texts(at) or "confident" in texts(at)
    assert len(at.image) >= 4  # 2 histograms, reliability, similarity
    at.multiselect(key="smooth_runs").select("sweep/grid=4_pr=1.0").run()
    assert_clean(at, "Logit smoothing")
    assert len(at.dataframe[0].value) == 3
    at.multiselect(key="smooth_runs").set_value([]).run()
    assert_clean(at, "Logit smoothing")
    assert "Pick at least one run" in texts(at)


# ----------------------------------------------------------------------------- Grad-CAM
def png_bytes(size=(40, 30), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8)
    ).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def test_gradcam_two_runs_layers_pairs_and_uploads(app):
    at = app("pages/3_Grad-CAM.py")
    assert_clean(at, "Grad-CAM")
    assert "demo/ce" in texts(at) and "demo/ips" in texts(at)
    n_rows = len(at.image)
    assert n_rows == 3 * 2  # test images and swapped pair: an input row and one row per run
    assert len(at.image[0].captions) == 6 and at.image[1].captions[0].startswith("pred ")
    at.slider(key="cam_count").set_value(2).run()
    assert len(at.image[0].captions) == 2
    n_test = 359  # digits: 1,797 images, 20% held out per class
    at.number_input(key="cam_start").set_value(n_test - 2).run()
    at.slider(key="cam_count").set_value(8).run()  # the start moves back to fit 8 images
    assert_clean(at, "Grad-CAM")
    assert at.number_input(key="cam_start").value == n_test - 8
    assert len(at.image[0].captions) == 8
    layers = at.selectbox(key="cam_layer_right").options
    at.selectbox(key="cam_layer_right").set_value(layers[0].split(" ")[0]).run()
    at.radio(key="cam_target").set_value("predicted class").run()
    assert_clean(at, "Grad-CAM")
    assert "mass inside the swapped cells" in texts(at)
    at.file_uploader(key="cam_upload").set_value(("mine.png", png_bytes(), "image/png")).run()
    assert_clean(at, "Grad-CAM")
    assert len(at.image) == n_rows + 3  # the upload: input and one row per run
    assert len(at.image[-1].captions) == 1 and at.image[-1].captions[0].startswith("pred ")


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.png", b"this is not an image at all", "not an image"),
        ("huge.png", b"\0" * (6 * 1024 * 1024), "limit is 5 MB"),
    ],
)
def test_gradcam_bad_uploads_give_one_error_line(app, name, data, message):
    at = app("pages/3_Grad-CAM.py")
    at.file_uploader(key="cam_upload").set_value((name, data, "image/png")).run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value and name in at.error[0].value
    assert "input" in texts(at)  # the rest of the page still renders


# ----------------------------------------------------------------------------- ablation
def test_ablation_heatmap_and_the_runs_behind_a_cell(app):
    at = app("pages/4_Ablation.py")
    assert_clean(at, "Ablation")
    assert len(at.get("vega_lite_chart")) == 1
    cells = at.selectbox(key="abl_cell").options
    assert sorted(cells) == sorted(f"grid {g}, pr {p}" for g in (2, 4) for p in ("0.5", "1"))
    at.selectbox(key="abl_cell").set_value("grid 4, pr 1").run()
    assert_clean(at, "Ablation")
    behind = at.dataframe[0].value
    assert len(behind) == 1 and behind["run_dir"].iloc[0].endswith("sweep/grid=4_pr=1.0")
    assert [p.value for p in at.page_link] == ["Open sweep/grid=4_pr=1.0 in Runs"]
    at.selectbox(key="abl_metric").set_value("ece").run()
    assert_clean(at, "Ablation")


def test_ablation_takes_its_baseline_from_the_sibling_ce_table(app, runs_root):
    base = runs_root / "sweep-ce" / "results.csv"  # what notebook 4 writes next to its sweep
    base.parent.mkdir()
    try:
        base.write_text(
            f"method,seed,test_acc,ece,run_dir\nce,0,0.25,0.1,{runs_root / 'demo' / 'ce'}\n"
            f"ce,1,0.75,0.2,{runs_root / 'demo' / 'ce'}\n"
        )
        at = app("pages/4_Ablation.py")
        assert_clean(at, "Ablation")
        assert at.selectbox(key="abl_base").value == base  # picked by default
        assert "Baseline ce: test accuracy 0.5000 (mean of 2 run(s))." in texts(at).replace(
            "**", ""
        )
        at.selectbox(key="abl_base").select_index(0).run()  # "none"
        assert_clean(at, "Ablation")
        assert "Baseline ce" not in texts(at).replace("**", "")
    finally:
        shutil.rmtree(base.parent)


def test_ablation_offers_a_small_sweep_with_its_command_and_trains_it(app, runs_root, tmp_path):
    """No sweep table: the page shows the commands and, with a tiny setting, trains the IPS
    grid x pr sweep and its CE baseline from the button; the heatmap then centres on CE."""
    import shlex

    from ipskit.cli import build_parser

    root = tmp_path / "runs"
    shutil.copytree(runs_root / "demo" / "ce", root / "demo" / "ce")  # runs, but no sweep
    at = app("pages/4_Ablation.py", root=root)
    assert_clean(at, "Ablation")
    assert "No sweep table" in texts(at)
    at.multiselect(key="abl_new_grids").set_value([2]).run()
    at.multiselect(key="abl_new_prs").set_value([0.5, 1.0]).run()
    at.number_input(key="abl_new_seeds").set_value(1).run()
    at.number_input(key="abl_new_epochs").set_value(1).run()
    at.selectbox(key="abl_new_model").set_value("smallcnn").run()
    assert_clean(at, "Ablation")
    # two commands, a blank line apart; "\\" + newline continues a line, as in bash
    commands = [shlex.split(c.replace("\\\n", " ")) for c in at.code[0].value.split("\n\n")]
    assert [c[:4] for c in commands] == [
        ["ipskit", "sweep", "--name", "grid-pr"],
        ["ipskit", "sweep", "--name", "grid-pr-ce"],
    ]
    ns = build_parser().parse_args(commands[0][1:])  # the command the CLI takes
    assert (ns.grid, ns.pr, ns.seed, ns.epochs, ns.model, ns.method) == (
        [2],
        [0.5, 1.0],
        [0],
        [1],
        ["smallcnn"],
        ["ips"],
    )
    assert "3 runs of 1 epoch(s)" in texts(at)
    at.button(key="abl_train_sweep").click().run(timeout=300)
    assert_clean(at, "Ablation")
    assert (root / "grid-pr" / "results.csv").is_file() and (
        root / "grid-pr-ce" / "results.csv"
    ).is_file()
    assert len(at.get("vega_lite_chart")) == 1
    assert at.selectbox(key="abl_base").value == root / "grid-pr-ce" / "results.csv"
    assert "Baseline ce" in texts(at).replace("**", "")
    assert sorted(at.selectbox(key="abl_cell").options) == ["grid 2, pr 0.5", "grid 2, pr 1"]


# ----------------------------------------------------------------------------- runs
def test_runs_page_selection_paths_and_links(app, runs_root, tmp_path):
    at = app("pages/5_Runs.py")
    assert_clean(at, "Runs")
    assert len(at.dataframe[0].value) == 6
    at.selectbox(key="runs_pick").set_value("demo/ips").run()
    assert_clean(at, "Runs")
    assert any("ips · smallcnn · digits" in s.value for s in at.subheader)
    assert {m.label for m in at.metric} >= {"test accuracy", "ECE"}
    assert len(at.tabs) == 4
    # a folder outside the runs folder is refused with one line
    outside = tmp_path / "elsewhere"
    shutil.copytree(runs_root / "demo" / "ce", outside)
    at.text_input(key="runs_path").input(str(outside)).run()
    assert not at.exception
    assert len(at.error) == 1 and "outside the runs folder" in at.error[0].value
    at.text_input(key="runs_path").input("../" * 3 + "etc").run()
    assert len(at.error) == 1 and "outside the runs folder" in at.error[0].value
    at.text_input(key="runs_path").input("demo/ce").run()
    assert_clean(at, "Runs")
    assert any(s.value.startswith("ce ·") for s in at.subheader)
    # the link from the Ablation page: ?run=<name> selects that run
    at2 = app()
    at2.query_params["run"] = "sweep/grid=2_pr=1.0"
    at2.switch_page("pages/5_Runs.py").run()
    assert at2.selectbox(key="runs_pick").value == "sweep/grid=2_pr=1.0"


def test_runs_page_computes_the_missing_evaluation_and_shows_it(app, runs_root, tmp_path):
    import json

    root = tmp_path / "runs"
    shutil.copytree(runs_root / "demo", root / "demo")
    (root / "demo" / "ce" / "eval.json").unlink(missing_ok=True)
    at = app("pages/5_Runs.py", root=root)
    assert_clean(at, "Runs")
    assert "No evaluation results" in texts(at)
    at.multiselect(key="runs_eval_kinds").set_value(["calibration"]).run()
    at.button(key="runs_eval").click().run()
    assert_clean(at, "Runs")
    stored = json.loads((root / "demo" / "ce" / "eval.json").read_text())
    assert list(stored) == ["calibration"]
    assert "No evaluation results" not in texts(at)
    table = next(d.value for d in at.dataframe if "split" in d.value.columns)
    assert list(table["split"]) == ["test", "heldout", "heldout_scaled"]
    assert table["ece"].iloc[0] == pytest.approx(stored["calibration"]["result"]["test"]["ece"])


def test_runs_page_evaluates_a_run_without_eval_json_and_names_the_corruption_count(
    app, runs_root, tmp_path
):
    """A run fresh from training (as after ``make demo``): the Evaluation tab offers every kind,
    the help counts ipskit's corruptions, and the default choice is computed with a bar."""
    import json

    from ipskit.evaluate import DEFAULT_WHAT
    from ipskit.robustness import CORRUPTIONS

    root = tmp_path / "runs"
    shutil.copytree(runs_root / "demo" / "ips", root / "demo" / "ips")
    (root / "demo" / "ips" / "eval.json").unlink(missing_ok=True)
    at = app("pages/5_Runs.py", root=root)
    assert_clean(at, "Runs")
    kinds = at.multiselect(key="runs_eval_kinds")
    assert kinds.options == [kinds.format_func(k) for k in DEFAULT_WHAT]
    assert f"{len(CORRUPTIONS)} corruptions" in kinds.help and "15 corruptions" not in kinds.help
    assert kinds.value == [k for k in DEFAULT_WHAT if k != "corruptions"]
    at.multiselect(key="runs_eval_kinds").set_value(["calibration", "fgsm"]).run()
    at.button(key="runs_eval").click().run()
    assert_clean(at, "Runs")
    assert sorted(json.loads((root / "demo" / "ips" / "eval.json").read_text())) == [
        "calibration",
        "fgsm",
    ]


def test_runs_page_does_not_offer_to_evaluate_shipped_or_weightless_runs(app, tmp_path):
    at = app("pages/5_Runs.py", root=tmp_path / "none", results=REPO / "results")
    assert_clean(at, "Runs")
    names = at.selectbox(key="runs_pick").options
    weightless = next(n for n in names if "resnet18-h200" in n)
    for name in (f"{SHIPPED}/ce", weightless):
        at.selectbox(key="runs_pick").set_value(name).run()
        assert_clean(at, "Runs")
        assert not [b for b in at.button if b.key == "runs_eval"], name


# ----------------------------------------------------------------------------- bad runs
@pytest.fixture
def bad_root(runs_root, tmp_path) -> Path:
    """demo/ce intact, plus a run whose checkpoint is garbage and one with a foreign checkpoint."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "demo" / "ce", root / "good")
    shutil.copytree(runs_root / "demo" / "ips", root / "corrupt")
    (root / "corrupt" / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    shutil.copytree(runs_root / "demo" / "ips", root / "foreign")
    torch.save({"weights": torch.zeros(3)}, root / "foreign" / "checkpoint.pt")
    return root


BAD = {"corrupt": "cannot be read", "foreign": "not an ipskit checkpoint"}


def test_bad_checkpoints_give_an_error_line_on_every_page_that_loads_them(app, bad_root):
    at = app("pages/1_Swap_playground.py", root=bad_root)
    for bad, message in BAD.items():
        at.selectbox(key="swap_run").set_value(bad).run()
        assert not at.exception
        assert len(at.error) == 1 and message in at.error[0].value
        assert at.image  # the swap itself still shows

    at.switch_page("pages/5_Runs.py").run()
    for bad, message in BAD.items():
        at.selectbox(key="runs_pick").set_value(bad).run()
        assert not at.exception
        assert len(at.error) == 1 and message in at.error[0].value
        assert at.metric  # config, curves and summary still show

    at.switch_page("pages/3_Grad-CAM.py").run()
    for bad, message in BAD.items():
        at.selectbox(key="cam_right").set_value(bad).run()
        assert not at.exception
        assert len(at.error) == 1 and message in at.error[0].value

    at.switch_page("pages/2_Logit_smoothing.py").run()
    at.multiselect(key="smooth_runs").set_value(["good", *BAD]).run()
    assert not at.exception
    assert sorted(e.value.split(":")[0] for e in at.error) == [
        "Skipping corrupt",
        "Skipping foreign",
    ]
    assert [m in e.value for e, m in zip(at.error, BAD.values())] == [True, True]
    assert list(at.dataframe[0].value["run"]) == ["good"]  # the good run still shows


# ----------------------------------------------------------------------------- no runs yet
def test_no_runs_offers_the_demo_and_trains_it_with_a_progress_bar(app, tmp_path, monkeypatch):
    from ipskit import sweep

    root = tmp_path / "empty"
    at = app(root=root)
    assert not at.exception and not at.error
    assert "No runs found" in texts(at)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception and not at.error, page
        assert "No runs found" in texts(at) and at.button(key="train_demo"), page
    # the real demo, made tiny: same code path, one epoch on a slice of digits
    monkeypatch.setattr(
        sweep,
        "DEMO_SETTINGS",
        dict(sweep.DEMO_SETTINGS, epochs=1, model="smallcnn", max_train_samples=64),
    )
    at.switch_page("Home.py").run()
    at.button(key="train_demo").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert (root / "demo" / "ce" / "summary.json").is_file()
    assert (root / "demo" / "ips" / "summary.json").is_file()
    assert set(at.dataframe[0].value["run"]) == {"demo/ce", "demo/ips"}


# ----------------------------------------------------------------------------- shipped runs
REPO = APP.parents[1]
SHIPPED = "results/cifar10-resnet8-cpu"


def test_fresh_clone_explores_the_shipped_natural_image_pair(app, tmp_path, monkeypatch):
    """No runs of one's own and no CIFAR-10 on disk (started outside the checkout): the Swap
    playground, Logit smoothing and Grad-CAM work on the CE / IPS pair shipped in results/,
    on the test images shipped with it; reference runs without weights are never offered."""
    monkeypatch.chdir(tmp_path)  # the runs' dataset path data/cifar10 is missing here
    at = app("pages/1_Swap_playground.py", root=tmp_path / "runs", results=REPO / "results")
    assert_clean(at, "Swap playground")
    assert at.sidebar.selectbox(key="swap_dataset").value == "imagefolder:data/cifar10"
    assert at.sidebar.selectbox(key="swap_run").value == f"{SHIPPED}/ips"
    assert "showing the 300 test images shipped with the run" in texts(at)
    assert at.sidebar.selectbox(key="swap_class").format_func(0) == "airplane"
    assert [m.label for m in at.metric][2] == "teacher"
    offered = at.sidebar.selectbox(key="swap_run").options
    assert not any("resnet18-h200" in o for o in offered), offered

    at.switch_page("pages/3_Grad-CAM.py").run()
    assert_clean(at, "Grad-CAM")
    assert at.sidebar.selectbox(key="cam_left").value == f"{SHIPPED}/ce"
    assert at.sidebar.selectbox(key="cam_right").value == f"{SHIPPED}/ips"

    at.switch_page("pages/2_Logit_smoothing.py").run()
    assert_clean(at, "Logit smoothing")
    table = at.dataframe[0].value
    assert set(table["run"]) == {f"{SHIPPED}/ce", f"{SHIPPED}/ips"}
    assert (table["test images"] == 300).all()


def test_a_broken_run_is_listed_as_broken_and_the_others_still_work(app, runs_root, tmp_path):
    """A run folder whose config.json is valid JSON but not an object used to empty the run
    list on every page; now it is listed as broken, says why when picked, and every page works
    on the other runs."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "demo" / "ce", root / "good")
    shutil.copytree(runs_root / "demo" / "ips", root / "good-ips")
    shutil.copytree(runs_root / "demo" / "ips", root / "broken")
    (root / "broken" / "config.json").write_text("[1]")
    at = app(root=root)
    assert_clean(at, "IPS explorer")
    table = at.dataframe[0].value
    assert dict(zip(table["run"], table["status"]))["broken"] == "broken"
    assert set(table["run"]) == {"good", "good-ips", "broken"}
    at.switch_page("pages/5_Runs.py").run()
    at.selectbox(key="runs_pick").set_value("broken").run()
    assert not at.exception
    assert len(at.error) == 1 and "config.json holds a JSON list" in at.error[0].value
    for page, title in (
        ("pages/1_Swap_playground.py", "Swap playground"),
        ("pages/2_Logit_smoothing.py", "Logit smoothing"),
        ("pages/3_Grad-CAM.py", "Grad-CAM"),
    ):
        at.switch_page(page).run()
        assert not at.exception and not at.error, (title, [e.value for e in at.error])
