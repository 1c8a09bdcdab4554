# dermtwin: one entry point for newcomers, CI and release work.
#   make demo   virtual patches -> gateway -> private mosquitto -> live view
#   make test   the whole suite (CPython + the real MicroPython VM + mosquitto)
#   make chaos  every fault in docs/reliability.md against real processes (CHAOS_ARGS=--short)
#   make mutate mutation run (cosmic-ray) over session/ingest/outbox/flash log (MODULE=, MUTANTS=)

VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP_STAMP   := $(VENV)/.dermtwin-installed
SIM_STAMP   := $(VENV)/.dermtwin-sim-installed
NPM_STAMP   := node_modules/.dermtwin-installed
PATCHES     ?= 3
DURATION    ?= 60

.PHONY: setup test demo lint firmware bench models cohort eval clean mosquitto chromium postgres virtual-board simulate chaos mutate

setup: $(PIP_STAMP) $(NPM_STAMP) mosquitto chromium postgres

$(PIP_STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# `make demo` needs only the runtime and the simulation, not the dev tools.
$(SIM_STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[sim]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

mosquitto:
	@bash tools/ensure-mosquitto.sh

chromium:   # for the report's browser test; where it cannot be installed, that test is skipped
	@bash tools/ensure-chromium.sh

postgres:   # server binaries for the sink's PostgreSQL test; where they cannot be installed, it is skipped
	@bash tools/ensure-postgres.sh

test: setup
	$(PY) -m pytest

demo: $(SIM_STAMP) mosquitto
	$(VENV)/bin/dermtwin demo --patches $(PATCHES) --duration $(DURATION) --summary build/demo-summary.json

lint: setup
	$(VENV)/bin/ruff check gateway simulation firmware sensor_drivers models_onnx tests hil_tests bench tools
	$(PY) -m mypy gateway simulation
	$(PY) tools/typecheck_firmware.py

firmware: setup
	$(PY) tools/build_firmware.py --out build/firmware $(if $(AIOBLE_DIR),--aioble $(AIOBLE_DIR))

models: setup
	$(PY) models_onnx/build_models.py

# The virtual cohort (simulation/cohort.py): 64 subjects x 7 days, seed 1, half held out.
cohort: setup
	$(PY) -m simulation.cohort --subjects 64 --days 7 --seed 1 --out build/cohort

# Score the models on the held-out cohort and write the tables into models_onnx/cards/.
eval: cohort
	$(PY) models_onnx/evaluate.py --cohort build/cohort --write-cards

virtual-board: setup
	$(PY) tools/virtual_board.py

simulate: setup
	$(VENV)/bin/dermtwin simulate --patches $(PATCHES) --fast --pair-db var/gateway.sqlite3

bench: setup
	$(PY) bench/run_all.py

# Fault table against real processes (simulate + run + mosquitto + a verifying subscriber);
# CHAOS_ARGS=--short for the shortened faults (docs/reliability.md)
chaos: setup
	$(PY) tools/chaos.py $(CHAOS_ARGS)

# Mutation testing, not in CI: each module against its own unit tests, a seeded sample of
# MUTANTS mutants per module (0: all). MODULE=session,ingest,outbox,flash_log picks modules.
MODULE  ?= session,ingest,outbox,flash_log
MUTANTS ?= 60
mutate: setup
	$(PY) tools/mutate.py --module $(MODULE) --max $(MUTANTS)

clean:
	rm -rf build .pytest_cache
