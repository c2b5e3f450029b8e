# needflow: `make run` starts the whole local stack, `make test` runs the tests.
#
#   make test                                  tests on SQLite (DATABASE_URL unset)
#   make test DATABASE_URL=postgresql://...    tests on that PostgreSQL database
#   make test PYTEST_ARGS='-x -k referral'     extra pytest arguments
#   make faults                                the fault tests (tests/faults/, not in `make test`)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PG_URL := postgresql://root@127.0.0.1:5432/test
PYTEST_ARGS ?=

# The database the tests (and the stack) use comes from DATABASE_URL, whether set in the
# environment or on make's command line; export it so it reaches pytest's environment.
# Only when set: an empty DATABASE_URL must not reach the processes.
ifdef DATABASE_URL
export DATABASE_URL
endif

.PHONY: venv run lint format test test-pg faults bench clean

venv: $(STAMP)

# Create the virtualenv once. Where the system Python lacks ensurepip (Debian without
# python3-venv), make it without pip and install pip into it with the system's pip.
$(PY):
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && $(PYTHON) -m venv --without-pip $(VENV) \
		&& $(PYTHON) -m pip --python $(PY) install pip; }

# (Re)install only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $@

run: venv
	$(PY) -m devstack

# Style is checked, not only written: the formatter and linter run before the tests.
lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# Rewrite the code in the project's style (what `make lint` checks).
format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-pg:
	$(MAKE) test DATABASE_URL=$(PG_URL)

# Faults during a load of 200 journeys each (tests/faults/): a worker killed, PostgreSQL
# stopped, the dev server restarted, events twice and out of order, an API killed. Each
# runs its own stack and PostgreSQL cluster (DATABASE_URL is not used); minutes each, so
# `make test` leaves them out. The table: printed at the end, and var/artifacts/faults.md.
faults: venv
	$(PY) -m pytest tests/faults -p no:randomly $(PYTEST_ARGS)

# Every bench/*.py script, one after another (nothing to do while there are none);
# bench/_*.py are modules the scripts use, not scripts.
bench: venv
	@set -e; for script in bench/*.py; do \
		[ -e "$$script" ] || { echo "no bench/*.py scripts"; break; }; \
		case "$${script##*/}" in _*) continue;; esac; \
		echo "== $$script"; $(PY) "$$script"; \
	done

clean:
	rm -rf var $(VENV) *.egg-info
