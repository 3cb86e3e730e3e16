"""Static checks of everything under deploy/: no Docker engine or cluster needed.

hadolint on every Dockerfile, `docker compose config` on the Compose file, and every
kustomization rendered by `kubectl kustomize` and validated by `kubernetes-validate --strict`
against Kubernetes 1.32 (a resource without a schema fails), then assertions on what renders.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from serving.app.settings import ServiceSettings
from tests.deploy.tools import (
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILES,
    KUSTOMIZATIONS,
    ROOT,
    load_all,
    run,
    tool,
)

KUBERNETES_VERSION = "1.32.0"
IMAGES = {"tf-service", "torch-service", "gateway", "loadtest"}
# The gpu overlay with components/nvidia-runtime (runtimeClassName: nvidia on the GPU pods).
RENDERED = {
    **KUSTOMIZATIONS,
    "gpu-runtime": DEPLOY / "kubernetes" / "overlays" / "gpu-nvidia-runtime",
}
WORKLOADS = ("cpu", "gpu", "tls", "gpu-runtime")
GPU_OVERLAYS = ("gpu", "gpu-runtime")
GPU_SERVICES = ("tf-service", "torch-service")
# Every image's Python: one interpreter, so the CPU-vs-GPU comparison compares devices alone.
PYTHON_BASE = "python:3.11-slim"
# The debootstrap base the Docker tests build on (no registry here): its suite's python3.
DEBIAN_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
# The setting the services read the device from, as an environment variable.
DEVICE_VARIABLE = f"{ServiceSettings.model_config['env_prefix']}DEVICE"
GPU = "nvidia.com/gpu"
ADAPTER_RULES = DEPLOY / "monitoring" / "prometheus-adapter-rules.yaml"
ENGINE_METRICS = ROOT / "serving" / "engine" / "metrics.py"


@cache
def rendered(name: str) -> str:
    return run(["kubectl", "kustomize", str(RENDERED[name])]).stdout


@cache
def resources(name: str) -> list[dict[str, Any]]:
    return load_all(rendered(name))


def of_kind(name: str, kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources(name) if r["kind"] == kind}


def pod_specs(name: str) -> dict[str, dict[str, Any]]:
    """The pod template of every Deployment and Job, by workload name."""
    return {
        r["metadata"]["name"]: r["spec"]["template"]["spec"]
        for r in resources(name)
        if r["kind"] in {"Deployment", "Job"}
    }


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def gpus(container: dict[str, Any]) -> dict[str, Any]:
    """The container's nvidia.com/gpu request and limit ({} for none)."""
    resources = container.get("resources", {})
    return {
        kind: resources[kind][GPU]
        for kind in ("requests", "limits")
        if GPU in resources.get(kind, {})
    }


def dockerfile(name: str) -> str:
    return (DEPLOY / "docker" / f"{name}.Dockerfile").read_text()


def instructions(text: str) -> list[str]:
    """A Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def stage(text: str, name: str | None) -> list[str]:
    """The instructions of stage `name` (None: the last, the runtime stage)."""
    found: dict[str | None, list[str]] = {}
    current: list[str] = []
    for instruction in instructions(text):
        if instruction.startswith("FROM "):
            words = instruction.split()
            current = found.setdefault(words[3] if len(words) > 3 else "<unnamed>", [])
            found[None] = current
        current.append(instruction)
    return found[name]


def env_of_image(text: str) -> dict[str, str]:
    """The ENV values the runtime stage sets."""
    values: dict[str, str] = {}
    for instruction in stage(text, None):
        if instruction.startswith("ENV "):
            for word in shlex.split(instruction[4:]):
                key, _, value = word.partition("=")
                values[key] = value
    return values


@cache
def requirement_lists(name: str) -> dict[str, list[str]]:
    """What an image's requirements stage writes (core.txt, extra.txt, ...), by running its RUN
    line here with the ARG defaults, on this repository's pyproject.toml."""
    instructions_ = stage(dockerfile(name), "requirements")
    args = {}
    for instruction in instructions_:
        if instruction.startswith("ARG "):
            key, _, value = instruction[4:].partition("=")
            args[key] = shlex.split(value)[0] if value else ""
    (command,) = [i[4:] for i in instructions_ if i.startswith("RUN ")]
    for key, value in args.items():
        command = command.replace(f"${{{key}}}", value).replace(f"${key}", value)
    assert "$" not in command, command
    workdir = Path(run(["mktemp", "-d"]).stdout.strip())
    try:
        shutil.copy(ROOT / "pyproject.toml", workdir)
        shutil.copy(DEPLOY / "docker" / "requirements.py", workdir)
        command = re.sub(r"\bpython3 ", f"{shlex.quote(sys.executable)} ", command)
        run(["bash", "-euc", f"cd {shlex.quote(str(workdir))} && {command}"])
        return {p.name: p.read_text().split() for p in sorted(workdir.glob("*.txt"))}
    finally:
        shutil.rmtree(workdir)


def distribution(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def installed(name: str) -> set[str]:
    """The distributions an image installs into /opt/venv (tools.txt is the protoc venv's)."""
    lists = requirement_lists(name)
    return {distribution(r) for key, rs in lists.items() if key != "tools.txt" for r in rs}


# --- Dockerfiles -----------------------------------------------------------------------


def test_every_component_has_a_dockerfile() -> None:
    names = {path.name.removesuffix(".Dockerfile") for path in DOCKERFILES}
    assert names == IMAGES | {"tf-service-gpu", "torch-service-gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Any) -> None:
    run([tool("hadolint"), "--failure-threshold", "info", str(dockerfile)])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_conventions(dockerfile: Any) -> None:
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM ", text, flags=re.MULTILINE)
    assert len(stages) >= 3, "multi-stage: base, proto, build, runtime"
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, flags=re.MULTILINE)
    # Dependencies install from lists read out of pyproject.toml, before any source is copied.
    assert "FROM base AS requirements" in text
    assert text.index("-r core.txt") < text.index("COPY serving/")
    assert "grpc_tools.protoc" in text, "protobuf code is generated in the build"
    runtime = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["python", "-m", "[a-z_]+"\]$', runtime, flags=re.MULTILINE)
    if "loadtest" not in dockerfile.name:
        assert "HEALTHCHECK" in runtime and "healthcheck.py" in runtime
    if "gpu" in dockerfile.name:
        assert "tensorflow[and-cuda]" in text or "whl/cu" in text
    # One Python across the images, the GPU ones included (no CUDA base with its own python3).
    assert f"ARG BASE_IMAGE={PYTHON_BASE}\n" in text
    assert not re.search(r"apt-get install[^\n]*python", text)


def test_one_python_version_across_every_image() -> None:
    bases = {
        path.name: re.findall(r"^ARG BASE_IMAGE=(\S+)$", path.read_text(), flags=re.MULTILINE)
        for path in DOCKERFILES
    }
    assert {tuple(b) for b in bases.values()} == {(PYTHON_BASE,)}, bases
    # Every build stage starts from that base (no other FROM image slips in).
    for path in DOCKERFILES:
        sources = re.findall(r"^FROM (\S+)", path.read_text(), flags=re.MULTILINE)
        assert set(sources) == {"${BASE_IMAGE}", "base", "deps"}, (path.name, sources)
    # The Docker tests' debootstrap base (standing in for the public one) has that Python too.
    script = (DEPLOY / "scripts" / "debootstrap-base.sh").read_text()
    (suite,) = re.findall(r"^suite=(\S+)$", script, flags=re.MULTILINE)
    version = re.fullmatch(r"python:(\d+\.\d+)-slim", PYTHON_BASE)
    assert version and DEBIAN_PYTHON[suite] == version.group(1)


@pytest.mark.parametrize("name", ["tf-service-gpu", "torch-service-gpu"])
def test_gpu_images_run_on_cuda_with_onnxruntime_gpu_alone(name: str) -> None:
    text = dockerfile(name)
    image_env = env_of_image(text)
    assert image_env[DEVICE_VARIABLE] == "cuda"
    assert "compute" in image_env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    # NVIDIA_VISIBLE_DEVICES comes from whoever grants the GPU: a container without one sees none.
    assert "NVIDIA_VISIBLE_DEVICES" not in image_env
    packages = installed(name)
    assert "onnxruntime-gpu" in packages
    assert "onnxruntime" not in packages, "both builds write the same `onnxruntime` package"
    (ort,) = [
        r for rs in requirement_lists(name).values() for r in rs if r.startswith("onnxruntime")
    ]
    # A CUDA 12 line (PyPI's 1.27 on are CUDA 13), as the frameworks' wheels here.
    assert "<1.27" in ort, ort
    if name == "tf-service-gpu":
        assert "tensorflow-cpu" not in packages
        assert any(
            r.startswith("tensorflow[and-cuda]==") for r in requirement_lists(name)["extra.txt"]
        )
        assert image_env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    else:
        assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", text)
    # The runtime stage puts the nvidia-* wheels' libraries on the loader's path and checks at
    # build time that the CUDA provider is there and finds every library it links.
    runtime = " ".join(stage(text, None))
    assert "/etc/ld.so.conf.d/" in runtime and "ldconfig" in runtime
    assert "python /opt/twinserve/gpu_check.py" in runtime


@pytest.mark.parametrize("name", ["tf-service", "torch-service", "gateway", "loadtest"])
def test_cpu_images_keep_the_cpu_builds(name: str) -> None:
    packages = installed(name)
    assert not {p for p in packages if "gpu" in p or "cuda" in p}, packages
    if name in ("tf-service", "torch-service"):
        assert "onnxruntime" in packages
        assert DEVICE_VARIABLE not in env_of_image(dockerfile(name))
    if name == "gateway":
        assert not {"onnxruntime", "tensorflow-cpu", "torch"} & packages


def _gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", DEPLOY / "docker" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_refuses_the_cpu_onnxruntime() -> None:
    # This venv has the CPU build: the GPU images' build-time check must fail on it.
    problems = _gpu_check().problems()
    assert any("CPU build `onnxruntime` is installed" in p for p in problems), problems
    assert any("onnxruntime-gpu is not installed" in p for p in problems), problems


# --- Compose ---------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    result = run(
        [
            tool("docker-compose"),
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            "gpu",
            "--profile",
            "loadtest",
            "config",
            "--format",
            "json",
        ],
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_compose_config_is_valid() -> None:
    run([tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "-q"])
    assert set(compose()["services"]) == {
        "tf-seed",
        "torch-seed",
        "tf-service",
        "torch-service",
        "gateway",
        "loadtest",
        "tf-service-gpu",
        "torch-service-gpu",
        "gateway-gpu",
    }


def test_compose_servers_are_health_checked_and_started_in_order() -> None:
    services = compose()["services"]
    servers = {name for name, s in services.items() if s.get("command") != ["seed"]} - {"loadtest"}
    for name in servers:
        assert "healthcheck.py" in " ".join(services[name]["healthcheck"]["test"]), name
    for name in ("gateway", "gateway-gpu"):
        conditions = {d["condition"] for d in services[name]["depends_on"].values()}
        assert conditions == {"service_healthy"}
    assert services["tf-service"]["depends_on"]["tf-seed"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_publishes_only_the_gateways_and_gpus_only_in_the_gpu_profile() -> None:
    services = compose()["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"gateway", "gateway-gpu"}
    assert compose()["networks"]["backend"]["internal"] is True
    for name, service in services.items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        if name.endswith("-gpu") and name != "gateway-gpu":
            assert service["profiles"] == ["gpu"]
            assert devices["devices"][0]["capabilities"] == ["gpu"]
        else:
            assert not devices.get("devices"), name
    assert services["loadtest"]["profiles"] == ["loadtest"]


def test_compose_gpu_profile_runs_on_the_gpu_and_seeds_on_the_cpu_images() -> None:
    services = compose()["services"]
    for name in ("tf-service-gpu", "torch-service-gpu"):
        service = services[name]
        assert service["environment"][DEVICE_VARIABLE] == "cuda", name
        assert service["image"].rsplit(":", 1)[0].endswith(f"/{name}"), name
        assert service["build"]["dockerfile"] == f"deploy/docker/{name}.Dockerfile"
        # Its models come from the CPU image's seed container, which takes no GPU.
        (seed,) = [s for s in service["depends_on"] if s.endswith("-seed")]
        assert services[seed]["image"].rsplit(":", 1)[0].endswith(name.removesuffix("-gpu"))
    assert services["tf-service-gpu"]["environment"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    # Exactly the services on the GPU reserve one; every other runs on the CPU.
    on_gpu = {
        n for n, s in services.items() if s.get("environment", {}).get(DEVICE_VARIABLE) == "cuda"
    }
    reserving = {
        n
        for n, s in services.items()
        if s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    }
    assert on_gpu == reserving == {"tf-service-gpu", "torch-service-gpu"}
    # The -gpu images too (gateway-gpu is the gateway's image, framework-free).
    gpu_images = {n for n, s in services.items() if "-gpu:" in s["image"]}
    assert gpu_images == on_gpu


# --- Kubernetes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_kustomization_validates_strictly(name: str) -> None:
    result = run(
        [
            tool("kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            "-",
        ],
        input=rendered(name),
        check=False,
    )
    report = result.stdout + result.stderr
    # kubernetes-validate only warns (exit 0) when it has no schema for a kind: fail on it.
    assert result.returncode == 0, report
    assert "Couldn't find schema" not in report, report
    assert not re.search(r"^(WARN|ERROR)", report, flags=re.MULTILINE), report
    assert report.count("passed for resource") == len(resources(name))


@pytest.mark.parametrize("name", [*WORKLOADS, "loadtest"])
def test_gpus_requested_by_exactly_the_pods_on_cuda(name: str) -> None:
    """nvidia.com/gpu (request = limit = 1) on the GPU overlays' framework services alone, and
    exactly those run on CUDA (TWINSERVE_DEVICE, the services' `device` setting) and the -gpu
    images; the seed Job, the gateway and every CPU overlay take none."""
    assert "device" in ServiceSettings.model_fields
    taking, on_cuda, gpu_images = set(), set(), set()
    for workload, spec in pod_specs(name).items():
        for container in spec["containers"]:
            key = (workload, container["name"])
            if gpus(container):
                assert gpus(container) == {"requests": 1, "limits": 1}, key
                taking.add(key)
            if env(container).get(DEVICE_VARIABLE, "cpu") != "cpu":
                assert env(container)[DEVICE_VARIABLE] == "cuda", key
                on_cuda.add(key)
            if "-gpu:" in container["image"]:
                gpu_images.add(key)
    expected = {(s, s) for s in GPU_SERVICES} if name in GPU_OVERLAYS else set()
    assert taking == on_cuda == gpu_images == expected
    if not expected:
        assert GPU not in rendered(name)


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_gpu_services_are_scheduled_on_gpu_nodes(name: str) -> None:
    deployments = of_kind(name, "Deployment")
    for service in GPU_SERVICES:
        spec = deployments[service]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["image"].startswith(f"twinserve/{service}-gpu:")
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (tf,) = deployments["tf-service"]["spec"]["template"]["spec"]["containers"]
    assert env(tf)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    gateway = deployments["gateway"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in gateway and "tolerations" not in gateway


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_the_gpu_seed_job_runs_the_cpu_images_beside_the_gpu_pods(name: str) -> None:
    specs = pod_specs(name)
    seed = specs["twinserve-seed"]
    images = {c["name"]: c["image"].split(":")[0] for c in seed["containers"]}
    assert images == {"tensorflow": "twinserve/tf-service", "pytorch": "twinserve/torch-service"}
    for container in seed["containers"]:
        assert not gpus(container), container["name"]
        assert env(container).get(DEVICE_VARIABLE, "cpu") == "cpu"
    # The CPU images bake in no device: the seed trains on the CPU.
    assert DEVICE_VARIABLE not in env_of_image(dockerfile("tf-service"))
    assert DEVICE_VARIABLE not in env_of_image(dockerfile("torch-service"))
    # It writes the claim the GPU pods read: placed with them (a ReadWriteOnce claim is one
    # node's), and tolerating their taint, without taking a GPU or the NVIDIA runtime.
    tf = specs["tf-service"]
    assert seed["nodeSelector"] == tf["nodeSelector"]
    assert seed["tolerations"] == tf["tolerations"]
    assert "runtimeClassName" not in seed
    # The CPU overlays' seed Job is the base's, with no GPU placement.
    for cpu in ("cpu", "tls"):
        assert "nodeSelector" not in pod_specs(cpu)["twinserve-seed"]


def test_the_nvidia_runtime_class_is_an_option_of_the_gpu_overlay() -> None:
    component = DEPLOY / "kubernetes" / "components" / "nvidia-runtime" / "kustomization.yaml"
    assert load_all(component.read_text())[0]["kind"] == "Component"
    for name in (*WORKLOADS, "loadtest"):
        classes = {
            workload: spec.get("runtimeClassName") for workload, spec in pod_specs(name).items()
        }
        if name == "gpu-runtime":
            # Exactly the pods that take a GPU.
            assert classes == {
                "tf-service": "nvidia",
                "torch-service": "nvidia",
                "gateway": None,
                "twinserve-seed": None,
            }
        else:
            assert set(classes.values()) == {None}, name
    # Documented where the option is taken: the gpu overlay and the README.
    overlay = (RENDERED["gpu"] / "kustomization.yaml").read_text()
    assert "../../components/nvidia-runtime" in overlay
    assert "components/nvidia-runtime" in (ROOT / "README.md").read_text()


def _adapter_metrics() -> dict[str, str]:
    """The Prometheus adapter's custom metrics: name served -> the series it is made from."""
    rules = load_all(ADAPTER_RULES.read_text())[0]["rules"]["custom"]
    metrics = {}
    for rule in rules:
        series = re.match(r"[a-z_]+", rule["seriesQuery"].strip("'"))
        assert series, rule
        assert re.fullmatch(rule["name"]["matches"], series.group(0)), rule
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "by (<<.GroupBy>>)" in rule["metricsQuery"]
        metrics[rule["name"]["as"]] = series.group(0)
    return metrics


def test_the_adapter_rules_read_metrics_the_services_export() -> None:
    exported = set(re.findall(r'"(twinserve_[a-z_]+)"', ENGINE_METRICS.read_text()))
    for served, series in _adapter_metrics().items():
        base = re.sub(r"_(total|count|sum|bucket)$", "", series)
        assert base in exported, (served, series)
    # The label the adapter maps series to pods by: prometheus.yml's pod job sets both.
    config = load_all((DEPLOY / "monitoring" / "prometheus.yml").read_text())[0]
    (pods,) = [j for j in config["scrape_configs"] if j["job_name"] == "twinserve-pods"]
    targets = {r.get("target_label") for r in pods["relabel_configs"]}
    assert {"namespace", "pod"} <= targets


@pytest.mark.parametrize("name", WORKLOADS)
def test_gpu_pods_scale_on_request_rate_and_queue_time_not_cpu(name: str) -> None:
    hpas = of_kind(name, "HorizontalPodAutoscaler")
    served = _adapter_metrics()
    for target, hpa in hpas.items():
        metrics = hpa["spec"]["metrics"]
        if name in GPU_OVERLAYS and target in GPU_SERVICES:
            assert {m["type"] for m in metrics} <= {"Pods", "Object"}, target
            names = {m[m["type"].lower()]["metric"]["name"] for m in metrics}
            assert names == set(served), target
            assert all(m["pods"]["target"]["type"] == "AverageValue" for m in metrics)
        else:
            # CPU pods (and the gateway everywhere) scale on CPU.
            assert [m["resource"]["name"] for m in metrics if m["type"] == "Resource"] == ["cpu"]


@pytest.mark.parametrize("name", [*WORKLOADS, "loadtest"])
def test_every_pod_runs_as_non_root_with_limits(name: str) -> None:
    for workload, spec in pod_specs(name).items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, workload
        assert pod["runAsUser"] != 0, workload
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", workload
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, workload
            assert context["readOnlyRootFilesystem"] is True, workload
            assert context["capabilities"]["drop"] == ["ALL"], workload
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), workload
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), workload
            assert container["imagePullPolicy"] == "IfNotPresent", workload


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_server_container_is_probed_and_drains(name: str) -> None:
    for workload, deployment in of_kind(name, "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"]:
            (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                handler = container[probe]
                if name == "tls":  # the kubelet's gRPC probes cannot speak TLS
                    assert "healthcheck.py" in handler["exec"]["command"][1], workload
                else:
                    assert handler["grpc"]["port"] == port, (workload, probe)
            pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            drain = max(float(v) for k, v in env(container).items() if "GRACE_PERIOD_S" in k)
            assert spec["terminationGracePeriodSeconds"] > pre_stop + drain, workload


@pytest.mark.parametrize("name", WORKLOADS)
def test_backends_are_headless_and_the_gateway_resolves_every_pod(name: str) -> None:
    services = of_kind(name, "Service")
    urls = env(of_kind(name, "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0])
    for backend, port, key in (
        ("tf-service", 8500, "TENSORFLOW"),
        ("torch-service", 7070, "PYTORCH"),
    ):
        assert services[backend]["spec"]["clusterIP"] == "None"
        assert urls[f"TWINSERVE_GATEWAY_{key}_URL"] == f"dns:///{backend}:{port}"
    assert services["gateway"]["spec"].get("clusterIP") != "None"


@pytest.mark.parametrize("name", WORKLOADS)
def test_autoscaling_and_disruption_budgets_cover_every_deployment(name: str) -> None:
    deployments = set(of_kind(name, "Deployment"))
    assert deployments == {"tf-service", "torch-service", "gateway"}
    hpas = {
        r["metadata"]["name"]: r for r in resources(name) if r["kind"] == "HorizontalPodAutoscaler"
    }
    assert all(r["apiVersion"] == "autoscaling/v2" for r in hpas.values())
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == deployments
    budgets = of_kind(name, "PodDisruptionBudget")
    selected = {
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for b in budgets.values()
    }
    assert selected == deployments


@pytest.mark.parametrize("name", WORKLOADS)
def test_only_the_gateway_reaches_the_services(name: str) -> None:
    policies = of_kind(name, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    backend_labels = {"app.kubernetes.io/component": "backend"}
    (backends,) = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"].get("matchLabels") == backend_labels
    ]
    (rule,) = backends["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}]
    assert {p["port"] for p in rule["ports"]} == {8500, 7070}
    # The backends' pods carry the label the policy selects.
    for backend in ("tf-service", "torch-service"):
        labels = of_kind(name, "Deployment")[backend]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "backend"


@pytest.mark.parametrize("name", WORKLOADS)
def test_models_live_on_a_claim_and_the_seed_job_fills_it(name: str) -> None:
    (claim,) = of_kind(name, "PersistentVolumeClaim")
    specs = pod_specs(name)
    repositories = {}
    for workload in ("tf-service", "torch-service", "twinserve-seed"):
        volumes = {v["name"]: v for v in specs[workload]["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim
        for container in specs[workload]["containers"]:
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            assert mounts["models"]["mountPath"] == "/models"
            image = container["image"].split("/")[-1].split(":")[0]
            repositories[workload, image] = env(container)["TWINSERVE_MODEL_REPOSITORY"]
    suffix = "-gpu" if name in GPU_OVERLAYS else ""
    assert repositories == {
        ("tf-service", f"tf-service{suffix}"): "/models/tensorflow",
        ("torch-service", f"torch-service{suffix}"): "/models/pytorch",
        # The seed Job runs the CPU images everywhere.
        ("twinserve-seed", "tf-service"): "/models/tensorflow",
        ("twinserve-seed", "torch-service"): "/models/pytorch",
    }
    seed = specs["twinserve-seed"]
    assert [c["args"] for c in seed["containers"]] == [["seed"], ["seed"]]


@pytest.mark.parametrize("name", WORKLOADS)
def test_token_and_tls_come_from_secrets(name: str) -> None:
    specs = pod_specs(name)
    secrets = {
        workload: {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        for workload, spec in specs.items()
    }
    gateway_env = env(specs["gateway"]["containers"][0])
    assert gateway_env["TWINSERVE_GATEWAY_AUTH_TOKENS_FILE"] == "/etc/twinserve/auth/token"
    infer_file = gateway_env["TWINSERVE_GATEWAY_INFER_AUTH_TOKENS_FILE"]
    assert infer_file == "/etc/twinserve/auth/infer-token"
    assert "twinserve-auth" in secrets["gateway"]
    tls = name == "tls"
    for workload in ("gateway", "tf-service", "torch-service"):
        assert ("twinserve-tls" in secrets[workload]) is tls, workload
    if tls:
        assert gateway_env["TWINSERVE_GATEWAY_UPSTREAM_TLS_CA_FILE"]
        for backend in ("tf-service", "torch-service"):
            assert env(specs[backend]["containers"][0])["TWINSERVE_TLS_CLIENT_CA_FILE"]
    # No secret material in the manifests themselves.
    assert not of_kind(name, "Secret")


def test_the_loadtest_job_targets_the_gateway_with_an_infer_token() -> None:
    (job,) = of_kind("loadtest", "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("twinserve/loadtest:")
    assert "gateway:8001" in container["args"]
    (token,) = [e for e in container["env"] if e["name"] == "TWINSERVE_TOKEN"]
    # Inference needs no more: the admin token stays with whoever trains and loads models.
    assert token["valueFrom"]["secretKeyRef"] == {"name": "twinserve-auth", "key": "infer-token"}


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_server_exposes_metrics_to_monitoring_only(name: str) -> None:
    for workload, deployment in of_kind(name, "Deployment").items():
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == "8002", workload
        for container in template["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["metrics"] == 8002, workload
            assert "8002" in [v for k, v in env(container).items() if k.endswith("METRICS_PORT")]
    for workload, service in of_kind(name, "Service").items():
        assert "metrics" in [p["name"] for p in service["spec"]["ports"]], workload
    (policy,) = [
        p
        for p in of_kind(name, "NetworkPolicy").values()
        if p["metadata"]["name"].startswith("metrics")
    ]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8002}]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
