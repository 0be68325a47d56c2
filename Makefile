# make run   — set up .venv and run the pipeline on the default data source
# make test  — set up .venv and run the test suite
# make help  — everything else
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SHARED_JPEG := ../shared/datasets/cifar10-jpeg.tar.gz
LOCAL_ARCHIVE := data/cache/cifar-10-python.tar.gz
# Empty: the flow's default source, one rule for every way of running (cifarflow.data.archive.default_source):
# data/cache/cifar-10-python.tar.gz, else ../shared/datasets/cifar10-jpeg.tar.gz (read as a folder source: its
# train/<class>/*.jpg and test/<class>/*.jpg), else the URL. SOURCE may also be a folder of your own images.
SOURCE ?=
ARGS ?=
DATA_DIR ?= data

# The offline defaults (no telemetry, quiet TensorFlow) live in cifarflow/environment.py: importing it sets
# them (the flows, benchmarks and tests import it first), and the Prefect CLI runs through it.
WITH_DEFAULTS := $(BIN)/python -m cifarflow.environment

.PHONY: help install run test test-fast lint format system-deps docs docs-serve server schedule serve predict monitor feedback mlflow-ui bench clean-data

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv and install the project with its dev extra

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: install  ## run the pipeline on the default data source (SOURCE=folder, path or URL, ARGS="--model fast" etc.)
	$(BIN)/python flows/cifar_flow.py $(if $(SOURCE),--source $(SOURCE)) $(ARGS)

$(LOCAL_ARCHIVE): | install
	$(BIN)/python ../shared/datasets/make_cifar10_archive.py $(SHARED_JPEG) $@

test: install  ## run the whole test suite (unit, flow, server and real-data tiers) on three workers
	$(BIN)/python -m pytest -n 3 --dist loadfile

test-fast: install  ## run the unit tier only (under a minute)
	$(BIN)/python -m pytest -m unit -q

lint: install  ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install  ## apply ruff formatting
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# mkdocs-material prints a banner about its successor on every build (see docs/how-to/develop.md): off.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

docs: install  ## build the documentation site into site/ (strict: a broken link or a missing page fails; offline)
	$(MKDOCS) build --strict --quiet
	@echo "done: site/index.html (open it, or make docs-serve for search too)"

docs-serve: install  ## serve the documentation site on http://127.0.0.1:8001, rebuilding on changes
	$(MKDOCS) serve --strict --dev-addr 127.0.0.1:8001

system-deps:  ## Debian packages the browser and PostgreSQL tests use (run as root)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql >/dev/null

server: install  ## start the Prefect server and UI on http://127.0.0.1:4200
	$(WITH_DEFAULTS) $(BIN)/prefect server start --host 127.0.0.1 --port 4200

schedule: install  ## deploy deployments/prefect.yaml and run a worker for it (needs PREFECT_API_URL, e.g. make server)
	PREFECT_CLI_PROMPT=false $(WITH_DEFAULTS) $(BIN)/prefect work-pool create cifar-process --type process --overwrite
	PREFECT_CLI_PROMPT=false $(WITH_DEFAULTS) $(BIN)/prefect deploy --prefect-file deployments/prefect.yaml --all
	$(WITH_DEFAULTS) $(BIN)/prefect worker start --pool cifar-process

serve: install  ## serve the champion over HTTP with its page on http://127.0.0.1:8000 (ARGS="--port 8080")
	$(BIN)/python serving/app.py $(ARGS)

predict: install  ## score image files with the champion (ARGS="photos/ more/*.jpg")
	$(BIN)/python flows/predict_flow.py $(ARGS)

monitor: install  ## compare what the champion was asked lately with its test set: drift report (ARGS="--last 5000")
	$(BIN)/python flows/monitor_flow.py $(ARGS)

feedback: install  ## the reviewers' new answers into the training data: one screened batch (ARGS="--data-dir D")
	$(BIN)/python flows/feedback_flow.py $(ARGS)

mlflow-ui: install  ## browse the MLflow runs of DATA_DIR (default data) on http://127.0.0.1:5000 (ARGS="--port 5001")
	$(WITH_DEFAULTS) $(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(DATA_DIR))/mlflow.db --host 127.0.0.1 $(ARGS)

# The benchmarks read an archive file: with ../shared beside the repo it is built into data/cache first,
# after which the one rule (default_source) names it; elsewhere the rule gives the official URL.
BENCH_SOURCE = $(or $(SOURCE),$(shell $(BIN)/python -c 'from cifarflow.data.archive import default_source; print(default_source("data"))'))

bench: install $(if $(wildcard $(SHARED_JPEG)),$(LOCAL_ARCHIVE))  ## measure speed and memory (writes benchmarks/results.md and benchmarks/serving.md)
	$(BIN)/python benchmarks/bench_pipeline.py --source $(BENCH_SOURCE) --out benchmarks/results.md
	$(BIN)/python benchmarks/bench_serving.py --source $(BENCH_SOURCE) --out benchmarks/serving.md

clean-data:  ## delete generated data (shards, features, models, reports, caches); keeps added image batches, the model registry, the prediction log, the reviewers' answers and the MLflow runs
	find data -mindepth 1 -maxdepth 1 ! -name README.md ! -name .gitkeep ! -name batches ! -name batches-withdrawn ! -name registry ! -name log ! -name monitoring ! -name feedback ! -name mlflow.db ! -name mlflow-artifacts -exec rm -rf {} +
