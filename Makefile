# clipmini: the two commands a reader needs are `make book` and `make test`.
# Each creates (or reuses) the project virtual environment in .venv with pinned versions.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clipmini-installed
CONSTRAINTS := requirements/constraints.txt
PROFILE ?= cpu

.PHONY: help env book book-check test test-fast lab reproduce claims bench screenshots chromium strip clean distclean

help:
	@echo "make book       build the rendered book into _build/html (executes every chapter)"
	@echo "make test       run every test: pytest, the chapters under nbval, and a book build check"
	@echo "make lab        open the chapters in JupyterLab with the project's environment"
	@echo "make reproduce  run every chapter headless with papermill: PROFILE=cpu (default) or gpu"
	@echo "make claims     run the chapters under several seeds and settings; every claim's verdict into book/claims_sweep.md"
	@echo "make bench      measure speed and memory against open_clip into benchmarks/results/"
	@echo "make screenshots  every page of _build/html in headless Chromium: PNGs, a contact sheet, overflow and broken images"

# The environment: torch first (served from local disk where available), then the package with its extras.
# A Python older than 3.11 stops here with one line; a failed install removes the half-made .venv, so
# the next run starts clean instead of reusing it.
FAILED_INSTALL = { rm -rf $(VENV); echo "make: the install failed (see above); $(VENV) was removed, so the next run starts clean" >&2; exit 1; }
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "make: clipmini needs Python 3.11 or newer, and '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo 'not found'): install one and run 'make PYTHON=python3.11 ...'" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || $(FAILED_INSTALL)
	$(PY) -m pip install --quiet --constraint $(CONSTRAINTS) torch torchvision || $(FAILED_INSTALL)
	$(PY) -m pip install --quiet --constraint $(CONSTRAINTS) --editable '.[book,test,data,screenshots]' || $(FAILED_INSTALL)
	@touch $(STAMP)

env: $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --builder html
	@echo "The book is in _build/html/index.html"

# A fast build without executing the chapters (nbval has just executed them): catches a broken
# table of contents, reference or page. Warnings are errors here.
book-check: $(STAMP)
	$(PY) -m clipmini.jobs book-check

test: $(STAMP)
	$(PY) -m pytest
	$(MAKE) --no-print-directory book-check

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" tests

lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (clipmini)" >/dev/null
	$(VENV)/bin/jupyter lab notebooks/

reproduce: $(STAMP)
	$(PY) -m clipmini.jobs reproduce --profile $(PROFILE)

# Every claim under SEEDS, then once with PyTorch's portable kernels (another CPU's rounding) and once on
# one thread. Each setting trains its own models in its own cache. CHAPTERS="06 08" limits the chapters.
SEEDS ?= 0,1,2,3,4
CHAPTERS ?=
SWEEP := runs/claims
CHAPTER_FLAGS = $(foreach c,$(CHAPTERS),--chapter $(c))
claims: $(STAMP)
	CLIPMINI_CACHE=$(SWEEP)/cache-default $(PY) -m clipmini.jobs claims --seeds $(SEEDS) --label default $(CHAPTER_FLAGS)
	ATEN_CPU_CAPABILITY=default CLIPMINI_CACHE=$(SWEEP)/cache-aten $(PY) -m clipmini.jobs claims --seeds 0 \
		--label aten-default $(CHAPTER_FLAGS)
	OMP_NUM_THREADS=1 CLIPMINI_CACHE=$(SWEEP)/cache-1thread $(PY) -m clipmini.jobs claims --seeds 0 \
		--label 1-thread --param threads=1 $(CHAPTER_FLAGS)
	$(PY) -m clipmini.jobs claims-table $(SWEEP)/default/claims.json $(SWEEP)/aten-default/claims.json \
		$(SWEEP)/1-thread/claims.json --current $(SWEEP)/default/claims.json --out book/claims_sweep.md

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# Every page of the built book in headless Chromium: a PNG per page, a phone and a dark-mode shot, a contact
# sheet, and a report of code blocks that overflow their column and images that did not load (a broken image
# fails it; SCREENSHOTS_FLAGS=--fail-on-overflow makes overflow fail too). HTML=_build/check/_build/html looks
# at the quick build of `make book-check`. Not part of `make test`: it needs a browser and the built book.
HTML ?= _build/html
SCREENSHOTS_FLAGS ?=
CHROMIUM ?=
screenshots: $(STAMP) chromium
	$(PY) -m clipmini.jobs screenshots $(HTML) --out _build/screenshots $(if $(CHROMIUM),--chromium $(CHROMIUM)) $(SCREENSHOTS_FLAGS)

# Debian's chromium package, installed when it is missing and we are root with apt-get; otherwise how to get it.
chromium: $(STAMP)
	@CHROMIUM="$(CHROMIUM)" $(PY) -c 'from clipmini.screenshots import find_chromium; find_chromium()' 2>/dev/null \
	|| if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make: installing Debian's chromium package for the screenshots"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "make: the screenshots need Chromium: 'sudo apt-get install chromium' (Debian, Ubuntu), or install" \
			"Chromium or Chrome and run 'make screenshots CHROMIUM=/path/to/it'" >&2; exit 1; \
	fi

strip: $(STAMP)
	$(PY) -m clipmini.jobs strip

clean:
	rm -rf _build runs .pytest_cache

# A full reset: also the virtual environment (the model cache in ~/.cache/clipmini stays; see the README).
distclean: clean
	rm -rf $(VENV)
