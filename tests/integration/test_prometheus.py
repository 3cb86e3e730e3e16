"""A real Prometheus (Debian's `prometheus`, which `make test` installs where apt can) scrapes
a service process and the gateway in front of it; its HTTP API then answers the request
counter and a latency quantile."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools.stack import Process, launch
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.integration.oip import SEED_MODEL, eventually, price_request, prices

pytestmark = pytest.mark.slow

ENV = {"TWINSERVE_LOG_LEVEL": "WARNING", "TWINSERVE_REPOSITORY_POLL_S": "0"}
REQUESTS = 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "no `prometheus` binary: `make test` installs Debian's package with apt-get "
            "(apt-get install -y --no-install-recommends prometheus)"
        )
    return found


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


class Prometheus:
    def __init__(self, binary: str, targets: list[str], workdir: Path) -> None:
        config = workdir / "prometheus.yml"
        scrape = {"job_name": "twinserve", "static_configs": [{"targets": targets}]}
        config.write_text(
            json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]})
        )
        self.port = _free_port()
        self.log = (workdir / "prometheus.log").open("wb")
        self.popen = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def query(self, expression: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expression})
        answer = _get(f"http://127.0.0.1:{self.port}/api/v1/query?{query}")
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def scalar(self, expression: str, timeout: float = 30.0) -> float:
        """The single value of `expression` once Prometheus has one (NaN counts as none)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self.query(expression)
            except OSError:
                result = []
            if len(result) == 1 and result[0]["value"][1] not in ("NaN", "+Inf"):
                return float(result[0]["value"][1])
            assert self.popen.poll() is None, "prometheus exited"
            assert time.monotonic() < deadline, f"no value for {expression}: {result}"
            time.sleep(0.5)

    def settle(self, expression: str, expected: float, timeout: float = 30.0) -> float:
        """The value of `expression` once it reaches `expected` (a counter that was scraped
        before its last increments catches up a scrape later), or the last value seen at the
        deadline. Each assertion waits on its own series: one series being current says
        nothing of another target's."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.scalar(expression, timeout)
            if value == expected or time.monotonic() >= deadline:
                return value
            time.sleep(0.5)

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(15)
        self.log.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Process, Process, int, int]]:
    repository = tmp_path / "models"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.fake_service",
            "seed",
            "--model-repository",
            str(repository),
        ],
        check=True,
        env={**os.environ, **ENV},
        timeout=60,
    )
    service_metrics, gateway_metrics = _free_port(), _free_port()
    service = launch(
        "fake",
        "tests.integration.fake_service",
        ["--model-repository", str(repository)],
        env={**ENV, "TWINSERVE_METRICS_PORT": str(service_metrics)},
    )
    try:
        gateway = launch(
            "gateway",
            "gateway",
            env={
                **ENV,
                "TWINSERVE_GATEWAY_TENSORFLOW_URL": service.address,
                "TWINSERVE_GATEWAY_METRICS_PORT": str(gateway_metrics),
                "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
            },
        )
        try:
            yield service, gateway, service_metrics, gateway_metrics
        finally:
            gateway.stop()
    finally:
        service.stop()


def test_prometheus_scrapes_the_service_and_the_gateway(
    stack: tuple[Process, Process, int, int], tmp_path: Path
) -> None:
    _, gateway, service_metrics, gateway_metrics = stack
    targets = [f"127.0.0.1:{service_metrics}", f"127.0.0.1:{gateway_metrics}"]
    prometheus = Prometheus(_prometheus_binary(), targets, tmp_path)
    try:
        # Both targets up: the first answer may come after only one of them was scraped.
        assert eventually(lambda: prometheus.scalar('count(up{job="twinserve"} == 1)') == 2, 30)
        ok = f'twinserve_inference_requests_total{{model="{SEED_MODEL}",code="OK"}}'
        with grpc.insecure_channel(gateway.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            # One request first, scraped before the rest: the series exist, so increase()
            # over the window sees the rest arrive.
            stub.ModelInfer(price_request(1800.0), timeout=5)
            prometheus.scalar(f"sum({ok})")
            for _ in range(REQUESTS):
                assert prices(stub.ModelInfer(price_request(1800.0), timeout=5)) == pytest.approx(
                    [360.0], abs=1e-3
                )
        assert prometheus.settle(f"sum({ok})", REQUESTS + 1) == REQUESTS + 1
        p90 = prometheus.scalar(
            "histogram_quantile(0.9, sum by (le) "
            "(increase(twinserve_inference_request_duration_seconds_bucket[1m])))"
        )
        assert 0 < p90 < 1.0
        # Each request counted once by the gateway and once by the service.
        for target in targets:
            series = (
                'sum(twinserve_grpc_server_handled_total{method=~".*/ModelInfer",code="OK",'
                f'instance="{target}"}})'
            )
            assert prometheus.settle(series, REQUESTS + 1) == REQUESTS + 1, target
        assert prometheus.settle("sum(twinserve_gateway_replica_healthy)", 1) == 1
        assert (
            prometheus.scalar(f'sum(process_resident_memory_bytes{{instance="{targets[0]}"}})') > 0
        )
    finally:
        prometheus.stop()
