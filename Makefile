VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test wheel-check install lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# the default search as experiments/RESULTS.md measures it: children side by side, a core each
run: $(STAMP)
	$(VENV)/bin/morphnas search --executor processes

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile

# The wheel installed (not editable) in a fresh venv runs a short search: .ci/wheel_check.sh.
wheel-check: $(STAMP)
	VENV=$(VENV) bash .ci/wheel_check.sh

clean:
	rm -rf $(VENV) .pytest_cache
