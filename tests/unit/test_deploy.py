"""The Kubernetes manifests in deploy/: valid against Kubernetes' and KEDA's published schemas,
within Pod Security "restricted", applicable as a whole with kustomize, and in step with the
server they deploy (its image, user, flags, probe routes, metrics, labels and capacity)."""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from runtime.cli import build_parser
from runtime.dataplane import DataPlane
from runtime.monitoring.metrics import Metrics
from runtime.protocol.http.app import create_app
from runtime.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DATA = ROOT / "tests" / "data"
K8S_VERSION = "1.33.0"
KUSTOMIZATION = "kustomization.yaml"
MANIFESTS = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != KUSTOMIZATION)
# What `kubectl apply -k deploy/` leaves out, each for a reason its kustomization states.
ALTERNATIVES = {"keda-scaledobject.yaml", "prometheus-adapter-rules.yaml"}
KEDA_CRD = DATA / "keda" / "keda.sh_scaledobjects.yaml"
# The scrape job the README documents, which deploy/prometheus ships.
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
NAMESPACE = "default"  # the one keda-scaledobject.yaml names
# Within this share of BENCHMARKS.md's measured capacity, a manifest's figure is current.
CAPACITY_TOLERANCE = 0.1
HEADROOM = 0.7  # run replicas at 70% of what they sustain (README, Autoscaling signals)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return doc


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in MANIFESTS:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            yield name, doc


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every workload in deploy/: metadata and spec."""
    found = []
    for name, doc in documents():
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if doc["kind"] == "Pod":
            found.append((name, {"metadata": doc["metadata"], "spec": spec}))
        elif "template" in spec:
            found.append((name, spec["template"]))
    return found


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("initContainers", "containers", "ephemeralContainers")
    return [c for key in keys for c in pod.get(key, [])]


def deployment_pod() -> dict[str, Any]:
    template: dict[str, Any] = load("deployment.yaml")["spec"]["template"]
    return template


def server_container() -> dict[str, Any]:
    found: dict[str, Any] = deployment_pod()["spec"]["containers"][0]
    return found


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


# --- schemas ------------------------------------------------------------------------------


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever Kubernetes would refuse them.

    A structural schema prunes unknown fields, and `kubectl apply` (field validation
    Strict) rejects them; JSON Schema lets them through unless told.
    """
    schema = dict(schema)
    open_ended = "additionalProperties" in schema or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "properties" in schema:
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if not open_ended:
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(s) for s in schema[key]]
    return schema


def keda_validator() -> jsonschema.protocols.Validator:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "ScaledObject"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    validator: jsonschema.protocols.Validator = jsonschema.Draft4Validator(schema)
    return validator


def validate_scaled_object(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    assert doc["kind"] == "ScaledObject"
    keda_validator().validate(doc)
    # The CRD's one x-kubernetes-validations rule (CEL, evaluated by the API server).
    spec = doc["spec"]
    if "minReplicaCount" in spec and spec["minReplicaCount"] > spec.get("maxReplicaCount", 100):
        raise jsonschema.ValidationError("minReplicaCount must be <= maxReplicaCount")


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid(name: str) -> None:
    for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
        if doc["apiVersion"].startswith("keda.sh/"):
            validate_scaled_object(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught() -> None:
    doc = load("deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


KEDA_MISTAKES: dict[str, Callable[[dict[str, Any]], object]] = {
    "misspelt field": lambda d: d["spec"].update(pollingIntreval=15),
    "misspelt trigger field": lambda d: d["spec"]["triggers"][0].update(metricTyp="Value"),
    "empty target name": lambda d: d["spec"]["scaleTargetRef"].update(name=""),
    "trigger without type": lambda d: d["spec"]["triggers"][0].pop("type"),
    "numeric metadata": lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=5),
    "no triggers": lambda d: d["spec"].update(triggers=[]),
    "negative minimum": lambda d: d["spec"].update(minReplicaCount=-1),
    "minimum over maximum": lambda d: d["spec"].update(minReplicaCount=30),
    "unknown fallback behavior": lambda d: d["spec"].update(
        fallback={"failureThreshold": 3, "replicas": 2, "behavior": "sometimes"}
    ),
}


@pytest.mark.parametrize("mistake", KEDA_MISTAKES)
def test_keda_schema_catches_a_broken_scaled_object(mistake: str) -> None:
    doc = load("keda-scaledobject.yaml")
    KEDA_MISTAKES[mistake](doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_scaled_object(doc)


# Metadata each scaler refuses to start without, and the keys it parses as numbers
# (KEDA v2.20.2, pkg/scalers/prometheus_scaler.go and metrics_api_scaler.go).
SCALER_KEYS = {
    "prometheus": ({"serverAddress", "query", "threshold"}, {"threshold", "activationThreshold"}),
    "metrics-api": ({"url", "valueLocation"}, {"targetValue", "activationTargetValue"}),
}


def test_keda_triggers_carry_what_their_scalers_need() -> None:
    triggers = load("keda-scaledobject.yaml")["spec"]["triggers"]
    assert {t["type"] for t in triggers} == set(SCALER_KEYS)
    for trigger in triggers:
        required, numeric = SCALER_KEYS[trigger["type"]]
        metadata = trigger["metadata"]
        assert required <= metadata.keys()
        for key in numeric & metadata.keys():
            float(metadata[key])
    api = next(t["metadata"] for t in triggers if t["type"] == "metrics-api")
    assert api["url"].endswith("/v2/autoscale")
    assert api.get("aggregationType", "average") in {"average", "sum", "max", "min"}


# --- Pod Security "restricted" --------------------------------------------------------------
# From the Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards,
# version "latest"): every Baseline control, and Restricted's on top.

ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
PROFILES = {"RuntimeDefault", "Localhost"}
APPARMOR = "container.apparmor.security.beta.kubernetes.io/"


def _host_access(spec: dict[str, Any]) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"{field} is true"
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            yield f"volume {volume['name']} is of type {sorted(kinds)}"
    for c in containers(spec):
        for port in c.get("ports", []):
            if port.get("hostPort"):
                yield f"{c['name']} uses hostPort {port['hostPort']}"
    for sysctl in spec.get("securityContext", {}).get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            yield f"sysctl {sysctl['name']} is not in the safe set"


def _profiles(where: str, context: dict[str, Any]) -> Iterator[str]:
    """Baseline's checks on one security context, the pod's or a container's."""
    if context.get("windowsOptions", {}).get("hostProcess"):
        yield f"{where}: hostProcess"
    if context.get("seccompProfile", {}).get("type") == "Unconfined":
        yield f"{where}: seccomp Unconfined"
    if context.get("appArmorProfile", {}).get("type", "RuntimeDefault") not in PROFILES:
        yield f"{where}: AppArmor {context['appArmorProfile']['type']}"
    selinux = context.get("seLinuxOptions", {})
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        yield f"{where}: SELinux options {selinux}"
    if context.get("procMount", "Default") != "Default":
        yield f"{where}: procMount {context['procMount']}"


def _privilege(c: dict[str, Any]) -> Iterator[str]:
    context = c.get("securityContext", {})
    if context.get("privileged"):
        yield f"{c['name']}: privileged"
    if context.get("allowPrivilegeEscalation") is not False:
        yield f"{c['name']}: allowPrivilegeEscalation is not false"
    capabilities = context.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        yield f"{c['name']}: capabilities do not drop ALL"
    if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
        yield f"{c['name']}: adds capabilities {capabilities['add']}"


def _identity(c: dict[str, Any], pod: dict[str, Any]) -> Iterator[str]:
    context = c.get("securityContext", {})
    if context.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
        yield f"{c['name']}: runAsNonRoot is not true"
    if context.get("runAsUser") == 0:
        yield f"{c['name']}: runAsUser 0"
    seccomp = context.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
    if seccomp not in PROFILES:
        yield f"{c['name']}: seccomp profile {seccomp}, not RuntimeDefault or Localhost"


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """What keeps a pod template out of a namespace enforcing Pod Security "restricted"."""
    spec = template["spec"]
    pod = spec.get("securityContext", {})
    found = [*_host_access(spec), *_profiles("pod", pod)]
    if pod.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    for key, value in template.get("metadata", {}).get("annotations", {}).items():
        if key.startswith(APPARMOR) and not re.fullmatch(r"runtime/default|localhost/.+", value):
            found.append(f"{key}: {value}")
    for c in containers(spec):
        found += [*_profiles(c["name"], c.get("securityContext", {})), *_privilege(c)]
        found += _identity(c, pod)
    return found


def test_every_pod_meets_pod_security_restricted() -> None:
    templates = pod_templates()
    assert "deployment.yaml" in {where for where, _ in templates}
    for where, template in templates:
        assert restricted_violations(template) == [], where


def _container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in containers(spec) if c["name"] == name)
    return found


def _main(spec: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = spec["containers"][0]["securityContext"]
    return context


def _init(spec: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = spec["initContainers"][0]["securityContext"]
    return context


POD_SECURITY_BREACHES: dict[str, Callable[[dict[str, Any]], object]] = {
    "host network": lambda s: s.update(hostNetwork=True),
    "host PID": lambda s: s.update(hostPID=True),
    "hostPath volume": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "host port": lambda s: s["containers"][0]["ports"][0].update(hostPort=8000),
    "unsafe sysctl": lambda s: s["securityContext"].update(
        sysctls=[{"name": "kernel.msgmax", "value": "1"}]
    ),
    "privileged": lambda s: _main(s).update(privileged=True),
    "init container may escalate": lambda s: _init(s).pop("allowPrivilegeEscalation"),
    "capabilities kept": lambda s: _main(s).pop("capabilities"),
    "capability added": lambda s: _init(s)["capabilities"].update(add=["SYS_ADMIN"]),
    "runs as root": lambda s: _main(s).update(runAsNonRoot=False),
    "uid 0": lambda s: _init(s).update(runAsUser=0),
    "seccomp unconfined": lambda s: _main(s).update(seccompProfile={"type": "Unconfined"}),
    "no seccomp profile": lambda s: (
        s["securityContext"].pop("seccompProfile"),
        _init(s).pop("seccompProfile"),
    ),
    "AppArmor unconfined": lambda s: _main(s).update(appArmorProfile={"type": "Unconfined"}),
    "SELinux type": lambda s: _main(s).update(seLinuxOptions={"type": "spc_t"}),
    "unmasked /proc": lambda s: _main(s).update(procMount="Unmasked"),
}


@pytest.mark.parametrize("breach", POD_SECURITY_BREACHES)
def test_restricted_check_catches_a_breach(breach: str) -> None:
    template = copy.deepcopy(deployment_pod())
    POD_SECURITY_BREACHES[breach](template["spec"])
    assert restricted_violations(template) != []


def test_root_filesystem_is_read_only_where_the_server_writes_nothing() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"NUMBA_CACHE_DIR=(\S+)", dockerfile)
    assert match is not None
    numba_cache = Path(match.group(1))
    spec = deployment_pod()["spec"]
    assert all(
        c.get("securityContext", {}).get("readOnlyRootFilesystem") is True for c in containers(spec)
    )
    scratch = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    writable = {
        Path(m["mountPath"]): m["name"]
        for m in server_container()["volumeMounts"]
        if m["name"] in scratch and not m.get("readOnly")
    }
    for path in (numba_cache, Path("/tmp"), Path("/dev/shm")):
        assert any(path.is_relative_to(mount) for mount in writable), path
    # The mount hides the kernels the image compiled at build time: an init container of
    # the same image copies them from the same path into the volume.
    (cache_mount,) = [m for m in writable if numba_cache.is_relative_to(m)]
    seeders = [
        c
        for c in spec.get("initContainers", [])
        if c["image"] == server_container()["image"]
        and writable[cache_mount] in {m["name"] for m in c.get("volumeMounts", [])}
        and any(arg.rstrip("/.") == str(cache_mount) for arg in c.get("command", []))
    ]
    assert seeders


def test_pod_runs_as_the_image_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    assert deployment_pod()["spec"]["securityContext"]["runAsUser"] == int(user.group(1))


def test_images_are_pinned_to_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = [c["image"] for _, t in pod_templates() for c in containers(t["spec"])]
    assert images
    for image in images:
        assert image == f"conveyor:{version}", image


# --- availability and storage ------------------------------------------------------------


def test_disruption_budget_covers_the_pods_and_leaves_one_serving() -> None:
    budget = load("pdb.yaml")
    assert budget["kind"] == "PodDisruptionBudget"
    assert selects(
        budget["spec"]["selector"]["matchLabels"], deployment_pod()["metadata"]["labels"]
    )
    unavailable = budget["spec"]["maxUnavailable"]
    assert isinstance(unavailable, int)
    assert unavailable >= 1  # 0 would block every node drain
    floors = [load("hpa.yaml")["spec"]["minReplicas"]]
    floors.append(load("keda-scaledobject.yaml")["spec"]["minReplicaCount"])
    assert all(floor - unavailable >= 1 for floor in floors), floors


def test_replicas_spread_over_nodes() -> None:
    template = deployment_pod()
    constraints = template["spec"].get("topologySpreadConstraints", [])
    spreading = [
        c
        for c in constraints
        if c["topologyKey"] == "kubernetes.io/hostname"
        and selects(c["labelSelector"]["matchLabels"], template["metadata"]["labels"])
    ]
    assert spreading
    assert all(c["maxSkew"] == 1 for c in spreading)


def test_autoscaler_owns_the_replica_count() -> None:
    deployment = load("deployment.yaml")
    assert "replicas" not in deployment["spec"]  # an apply would undo every scale-up
    assert load("hpa.yaml")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    keda = load("keda-scaledobject.yaml")["spec"]["scaleTargetRef"]
    assert keda["name"] == deployment["metadata"]["name"]


def test_every_claim_a_pod_mounts_is_shipped_and_multi_node() -> None:
    claims = {
        doc["metadata"]["name"]: doc
        for _, doc in documents()
        if doc["kind"] == "PersistentVolumeClaim"
    }
    mounted = [
        (volume, template)
        for _, template in pod_templates()
        for volume in template["spec"].get("volumes", [])
        if "persistentVolumeClaim" in volume
    ]
    assert mounted
    for volume, template in mounted:
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        # Replicas spread over nodes: a ReadWriteOnce volume attaches to one of them.
        assert {"ReadWriteMany", "ReadOnlyMany"} & set(claim["spec"]["accessModes"])
        mounts = [
            m
            for c in containers(template["spec"])
            for m in c.get("volumeMounts", [])
            if m["name"] == volume["name"]
        ]
        assert mounts
        assert all(m.get("readOnly") for m in mounts)


def test_kustomization_lists_every_manifest() -> None:
    text = (DEPLOY / KUSTOMIZATION).read_text()
    kustomization = yaml.safe_load(text)
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert all((DEPLOY / name).is_file() for name in listed)
    assert set(listed) == set(MANIFESTS) - ALTERNATIVES
    assert set(MANIFESTS) >= ALTERNATIVES
    assert all(name in text for name in ALTERNATIVES)  # each left out with its reason
    objects = [(d["kind"], d["metadata"]["name"]) for n, d in documents() if n in listed]
    assert len(objects) == len(set(objects))


# --- the server behind the manifests -------------------------------------------------------


def test_container_args_are_flags_the_server_accepts() -> None:
    container = server_container()
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    assert args.model_repository == [Path("/models")]
    assert "/models" in {m["mountPath"] for m in container["volumeMounts"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["http"], ports["grpc"], ports["metrics"]) == (
        args.http_port,
        args.grpc_port,
        args.metrics_port,
    )


def test_probes_hit_routes_the_server_has() -> None:
    container = server_container()
    app = create_app(DataPlane(Registry([])))  # routes only; no request is served
    paths = {getattr(r, "path", "") for r in app.routes}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths


def _services() -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == "Service"]


def _readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end > 0 else None]


def test_grpc_has_a_headless_service_for_client_side_balancing() -> None:
    labels = deployment_pod()["metadata"]["labels"]
    grpc_port = next(p for p in server_container()["ports"] if p["name"] == "grpc")
    headless = [
        s
        for s in _services()
        if s["spec"].get("clusterIP") == "None" and selects(s["spec"]["selector"], labels)
    ]
    assert headless
    service = headless[0]
    (port,) = [
        p
        for p in service["spec"]["ports"]
        if p["targetPort"] in (grpc_port["name"], grpc_port["containerPort"])
    ]
    assert port["appProtocol"] == "grpc"
    # What the README tells a gRPC client to dial is this Service.
    kubernetes = _readme_section("Kubernetes")
    assert f"dns:///{service['metadata']['name']}.{NAMESPACE}.svc" in kubernetes
    assert f":{port['port']}" in kubernetes
    assert "round_robin" in kubernetes


# --- scaling: capacity, metrics and labels --------------------------------------------------


def measured_capacity() -> dict[str, float]:
    """One replica's best requests/s per protocol in BENCHMARKS.md's HTTP vs gRPC table."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text[text.index("## HTTP vs gRPC on the MLP") :]
    section = section[: section.index("\n## ", 1)]
    best: dict[str, float] = {}
    for protocol, rate in re.findall(r"^\| (HTTP|gRPC) \| \d+ \| ([\d,]+) \|", section, re.M):
        key = protocol.lower()
        best[key] = max(best.get(key, 0.0), float(rate.replace(",", "")))
    assert set(best) == {"http", "grpc"}
    return best


def per_protocol_divisors(query: str) -> dict[str, float]:
    pattern = r'protocol="(\w+)"\}\[\w+\]\)\s*/\s*([\d.]+)'
    return {protocol: float(n) for protocol, n in re.findall(pattern, query)}


def keda_trigger(kind: str) -> dict[str, str]:
    triggers = load("keda-scaledobject.yaml")["spec"]["triggers"]
    found: dict[str, str] = next(t["metadata"] for t in triggers if t["type"] == kind)
    return found


def adapter_rule() -> dict[str, Any]:
    rules = yaml.safe_load(load("prometheus-adapter-rules.yaml")["data"]["config.yaml"])["rules"]
    (rule,) = rules
    found: dict[str, Any] = rule
    return found


def quantity(text: str) -> float:
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def near(value: float, expected: float) -> bool:
    return abs(value - expected) <= CAPACITY_TOLERANCE * expected


def test_targets_come_from_the_measured_capacity_per_protocol() -> None:
    capacity = measured_capacity()
    for query in (keda_trigger("prometheus")["query"], adapter_rule()["metricsQuery"]):
        divisors = per_protocol_divisors(query)
        assert divisors.keys() == capacity.keys(), query
        assert all(near(divisors[p], capacity[p]) for p in capacity), (divisors, capacity)
    # The load is in replicas' worth: the target per replica is the headroom.
    target = load("hpa.yaml")["spec"]["metrics"][0]["pods"]["target"]
    assert (target["type"], quantity(target["averageValue"])) == ("AverageValue", HEADROOM)
    assert float(keda_trigger("prometheus")["threshold"]) == HEADROOM
    # The direct trigger counts every request at HTTP's capacity: a lower bound.
    assert near(float(keda_trigger("metrics-api")["targetValue"]), HEADROOM * capacity["http"])


def test_hpa_metric_is_the_one_the_adapter_serves() -> None:
    metric = load("hpa.yaml")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rule = adapter_rule()
    assert rule["name"]["as"] == metric
    series = re.match(r"\w+", rule["seriesQuery"])
    assert series is not None
    assert re.fullmatch(rule["name"].get("matches", ".*"), series.group(0))
    assert rule["resources"]["overrides"].keys() == {"namespace", "pod"}


def _go_regex(pattern: object) -> re.Pattern[str]:
    text = str(pattern).lower() if isinstance(pattern, bool) else str(pattern)
    return re.compile(f"(?:{text})")


def _expand(match: re.Match[str], replacement: str) -> str:
    return re.sub(r"\$\{?(\d+)\}?", lambda g: match.group(int(g.group(1))) or "", replacement)


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep, drop, replace, labelmap); None when the target is dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        regex = _go_regex(rule.get("regex", "(.*)"))
        if action == "labelmap":
            for name, value in list(labels.items()):
                if match := regex.fullmatch(name):
                    labels[_expand(match, rule.get("replacement", "$1"))] = value
            continue
        joined = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
        match = regex.fullmatch(joined)
        if (action == "keep" and not match) or (action == "drop" and match):
            return None
        assert action in {"keep", "drop", "replace"}, action
        if action == "replace" and match:
            labels[rule["target_label"]] = _expand(match, rule.get("replacement", "$1"))
    return {k: v for k, v in labels.items() if v}


def _meta(prefix: str, values: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v for k, v in values.items()}


def scrape_targets(template: dict[str, Any], pod_name: str) -> list[dict[str, str]]:
    """The targets the documented scrape job makes of one pod: one per container port."""
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    meta = template["metadata"]
    pod = {
        "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_pod_name": pod_name,
        "__meta_kubernetes_pod_ip": "10.1.2.3",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_node_name": "node-a",
        "__metrics_path__": "/metrics",
        "__scheme__": "http",
        **_meta("__meta_kubernetes_pod_label_", meta.get("labels", {})),
        **_meta("__meta_kubernetes_pod_annotation_", meta.get("annotations", {})),
    }
    targets = []
    for c in template["spec"]["containers"]:
        for port in c.get("ports", []):
            labels = {**pod, "__address__": f"10.1.2.3:{port['containerPort']}"}
            labels["__meta_kubernetes_pod_container_port_name"] = port.get("name", "")
            target = relabel(labels, job["relabel_configs"])
            if target is None:
                continue
            # Discovery's labels go after relabelling; targets left alike are one.
            target = {"job": job["job_name"], **target}
            target = {k: v for k, v in target.items() if not k.startswith("__meta_")}
            if target not in targets:
                targets.append(target)
    return targets


def exported_series() -> list[dict[str, str]]:
    """The series one scrape of a server serving one model holds, with their labels."""
    metrics = Metrics(allow_gpu_metrics=False)
    metrics.subscriber("mlp", "1")
    text = metrics.render().decode()
    return [
        {"__name__": sample.name, **sample.labels}
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def selectors(query: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each `metric{label op "value", ...}` of a PromQL query."""
    found = []
    for metric, body in re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", query):
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body)
        assert len(matchers) == body.count('"') // 2, body
        found.append((metric, matchers))
    assert found, query
    return found


def _matches(series: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    tests: dict[str, Callable[[str, str], bool]] = {
        "=": lambda v, x: v == x,
        "!=": lambda v, x: v != x,
        "=~": lambda v, x: re.fullmatch(x, v) is not None,
        "!~": lambda v, x: re.fullmatch(x, v) is None,
    }
    return all(tests[op](series.get(label, ""), value) for label, op, value in matchers)


def test_queries_select_series_the_documented_scrape_produces() -> None:
    template = deployment_pod()
    pod_name = f"{load('deployment.yaml')['metadata']['name']}-7d9c8b6f5d-x2k4q"
    (target,) = scrape_targets(template, pod_name)
    metrics_port = next(p for p in server_container()["ports"] if p["name"] == "metrics")
    assert target["__address__"].endswith(f":{metrics_port['containerPort']}")
    assert target["__metrics_path__"] == "/metrics"
    labels = {k: v for k, v in target.items() if not k.startswith("__")}
    # honor_labels: a label the server sets itself wins over the target's.
    scraped = [{**labels, **series} for series in exported_series()]
    rule = adapter_rule()
    adapter_query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", selectors(rule["seriesQuery"])[0][0])
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{pod_name}"')
        .replace("<<.GroupBy>>", "pod")
    )
    queries = [keda_trigger("prometheus")["query"], rule["seriesQuery"], adapter_query]
    for query in queries:
        for metric, matchers in selectors(query):
            assert any(s["__name__"] == metric and _matches(s, matchers) for s in scraped), (
                f"{metric}{{{matchers}}} selects nothing the scrape produces"
            )


def test_label_check_catches_a_label_the_scrape_does_not_make() -> None:
    scraped = [{"__name__": "up", "namespace": NAMESPACE, "pod": "conveyor-a-b"}]
    ((metric, matchers),) = selectors('up{service="conveyor"}')
    assert not any(s["__name__"] == metric and _matches(s, matchers) for s in scraped)
