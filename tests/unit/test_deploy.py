"""The Kubernetes manifests in deploy/: valid against Kubernetes' own schemas, and in step
with the server they deploy (its flags, probe routes and metric names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from runtime.cli import build_parser
from runtime.monitoring.metrics import SIGNALS
from runtime.protocol.http.app import create_app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33.0"
CORE = ["deployment.yaml", "service.yaml", "hpa.yaml", "prometheus-adapter-rules.yaml"]

# KEDA's ScaledObject is a CRD that Kubernetes' schemas do not hold: this is the part of
# its published spec the manifest uses (field names and types from KEDA's reference).
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"enum": ["prometheus", "metrics-api"]},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return doc


@pytest.mark.parametrize("name", CORE)
def test_manifest_is_valid_kubernetes(name: str) -> None:
    kubernetes_validate.validate(load(name), K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught() -> None:
    doc = load("deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_keda_scaled_object_matches_its_spec() -> None:
    doc = load("keda-scaledobject.yaml")
    jsonschema.validate(doc, SCALED_OBJECT)
    triggers = {t["type"]: t["metadata"] for t in doc["spec"]["triggers"]}
    assert triggers["metrics-api"]["url"].endswith("/v2/autoscale")


def test_container_args_are_flags_the_server_accepts() -> None:
    container = load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    assert args.model_repository == [Path("/models")]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["http"], ports["grpc"], ports["metrics"]) == (
        args.http_port,
        args.grpc_port,
        args.metrics_port,
    )


def test_probes_hit_routes_the_server_has() -> None:
    container = load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    app = create_app(None)  # type: ignore[arg-type]  # routes only; no request is served
    paths = {getattr(r, "path", "") for r in app.routes}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths


def test_scaling_metric_is_one_the_server_exports() -> None:
    exported = {name for name, _ in SIGNALS}
    metric = load("hpa.yaml")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in exported
    rules = yaml.safe_load(load("prometheus-adapter-rules.yaml")["data"]["config.yaml"])
    assert rules["rules"][0]["name"]["as"] == metric
    keda = load("keda-scaledobject.yaml")["spec"]["triggers"][0]["metadata"]["query"]
    assert metric in keda
