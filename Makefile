# chemgap: `make test` and `make run` set everything up themselves (a .venv in this folder).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.chemgap-installed
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint reliability clean

install: $(STAMP)

# Re-installs only when the package metadata or the pins change (a second call does nothing).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,dft]"
	@touch $@

# The default campaign (cu-defects: EMT copper, bulk -> vacancies and surfaces) into runs/.
run: install
	$(BIN)/chemgap run cu-defects

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The reliability suite (long; CI runs a quick version inside `make test`): 20 random kills,
# a campaign with 20 % oracle faults, fuzzed specs and structure files, Ray faults, resources.
reliability: install
	$(BIN)/python -m pytest -q tests/test_reliability.py tests/test_cluster.py \
		tests/test_resources.py tests/test_security.py tests/test_fault_oracle.py
	$(BIN)/python benchmarks/reliability/fuzz.py
	$(BIN)/python benchmarks/reliability/faults.py --rate 0.2
	$(BIN)/python benchmarks/reliability/kill_resume.py --kills 20

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
