VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test wheel-check install lint clean fashion-mnist

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST's IDX files from Debian (search_spaces/fashion.yaml, tests/test_fashion_mnist.py);
# needs root, so a user without it runs the apt-get line as root, or sets MORPHNAS_DATA
FASHION := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
$(FASHION):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist

fashion-mnist: $(FASHION)

# the default search as experiments/RESULTS.md measures it: children side by side, a core each
run: $(STAMP)
	$(VENV)/bin/morphnas search --executor processes

test: $(STAMP) $(FASHION)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# The wheel installed (not editable) in a fresh venv runs a short search: .ci/wheel_check.sh.
wheel-check: $(STAMP)
	VENV=$(VENV) bash .ci/wheel_check.sh

clean:
	rm -rf $(VENV) .pytest_cache
