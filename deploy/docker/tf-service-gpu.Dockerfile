# The TensorFlow service on NVIDIA GPUs (tensorflow[and-cuda], onnxruntime-gpu,
# TWINSERVE_DEVICE=cuda); otherwise as tf-service.Dockerfile.
# Build from the repository root:  docker build -f deploy/docker/tf-service-gpu.Dockerfile .
# Run with the NVIDIA container toolkit: docker run --gpus all ...
ARG BASE_IMAGE=python:3.11-slim

# The same Python base as every other image (one interpreter for the CPU-vs-GPU comparison): no
# CUDA base image is needed. The NVIDIA container runtime mounts the driver (libcuda) into any
# image given a GPU (docker --gpus, Compose's device reservation, the device plugin); the CUDA
# and cuDNN libraries come with the framework's wheels (nvidia-* packages), so they match its
# build. NVIDIA_VISIBLE_DEVICES is left to whoever grants the GPU, so a pod or container that
# requests none sees none.
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
# ONNX Runtime's CUDA build in place of the CPU one (never both: they write the same package).
# PyPI's onnxruntime-gpu follows one CUDA major per release: 1.19 to 1.26 are CUDA 12 and cuDNN 9,
# as the framework's wheels here; 1.27 on are CUDA 13 (gpu_check.py below fails the build on a
# mismatch). Another CUDA line of the framework: set this to match.
ARG ONNXRUNTIME_GPU="onnxruntime-gpu>=1.20,<1.27"
RUN python3 requirements.py pyproject.toml --only grpcio-tools > tools.txt \
    && python3 requirements.py pyproject.toml > core.txt \
    && python3 requirements.py pyproject.toml --extra tf \
        --swap "tensorflow-cpu=tensorflow[and-cuda]" --swap "onnxruntime=${ONNXRUNTIME_GPU}" \
        > extra.txt

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
COPY --from=requirements /src/extra.txt ./
RUN /opt/venv/bin/pip install --no-cache-dir -r extra.txt

# The code, installed apart (/opt/app) so a code change leaves the dependency layer alone.
FROM deps AS build
COPY pyproject.toml README.md ./
COPY serving/ serving/
COPY tf_service/ tf_service/
COPY --from=proto /src/serving/pb/ serving/pb/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --prefix /opt/app .

FROM base
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/twinserve twinserve \
    && mkdir -p /models /var/lib/twinserve/data /var/lib/twinserve/runs \
    && chown -R 10001:10001 /models /var/lib/twinserve
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /opt/app /opt/venv
COPY deploy/docker/healthcheck.py deploy/docker/gpu_check.py /opt/twinserve/
# The nvidia-* wheels' libraries on the loader's path: torch and TensorFlow find them from their
# own location, ONNX Runtime's CUDA provider only through the loader.
RUN find /opt/venv/lib -type d -path "*/site-packages/nvidia/*/lib" \
        > /etc/ld.so.conf.d/twinserve-nvidia-wheels.conf \
    && ldconfig
# TF_FORCE_GPU_ALLOW_GROWTH: TensorFlow takes GPU memory as it goes instead of nearly all of it at
# the first op, leaving room for ONNX Runtime's CUDA provider in this process and for the PyTorch
# service where they share a GPU (Compose's gpu profile).
ENV PATH=/opt/venv/bin:$PATH \
    TWINSERVE_HOST=0.0.0.0 \
    TWINSERVE_PORT=8500 \
    TWINSERVE_DEVICE=cuda \
    TWINSERVE_MODEL_REPOSITORY=/models \
    TWINSERVE_DATA_DIR=/var/lib/twinserve/data \
    TWINSERVE_TENSORBOARD_DIR=/var/lib/twinserve/runs \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=12.0"
RUN python -c "import tf_service.backend, serving.pb.inference_pb2_grpc" \
    && python /opt/twinserve/gpu_check.py
USER 10001:10001
WORKDIR /home/twinserve
VOLUME ["/models"]
EXPOSE 8500
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/twinserve/healthcheck.py"]
ENTRYPOINT ["python", "-m", "tf_service"]
CMD ["serve"]
