"""Prometheus metrics: Triton's `nv_inference_*` families and Conveyor's own `conveyor_*`.

Triton's families are rendered at scrape time from the statistics the data plane keeps
anyway, so they cost the hot path nothing and always agree with the statistics
extension. They are written by hand because prometheus_client names every counter
`<name>_total`, and Triton's dashboards expect the bare names; so are Triton's per-GPU
`nv_gpu_*` families, read from NVML at scrape time, and its host `nv_cpu_*` families, read
from /proc. Conveyor's histograms use prometheus_client, with each model's label children
made once at load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from runtime.events import BatchDone, Subscriber
from runtime.monitoring import drift
from runtime.monitoring.drift import DriftMonitor
from runtime.monitoring.gpu import GpuReader, GpuSample
from runtime.monitoring.host import HostReader, HostSample
from runtime.monitoring.stats import FAILURE_REASONS, Duration, failure_reason
from runtime.monitoring.view import ModelView

# The versions being served now, asked afresh at every scrape.
Models = Callable[[], Iterable[ModelView]]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROTOCOLS = ("http", "grpc", "")
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# name, help, and how to read it off a version's statistics
_TRITON_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     "success.count"),
    ("nv_inference_count", "Number of inferences performed (a batch of n counts n)",
     "inference_count"),
    ("nv_inference_exec_count", "Number of model executions performed (a batch counts once)",
     "execution_count"),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     "request_us"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     "queue.ns"),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds", "compute_input.ns"),
    ("nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds", "compute_infer.ns"),
    ("nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds", "compute_output.ns"),
)  # fmt: skip


# Triton's per-GPU families (core's metrics.cc): name, type, help, GpuSample field. Label
# gpu_uuid only, which is what perf_analyzer's --collect-metrics parser expects.
_TRITON_GPU: tuple[tuple[str, str, str, str], ...] = (
    ("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)", "utilization"),
    ("nv_gpu_memory_total_bytes", "gauge", "GPU total memory, in bytes", "memory_total_bytes"),
    ("nv_gpu_memory_used_bytes", "gauge", "GPU used memory, in bytes", "memory_used_bytes"),
    ("nv_gpu_power_usage", "gauge", "GPU power usage in watts", "power_w"),
    ("nv_gpu_power_limit", "gauge", "GPU power management limit in watts", "power_limit_w"),
    ("nv_energy_consumption", "counter",
     "GPU energy consumption in joules since the server started", "energy_j"),
)  # fmt: skip


# Triton's host families (core's metrics.cc): name, help, HostSample field; gauges, no labels.
_TRITON_CPU: tuple[tuple[str, str, str], ...] = (
    ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", "utilization"),
    ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", "memory_total_bytes"),
    ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", "memory_used_bytes"),
)


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _read(model: ModelView, path: str) -> int:
    s = model.statistics
    if path == "request_us":
        return (s.success.ns + s.fail.ns) // 1000
    head, _, tail = path.partition(".")
    value = getattr(s, head)
    if isinstance(value, Duration):
        return value.count if tail == "count" else value.ns // 1000
    return int(value)


def triton_text(models: Sequence[ModelView]) -> str:
    """Triton's per-model families in the text exposition format, bare counter names."""
    lines: list[str] = []
    for name, help_text, path in _TRITON_COUNTERS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f"{name}{{{_labels(m)}}} {_read(m, path)}" for m in models]
        if name == "nv_inference_request_success":
            lines += _failure_lines(models)
    lines += [
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests "
        "awaiting execution per-model.",
        "# TYPE nv_inference_pending_request_count gauge",
    ]
    lines += [f"nv_inference_pending_request_count{{{_labels(m)}}} {m.queue_depth}" for m in models]
    return "\n".join(lines) + "\n"


def gpu_text(samples: Sequence[GpuSample]) -> str:
    """Triton's per-GPU families; a family no GPU has a value for is left out."""
    lines: list[str] = []
    for name, kind, help_text, field in _TRITON_GPU:
        series = [
            f'{name}{{gpu_uuid="{_label_value(s.uuid)}"}} {_plain(getattr(s, field))}'
            for s in samples
            if getattr(s, field) is not None
        ]
        if series:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *series]
    return "".join(line + "\n" for line in lines)


def host_text(sample: HostSample) -> str:
    """Triton's host families; one /proc did not give is left out."""
    lines: list[str] = []
    for name, help_text, field in _TRITON_CPU:
        value = getattr(sample, field)
        if value is not None:
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} gauge",
                f"{name} {_plain(value)}",
            ]
    return "".join(line + "\n" for line in lines)


def _plain(value: float) -> str:
    """The value as a plain decimal: perf_analyzer's GPU metric parser reads no exponent."""
    if float(value).is_integer():
        return str(int(value))
    text = repr(float(value))
    return text if "e" not in text else f"{value:.12f}".rstrip("0").rstrip(".")


def _failure_lines(models: Sequence[ModelView]) -> list[str]:
    name = "nv_inference_request_failure"
    lines = [f"# HELP {name} Number of failed inference requests, all batch sizes",
             f"# TYPE {name} counter"]  # fmt: skip
    for m in models:
        for reason in FAILURE_REASONS:
            lines.append(
                f'{name}{{model="{_label_value(m.name)}",reason="{reason}",'
                f'version="{m.version}"}} {m.statistics.failures[reason]}'
            )
    return lines


def _labels(m: ModelView) -> str:
    return f'model="{_label_value(m.name)}",version="{m.version}"'


SIGNALS = (
    ("conveyor_in_flight_requests", "Requests taken and not yet answered (queued or running)"),
    ("conveyor_in_flight_requests_avg", "Requests in flight, time-averaged over the window"),
    ("conveyor_arrival_rate", "Requests arriving per second over the window"),
    ("conveyor_completion_rate", "Requests answered per second over the window"),
    ("conveyor_instance_utilization", "Busy fraction of the model's instances over the window"),
    ("conveyor_desired_replicas", "Replicas this replica's load calls for (HPA tolerance applied)"),
)
SIGNAL_KEYS = {
    "conveyor_in_flight_requests": "in_flight",
    "conveyor_in_flight_requests_avg": "in_flight_avg",
    "conveyor_arrival_rate": "arrival_rate",
    "conveyor_completion_rate": "completion_rate",
    "conveyor_instance_utilization": "utilisation",
    "conveyor_desired_replicas": "desired_replicas",
}


def _gauge(name: str, text: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=["model", "version"])


class _ModelState:
    """Scrape-time gauges of each version served: queue depth, batches in flight, readiness."""

    def __init__(self, models: Models) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "conveyor_queue_depth",
            "Requests queued and not yet in a batch",
            labels=["model", "version"],
        )
        busy = GaugeMetricFamily(
            "conveyor_batches_in_flight", "Batches running now", labels=["model", "version"]
        )
        ready = GaugeMetricFamily(
            "conveyor_model_ready", "1 when the version serves", labels=["model", "version"]
        )
        signals = {name: _gauge(name, text) for name, text in SIGNALS}
        for m in self._models():
            labels = [m.name, m.version]
            depth.add_metric(labels, m.queue_depth)
            busy.add_metric(labels, m.batches_in_flight)
            ready.add_metric(labels, 1.0 if m.ready else 0.0)
            load = m.signals()
            for name, _ in SIGNALS:
                signals[name].add_metric(labels, float(load[SIGNAL_KEYS[name]]))
        yield from (depth, busy, ready, *signals.values())


class DriftCollector:
    """Scrape-time drift gauges: one series per feature and statistic, never per bin."""

    def __init__(self, monitors: Callable[[], Iterable[DriftMonitor]]) -> None:
        self._monitors = monitors

    def collect(self) -> Iterator[Metric]:
        for family in drift.metric_families(self._monitors()):
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(family.name, family.documentation, labels=list(family.labels))
            for labels, value in family.samples:
                metric.add_metric(list(labels), value)
            yield metric


class Metrics:
    """Owns the metric objects (no global registry) and renders one scrape of `models`."""

    def __init__(
        self,
        models: Models | None = None,
        allow_gpu_metrics: bool = True,
        allow_cpu_metrics: bool = True,
    ) -> None:
        self.prom = CollectorRegistry(auto_describe=False)
        reader = GpuReader() if allow_gpu_metrics else None
        self.gpu = reader if reader is not None and reader.available else None
        host = HostReader() if allow_cpu_metrics else None
        self.host = host if host is not None and host.available else None
        self.request_seconds = Histogram(
            "conveyor_request_duration_seconds",
            "Time from taking an inference request to having its answer, per protocol",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.prom,
        )
        self.queue_seconds = Histogram(
            "conveyor_queue_duration_seconds",
            "Time requests waited in the batcher's queue",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.prom,
        )
        self.batch_size = Histogram(
            "conveyor_batch_size",
            "Rows per model execution",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.prom,
        )
        self.errors = Counter(
            "conveyor_request_errors",
            "Failed inference requests by reason (Triton's) and status code",
            ["model", "version", "reason"],
            registry=self.prom,
        )
        ProcessCollector(registry=self.prom)
        self.models: Models = models or (lambda: ())
        self.prom.register(_ModelState(self._served))
        self.prom.register(DriftCollector(self._drift_monitors))

    def _served(self) -> Iterable[ModelView]:
        return self.models()

    def _drift_monitors(self) -> Iterator[DriftMonitor]:
        return (m.drift for m in self.models() if m.drift is not None)

    def subscriber(self, name: str, version: str) -> Subscriber:
        """The metrics' subscriber to one new model version's events."""
        return ModelMetrics(self, name, version)

    def render(self, gpu_samples: Sequence[GpuSample] | None = None) -> bytes:
        """One scrape; GPU samples are read here unless the caller read them already."""
        text = triton_text(list(self.models()))
        if self.host is not None:
            text += host_text(self.host.sample())
        if self.gpu is not None:
            text += gpu_text(self.gpu.sample() if gpu_samples is None else gpu_samples)
        return text.encode() + generate_latest(self.prom)

    async def render_async(self) -> bytes:
        """A scrape from the event loop: the NVML driver calls run on a worker thread."""
        samples = await asyncio.to_thread(self.gpu.sample) if self.gpu is not None else None
        return self.render(samples)


class ModelMetrics(Subscriber):
    """One version's metric children, resolved once so the hot path does no label lookups."""

    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self._request = {p: metrics.request_seconds.labels(name, version, p) for p in PROTOCOLS}
        self._queue = metrics.queue_seconds.labels(name, version)
        self._batch = metrics.batch_size.labels(name, version)
        self._errors = {r: metrics.errors.labels(name, version, r) for r in FAILURE_REASONS}

    def batch_done(self, batch: BatchDone) -> None:
        for request in batch.requests:
            self._queue.observe((batch.dispatched_ns - request.enqueued_ns) / 1e9)
        if batch.ok:
            self._batch.observe(batch.size)

    def request_done(self, duration_ns: int, error: BaseException | None, protocol: str) -> None:
        child = self._request.get(protocol) or self._request[""]
        child.observe(duration_ns / 1e9)
        if error is not None:
            self._errors[failure_reason(error)].inc()
