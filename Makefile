# twinserve: the two commands a new user runs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/*.proto proto/*/*/*.proto)
PB_STAMP := serving/pb/.generated
MODELS ?= models

.PHONY: run test venv proto lint fmt seed bench loadtest clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tf,torch,loadtest,dev]'
	touch $@

venv: $(STAMP)

# Generated code is built, never committed. -Iserving/pb=proto makes protoc
# write package-qualified imports (serving.pb.inference_pb2).
$(PB_STAMP): $(PROTOS) $(STAMP)
	mkdir -p serving/pb
	$(PY) -m grpc_tools.protoc -Iserving/pb=proto --python_out=. --pyi_out=. \
		--grpc_python_out=. --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--mypy_grpc_out=. $(PROTOS)
	touch serving/pb/__init__.py serving/pb/twinserve/__init__.py serving/pb/twinserve/v1/__init__.py $@

proto: $(PB_STAMP)

# Trains the seed models (house_price) into each framework's repository if missing.
seed: $(PB_STAMP)
	$(PY) -m tf_service seed --model-repository $(MODELS)/tensorflow
	$(PY) -m torch_service seed --model-repository $(MODELS)/pytorch

run: seed
	$(PY) -m serving.stack --models $(MODELS)

# The core suite and the tritonclient compatibility suite run in separate
# processes: tritonclient registers the same `inference.*` protobuf symbols as
# our generated code, and one process's descriptor pool cannot hold both.
test: $(PB_STAMP)
	$(PY) -m pytest tests --ignore=tests/compat $(PYTEST_ARGS)
	$(PY) -m pytest tests/compat $(PYTEST_ARGS)

bench: $(PB_STAMP)
	$(PY) -m benchmarks.latency --models $(MODELS)

# The latency matrix (house_price: every framework, runtime and path on the CPU; GPU cells say
# why they did not run), reported under loadtest-report/. More: LOADTEST_ARGS='--models
# house_price,mlp,cnn --batches 1,32'; running endpoints: LOADTEST_ARGS='--gateway HOST:PORT'.
loadtest: $(PB_STAMP)
	$(PY) -m loadtest --model-repository $(MODELS) --out loadtest-report $(LOADTEST_ARGS)

lint: $(PB_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf serving/pb/*_pb2*.py serving/pb/*_pb2*.pyi $(PB_STAMP) .pytest_cache .mypy_cache
