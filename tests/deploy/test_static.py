"""Static checks of everything under deploy/: no Docker engine or cluster needed.

hadolint on every Dockerfile, `docker compose config` on the Compose file, and every
kustomization rendered by `kubectl kustomize` and validated by `kubernetes-validate --strict`
against Kubernetes 1.32 (a resource without a schema fails), then assertions on what renders.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import pytest

from tests.deploy.tools import (
    COMPOSE_FILE,
    DOCKERFILES,
    KUSTOMIZATIONS,
    load_all,
    run,
    tool,
)

KUBERNETES_VERSION = "1.32.0"
IMAGES = {"tf-service", "torch-service", "gateway", "loadtest"}
WORKLOADS = ("cpu", "gpu", "tls")


@cache
def rendered(name: str) -> str:
    return run(["kubectl", "kustomize", str(KUSTOMIZATIONS[name])]).stdout


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
        assert "nvidia/cuda:" in text
        assert "tensorflow[and-cuda]" in text or "whl/cu" in text
    else:
        assert "ARG BASE_IMAGE=python:3.11-slim" in text


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


# --- Kubernetes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
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


def test_gpu_limits_only_in_the_gpu_overlay() -> None:
    for name in ("cpu", "tls", "loadtest"):
        assert "nvidia.com/gpu" not in rendered(name), name
    gpu = of_kind("gpu", "Deployment")
    for service in ("tf-service", "torch-service"):
        spec = gpu[service]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"].startswith(f"twinserve/{service}-gpu:")
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
        assert spec["nodeSelector"]
    (gateway,) = gpu["gateway"]["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in gateway["resources"]["limits"]
    (torch,) = gpu["torch-service"]["spec"]["template"]["spec"]["containers"]
    assert env(torch)["TWINSERVE_DEVICE"] == "cuda"
    for container in of_kind("cpu", "Deployment")["tf-service"]["spec"]["template"]["spec"][
        "containers"
    ]:
        assert "-gpu" not in container["image"]


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
    suffix = "-gpu" if name == "gpu" else ""
    assert repositories == {
        ("tf-service", f"tf-service{suffix}"): "/models/tensorflow",
        ("torch-service", f"torch-service{suffix}"): "/models/pytorch",
        ("twinserve-seed", f"tf-service{suffix}"): "/models/tensorflow",
        ("twinserve-seed", f"torch-service{suffix}"): "/models/pytorch",
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
