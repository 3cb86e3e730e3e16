"""The log of a real gateway process, as `__main__` configures it (text and JSON): a forged
request id stays on its one line, and tokens required on a plaintext port are warned of once
at start."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from devtools.stack import launch
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.rpc.security import PLAINTEXT_TOKENS

from .oip import eventually, price_request, rpc_error

FORGED = "req-7\n2026-11-30 03:00:00,000 ERROR admin: forged\r\x1b[2J\x85\u2028end"
TOKEN = "infer-only"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_gateway_process_log(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "gateway.log"
    with log.open("wb") as stderr:
        gateway = launch(
            "gateway",
            "gateway",
            env={
                # No service listens there: the call fails at the gateway, and is logged.
                "TWINSERVE_GATEWAY_TENSORFLOW_URL": "127.0.0.1:1",
                "TWINSERVE_GATEWAY_INFER_AUTH_TOKENS": f'["{TOKEN}"]',
                "TWINSERVE_GATEWAY_LOG_FORMAT": fmt,
                "TWINSERVE_GATEWAY_GRACE_PERIOD_S": "0",
            },
            stderr=stderr,
        )
        try:
            with grpc.insecure_channel(gateway.address) as channel:
                code, _ = rpc_error(
                    pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer,
                    price_request(1800.0, id=FORGED),
                    metadata=(("authorization", f"Bearer {TOKEN}"),),
                    timeout=10,
                )
            assert code is grpc.StatusCode.UNAVAILABLE
            assert eventually(lambda: "forged" in log.read_text(), timeout=10)
        finally:
            assert gateway.stop() == 0
    # splitlines() breaks at \n, \r, \x1c-\x1e, \x85 and \u2028 alike: any that reached the
    # file raw would show here as an extra line.
    lines = log.read_text().splitlines()
    forged = [line for line in lines if "forged" in line]
    assert len(forged) == 1, lines
    assert not [line for line in lines if line.startswith("2026-11-30 03:00:00,000 ERROR")]
    warned = [line for line in lines if PLAINTEXT_TOKENS in line]
    assert len(warned) == 1, lines
    if fmt == "json":
        record = json.loads(forged[0])
        assert record["level"] == "WARNING" and record["code"] == "UNAVAILABLE"
        assert record["request_id"].startswith("req-7\\n2026-11-30")
        assert json.loads(warned[0])["level"] == "WARNING"
    else:
        assert " WARNING twinserve.calls: ModelInfer " in forged[0]
        assert "id=req-7\\n2026-11-30 03:00:00,000 ERROR admin: forged\\r\\x1b[2J" in forged[0]
        assert " WARNING serving.rpc.security: " in warned[0]
