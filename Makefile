# The two README commands: `make demo` and `make test`. Both create .venv on first use and
# re-use it afterwards (re-installing only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out
# Two workers, one test file each (module fixtures stay in one process): 11-14 min on 2 cores.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml version
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/shiva-bids demo $(DEMO_OUT)

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
