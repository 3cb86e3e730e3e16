"""Several replicas of one framework behind the gateway: calls balanced one by one, replicas
leaving (health checks, retries to another replica) and coming back, the retry budget, the
in-flight bound, DNS targets, job calls that find their replica, and the servers' maximum
connection age. The replicas are fake "pytorch" services on one repository (1800 sq ft ->
360)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.pool import RetryBudget
from gateway.replica import Target
from gateway.server import Gateway
from gateway.upstream import Upstream
from serving.app.server import Service, create_server
from serving.app.settings import ServiceSettings
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.rpc.server import grpc_options
from serving.training.seed import seed_repository

from .oip import SEED_MODEL, eventually, price_request, prices, rpc_error
from .training import line, train_request

Stub = pb_grpc.GRPCInferenceServiceStub
OK = pytest.approx
PRICE = 360.0
HEALTH_S = 0.2


@dataclass
class Replicas:
    """Fake pytorch services on one repository; `stop` and `restart` keep the ports."""

    aio: Any
    root: Path
    gate: threading.Event | None = None
    services: list[Service | None] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def start(self, port: int = 0) -> Service:
        if self.gate is not None:
            self.gate.set()  # the model's warm-up call predicts
        settings = ServiceSettings(
            model_repository=self.root / "models",
            port=port,
            data_dir=self.root / "data",
            tensorboard_dir=self.root / "runs",
            repository_poll_s=0,
            inline_max_us=0,  # the gate blocks the calling thread: never the event loop
        )
        backend = AffineBackend(framework="pytorch", gate=self.gate)
        service: Service = self.aio.run(create_server(settings, backend))
        self.aio.run(service.start())
        return service

    def add(self) -> Service:
        service = self.start()
        self.services.append(service)
        self.ports.append(service.port)
        return service

    def stop(self, index: int, grace: float = 1.0) -> None:
        service = self.services[index]
        assert service is not None
        self.services[index] = None
        self.aio.run(service.stop(grace))

    def restart(self, index: int) -> Service:
        assert self.services[index] is None
        service = self.start(self.ports[index])
        self.services[index] = service
        return service

    def url(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def close(self) -> None:
        for index, service in enumerate(self.services):
            if service is not None:
                self.stop(index, grace=0.5)


@contextmanager
def _replicas(
    aio: Any, tmp_path_factory: pytest.TempPathFactory, count: int = 2, **options: Any
) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    assert seed_repository(ModelRepository(root / "models"), AffineBackend(framework="pytorch"))
    replicas = Replicas(aio, root, **options)
    try:
        for _ in range(count):
            replicas.add()
        yield replicas
    finally:
        replicas.close()


@dataclass
class Front:
    gateway: Gateway
    stub: Stub
    training: tpb_grpc.TrainingServiceStub

    @property
    def upstream(self) -> Upstream:
        (upstream,) = self.gateway.upstreams
        return upstream

    def healthy(self) -> list[bool]:
        return [replica.healthy for replica in self.upstream.replicas]


@contextmanager
def _front(aio: Any, url: str, **settings: Any) -> Iterator[Front]:
    settings.setdefault("health_interval_s", HEALTH_S)
    with ExitStack() as stack:
        gateway = stack.enter_context(
            aio.gateway(pytorch_url=url, default_framework="pytorch", **settings)
        )
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{gateway.port}"))
        yield Front(gateway, Stub(channel), tpb_grpc.TrainingServiceStub(channel))


def _inferences(service: Service) -> int:
    """How many house_price inferences `service` has run, asked directly."""
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        statistics = Stub(channel).ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL))
    return sum(stats.inference_count for stats in statistics.model_stats)


@dataclass
class Load:
    """Clients calling ModelInfer through the gateway in a loop until stopped."""

    stub: Stub
    concurrency: int = 16
    ok: int = 0
    failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.stub.ModelInfer(price_request(1800.0), timeout=10)
                assert prices(response) == OK([PRICE], abs=1e-3)
            except grpc.RpcError as exc:
                call: Any = exc
                with self._lock:
                    self.failures.append((call.code(), call.details()))
            else:
                with self._lock:
                    self.ok += 1

    @contextmanager
    def running(self) -> Iterator[Load]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            clients = [pool.submit(self._client) for _ in range(self.concurrency)]
            try:
                yield self
            finally:
                self._stop.set()
                for client in clients:
                    client.result()


# ---- balancing ----


def test_calls_alternate_between_replicas(aio: Any, tmp_path_factory: Any) -> None:
    with _replicas(aio, tmp_path_factory) as replicas, _front(aio, replicas.url()) as front:
        services = [s for s in replicas.services if s is not None]
        before = [_inferences(s) for s in services]
        for _ in range(20):
            assert prices(front.stub.ModelInfer(price_request(1800.0))) == OK([PRICE], abs=1e-3)
        assert [_inferences(s) - b for s, b in zip(services, before, strict=True)] == [10, 10]
        assert front.healthy() == [True, True]
        assert [r.calls for r in front.upstream.replicas] == [10, 10]
        assert front.upstream.retries == 0


@pytest.mark.parametrize("grace", [1.0, 0.0], ids=["drained", "abrupt"])
def test_a_replica_stopped_and_restarted_under_load(
    aio: Any, tmp_path_factory: Any, grace: float
) -> None:
    with _replicas(aio, tmp_path_factory) as replicas, _front(aio, replicas.url()) as front:
        with Load(front.stub).running() as load:
            assert eventually(lambda: load.ok >= 100)
            replicas.stop(0, grace)
            # The gateway has noticed, and calls go on without it.
            assert eventually(lambda: front.healthy() == [False, True], timeout=10 * HEALTH_S)
            answered = load.ok
            assert eventually(lambda: load.ok >= answered + 100)
        print(f"{load.ok} calls, {front.upstream.retries} retried")
        assert load.failures == []

        restarted = replicas.restart(0)
        assert eventually(lambda: front.healthy() == [True, True], timeout=10 * HEALTH_S + 5)
        for _ in range(10):
            front.stub.ModelInfer(price_request(1800.0), timeout=5)
        assert _inferences(restarted) >= 4  # in turn with the other again


def test_a_replica_going_away_between_health_checks(aio: Any, tmp_path_factory: Any) -> None:
    # Health checks far apart: a call that still finds the replica gone is retried on the
    # other (and has it checked at once); once its channel has lost the connection it gets
    # no more calls.
    with (
        _replicas(aio, tmp_path_factory) as replicas,
        _front(aio, replicas.url(), health_interval_s=60.0) as front,
    ):
        gone = front.upstream.replicas[1]
        before = gone.calls
        replicas.stop(1, grace=0)
        for _ in range(20):
            assert prices(front.stub.ModelInfer(price_request(1800.0))) == OK([PRICE], abs=1e-3)
        assert front.upstream.retries == gone.calls - before
        assert gone.calls - before <= 1


def test_a_replica_without_a_connection_gets_no_calls(aio: Any, tmp_path_factory: Any) -> None:
    # Still healthy as far as the (rare) health checks know, but its channel has lost its
    # connection: calls go to the connected replica instead of failing there first.
    with (
        _replicas(aio, tmp_path_factory) as replicas,
        _front(aio, replicas.url(), health_interval_s=60.0) as front,
    ):
        gone = front.upstream.replicas[1]
        replicas.stop(1, grace=0)

        async def state() -> grpc.ChannelConnectivity:
            return gone.channel.get_state(try_to_connect=False)

        assert eventually(lambda: aio.run(state()) is not grpc.ChannelConnectivity.READY)
        before = gone.calls
        for _ in range(20):
            assert prices(front.stub.ModelInfer(price_request(1800.0))) == OK([PRICE], abs=1e-3)
        assert gone.calls == before
        assert front.upstream.retries == 0
        assert front.healthy() == [True, True]  # no health check has run


def test_a_draining_replica_refuses_and_the_gateway_retries(
    aio: Any, tmp_path_factory: Any
) -> None:
    # No ratio and no floor: only a new gateway's initial retries let the refused call
    # through (a gateway's first second must not run dry).
    with (
        _replicas(aio, tmp_path_factory) as replicas,
        _front(
            aio,
            replicas.url(),
            health_interval_s=60.0,
            retry_budget_ratio=0,
            retry_budget_min_per_s=0,
            retry_budget_initial=5,
        ) as front,
    ):
        draining = replicas.services[1]
        assert draining is not None
        # The first steps of Service.stop: NOT_SERVING, new calls refused; still connected.
        aio.run(draining.health.enter_graceful_shutdown())
        draining.drain.begin()
        for _ in range(20):
            assert prices(front.stub.ModelInfer(price_request(1800.0))) == OK([PRICE], abs=1e-3)
        assert draining.drain.refused >= 1
        assert front.upstream.retries == draining.drain.refused
        assert eventually(lambda: front.healthy() == [True, False])
        with grpc.insecure_channel(f"127.0.0.1:{draining.port}") as channel:
            code, details = rpc_error(Stub(channel).ModelInfer, price_request(1800.0))
            # Health stays open while draining: probes read NOT_SERVING, not a refusal.
            health_stub = health_pb2_grpc.HealthStub(channel)
            status = health_stub.Check(health_pb2.HealthCheckRequest(service="")).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert code is grpc.StatusCode.UNAVAILABLE
        assert details == "the server is shutting down; retry on another replica"


def test_retry_budget_when_every_replica_is_down(aio: Any, tmp_path_factory: Any) -> None:
    min_per_s, initial = 2.0, 10.0
    with (
        _replicas(aio, tmp_path_factory) as replicas,
        _front(
            aio,
            replicas.url(),
            retry_budget_min_per_s=min_per_s,
            retry_budget_initial=initial,
        ) as front,
    ):
        replicas.stop(0, grace=0)
        replicas.stop(1, grace=0)
        upstream = front.upstream
        requests, attempts = upstream.requests, upstream.attempts
        started = time.monotonic()
        slowest = 0.0
        for _ in range(200):
            call_started = time.monotonic()
            code, details = rpc_error(front.stub.ModelInfer, price_request(1800.0), timeout=5)
            slowest = max(slowest, time.monotonic() - call_started)
            assert code is grpc.StatusCode.UNAVAILABLE
            assert "pytorch service at 127.0.0.1:" in details
        elapsed = time.monotonic() - started
        requests, attempts = upstream.requests - requests, upstream.attempts - attempts
        assert requests == 200
        assert slowest < 1.0
        # Each call tries a replica; retries are at most 20 % more plus the floor and the
        # initial allowance.
        assert attempts <= requests * 1.2 + min_per_s * (elapsed + 2) + initial
        assert upstream.retries_denied > 0
        assert not upstream.ready


def test_calls_that_are_never_retried(aio: Any, tmp_path_factory: Any) -> None:
    # Train starts a job: when its replica refuses it (draining) it fails, it does not go
    # elsewhere (both refuse here, so whichever it went to, it went to one only).
    with (
        _replicas(aio, tmp_path_factory) as replicas,
        _front(aio, replicas.url(), health_interval_s=60.0) as front,
    ):
        services = [service for service in replicas.services if service is not None]
        for service in services:
            service.drain.begin()
        attempts = front.upstream.attempts
        code, _ = rpc_error(
            lambda: list(front.training.Train(train_request("not-retried", line(2, 1)))),
        )
        assert code is grpc.StatusCode.UNAVAILABLE
        assert front.upstream.retries == 0
        assert front.upstream.attempts - attempts == 1
        assert sum(service.drain.refused for service in services) == 1


# ---- in-flight bound ----


def test_in_flight_bound(aio: Any, tmp_path_factory: Any) -> None:
    gate = threading.Event()
    with (
        _replicas(aio, tmp_path_factory, gate=gate) as replicas,
        _front(aio, replicas.url(), max_inflight_per_replica=2) as front,
    ):
        gate.clear()
        try:
            held = [
                front.stub.ModelInfer.future(price_request(1800.0), timeout=20) for _ in range(4)
            ]
            assert eventually(lambda: [r.inflight for r in front.upstream.replicas] == [2, 2])
            started = time.monotonic()
            code, details = rpc_error(front.stub.ModelInfer, price_request(1800.0), timeout=10)
            assert time.monotonic() - started < 5.0  # refused, not queued for the 10 s deadline
        finally:
            gate.set()
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details == "all 2 pytorch replicas are at their in-flight limit (2)"
        assert front.upstream.rejected == 1
        assert all(prices(f.result(timeout=10)) == OK([PRICE], abs=1e-3) for f in held)
        assert prices(front.stub.ModelInfer(price_request(1800.0))) == OK([PRICE], abs=1e-3)
        assert [r.inflight for r in front.upstream.replicas] == [0, 0]


# ---- DNS ----


def test_dns_target(aio: Any, tmp_path_factory: Any) -> None:
    with (
        _replicas(aio, tmp_path_factory, count=1) as replicas,
        _front(aio, f"dns:///localhost:{replicas.ports[0]}") as front,
    ):
        for _ in range(4):
            assert prices(front.stub.ModelInfer(price_request(1800.0))) == OK([PRICE], abs=1e-3)
        address = f"127.0.0.1:{replicas.ports[0]}"
        assert address in [r.address for r in front.upstream.replicas]
        assert eventually(
            lambda: [r.address for r in front.upstream.replicas if r.healthy] == [address]
        )


def test_dns_and_fixed_addresses_together(aio: Any, tmp_path_factory: Any) -> None:
    with _replicas(aio, tmp_path_factory) as replicas:
        first, second = replicas.ports
        with _front(aio, f"dns:///localhost:{first}, 127.0.0.1:{second}") as front:
            assert eventually(lambda: sum(front.healthy()) == 2)
            for _ in range(4):
                front.stub.ModelInfer(price_request(1800.0))
            assert all(_inferences(s) >= 2 for s in replicas.services if s is not None)


def test_replicas_join_and_leave_as_dns_answers_change(
    aio: Any, tmp_path_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer: list[str] = []

    async def resolve(self: Target) -> list[tuple[str, str]]:
        return [(address, "svc.test") for address in answer]

    monkeypatch.setattr(Target, "resolve", resolve)
    with _replicas(aio, tmp_path_factory) as replicas:
        first, second = (f"127.0.0.1:{port}" for port in replicas.ports)
        answer[:] = [first]
        with _front(aio, "dns:///svc.test:7070") as front:

            def healthy() -> list[str]:
                return [r.address for r in front.upstream.replicas if r.healthy]

            assert healthy() == [first]
            answer[:] = [first, second]
            assert eventually(lambda: healthy() == [first, second])
            answer[:] = [second]
            assert eventually(lambda: [r.address for r in front.upstream.replicas] == [second])
            service = replicas.services[1]
            assert service is not None
            before = _inferences(service)
            for _ in range(4):
                front.stub.ModelInfer(price_request(1800.0))
            assert _inferences(service) - before == 4


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("dns:///nameonly", "is not host:port"),
        ("127.0.0.1", "is not host:port"),
        ("dns://8.8.8.8/name:80", "only host:port and dns:///name:port"),
        (" , ", "names no address"),
    ],
)
def test_bad_urls(aio: Any, url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message), _front(aio, url):
        pass


def test_a_name_that_does_not_resolve(aio: Any) -> None:
    with _front(aio, "dns:///no-such-host.invalid:7070") as front:
        code, details = rpc_error(front.stub.ModelInfer, price_request(1800.0))
        assert code is grpc.StatusCode.UNAVAILABLE
        assert "has no address yet" in details


# ---- calls that are not balanced ----


def test_job_calls_find_the_replica_that_runs_the_job(aio: Any, tmp_path_factory: Any) -> None:
    with _replicas(aio, tmp_path_factory) as replicas, _front(aio, replicas.url()) as front:
        jobs = []
        for model in ("job-a", "job-b"):
            events = list(front.training.Train(train_request(model, line(2, 1)), timeout=30))
            jobs.append(events[0].job_id)
        # One job on each replica (Train goes to them in turn) ...
        for service in replicas.services:
            assert service is not None
            assert len(service.jobs.list()) == 1
        # ... and every job call through the gateway finds its job.
        for job_id in jobs * 2:
            request = tpb.JobRequest(job_id=job_id)
            assert front.training.GetJob(request).job_id == job_id
            assert front.training.CancelJob(request).job_id == job_id
            watched = list(front.training.WatchJob(request, timeout=10))
            assert watched[0].job_id == job_id
        listed = front.training.ListJobs(tpb.ListJobsRequest()).jobs
        assert sorted(job.job_id for job in listed) == sorted(jobs)
        code, details = rpc_error(front.training.GetJob, tpb.JobRequest(job_id="pytorch-none"))
        assert code is grpc.StatusCode.NOT_FOUND
        assert "pytorch-none" in details


def test_load_and_unload_reach_every_replica(aio: Any, tmp_path_factory: Any) -> None:
    with _replicas(aio, tmp_path_factory) as replicas, _front(aio, replicas.url()) as front:

        def ready() -> list[bool]:
            states = []
            for service in replicas.services:
                assert service is not None
                with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                    request = pb.ModelReadyRequest(name=SEED_MODEL)
                    states.append(Stub(channel).ModelReady(request).ready)
            return states

        front.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=SEED_MODEL))
        assert ready() == [False, False]
        front.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=SEED_MODEL))
        assert ready() == [True, True]


# ---- servers' maximum connection age ----


@contextmanager
def _aged_server(aio: Any, grace_s: float | None) -> Iterator[grpc.Channel]:
    """A health-only server whose connections are closed after 0.3 s."""

    async def start() -> tuple[grpc.aio.Server, int]:
        options = grpc_options(
            1024 * 1024, max_connection_age_s=0.3, max_connection_age_grace_s=grace_s
        )
        server = grpc.aio.server(options=options)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = aio.run(start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        aio.run(server.stop(0))


def _watch_for(channel: grpc.Channel, seconds: float) -> grpc.StatusCode | None:
    """Holds a Health.Watch stream open for `seconds`; the code it ended with, if it did."""
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    threading.Timer(seconds, stream.cancel).start()
    try:
        for _ in stream:
            pass
    except grpc.RpcError as exc:
        call: Any = exc
        return None if call.code() is grpc.StatusCode.CANCELLED else call.code()
    return None


def test_connection_age_lets_calls_in_flight_finish(aio: Any) -> None:
    with _aged_server(aio, grace_s=None) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        connections: list[grpc.ChannelConnectivity] = []

        def on_state(state: grpc.ChannelConnectivity) -> None:
            if state is grpc.ChannelConnectivity.READY:
                connections.append(state)

        def called_across_reconnections() -> bool:
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)  # never fails
            return len(connections) >= 4

        channel.subscribe(on_state, try_to_connect=True)
        try:
            # Unary calls keep working while the server closes connection after connection.
            assert eventually(called_across_reconnections, timeout=10)
        finally:
            channel.unsubscribe(on_state)
        assert _watch_for(channel, 1.5) is None  # a stream outlives the connection's age


def test_connection_age_grace_ends_calls_in_flight(aio: Any) -> None:
    with _aged_server(aio, grace_s=0.2) as channel:
        assert _watch_for(channel, 3.0) is grpc.StatusCode.UNAVAILABLE


def test_retry_budget_arithmetic() -> None:
    now = [100.0]
    budget = RetryBudget(ratio=0.2, min_per_s=1, window_s=10, clock=lambda: now[0], initial=3)
    assert budget.try_retry()  # the floor: one a second with no traffic at all
    # A new budget's initial allowance, spent once when the rest is spent.
    assert sum(budget.try_retry() for _ in range(5)) == 3
    assert not budget.try_retry()
    for _ in range(50):
        budget.record_request()
    assert sum(budget.try_retry() for _ in range(20)) == 6  # 20 % of 50, four spent already
    now[0] += 11  # the window has moved past all of it
    assert budget.try_retry()
    assert not budget.try_retry()  # the initial allowance does not come back
