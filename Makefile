# avminer — the two things a newcomer runs:
#   make run    mine the bundled sample drive with the starter model (embedded mode: no broker) and
#               write the HTML report (avminer-out/report/index.html)
#   make test   the test suite (starts its own Kafka-protocol broker and S3 server; tools/test-services.sh
#               first starts PostgreSQL and installs prometheus and chromium when missing)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run demo test test-fast lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The 'sample' profile scales selection to a 48-frame log (printed by the command; refused with a broker).
run: $(STAMP)
	$(BIN)/avminer mine --profile sample

demo: $(STAMP)
	$(BIN)/avminer demo

# Full suite, slow tests included (crash loops, backlogs): what CI runs.
test: $(STAMP)
	tools/test-services.sh
	$(BIN)/python -m pytest --runslow -q

# Without the slow tests, for the edit-test loop.
test-fast: $(STAMP)
	tools/test-services.sh
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check avminer tests tools
	$(BIN)/lint-imports
	$(BIN)/ruff format --check avminer tests tools || true

typecheck: $(STAMP)
	$(BIN)/mypy avminer

clean:
	rm -rf $(VENV) avminer-out avminer-train .pytest_cache .mypy_cache .ruff_cache
