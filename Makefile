# `make demo` and `make test` work on a fresh machine: both create .venv/ in the checkout first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# what the tests, the tutorial and the API reference need on top (pytest, pdoc, nbclient, ipykernel)
DEV_STAMP := $(VENV)/.installed-test

.PHONY: setup demo test bench docs tutorial clean

setup: $(DEV_STAMP)

# the package alone: all that `make demo` needs
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch that lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $(DEV_STAMP)

NCSN := $(VENV)/bin/ncsn

# The main job: DDPM's U-Net on the embedded 8x8 digits (CPU, about five minutes on 2 cores), then
# 1,000 samples of 200 network evaluations, the per-level strip, the evaluation table, inpainting and
# the toy mixture. Re-running continues the run instead of starting over.
demo: $(STAMP)
	$(NCSN) train configs/demo.yaml --workdir demo --resume --procs auto
	$(NCSN) sample demo --n 1000 --grid-n 100 --out demo/samples.png --strip demo/strip.png --npz demo/samples.npz --procs auto
	$(NCSN) eval --fake demo/samples.npz --dataset digits --metrics fid,is,kid,pr --baselines --out demo/eval.json
	$(NCSN) inpaint demo --n-images 6 --completions 5 --mask right --out demo/inpainting.png --set sampling.n_levels=100
	$(NCSN) toy --dist mixture --objective ncsn --out demo/toy

test: $(DEV_STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/objectives.py

# The API reference from the docstrings (pdoc) -> build/api/index.html. Fails on a pdoc warning or on a
# public function, class, method or module without a docstring (tests/test_docs.py checks the same).
docs: $(DEV_STAMP)
	$(PY) docs/build_api.py build/api

# The tutorial executed top to bottom in a fresh kernel -> build/tutorial.ipynb, with its figures (the
# committed docs/tutorial.ipynb carries no outputs). Samples the `make demo` run when demo/ has one.
tutorial: $(DEV_STAMP)
	$(PY) docs/run_tutorial.py build/tutorial.ipynb

clean:
	rm -rf $(VENV) demo build .pytest_cache
