"""A real Prometheus scraping a real server under load over HTTP and gRPC.

Prometheus (Debian's binary) runs on loopback with deploy/prometheus's configuration, its
Kubernetes discovery replaced by a static target carrying the labels pod discovery would
give a pod of deploy/deployment.yaml, and with its rule files. Every query the deployment and
the dashboard rely on must return series for the model under load: the HPA's metric
through prometheus-adapter's rule, KEDA's Prometheus triggers, the recording rules and
each dashboard panel (a query that returns nothing is a dead panel or a stalled
autoscaler). The queries are read from deploy/ at test time, so they are the shipped ones.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests import dashboard as dash
from tests import prometheus as prom
from tests.integration.conftest import (
    HOST,
    PROTOCOLS,
    ServerProcess,
    inputs_of,
    make_client,
    running_server,
)
from tests.integration.test_drift import FEATURES, reference_rows, write_profile
from tests.integration.test_pipeline import add_model

pytestmark = pytest.mark.skipif(
    prom.PROMETHEUS is None, reason=prom.NOT_INSTALLED.format("prometheus")
)

MODEL = "watched"
POD = prom.pod_name()
ROWS = 8  # per request
PACE_S = 0.005  # between one caller's requests: steady load, not saturation
# Grafana's $__rate_interval is at least four scrape intervals; 10 s covers a slow scrape.
RATE_INTERVAL = "10s"
READY_TIMEOUT_S = 30.0
DATA_WAIT_S = 45.0  # every wait for data ends this long after Prometheus is ready
HTTP_TIMEOUT_S = 10.0
T = TypeVar("T")


@dataclass
class Load:
    """One closed-loop caller per protocol, paced, until stopped."""

    server: ServerProcess
    stop_event: threading.Event = field(default_factory=threading.Event)
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS, 0))
    errors: list[BaseException] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for protocol in PROTOCOLS:
            thread = threading.Thread(target=self.call, args=(protocol,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def call(self, protocol: str) -> None:
        client = make_client(protocol, self.server)
        # Feature 2 moved by one standard deviation: the drift monitor goes into alert.
        x = reference_rows(ROWS * 64, seed=7)
        x[:, 2] += 1.0
        try:
            while not self.stop_event.is_set():
                start = (self.sent[protocol] % 64) * ROWS
                client.infer(MODEL, inputs_of(protocol, {"INPUT0": x[start : start + ROWS]}))
                self.sent[protocol] += 1
                self.stop_event.wait(PACE_S)
        except BaseException as exc:  # reported when the load stops
            self.errors.append(exc)
        finally:
            client.close()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not self.errors, self.errors
        assert all(self.sent.values()), self.sent


@dataclass
class Prometheus:
    """The Prometheus process and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    deadline: float = 0.0

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
                doc = json.load(response)
        except urllib.error.HTTPError as exc:  # a bad query: Prometheus says why
            pytest.fail(f"GET {path} {params}: {exc.code} {exc.read().decode()}")
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def until(self, read: Callable[[], T], done: Callable[[T], bool]) -> T:
        """Read until `done` or the shared deadline; the last reading either way."""
        while True:
            value = read()
            if done(value) or time.monotonic() > self.deadline:
                return value
            time.sleep(0.25)

    def ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def free_port() -> int:
    """A port free now (Prometheus cannot listen on port 0 and report the port it got)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_prometheus(directory: Path, target: str) -> Prometheus:
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(prom.local_config(target)))
    assert prom.PROMETHEUS is not None
    for attempt in range(3):  # the port can be taken between the pick and the bind
        port = free_port()
        log = directory / f"prometheus-{attempt}.log"
        command = [
            prom.PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / f'data-{attempt}'}",
            f"--web.listen-address={HOST}:{port}",
        ]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
            )
        server = Prometheus(f"http://{HOST}:{port}", process, log)
        if server.ready():
            return server
        server.stop()
        if "address already in use" not in server.log_tail():
            break
    raise RuntimeError(f"Prometheus did not become ready:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("prometheus-repo")
    write_profile(add_model(root, MODEL, [FEATURES], ""))
    flags = ("--drift-window-samples", "400", "--drift-window-seconds", "5")
    with running_server(root, *flags) as server:
        yield server


@pytest.fixture(scope="module")
def load(served: ServerProcess) -> Iterator[Load]:
    running = Load(served)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def prometheus(
    load: Load, served: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Prometheus scraping the loaded server every second, once the first scrape is in."""
    server = start_prometheus(tmp_path_factory.mktemp("prometheus"), served.metrics_url)
    try:
        server.deadline = time.monotonic() + DATA_WAIT_S
        up = server.until(lambda: server.query(f'up{{job="{prom.JOB}"}} == 1'), bool)
        if not up:
            targets = server.get("/api/v1/targets")["activeTargets"]
            pytest.fail(f"no successful scrape: {targets}\n{server.log_tail()}")
        yield server
    finally:
        server.stop()


def finite(sample: dict[str, Any]) -> bool:
    return math.isfinite(float(sample["value"][1]))


def has_model_series(result: list[dict[str, Any]]) -> bool:
    """A finite series of the model under load (or one summed over models)."""
    return any(s["metric"].get("model", MODEL) == MODEL and finite(s) for s in result)


def wait_for_series(prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    result = prometheus.until(lambda: prometheus.query(expr), has_model_series)
    assert has_model_series(result), f"no series for {MODEL!r} from:\n{expr}\ngot: {result}"
    return result


# -- the scrape


def test_the_job_labels_series_as_the_autoscalers_select_them(
    prometheus: Prometheus, served: ServerProcess
) -> None:
    labels = prometheus.query(f'up{{job="{prom.JOB}"}}')[0]["metric"]
    assert labels["instance"] == served.metrics_url  # the port came from the annotation
    assert labels["namespace"] == namespace()
    assert labels["pod"] == POD
    pod_labels = prom.manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    for key, value in pod_labels.items():
        assert labels[re.sub(r"[^a-zA-Z0-9_]", "_", key)] == value
    assert not [name for name in labels if name.startswith("__") and name != "__name__"]


# -- the autoscalers' queries in deploy/


def adapter_query(metric: dict[str, Any], kind: str) -> str:
    """The query prometheus-adapter runs for one HPA metric, by the adapter rule serving it."""
    config = yaml.safe_load(prom.manifest("prometheus-adapter-rules.yaml")["data"]["config.yaml"])
    section = "rules" if kind == "Pods" else "externalRules"
    name = metric["metric"]["name"]
    for rule in config.get(section, []):
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        if exposed_name(series.group(1), rule.get("name", {})) == name:
            return render_adapter_query(rule, series.group(1), metric, kind)
    pytest.fail(f"no prometheus-adapter {section} entry serves the HPA's metric {name!r}")


def render_adapter_query(
    rule: dict[str, Any], series: str, metric: dict[str, Any], kind: str
) -> str:
    """metricsQuery as the adapter fills it in for the HPA: this namespace, and for a Pods
    metric the pod, grouped by pod."""
    overrides = rule.get("resources", {}).get("overrides", {})
    label = {v["resource"]: k for k, v in overrides.items()}
    matchers = [f'{label.get("namespace", "namespace")}="{namespace()}"']
    selector = metric["metric"].get("selector", {}).get("matchLabels", {})
    matchers += [f'{k}="{v}"' for k, v in selector.items()]
    group_by = ""
    if kind == "Pods":
        group_by = label.get("pod", "pod")
        matchers.append(f'{group_by}=~"{POD}"')
    query: str = rule["metricsQuery"]
    for key, value in (
        ("Series", series),
        ("LabelMatchers", ",".join(matchers)),
        ("GroupBy", group_by),
    ):
        query = query.replace(f"<<.{key}>>", value)
    return query


def exposed_name(series: str, naming: dict[str, str]) -> str:
    """The name an adapter rule serves a series as: `name.as`, with the groups of
    `name.matches` put in; by default the series' own name."""
    match = re.search(naming.get("matches") or "^.*$", series)
    if match is None:
        return ""
    template = naming.get("as") or ("$1" if match.groups() else "$0")
    return re.sub(r"\$\{?(\d+)\}?", lambda m: match.group(int(m.group(1))) or "", template)


def namespace() -> str:
    return prom.discovered_labels(0)["__meta_kubernetes_namespace"]


def hpa_metrics() -> list[tuple[str, dict[str, Any]]]:
    """The HPA's metrics that prometheus-adapter serves (Pods and External)."""
    metrics = prom.manifest("hpa.yaml")["spec"]["metrics"]
    found = [
        (m["type"], m[m["type"].lower()]) for m in metrics if m["type"] in ("Pods", "External")
    ]
    assert found, "the HPA scales on no metric from Prometheus"
    return found


def test_the_hpa_metric_has_a_value_for_the_pod(prometheus: Prometheus) -> None:
    for kind, metric in hpa_metrics():
        query = adapter_query(metric, kind)
        result = wait_for_series(prometheus, query)
        if kind == "Pods":  # the HPA averages the per-pod values it is given
            assert any(s["metric"].get("pod") == POD for s in result), (query, result)


def test_kedas_prometheus_triggers_return_one_value(prometheus: Prometheus) -> None:
    triggers = prom.manifest("keda-scaledobject.yaml")["spec"]["triggers"]
    queries = [t["metadata"]["query"] for t in triggers if t["type"] == "prometheus"]
    assert queries, "the ScaledObject has no Prometheus trigger"
    for query in queries:
        result = wait_for_series(prometheus, query)
        # KEDA's Prometheus scaler refuses a result of more than one element.
        assert len(result) == 1, (query, result)


# -- deploy/prometheus: recording and alerting rules


def rules(kind: str) -> list[dict[str, Any]]:
    return [
        rule
        for path in prom.rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


@pytest.mark.parametrize("record", [r["record"] for r in rules("record")])
def test_recording_rule_has_series(prometheus: Prometheus, record: str) -> None:
    wait_for_series(prometheus, record)


def test_every_rule_evaluates_without_error(prometheus: Prometheus) -> None:
    def read() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    loaded = prometheus.until(read, lambda rs: all(r["health"] != "unknown" for r in rs))
    expected = {r.get("record") or r["alert"] for r in rules("record") + rules("alert")}
    assert {r["name"] for r in loaded} == expected
    broken = [(r["name"], r["health"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not broken


def test_the_drift_alert_fires_on_shifted_inputs(prometheus: Prometheus) -> None:
    wait_for_series(
        prometheus,
        f'ALERTS{{alertname="ConveyorDriftAlert", alertstate="firing", model="{MODEL}"}}',
    )


# -- deploy/grafana: every panel's query


DASHBOARD = dash.load()


def test_the_model_variable_lists_the_model(prometheus: Prometheus) -> None:
    variable = next(v for v in DASHBOARD["templating"]["list"] if v["name"] == "model")
    found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"])
    assert found, variable["query"]
    metric, label = found.groups()
    values = prometheus.until(
        lambda: prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": metric}),
        lambda vs: MODEL in vs,
    )
    assert MODEL in values


@pytest.mark.parametrize(
    "query", [q for q in dash.queries(DASHBOARD) if not q.gpu], ids=lambda q: q.name
)
def test_dashboard_query_has_series(prometheus: Prometheus, query: dash.Query) -> None:
    wait_for_series(prometheus, dash.render(query.expr, MODEL, RATE_INTERVAL))


def test_gpu_panels_follow_the_gpus(prometheus: Prometheus) -> None:
    """The GPU row's queries run; they show series exactly when the server reports a GPU."""
    families = "|".join(sorted({m for q in dash.queries(DASHBOARD) if q.gpu for m in q.metrics()}))
    gpus = bool(prometheus.query(f'{{__name__=~"{families}"}}'))
    for query in (q for q in dash.queries(DASHBOARD) if q.gpu):
        expr = dash.render(query.expr, MODEL, RATE_INTERVAL)
        if gpus:
            assert prometheus.until(functools.partial(prometheus.query, expr), bool), query.name
        else:
            assert prometheus.query(expr) == [], query.name
