# make demo   - set up .venv, build the embedded demo corpus, create_data, train, LM, eval, infer
# make test   - set up .venv, run the whole test suite
# make bench  - run the benchmarks, write bench/report.json
# Variables: PYTHON (a Python 3.10), PADDLE (paddlepaddle | paddlepaddle-gpu | a pip spec),
#            DEMO_LANG (en | zh), PYTEST_ARGS.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell scripts/find_python310.sh)
PADDLE ?= $(shell if nvidia-smi >/dev/null 2>&1; then echo paddlepaddle-gpu; else echo paddlepaddle; fi)
PADDLE_RANGE ?= >=2.6,<4
# The range only follows a bare package name: PADDLE=paddlepaddle-gpu==3.0.0, a path or a URL is used as given.
PADDLE_SPEC = $(PADDLE)$(if $(findstring =,$(PADDLE))$(findstring <,$(PADDLE))$(findstring >,$(PADDLE))$(findstring /,$(PADDLE))$(findstring .whl,$(PADDLE)),,$(PADDLE_RANGE))
PADDLE_SPEC_FILE := $(VENV)/.paddle_spec
PADDLE_CHANGED = { test -f $(PADDLE_SPEC_FILE) && test "$$(cat $(PADDLE_SPEC_FILE))" != '$(PADDLE_SPEC)'; }
DEMO_LANG ?= en
PYTEST_ARGS ?=
DEMO_APT := espeak-ng flite sox wordnet-base fortunes-min fortunes fortunes-zh g++
TEST_APT := espeak-ng flite sox wordnet-base fortunes-min fortunes fortunes-zh chromium fonts-liberation g++

.PHONY: setup demo test bench lm clean-demo system-deps-demo system-deps-test

setup: $(VENV)/.stamp
	@if $(PADDLE_CHANGED); then \
	  echo "setup: PADDLE is now '$(PADDLE_SPEC)', was '$$(cat $(PADDLE_SPEC_FILE))': reinstalling paddle"; \
	  $(PY) -m pip uninstall -q -y paddlepaddle paddlepaddle-gpu && $(PY) -m pip install -q '$(PADDLE_SPEC)' && \
	  echo '$(PADDLE_SPEC)' > $(PADDLE_SPEC_FILE); fi

$(VENV)/.stamp: requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "error: no Python 3.10 (see the message above)"; exit 1; }
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)  # also a venv left half-made
	$(PY) -m pip install -q --upgrade pip
	@if $(PADDLE_CHANGED); then $(PY) -m pip uninstall -q -y paddlepaddle paddlepaddle-gpu; fi  # two builds, one package folder
	$(PY) -m pip install -q '$(PADDLE_SPEC)' -r requirements.txt -r requirements-dev.txt
	@echo '$(PADDLE_SPEC)' > $(PADDLE_SPEC_FILE)
	$(PY) -c "import paddle, paddlespeech_ctcdecoders, visualdl, soundfile; print('setup: paddle', paddle.__version__, 'ready in $(VENV)')"
	@touch $@

system-deps-demo:
	@scripts/apt_need.sh $(DEMO_APT)

system-deps-test:
	@scripts/apt_need.sh $(TEST_APT)

demo: setup system-deps-demo
	$(PY) tools/run_demo.py --lang $(DEMO_LANG)

test: setup system-deps-test
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

bench: setup system-deps-demo
	$(PY) tools/bench_all.py --out bench/report.json

lm: setup
	$(PY) tools/build_lm.py --text dataset/demo_$(DEMO_LANG)/lm_text_$(DEMO_LANG).txt --exclude dataset/demo_$(DEMO_LANG)/annotation/test.txt --name demo_$(DEMO_LANG)

clean-demo:
	rm -rf dataset/demo_$(DEMO_LANG) models/demo_$(DEMO_LANG) log/demo_$(DEMO_LANG) lm/demo_$(DEMO_LANG).*
