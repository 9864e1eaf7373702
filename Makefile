# Two entry points for a fresh machine (see README):
#   make run   — install everything, build the index, start the chat on http://127.0.0.1:7860
#   make test  — install everything (Chromium for the browser tests too), run the tests and the eval gate
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EVAL_GATE := retrieval_recall=0.93 cited_recall=0.80 key_fact_coverage=0.90 status_accuracy=0.95 \
	false_refusals=3 missed_emergencies=0 quotes_verbatim=1 disclaimer_present=1 disclaimer_constant=1 \
	markers_resolve=1 html_escaped=1

export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install run index serve test eval lint browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel of torch is served for this exact pin; install it first so nothing pulls CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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

lint: install
	$(BIN)/ruff check ivig_qa tests ui.py
	$(BIN)/ruff format --check ivig_qa tests ui.py

eval: install
	$(BIN)/ivig-qa eval --set eval/questions.jsonl --baseline --out eval/reports/latest \
		$(foreach t,$(EVAL_GATE),--fail-under $(t))

test: install browser
	$(BIN)/pytest -q
	$(BIN)/ivig-qa eval --set eval/questions.jsonl --out test-artifacts/eval \
		$(foreach t,$(EVAL_GATE),--fail-under $(t))
