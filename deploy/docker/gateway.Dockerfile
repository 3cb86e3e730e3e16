# The gateway: `python -m gateway serve`, gRPC on 8001 (Triton's port). No framework inside.
# Build from the repository root:  docker build -f deploy/docker/gateway.Dockerfile .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# On every stage, so `docker image prune --filter label=org.opencontainers.image.title=twinserve`
# finds all of this project's images (the classic builder's stage cache included).
LABEL org.opencontainers.image.title="twinserve"

# The requirement lists, read from pyproject.toml. The stages below copy in the lists alone,
# so an edit elsewhere in pyproject.toml (another extra, tool settings) rebuilds nothing.
FROM base AS requirements
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python3 requirements.py pyproject.toml --only grpcio-tools > tools.txt \
    && python3 requirements.py pyproject.toml > core.txt

# Generated protobuf code is built, never committed: the same protoc call as `make proto`
# (without the .pyi stubs' mypy plugin, which only type checking needs).
FROM base AS proto
WORKDIR /src
COPY --from=requirements /src/tools.txt ./
RUN python3 -m venv /opt/tools && /opt/tools/bin/pip install --no-cache-dir -r tools.txt
COPY proto/ proto/
RUN mkdir -p serving/pb/twinserve/v1 \
    && /opt/tools/bin/python -m grpc_tools.protoc -Iserving/pb=proto --python_out=. --pyi_out=. \
        --grpc_python_out=. proto/*.proto proto/*/*/*.proto \
    && touch serving/pb/__init__.py serving/pb/twinserve/__init__.py serving/pb/twinserve/v1/__init__.py

# Dependencies alone. The core layer is the same in every image: a build reuses the last one's.
FROM base AS deps
WORKDIR /src
COPY --from=requirements /src/core.txt ./
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -r core.txt

# The code, installed apart (/opt/app) so a code change leaves the dependency layer alone.
FROM deps AS build
COPY pyproject.toml README.md ./
COPY serving/ serving/
COPY gateway/ gateway/
# The `twinserve` client, for a prediction from inside the container.
COPY devtools/ devtools/
COPY --from=proto /src/serving/pb/ serving/pb/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --prefix /opt/app .

FROM base
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/twinserve twinserve
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /opt/app /opt/venv
COPY deploy/docker/healthcheck.py /opt/twinserve/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    TWINSERVE_GATEWAY_HOST=0.0.0.0 \
    TWINSERVE_GATEWAY_PORT=8001
RUN python -c "import gateway.__main__, devtools.cli, serving.pb.inference_pb2_grpc"
USER 10001:10001
WORKDIR /home/twinserve
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/twinserve/healthcheck.py", "TWINSERVE_GATEWAY_"]
ENTRYPOINT ["python", "-m", "gateway"]
CMD ["serve"]
