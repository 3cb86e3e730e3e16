"""The real thing on this machine's Docker engine: the images built on a Debian base made with
debootstrap (no image registry is reachable here), the Compose stack up and healthy, one
prediction from each framework through the gateway's published port, and nothing left after
`docker compose down`.

`make test-deploy` starts dockerd when it is not running and requires these tests to run
(TWINSERVE_DEPLOY_REQUIRE_DOCKER=1); elsewhere they skip without a Docker engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.tools import COMPOSE_FILE, DEPLOY, ROOT, run, tool

# Building the images on a fresh machine is most of it (see README: under 15 minutes).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

BASE_IMAGE = "twinserve-base:bookworm"
TAG = "deploy-test"
CACHE = Path(os.environ.get("TWINSERVE_DEPLOY_CACHE", Path.home() / ".cache" / "twinserve-deploy"))
WHEELS = DEPLOY / "docker" / "wheels"
# The load-test image joins once its package is in the tree (it has a `python -m loadtest`).
COMPONENTS = ["tf-service", "torch-service", "gateway"] + (
    ["loadtest"] if (ROOT / "loadtest" / "__main__.py").exists() else []
)
FRAMEWORKS = ("tensorflow", "pytorch")


def _docker_ready() -> None:
    if shutil.which("docker") is None or run(["docker", "info"], check=False).returncode != 0:
        reason = "no Docker engine (make test-deploy starts one)"
        if os.environ.get("TWINSERVE_DEPLOY_REQUIRE_DOCKER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def _build_env() -> dict[str, str]:
    environment = dict(os.environ)
    # Without the buildx plugin (Debian's docker.io), the classic builder.
    if run(["docker", "buildx", "version"], check=False).returncode != 0:
        environment["DOCKER_BUILDKIT"] = "0"
    return environment


def _torch_wheel() -> None:
    """The CPU wheel of the pinned torch into the build context (PyPI's torch is CUDA's)."""
    cached = CACHE / "wheels"
    if not list(cached.glob("torch-*.whl")):
        requirements = str(DEPLOY / "docker" / "requirements.py")
        pin = run(
            [sys.executable, requirements, "pyproject.toml", "--only", "torch"]
        ).stdout.strip()
        run(
            [sys.executable, "-m", "pip", "download", pin, "--no-deps", "-d", str(cached)],
            timeout=900,
        )
    for wheel in cached.glob("torch-*.whl"):
        target = WHEELS / wheel.name
        if not target.exists():
            shutil.copy2(wheel, target)


@pytest.fixture(scope="module")
def images() -> dict[str, dict[str, object]]:
    """Builds every CPU image (Docker's layer cache makes a rebuild quick); their inspections."""
    _docker_ready()
    run([str(DEPLOY / "scripts" / "debootstrap-base.sh"), BASE_IMAGE], timeout=1200)
    _torch_wheel()
    environment = _build_env()
    inspected = {}
    for component in COMPONENTS:
        image = f"twinserve/{component}:{TAG}"
        run(
            [
                "docker",
                "build",
                "--network",
                "host",
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                "-f",
                f"deploy/docker/{component}.Dockerfile",
                "-t",
                image,
                ".",
            ],
            env=environment,
            timeout=1800,
        )
        (inspected[component],) = json.loads(run(["docker", "image", "inspect", image]).stdout)
    sizes = {name: f"{int(i['Size']) / 1e6:.0f} MB" for name, i in inspected.items()}  # type: ignore[call-overload]
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "image-sizes.json").write_text(json.dumps(sizes, indent=2) + "\n")
    return inspected


@dataclass
class Stack:
    project: str
    port: int

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        environment = {
            **os.environ,
            "TWINSERVE_IMAGE_TAG": TAG,
            "TWINSERVE_GATEWAY_PUBLISH": f"127.0.0.1:{self.port}",
        }
        command = [tool("docker-compose"), "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        return run(command, env=environment, timeout=timeout)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
            ids = run(["docker", *kind, "-q", "--filter", label]).stdout.split()
            found += [f"{kind[0]} {i}" for i in ids]
        return found

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stack(images: dict[str, object]) -> Iterator[Stack]:
    # A project name and port of its own: nothing clashes with a stack already running here.
    up = Stack(project=f"twinserve-deploytest-{os.getpid()}", port=_free_port())
    try:
        up.compose("up", "--detach", "--wait", "--wait-timeout", "600", "--no-build")
        yield up
    finally:
        up.down()


def test_images_run_as_non_root_with_a_health_check(images: dict[str, dict[str, object]]) -> None:
    for component, image in images.items():
        config = image["Config"]
        assert isinstance(config, dict)
        assert config["User"] == "10001:10001", component
        assert config["Entrypoint"][:2] == ["python", "-m"], component
        if component != "loadtest":
            assert "healthcheck.py" in " ".join(config["Healthcheck"]["Test"]), component


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_prediction_through_the_published_gateway(stack: Stack, framework: str) -> None:
    result = run(
        [
            tool("twinserve"),
            "--url",
            f"127.0.0.1:{stack.port}",
            "predict",
            "1800",
            "--framework",
            framework,
            "--timeout",
            "30",
        ]
    )
    match = re.search(rf"house_price v\d+ \({framework}\): 1800 -> ([0-9.]+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) == pytest.approx(360, abs=1)


def test_services_are_healthy_and_only_the_gateway_is_published(stack: Stack) -> None:
    containers = [
        json.loads(line)
        for line in stack.compose("ps", "--all", "--format", "json").stdout.splitlines()
        if line.strip()
    ]
    states = {
        c["Service"]: (c["State"], c.get("Health", ""), c.get("ExitCode")) for c in containers
    }
    assert states["tf-seed"][0] == states["torch-seed"][0] == "exited"
    assert states["tf-seed"][2] == states["torch-seed"][2] == 0
    for service in ("tf-service", "torch-service", "gateway"):
        assert states[service][:2] == ("running", "healthy"), states
    published = {
        c["Service"]
        for c in containers
        if any(p.get("PublishedPort") for p in c.get("Publishers") or [])
    }
    assert published == {"gateway"}


def test_down_leaves_nothing_running(stack: Stack) -> None:
    stack.down()
    assert stack.leftovers() == []
