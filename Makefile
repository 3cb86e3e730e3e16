# twinserve: the two commands a new user runs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/*.proto proto/*/*/*.proto)
PB_STAMP := serving/pb/.generated
MODELS ?= models

.PHONY: run test venv proto lint fmt seed bench peers loadtest clean prometheus soak perf-analyzer

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[engine,tf,torch,loadtest,dev,otel]'
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

# Trains the seed models (house_price) into each framework's repository under MODELS if
# missing. A MODELS that is a Triton model repository (<model>/<version>/...: README "Serve your
# own models") gets nothing trained into it: it is a user's, served as it is.
seed: $(PB_STAMP)
	$(PY) -m devtools.stack seed --models $(MODELS)

# MODELS=DIR: every service on DIR when it is a model repository, else on DIR/<framework>.
run: seed
	$(PY) -m devtools.stack --models $(MODELS)

# The core suite and the tritonclient compatibility suite run in separate
# processes: tritonclient registers the same `inference.*` protobuf symbols as
# our generated code, and one process's descriptor pool cannot hold both.
# tests/deploy (Docker images, Compose, Kubernetes) runs in `make test-deploy`, not here.
# TensorFlow's oneDNN kernels (on by default on Intel CPUs) fail differently from the portable
# ones (a wrong-rank convolution aborts the process), so the TensorFlow backend's tests (its
# cases of the conformance suite, and its own module) run under both settings whatever CPU
# this is.
TF_SUITES := tests/framework/conformance tests/framework/test_tf_backend.py \
	tests/framework/test_tf_user_models.py -k 'tensorflow or tf_backend or tf_user'
test: $(PB_STAMP) prometheus perf-analyzer
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m pytest tests --ignore=tests/compat --ignore=tests/deploy $(PYTEST_ARGS)
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m pytest $(TF_SUITES) $(PYTEST_ARGS)
	$(PY) -m pytest tests/compat $(PYTEST_ARGS)

# The serving benchmark (issue #6): floor, every service and runtime, workers, gateway,
# batching off/on, and the peers KServe and MLServer when `make peers` has installed them;
# the table goes into docs/benchmarks.md. BENCH_ARGS='--soak-s 300' adds the memory soak.
PEERS_DIR := .peers
bench: $(PB_STAMP)
	$(PY) -m benchmarks.serving --models $(MODELS) --write docs/benchmarks.md \
		$(if $(wildcard $(PEERS_DIR)/kserve/bin/python),--kserve-python $(PEERS_DIR)/kserve/bin/python) \
		$(if $(wildcard $(PEERS_DIR)/mlserver/bin/python),--mlserver-python $(PEERS_DIR)/mlserver/bin/python) \
		$(BENCH_ARGS)

# Peers for `make bench`, each in a virtual environment of its own (their pins clash with ours).
peers:
	test -x $(PEERS_DIR)/kserve/bin/python || $(PYTHON) -m venv $(PEERS_DIR)/kserve
	$(PEERS_DIR)/kserve/bin/pip install --quiet kserve==0.21.0
	test -x $(PEERS_DIR)/mlserver/bin/python || $(PYTHON) -m venv $(PEERS_DIR)/mlserver
	$(PEERS_DIR)/mlserver/bin/pip install --quiet mlserver==1.7.1

# The latency matrix (house_price: every framework, runtime and path on the CPU; GPU cells say
# why they did not run), reported under loadtest-report/. More: LOADTEST_ARGS='--models
# house_price,mlp,cnn --batches 1,32'; running endpoints: LOADTEST_ARGS='--gateway HOST:PORT'.
loadtest: $(PB_STAMP)
	$(PY) -m loadtest --model-repository $(MODELS) --out loadtest-report $(LOADTEST_ARGS)

# The offline GPU host's kit (devtools/gpu_kit.py, INSTALL.md inside): dist/gpu-kit/ (~40 MB)
# with the project's wheel, protobuf modules generated in, and the wheels the PyTorch service,
# the gateway and the load test need on Python 3.11 and 3.12, manylinux x86_64. No torch,
# TensorFlow, CUDA, onnxruntime or NumPy: the host's are used. GPU_KIT_ARGS='--python 3.12'.
.PHONY: gpu-kit
gpu-kit: $(STAMP)
	$(PY) -m devtools.gpu_kit build --out dist/gpu-kit $(GPU_KIT_ARGS)

lint: $(PB_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Debian's Prometheus for tests/integration/test_prometheus.py (it skips, saying why, without
# one): installed with apt-get where this runs as root, else a note.
prometheus:
	@command -v prometheus >/dev/null || { \
		command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
		  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }; }; } || \
		echo "note: no prometheus binary (needs apt-get as root); tests/integration/test_prometheus.py will skip"

# Triton's perf_analyzer for tests/compat/test_perf_analyzer.py (it skips, saying why, without
# one). The tritonclient wheels of 2.61+ no longer bundle it and the perf-analyzer wheel needs
# glibc 2.38; 2.51 is the newest bundling one that runs on glibc 2.34+ (Debian 12). It goes in
# a venv of its own (its tritonclient would replace ours), without dependencies; it links
# libcudart (loaded, never used without a GPU: the 3 MB runtime wheel, not CUDA torch) and
# libb64 (Debian's libb64-0d).
PERF_DIR := .tools/perf-analyzer
perf-analyzer: $(STAMP)
	@test -x $(PERF_DIR)/bin/perf_analyzer || { $(PYTHON) -m venv --without-pip $(PERF_DIR) && \
		$(PY) -m pip --python $(PERF_DIR)/bin/python install --quiet --no-deps \
			tritonclient==2.51.0 nvidia-cuda-runtime-cu12==12.9.79; } || \
		echo "note: could not install perf_analyzer; tests/compat/test_perf_analyzer.py will skip"
	@/sbin/ldconfig -p | grep -q libb64.so.0d || { \
		command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null 2>&1 || \
		  { apt-get update -qq && apt-get install -y -qq --no-install-recommends libb64-0d; }; }; } || \
		echo "note: no libb64 (needs apt-get as root); tests/compat/test_perf_analyzer.py will skip"

# The 5-minute soak (mixed good and bad traffic at concurrency 16, the whole stack, memory
# growth under 5 %); skipped by `make test`, run by .ci/run. SOAK_S=60 for a shorter one.
SOAK_S ?= 300
soak: $(PB_STAMP)
	TWINSERVE_SOAK_S=$(SOAK_S) TWINSERVE_SOAK_REPORT=soak-report.json $(PY) -m pytest tests/soak -s $(PYTEST_ARGS)

clean:
	rm -rf serving/pb/*_pb2*.py serving/pb/*_pb2*.pyi $(PB_STAMP) .pytest_cache .mypy_cache

# --- Deployment: Docker images, Compose, Kubernetes (deploy/, README "Deployment") ---------
DEPLOY_STAMP := $(VENV)/.installed-deploy
COMPOSE := $(VENV)/bin/docker-compose -f deploy/compose/compose.yaml
IMAGE_PREFIX ?= twinserve
IMAGE_TAG ?= latest
# Empty: each Dockerfile's public default (python:3.11-slim, the -gpu images too: the CUDA
# libraries come with the framework wheels, the driver from the NVIDIA runtime).
BASE_IMAGE ?=
IMAGES := tf-service torch-service gateway $(if $(wildcard loadtest/__main__.py),loadtest)
GPU_IMAGES := tf-service-gpu torch-service-gpu
# The classic builder where the buildx plugin is missing (Debian's docker.io).
DOCKER_BUILD = DOCKER_BUILDKIT=$$(docker buildx version >/dev/null 2>&1 && echo 1 || echo 0) \
	docker build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(DOCKER_BUILD_ARGS)

.PHONY: images images-gpu up down test-deploy

# hadolint, docker compose, kubernetes-validate: an extra of their own, so `make test` skips them.
$(DEPLOY_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[deploy]'
	touch $@

images:
	for image in $(IMAGES); do \
		$(DOCKER_BUILD) -f deploy/docker/$$image.Dockerfile -t $(IMAGE_PREFIX)/$$image:$(IMAGE_TAG) . || exit 1; \
	done

images-gpu:
	for image in $(GPU_IMAGES); do \
		$(DOCKER_BUILD) -f deploy/docker/$$image.Dockerfile -t $(IMAGE_PREFIX)/$$image:$(IMAGE_TAG) . || exit 1; \
	done

# The Compose stack (seeded models, both services, the gateway on localhost:8001).
up: images $(DEPLOY_STAMP)
	TWINSERVE_IMAGE_PREFIX=$(IMAGE_PREFIX) TWINSERVE_IMAGE_TAG=$(IMAGE_TAG) \
		$(COMPOSE) up --detach --wait --no-build

# Stops and removes the stack's containers and networks; the model volumes stay.
down: $(DEPLOY_STAMP)
	$(COMPOSE) --profile gpu --profile loadtest down --remove-orphans

# Static checks of deploy/, then the images built on a debootstrap base and the Compose stack
# answering through the gateway. Starts dockerd where none runs; caches in ~/.cache/twinserve-deploy.
test-deploy: $(PB_STAMP) $(DEPLOY_STAMP)
	deploy/scripts/docker-engine.sh
	TWINSERVE_DEPLOY_REQUIRE_DOCKER=1 $(PY) -m pytest tests/deploy $(PYTEST_ARGS)
