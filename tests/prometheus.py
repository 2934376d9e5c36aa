"""deploy/prometheus as a Prometheus on this machine runs it: the configuration with
Kubernetes' discovery replaced by a static target that carries the labels discovery gives
a pod of deploy/deployment.yaml, so the job's own relabelling makes the labels the
autoscalers' queries select on; and the rule files it names."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
JOB = "kubernetes-pods"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NOT_INSTALLED = (
    "{} not found: `make prometheus` installs Debian's prometheus package "
    "(tests/tools/install_prometheus.sh)"
)


def manifest(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return doc


def rule_files() -> list[Path]:
    """The rule files the configuration loads (paths in it are relative to it)."""
    config = yaml.safe_load(CONFIG.read_text())
    return [(CONFIG.parent / name).resolve() for name in config["rule_files"]]


def pod_name() -> str:
    """A name as the Deployment's ReplicaSet gives its pods: <deployment>-<hash>-<suffix>."""
    return f"{manifest('deployment.yaml')['metadata']['name']}-7d4b9c8f6d-x2k4q"


def _label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def discovered_labels(port: int) -> dict[str, str]:
    """What Kubernetes' pod discovery labels a running pod of the Deployment with, its
    metrics served on `port` (the annotation names the port the server listens on)."""
    deployment = manifest("deployment.yaml")
    template = deployment["spec"]["template"]["metadata"]
    meta = "__meta_kubernetes_pod_"
    labels = {f"{meta}label_{_label_name(k)}": v for k, v in template["labels"].items()}
    labels |= {f"{meta}annotation_{_label_name(k)}": v for k, v in template["annotations"].items()}
    labels[f"{meta}annotation_prometheus_io_port"] = str(port)
    labels |= {
        "__meta_kubernetes_namespace": deployment["metadata"].get("namespace", "default"),
        f"{meta}name": pod_name(),
        f"{meta}phase": "Running",
    }
    return labels


def local_config(target: str, interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml scraping `target` (host:port) as a pod of the
    Deployment, every `interval`."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    times = {"scrape_interval": interval, "scrape_timeout": interval}
    config["global"].update(times, evaluation_interval=interval)
    config["rule_files"] = [str(path) for path in rule_files()]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == JOB)
    del job["kubernetes_sd_configs"]
    host, port = target.rsplit(":", 1)
    group = {"targets": [host], "labels": discovered_labels(int(port))}
    job.update(times, static_configs=[group])
    return config
