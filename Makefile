# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs first. Order matters: torch is pinned and installed
# before anything that depends on it (an unpinned torch pulls a multi-GB CUDA build on a
# CPU-only machine), and deepspeed is built against that torch without build isolation.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install --no-build-isolation "deepspeed>=0.15"
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/vlpdist demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two workers, a module each at a time: most of the suite waits on processes it starts
# (DeepSpeed ranks, Ray clusters, an S3 server), so two modules share two cores well.
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info
