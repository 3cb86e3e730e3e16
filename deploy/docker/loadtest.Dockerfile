# The load test: `python -m loadtest ...` against a running gateway (a one-shot container).
# Build from the repository root:  docker build -f deploy/docker/loadtest.Dockerfile .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Generated protobuf code is built, never committed: the same protoc call as `make proto`
# (without the .pyi stubs' mypy plugin, which only type checking needs).
FROM base AS proto
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python3 -m venv /opt/tools \
    && /opt/tools/bin/pip install --no-cache-dir "$(python3 requirements.py pyproject.toml --only grpcio-tools)"
COPY proto/ proto/
RUN mkdir -p serving/pb/twinserve/v1 \
    && /opt/tools/bin/python -m grpc_tools.protoc -Iserving/pb=proto --python_out=. --pyi_out=. \
        --grpc_python_out=. proto/*.proto proto/*/*/*.proto \
    && touch serving/pb/__init__.py serving/pb/twinserve/__init__.py serving/pb/twinserve/v1/__init__.py

# Dependencies alone, from pyproject.toml: rebuilt only when it changes. The core layer is
# the same in every image, so a build reuses it from the one before.
FROM base AS deps
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python3 -m venv /opt/venv \
    && python3 requirements.py pyproject.toml > requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
RUN python3 requirements.py pyproject.toml --extra loadtest > requirements-extra.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r requirements-extra.txt

# The code, installed apart (/opt/app) so a code change leaves the dependency layer alone.
FROM deps AS build
COPY README.md ./
COPY serving/ serving/
COPY loadtest/ loadtest/
COPY --from=proto /src/serving/pb/ serving/pb/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --prefix /opt/app .

FROM base
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/twinserve twinserve
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /opt/app /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN python -c "import loadtest, serving.pb.inference_pb2_grpc"
USER 10001:10001
WORKDIR /home/twinserve
# A client that runs and exits: nothing serves here to check.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "loadtest"]
CMD ["--help"]
