"""infra/k8s: every manifest is a valid Kubernetes 1.30 object under kubernetes-validate's strict schemas
(which catch what is broken), the rendered kustomizations are too (with kubectl, skipped without), and
what the manifests promise holds against the service itself: its settings accept the configuration, the
probes answer on its port, the pods run as the image's user on a read-only root."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv
from starlette.testclient import TestClient

from edge_container.app import create_app
from edge_container.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
KUBERNETES = "1.30.0"  # the oldest release these manifests target (the namespace's enforce-version too)
KUSTOMIZATIONS = ("base", "overlays/edge-node", "overlays/deployment")
WORKLOADS = {"overlays/edge-node": ("DaemonSet", K8S / "overlays/edge-node/daemonset.yaml"),
             "overlays/deployment": ("Deployment", K8S / "overlays/deployment/deployment.yaml")}
NAMESPACE = "edge-inference"
SETTINGS_NAMES = frozenset(re.findall(r'"(EDGE_[A-Z0-9_]+)"', (REPO / "edge_container/settings.py").read_text()))
CLIENT_KEY_LINE = "fleet-client:fleet-client-key-0123456789"


def kustomization(folder: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / folder / "kustomization.yaml").read_text())


def resource_files() -> list[Path]:
    """Every file a kustomization lists as a resource: the complete objects (patches are not)."""
    files = []
    for folder in KUSTOMIZATIONS:
        for entry in kustomization(folder)["resources"]:
            path = (K8S / folder / entry).resolve()
            if path.is_file():
                files.append(path)
    return files


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def strict_errors(doc: dict[str, Any], strict: bool = True) -> list[str]:
    """Validation errors of one object; a kind without a schema is an error too, not a warning."""
    try:
        kv.validate(doc, KUBERNETES, strict=strict)
    except kv.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kv.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def workload(folder: str) -> dict[str, Any]:
    [doc] = documents(WORKLOADS[folder][1])
    return doc


def container(doc: dict[str, Any]) -> dict[str, Any]:
    [edge] = doc["spec"]["template"]["spec"]["containers"]
    return edge


def read_env_file(path: Path) -> dict[str, str]:
    """kustomize's `envs:` format: KEY=VALUE lines, # comments, blank lines."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


# --- offline schema validation -------------------------------------------------------------------------
@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_is_a_valid_kubernetes_object_under_strict_schemas(path: Path) -> None:
    for doc in documents(path):
        assert strict_errors(doc) == [], f"{path.name}: {doc['kind']}"


def test_the_kubernetes_validate_cli_passes_them_strictly_without_warnings() -> None:
    files = [str(p) for p in resource_files()]
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES, *files],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("INFO ") == len(files) and "WARN" not in proc.stdout and "ERROR" not in proc.stdout


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()
POD = "spec.template.spec"
EDGE = f"{POD}.containers.0"


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("spec.selector", _DELETE, "'selector' is a required property"),
    (f"{EDGE}.name", _DELETE, "'name' is a required property"),
    (f"{EDGE}.ports.0.containerPort", "8080", "is not of type 'integer'"),
    (f"{EDGE}.readinessProbe.httpGet.port", _DELETE, "'port' is a required property"),
    (f"{EDGE}.securityContext.readOnlyRootFilesystem", "yes", "is not of type 'boolean'"),
    (f"{POD}.volumes.0.hostPath.path", _DELETE, "'path' is a required property"),
    (f"{EDGE}.readinessprobe", {"httpGet": {"path": "/readyz", "port": "http"}}, "Additional properties"),
    (f"{POD}.securityContext.runAsNonroot", True, "Additional properties"),
], ids=["no-selector", "no-container-name", "port-as-string", "probe-without-port", "bool-as-string",
        "hostpath-without-path", "misspelt-probe", "misspelt-run-as-non-root"])
def test_the_validator_rejects_a_broken_manifest(path: str, value: Any, expected: str) -> None:
    broken = _set(workload("overlays/edge-node"), path, value)
    found = strict_errors(broken)
    assert any(expected in e for e in found), found


def test_strict_mode_is_what_catches_a_misspelt_field() -> None:
    # A misspelt field is silently ignored by the API server (the probe would simply not exist): only the
    # strict schemas, which forbid unknown properties, see it.
    broken = _set(workload("overlays/edge-node"), f"{EDGE}.livenessprobe", {"httpGet": {"path": "/healthz",
                                                                                       "port": "http"}})
    assert strict_errors(broken, strict=False) == []
    assert strict_errors(broken) != []


def test_the_cli_fails_on_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(_set(workload("overlays/deployment"), "spec.selector", _DELETE)))
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES, str(broken)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and "ERROR" in proc.stdout and "'selector' is a required property" in proc.stdout


def test_every_yaml_file_is_listed_by_a_kustomization() -> None:
    listed = set(resource_files()) | {(K8S / f / "kustomization.yaml").resolve() for f in KUSTOMIZATIONS}
    assert {p.resolve() for p in K8S.rglob("*.yaml")} == listed


# --- what the manifests promise ---------------------------------------------------------------------------
def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template less what only a DaemonSet on edge nodes has: node placement and the node's model
    folder."""
    spec = copy.deepcopy(doc["spec"]["template"])
    for key in ("nodeSelector", "tolerations"):
        spec["spec"].pop(key, None)
    spec["spec"]["volumes"] = [v for v in spec["spec"]["volumes"] if v["name"] != "models"]
    edge = spec["spec"]["containers"][0]
    edge["volumeMounts"] = [m for m in edge["volumeMounts"] if m["name"] != "models"]
    return spec


def test_the_daemonset_and_the_deployment_run_the_same_pod() -> None:
    assert _comparable(workload("overlays/edge-node")) == _comparable(workload("overlays/deployment"))


def test_the_daemonset_runs_on_labelled_edge_nodes_with_their_model_folder_read_only() -> None:
    pod = workload("overlays/edge-node")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/edge": ""}
    assert {t["key"] for t in pod["tolerations"]} == {"node-role.kubernetes.io/edge"}
    [models] = [v for v in pod["volumes"] if v["name"] == "models"]
    assert models["hostPath"]["type"] == "Directory"
    [mount] = [m for m in container(workload("overlays/edge-node"))["volumeMounts"] if m["name"] == "models"]
    env = {e["name"]: e.get("value") for e in container(workload("overlays/edge-node"))["env"]}
    assert mount == {"name": "models", "mountPath": env["EDGE_MODEL_DIR"], "readOnly": True}


@pytest.mark.parametrize("folder", WORKLOADS)
def test_the_pod_is_non_root_read_only_without_privileges_and_bounded(folder: str) -> None:
    doc = workload(folder)
    pod, edge = doc["spec"]["template"]["spec"], container(doc)
    image_user = re.search(r"^USER (\d+)$", (REPO / "edge_container/Dockerfile").read_text(), re.MULTILINE)
    assert image_user and pod["securityContext"]["runAsUser"] == int(image_user[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert edge["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                       "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(edge["resources"][kind])
    # The only writable places are emptyDirs (size-limited); everything else is mounted read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in edge["volumeMounts"]:
        if not mount.get("readOnly"):
            assert "sizeLimit" in volumes[mount["name"]]["emptyDir"], mount


@pytest.mark.parametrize("folder", WORKLOADS)
def test_secrets_come_from_the_edge_secrets_secret(folder: str) -> None:
    doc = workload(folder)
    edge = container(doc)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in edge["env"] if "valueFrom" in e}
    assert refs["EDGE_CLOUD_API_KEY"]["name"] == "edge-secrets" and refs["EDGE_CLOUD_API_KEY"]["key"] == "cloud-api-key"
    assert {r["name"] for r in refs.values()} == {"edge-secrets"}
    assert "EDGE_CLIENT_KEYS" not in {e["name"] for e in edge["env"]}  # keys as a file, not in the environment
    env = {e["name"]: e.get("value") for e in edge["env"]}
    [secrets] = [v for v in doc["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"]
    [mount] = [m for m in edge["volumeMounts"] if m["name"] == "secrets"]
    assert secrets["secret"]["secretName"] == "edge-secrets" and mount["readOnly"] is True
    [item] = secrets["secret"]["items"]
    assert env["EDGE_CLIENT_KEYS_FILE"] == f"{mount['mountPath']}/{item['path']}"


@pytest.mark.parametrize("folder", WORKLOADS)
def test_settings_accept_the_configuration_and_listen_where_the_manifests_say(folder: str, tmp_path: Path) -> None:
    edge = container(workload(folder))
    config = read_env_file(K8S / "base" / "edge.env")
    literal = {e["name"]: e["value"] for e in edge["env"] if "value" in e}
    assert set(config) | set(literal) | {e["name"] for e in edge["env"]} <= SETTINGS_NAMES
    keys = tmp_path / "client-keys"
    keys.write_text(CLIENT_KEY_LINE + "\n")
    environ = {**config, **literal, "EDGE_CLIENT_KEYS_FILE": str(keys), "EDGE_CLOUD_API_KEY": "c" * 40,
               "EDGE_CLOUD_URL": "https://abcdef1234.execute-api.eu-west-1.amazonaws.com/dev"}
    settings = Settings.from_env(environ)
    [port] = edge["ports"]
    assert settings.port == port["containerPort"] and settings.host == "0.0.0.0"
    assert [k.client_id for k in settings.client_keys] == ["fleet-client"]
    annotations = workload(folder)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(settings.port)
    service = documents(K8S / "base" / "service.yaml")[0]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"] == workload(folder)["spec"]["selector"]["matchLabels"]


def test_no_service_link_variable_could_be_read_as_a_setting() -> None:
    # With service links a Service named S puts S_PORT, S_SERVICE_HOST, ... into pods: a Service named
    # "edge" would set EDGE_PORT=tcp://..., one of the service's own settings.
    service = documents(K8S / "base" / "service.yaml")[0]["metadata"]["name"]
    prefix = service.upper().replace("-", "_") + "_"
    assert not any(name.startswith(prefix) for name in SETTINGS_NAMES)
    assert not any(name.startswith("EDGE_PORT") for name in SETTINGS_NAMES - {"EDGE_PORT"})


def test_the_probes_and_scrape_path_answer_on_a_ready_service(tiny_artifact: Path) -> None:
    edge = container(workload("overlays/edge-node"))
    annotations = workload("overlays/edge-node")["spec"]["template"]["metadata"]["annotations"]
    probes = {name: edge[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["path"] for p in probes.values()} == {"/healthz", "/readyz"}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert {p["port"] for p in probes.values()} == {edge["ports"][0]["name"]}
    with TestClient(create_app(Settings(model_dir=tiny_artifact, reload_poll_s=0.0))) as client:
        for probe in probes.values():
            assert client.get(probe["path"]).status_code == 200, probe
        assert client.get("/readyz").json()["status"] == "ready"
        metrics = client.get(annotations["prometheus.io/path"])
        assert metrics.status_code == 200 and "edge_model_info" in metrics.text


# --- rendered with kustomize (kubectl) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not on PATH: the kustomizations are checked file by file only")
    return path


def render(kubectl: str, folder: str) -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl, "kustomize", str(K8S / folder)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_the_rendered_kustomization_is_valid_and_in_one_namespace(kubectl: str, folder: str) -> None:
    docs = render(kubectl, folder)
    for doc in docs:
        assert strict_errors(doc) == [], doc["kind"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "edge-cloud-inference", doc["kind"]
    kinds = sorted(d["kind"] for d in docs)
    expected = {"base": [], "overlays/edge-node": ["DaemonSet"], "overlays/deployment": ["Deployment"]}[folder]
    assert kinds == sorted(["ConfigMap", "Namespace", "Service", "ServiceAccount", *expected])


@pytest.mark.parametrize("folder", WORKLOADS)
def test_the_rendered_workload_uses_the_generated_config_and_the_ecr_image(kubectl: str, folder: str) -> None:
    docs = {d["kind"]: d for d in render(kubectl, folder)}
    kind = WORKLOADS[folder][0]
    edge = container(docs[kind])
    config_map = docs["ConfigMap"]["metadata"]["name"]
    assert re.fullmatch(r"edge-config-[a-z0-9]{10}", config_map)  # hashed: a config change rolls the pods
    assert edge["envFrom"] == [{"configMapRef": {"name": config_map}}]
    [image] = kustomization(folder)["images"]
    assert edge["image"] == f"{image['newName']}:{image['newTag']}"
    assert re.match(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/", edge["image"])
    labels = docs["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    if kind == "DaemonSet":
        assert docs["Service"]["spec"]["internalTrafficPolicy"] == "Local"
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged"  # hostPath: see the overlay
    else:
        assert "internalTrafficPolicy" not in docs["Service"]["spec"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
