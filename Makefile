# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU machines take the CPU build of torch that lies on disk; machines with a GPU keep a newer one.
TORCH_PIN ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.3" || echo "torch==2.13.0")

.PHONY: demo test setup clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rewardtune demo captioning --out demo_run

test: setup
	$(PY) -m pytest -q -x --durations=15

clean:
	rm -rf $(VENV) demo_run
