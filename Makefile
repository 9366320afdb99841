# The two commands of the README, and the rest of the project's chores.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench lock clean

# make run needs the local AWS emulator and make test the test tools: both install requirements-dev.txt
# (which starts with -r requirements.txt). A production server installs requirements.lock only.
$(STAMP): requirements.txt requirements-dev.txt scripts/bootstrap_venv.py
	$(PYTHON) scripts/bootstrap_venv.py $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run_local.py

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench.run

# After changing requirements.txt: the same pins with the hashes of their files, for the image.
lock: $(STAMP)
	$(BIN)/python scripts/lock_requirements.py

clean:
	rm -rf $(VENV) var/static var/test*.sqlite3*
