"""Every tutorial notebook, and the instructor's key, runs top to bottom at test scale, and is
committed clean.

The contract between this harness and ``notebooks/*.ipynb`` (also in ``notebooks/README.md``);
the key in ``notebooks/solutions/`` follows it too, from its own folder:

1. Parameters. Each notebook has exactly one code cell tagged ``parameters`` (papermill's
   convention) holding the knobs a reader changes: ``DATASET``, model, epochs, seeds, ``DEVICE``,
   ``RUNS`` ... It must assign ``SCALE = "default"``. Values there are simple assignments.
2. Injection. The harness inserts one cell right after the parameters cell that assigns
   ``SCALE = "test"``, plus ``RUNS = "<tmp runs root>"`` and ``DEVICE = "cpu"`` when the
   parameters cell assigns those names, plus the entries of ``OVERRIDES[<notebook stem>]``
   below (explicit small values). Every injected name other than ``SCALE`` must be assigned in
   the parameters cell, so an override can never silently do nothing (checked).
   A notebook turns ``SCALE == "test"`` into its own small sizes (an epoch or two, a data
   subset, fewer figures) after the parameters cell; aim for <= 30 s per notebook on 2 cores.
3. Runs. Notebooks read and write runs under ``RUNS`` (default
   ``os.environ.get("IPSKIT_RUNS", "../runs")``). They reuse a run already on disk and train
   (small) only what is missing. The harness gives all notebooks one shared, initially empty
   runs root per test session and executes them in file-name order, so a later notebook may
   find runs an earlier one trained, but must never need them: set ``IPSKIT_NB_ISOLATED=1`` to
   give every notebook its own empty runs root and check that.
4. Execution. Kernel ``python3`` (the venv's ipykernel), working directory = the notebook's
   own folder (``notebooks/``, as in ``make lab``), no network. Executed copies are written to a
   pytest tmp dir only (their path is printed on failure); ``notebooks/`` is never written.
   No cell may raise, and every figure must render as an image: start the first code cell
   with ``%matplotlib inline`` (``ipskit.plots`` returns bare ``Figure`` objects).
5. Committed form. No outputs and no execution counts (``make clean-notebooks``); the first
   cell is markdown (what it teaches, what it needs, measured time on a 2-core CPU); a markdown
   cell with an "Exercises" heading; at least as much prose (markdown characters) as code.

6. The key. ``notebooks/solutions/instructor_key.ipynb`` answers every exercise: one heading
   ``### N.k Title`` per exercise ``k`` of notebook ``N``, with the title the tutorial gives it
   (checked both ways, so adding, removing or renaming an exercise fails until the key follows).
   It is executed after the tutorials, in the same shared runs root.

Run just these tests:  ``.venv/bin/pytest tests/test_notebooks.py``
One notebook:          ``.venv/bin/pytest tests/test_notebooks.py -k 03_train``
The key:               ``.venv/bin/pytest tests/test_notebooks.py -k instructor_key``
"""

from __future__ import annotations

import ast
import os
import re
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
TUTORIALS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KEY = NOTEBOOK_DIR / "solutions" / "instructor_key.ipynb"
# The key runs last: it may find the tutorials' runs in the shared root, but never needs them.
NOTEBOOKS = TUTORIALS + sorted((NOTEBOOK_DIR / "solutions").glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # one cell at test scale; a hung kernel fails instead of blocking CI

# Explicit small values per notebook (stem -> {name: value}), injected after SCALE = "test".
# Each name must be assigned in that notebook's parameters cell.
OVERRIDES: dict[str, dict[str, object]] = {}


def _ids(paths):
    return [p.stem for p in paths]


def parameters_cell_index(nb) -> int:
    """Index of the single code cell tagged ``parameters``; ValueError if none or several."""
    found = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    if len(found) != 1:
        raise ValueError(f"expected exactly one code cell tagged 'parameters', found {len(found)}")
    return found[0]


def assigned_names(source: str) -> set[str]:
    """Names assigned at top level of a cell (``X = ...``, ``X: int = ...``, ``A, B = ...``)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else ([node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        )
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    names.add(n.id)
    return names


def injected_values(nb, stem: str, runs_root: Path) -> dict[str, object]:
    """The names and values the harness sets right after the parameters cell."""
    params = assigned_names(nb.cells[parameters_cell_index(nb)].source)
    values: dict[str, object] = {"SCALE": "test"}
    if "RUNS" in params:
        values["RUNS"] = str(runs_root)
    if "DEVICE" in params:
        values["DEVICE"] = "cpu"
    values.update(OVERRIDES.get(stem, {}))
    return values


def with_injected_cell(nb, values: dict[str, object]):
    """A copy of ``nb`` with a cell assigning ``values`` inserted after the parameters cell."""
    nb = nbformat.from_dict(nb)  # deep copy
    src = "# Injected by tests/test_notebooks.py: test-scale overrides\n" + "".join(
        f"{k} = {v!r}\n" for k, v in values.items()
    )
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(parameters_cell_index(nb) + 1, cell)
    return nb


@pytest.fixture(scope="session")
def shared_runs_root(tmp_path_factory) -> Path:
    """One empty runs root shared by every notebook in this session (see contract point 3)."""
    return tmp_path_factory.mktemp("runs")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path: Path, shared_runs_root: Path, tmp_path: Path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    runs_root = (
        tmp_path / "runs" if os.environ.get("IPSKIT_NB_ISOLATED") == "1" else shared_runs_root
    )
    values = injected_values(nb, path.stem, runs_root)
    params = assigned_names(nb.cells[parameters_cell_index(nb)].source)
    unknown = sorted(set(values) - params - {"SCALE", "RUNS", "DEVICE"})
    assert not unknown, f"OVERRIDES names not assigned in the parameters cell: {unknown}"
    nb = with_injected_cell(nb, values)

    out = tmp_path / "executed" / path.name
    out.parent.mkdir(parents=True)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        nbformat.write(nb, out)
        pytest.fail(
            f"{path.name} failed at test scale (executed copy: {out}):\n{err}", pytrace=False
        )
    finally:
        elapsed = time.perf_counter() - start
    nbformat.write(nb, out)
    print(f"{path.name}: {elapsed:.1f} s at test scale (executed copy: {out})")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], (
        f"{path.name} produced error outputs"
    )
    # A cell ending in a bare matplotlib Figure (what ipskit.plots returns) shows only
    # "<Figure ...>" until the inline backend is active: run %matplotlib inline first.
    unrendered = [
        o
        for o in outputs
        if o.get("output_type") == "execute_result"
        and str(o["data"].get("text/plain", "")).startswith("<Figure")
        and "image/png" not in o["data"]
    ]
    assert not unrendered, f"{path.name}: {len(unrendered)} figure(s) shown as text, not images"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_committed_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs or execution counts; "
        f"run `make clean-notebooks` before committing"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec must be python3"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_structure(path: Path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells and nb.cells[0].cell_type == "markdown", (
        f"{path.name}: the first cell must be markdown (what it teaches, needs, how long)"
    )
    first = nb.cells[0].source.lower()
    assert "cpu" in first and ("min" in first or " s " in first or "second" in first), (
        f"{path.name}: the first cell must state the measured time on a 2-core CPU"
    )
    params = nb.cells[parameters_cell_index(nb)].source
    assert "SCALE" in assigned_names(params), f"{path.name}: the parameters cell must set SCALE"
    assert 'SCALE = "default"' in params, f'{path.name}: the committed SCALE must be "default"'
    assert any(
        c.cell_type == "markdown" and "exercises" in c.source.lower() and "#" in c.source
        for c in nb.cells
    ), f"{path.name}: needs a markdown cell with an Exercises heading"
    prose = sum(len(c.source) for c in nb.cells if c.cell_type == "markdown")
    code = sum(len(c.source) for c in nb.cells if c.cell_type == "code")
    assert prose >= code, f"{path.name}: less prose ({prose} chars) than code ({code} chars)"


def test_injection_overrides_and_checks(tmp_path: Path):
    """The harness itself: the injected cell lands right after the parameters cell."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# t"),
        nbformat.v4.new_code_cell(
            'SCALE = "default"\nRUNS, DEVICE = "../runs", "cuda"', metadata={"tags": ["parameters"]}
        ),
        nbformat.v4.new_code_cell("print(SCALE)"),
    ]
    values = injected_values(nb, "x", tmp_path)
    assert values == {"SCALE": "test", "RUNS": str(tmp_path), "DEVICE": "cpu"}
    new = with_injected_cell(nb, values)
    assert len(new.cells) == 4 and len(nb.cells) == 3
    assert "injected-parameters" in new.cells[2].metadata["tags"]
    assert f"RUNS = {str(tmp_path)!r}" in new.cells[2].source
    nb.cells[2].metadata["tags"] = ["parameters"]
    with pytest.raises(ValueError, match="exactly one code cell tagged 'parameters', found 2"):
        parameters_cell_index(nb)


def tutorial_exercises(path: Path) -> dict[str, str]:
    """``{"N.k": title}`` of a tutorial's exercises: the ``k. **Title.**`` items after its
    Exercises heading (a trailing full stop is dropped; a question mark is kept)."""
    n = int(path.name[:2])
    cells = [
        c.source
        for c in nbformat.read(path, as_version=4).cells
        if c.cell_type == "markdown" and re.search(r"^#+ Exercises", c.source, re.M)
    ]
    assert len(cells) == 1, f"{path.name}: expected one markdown cell with an Exercises heading"
    after = re.split(r"^#+ Exercises.*$", cells[0], flags=re.M)[-1]
    return {
        f"{n}.{k}": title.strip().removesuffix(".")
        for k, title in re.findall(r"^(\d+)\. \*\*(.+?)\*\*", after, flags=re.M)
    }


def key_answers(path: Path) -> dict[str, str]:
    """``{"N.k": title}`` of the key's ``### N.k Title`` headings."""
    return {
        num: title.strip()
        for c in nbformat.read(path, as_version=4).cells
        if c.cell_type == "markdown"
        for num, title in re.findall(r"^### (\d+\.\d+) (.+)$", c.source, flags=re.M)
    }


def test_key_answers_every_exercise():
    """One worked answer per exercise, with the tutorial's title, and nothing else."""
    assert KEY.exists(), f"{KEY} is missing"
    wanted = {k: v for p in TUTORIALS for k, v in tutorial_exercises(p).items()}
    assert len(wanted) >= len(TUTORIALS), "found almost no exercises: has their format changed?"
    answered = key_answers(KEY)
    missing = sorted(set(wanted) - set(answered), key=lambda k: tuple(map(int, k.split("."))))
    extra = sorted(set(answered) - set(wanted))
    renamed = {
        k: (wanted[k], answered[k]) for k in set(wanted) & set(answered) if wanted[k] != answered[k]
    }
    assert not missing, f"exercises without an answer in {KEY.name}: {missing}"
    assert not extra, f"answers in {KEY.name} to exercises the tutorials lack: {extra}"
    assert not renamed, f"titles differ (tutorial, key): {renamed}"
