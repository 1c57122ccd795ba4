# ipskit: one command per job. Each target sets up .venv first (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup demo test app lab bench browser clean-notebooks gpu-check natural-pair

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup          ## train CE and IPS on the built-in digits data and compare them
	$(BIN)/ipskit demo

test: setup browser  ## lint, format check and the whole test suite (CPU, no network)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

app: setup           ## the Streamlit explorer on http://localhost:8501
	$(BIN)/streamlit run app/Home.py

lab: setup           ## JupyterLab on the tutorial notebooks (Jupyter refuses root unless told)
	$(BIN)/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

natural-pair: setup  ## train, evaluate and export the CE / IPS pair in results/ (needs data/cifar10; ~1 h on a CPU)
	$(BIN)/python scripts/natural_pair.py

bench: setup         ## speed benchmarks whose numbers are in the README
	$(BIN)/python benchmarks/bench_swap.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_sweep.py

# No setup step: the lent GPU machine has its packages but no network, so .venv is used where it
# exists and $(PYTHON) otherwise. There: make gpu-check ARGS="--tarball cifar10-jpeg.tgz
# --out /tmp/gpu-check --bundle $OUT" (see the docstring of benchmarks/gpu_check.py).
gpu-check:           ## CUDA tests, benchmarks and reference runs on a GPU in 8 minutes (ARGS="--tiny": CPU rehearsal)
	PYTHONPATH=. $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py $(ARGS)

browser:             ## headless Chromium for the app's browser test (Debian package; needs root)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium; the browser test will be skipped"; \
	  else echo "note: chromium not found; the browser test will be skipped (apt-get install chromium)"; fi; }

clean-notebooks:     ## strip outputs from the notebooks before committing
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb notebooks/solutions/*.ipynb
