# perfkit: `make demo` and `make test` set themselves up on a fresh machine (a venv in .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test demo clean-venv

setup: $(STAMP)

# torch first, from the pinned CPU build, so nothing below can pull a CUDA build onto a CPU machine.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[report,test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m perfkit models
	@for m in tiny-llama3-8b tiny-llama2-13b tiny-mistral-7b; do \
	  $(PY) -m perfkit run --model $$m --input-len 128 --output-len 32 --batch 1 --repeats 3 --out results/demo || exit $$?; \
	done

clean-venv:
	rm -rf $(VENV)
