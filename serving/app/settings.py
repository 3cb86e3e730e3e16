"""Settings of a framework service, parsed once in `__main__` and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServiceSettings"]


class ServiceSettings(BaseSettings):
    """A TensorFlow or PyTorch service. Environment variables use the `TWINSERVE_` prefix."""

    model_config = SettingsConfigDict(env_prefix="TWINSERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    # Written with the bound port once the server listens (lets tests and launchers use port 0).
    port_file: Path | None = None
    model_repository: Path = Path("models")
    # Versions of each model to load at start: the newest N.
    latest_versions: int = Field(default=1, ge=1)
    # Seconds between scans of the repository for new or removed models and versions
    # (a version copied in by hand is picked up); 0 turns polling off.
    repository_poll_s: float = Field(default=5.0, ge=0)
    # Triton's default-max-batch-size: a model whose configuration is auto-completed from its
    # file (no config.pbtxt, or one without inputs and outputs) and whose every input and
    # output has a dynamic first dimension gets this max_batch_size and a dynamic batcher;
    # 0 leaves such models unbatched (their dims keep the batch dimension).
    default_max_batch_size: int = Field(default=4, ge=0)
    # Threads that run framework calls (and batches in flight per batched model).
    inference_threads: int = Field(default=2, ge=1)
    # Framework calls that warm-up measured at or under this many microseconds (batch 1), for
    # requests of at most inline_max_rows rows, run on the event loop instead of a thread:
    # the hop to a thread and back costs more than such a call. 0 sends every call to a thread.
    inline_max_us: int = Field(default=100, ge=0)
    inline_max_rows: int = Field(default=8, ge=1)
    device: str = "cpu"
    # Threads the framework uses inside one operation (TensorFlow intra-op pool, torch
    # set_num_threads); 0: the cores shared out over the workers (one worker: the framework's
    # default, one per core).
    framework_threads: int = Field(default=0, ge=0)
    # TensorFlow's inter-op pool (independent ops run side by side); 0 keeps its default.
    inter_op_threads: int = Field(default=0, ge=0)
    # Worker processes serving the one port (SO_REUSEPORT); 0 is one per core. Each holds
    # its own copy of the models (see serving/app/workers.py).
    workers: int = Field(default=1, ge=0)
    # Set by the supervisor for its workers: bind the port shared with the other workers.
    reuse_port: bool = False
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # A request input whose declared shape would decode to more than this many bytes is
    # refused (RESOURCE_EXHAUSTED) before anything is allocated for it.
    max_tensor_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # Calls handled at once (health and reflection aside); more are refused with
    # RESOURCE_EXHAUSTED at once. 0: no bound. With several workers, per worker.
    max_concurrent_rpcs: int = Field(default=1024, ge=0)
    # Concurrent streams (calls) one HTTP/2 connection may carry (SETTINGS_MAX_CONCURRENT_
    # STREAMS); a client past it waits for one of its calls to end.
    max_streams_per_connection: int = Field(default=256, ge=1)
    # Prometheus metrics over HTTP (/metrics) on this port of `host`; None: not served, 0: a
    # free port. Worker k of several serves metrics_port + k (each is its own process).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Set by the supervisor for each of its workers (serving/app/workers.py).
    worker_index: int = Field(default=0, ge=0)
    # OpenTelemetry traces (needs the `otel` extra); exported as OTLP to the endpoint the
    # standard OTEL_EXPORTER_OTLP_* variables name. Off by default.
    tracing: bool = False
    # Seconds in-flight calls get to finish after SIGTERM.
    grace_period_s: float = Field(default=10.0, ge=0)
    # Training: CSV datasets are read only from under data_dir; TensorBoard runs are written
    # to tensorboard_dir/<model>/<framework>/<job>.
    data_dir: Path = Path("data")
    tensorboard_dir: Path = Path("runs")
    max_pending_jobs: int = Field(default=8, ge=1)
    # Seconds shutdown waits for a running training job to end the epoch it is in once
    # cancelled; past it the process exits without it (the job commits no version).
    job_stop_timeout_s: float = Field(default=30.0, ge=0)
    # The biggest training job taken (README, "Training limits"); past any of these a job is
    # refused with RESOURCE_EXHAUSTED before a model is built. The defaults fit a 2 GiB pod.
    train_max_classes: int = Field(default=1000, ge=2)
    train_max_input_values: int = Field(default=65_536, ge=1)
    train_max_parameters: int = Field(default=10_000_000, ge=1)
    train_max_data_values: int = Field(default=16 * 1024 * 1024, ge=1)
    train_max_batch_values: int = Field(default=2 * 1024 * 1024, ge=1)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # TLS: with a certificate and its key the port serves TLS (else plaintext); with a client
    # CA as well, callers must present a certificate that CA signed (mutual TLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Bearer tokens callers must send as metadata `authorization: Bearer <token>` (health and
    # reflection stay open): TWINSERVE_AUTH_TOKENS='["token-1", "token-2"]' and/or a file of
    # one token a line. None configured: no authentication.
    auth_tokens: list[SecretStr] = []
    auth_tokens_file: Path | None = None
    # Tokens of the `infer` scope (the tokens above are `admin`): they may infer and read
    # (metadata, statistics, jobs) but not Train, CancelJob or RepositoryModelLoad/Unload,
    # which answer them PERMISSION_DENIED. TWINSERVE_INFER_AUTH_TOKENS and/or a file.
    infer_auth_tokens: list[SecretStr] = []
    infer_auth_tokens_file: Path | None = None

    def worker_metrics_port(self) -> int | None:
        """This worker's metrics port: the setting, offset by the worker's index."""
        if self.metrics_port is None or self.metrics_port == 0:
            return self.metrics_port
        return self.metrics_port + self.worker_index

    def worker_count(self) -> int:
        return self.workers or _cores()

    def threads_per_worker(self) -> int:
        """Framework threads for each worker: as set, else the cores shared out."""
        if self.framework_threads:
            return self.framework_threads
        workers = self.worker_count()
        return 0 if workers == 1 else max(1, _cores() // workers)


def _cores() -> int:
    # The cores this process may run on (a container's cpuset), not the machine's count.
    return len(os.sched_getaffinity(0))
