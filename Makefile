# deeplog-siem developer and demo targets. Everything runs inside .venv (created by `make install`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned and installed first: this exact version is a CPU wheel on the project machines, while a
# looser requirement would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test bench lint clean help

help:
	@echo "make install  create .venv and install deeplog-siem with its test/dev/demo extras"
	@echo "make demo     end-to-end demo on real HDFS logs with the embedded server"
	@echo "make test     run the test suite (embedded server; DEEPLOG_TEST_ES_URL=... for a real cluster)"
	@echo "make bench    run the benchmarks and print their JSON results"
	@echo "make lint     ruff check and the import contract (the runtime never imports the lab)"
	@echo "make clean    remove .venv, build outputs and demo models"

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tests/vega/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,dev,demo]'
	# The Vega engine the workflow graph's test renders with (skipped, saying why, where node is absent).
	if command -v npm >/dev/null 2>&1; then npm ci --prefix tests/vega --no-audit --no-fund \
	  || echo "npm ci failed (no registry?): tests/test_vega.py will be skipped"; \
	else echo "npm not found: tests/test_vega.py will be skipped"; fi
	touch $(STAMP)

demo: install
	$(BIN)/deeplog-siem demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/deeplog-siem bench all --json

lint: install
	$(BIN)/ruff check plugin tests
	$(BIN)/ruff format --check plugin tests
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build dist plugin/*.egg-info demo-output
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find models -mindepth 1 ! -name README.md -exec rm -rf {} +
