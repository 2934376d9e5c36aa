"""Replay a day of traffic through the Kubernetes HPA algorithm: scaling on Conveyor's
in-flight signal, on its arrival rate, and on CPU utilisation.

    .venv/bin/python benchmarks/autoscale_sim.py [--measured benchmarks/results/http_grpc.json]

Per-replica capacity and base latency come from Conveyor measured on this machine (the
HTTP rows of the http_grpc benchmark). The trace is a diurnal curve with bursts,
compressed to two hours. Each second, ready replicas serve up to their capacity, the
excess waits in a queue bounded per replica (beyond it requests are refused), and
latency follows M/M/1 waiting (S / (1 - rho)) plus the backlog's drain time. Every 15 s
the HPA computes ceil(replicas x metric / target) with a 0.1 tolerance, scales up at
most 100% per step, down only to the highest recommendation of the last 300 s, and new
pods serve after a start-up delay. The metrics reach the HPA 30 s late in both cases
(scrape, adapter window). Writes benchmarks/results/autoscale_sim.json and a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SYNC_S, TOLERANCE, DOWN_WINDOW_S, METRIC_LAG_S = 15, 0.1, 300, 30


@dataclass
class Replica:
    """Per-replica service: capacity (req/s) and base latency, as measured."""

    capacity_rps: float
    base_latency_s: float
    queue_limit: int = 512  # requests one replica holds before refusing (max_queue_size)
    start_s: int = 45  # pod start: schedule, pull, load the models, warm up


def trace(seconds: int, peak_rps: float, seed: int = 0) -> np.ndarray:
    """A diurnal curve (night at 10% of peak) with a few bursts of 2-3x for 1-3 minutes."""
    t = np.arange(seconds)
    base = peak_rps * (0.55 - 0.45 * np.cos(2 * np.pi * t / seconds))
    rng = np.random.default_rng(seed)
    for start in rng.integers(0, seconds - 300, size=6):
        length = int(rng.integers(60, 180))
        base[start : start + length] *= rng.uniform(2.0, 3.0)
    return np.asarray(rng.poisson(base), dtype=float)


@dataclass
class Outcome:
    policy: str
    replicas: list[int] = field(default_factory=list)
    p99_samples: list[tuple[float, float]] = field(default_factory=list)  # (latency, weight)
    refused: float = 0.0
    served: float = 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile over served requests (each second weighted by its requests)."""
        lat = np.array([x for x, _ in self.p99_samples])
        w = np.array([y for _, y in self.p99_samples])
        order = np.argsort(lat)
        cum = np.cumsum(w[order]) / w.sum()
        return float(lat[order][np.searchsorted(cum, q)])

    def summary(self) -> dict[str, Any]:
        lat = np.array([x for x, _ in self.p99_samples])
        return {
            "policy": self.policy,
            "p50_latency_ms": 1e3 * self.percentile(0.50),
            "p95_latency_ms": 1e3 * self.percentile(0.95),
            "p99_latency_ms": 1e3 * self.percentile(0.99),
            "seconds_over_10ms": int((lat > 0.010).sum()),
            "refused": int(self.refused),
            "refused_fraction": self.refused / (self.refused + self.served),
            "replica_seconds": int(sum(self.replicas)),
            "max_replicas": max(self.replicas),
        }


def simulate(
    load: np.ndarray, r: Replica, policy: str, target: float, start: int, max_replicas: int
) -> Outcome:
    """One run of the trace under one scaling metric (`inflight` or `cpu`)."""
    out = Outcome(policy)
    ready, pending = start, deque[int]()  # pending: the second each new pod becomes ready
    backlog = 0.0
    metric_history: deque[float] = deque([0.0] * METRIC_LAG_S, maxlen=METRIC_LAG_S + 1)
    recommendations: deque[tuple[int, int]] = deque()
    for now, arrivals in enumerate(load):
        while pending and pending[0] <= now:
            pending.popleft()
            ready += 1
        capacity = ready * r.capacity_rps
        backlog += arrivals
        served = min(backlog, capacity)
        backlog -= served
        refused = max(0.0, backlog - ready * r.queue_limit)
        backlog -= refused
        rho = min(arrivals / capacity, 0.99) if capacity else 0.99
        latency = r.base_latency_s / (1 - rho) + backlog / max(capacity, 1e-9)
        out.p99_samples.append((latency, max(served, 1e-9)))
        out.served += served
        out.refused += refused
        metric_history.append(
            _reported(policy, served * latency + backlog, arrivals, min(rho, 1.0) * ready)
        )
        if now % SYNC_S == 0:
            current = ready + len(pending)
            desired = min(_hpa(current, metric_history[0], target), max_replicas)
            recommendations.append((now, desired))
            while recommendations[0][0] < now - DOWN_WINDOW_S:
                recommendations.popleft()
            if desired < current:  # scale-down stabilisation: the safest recent value
                desired = max(d for _, d in recommendations)
            desired = min(desired, 2 * current)  # scale-up: +100% per period
            for _ in range(desired - current):
                pending.append(now + r.start_s)
            for _ in range(current - desired):
                if pending:
                    pending.pop()
                elif ready > 1:
                    ready -= 1
        out.replicas.append(ready + len(pending))
    return out


def _reported(policy: str, in_flight: float, arrivals: float, busy_cpus: float) -> float:
    """What the ready pods report, summed: requests in flight (Little's law: served x time
    in system, plus the backlog), requests arriving per second, or busy CPUs."""
    return {"inflight": in_flight, "arrivals": arrivals, "cpu": busy_cpus}[policy]


def _hpa(current: int, total: float, target: float) -> int:
    """The HPA's rule for a Pods metric with an AverageValue target.

    Pods still starting report nothing and count as zero load, so the proposal is the
    ready pods' total over the per-pod target; within the tolerance nothing changes.
    """
    ratio = total / (target * current)
    if abs(ratio - 1) <= TOLERANCE:
        return current
    return max(1, math.ceil(total / target))


def measured(path: Path) -> Replica:
    rows = [r for r in json.loads(path.read_text())["rows"] if r["protocol"] == "http"]
    capacity = max(r["throughput_rps"] for r in rows)
    base = min(r["p50_ms"] for r in rows) / 1e3
    return Replica(capacity_rps=capacity, base_latency_s=base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measured", type=Path, default=ROOT / "benchmarks/results/http_grpc.json")
    parser.add_argument("--seconds", type=int, default=7200)
    parser.add_argument("--peak-replicas", type=float, default=8.0,
                        help="diurnal peak in replicas' worth of capacity")  # fmt: skip
    parser.add_argument("--max-replicas", type=int, default=20, help="the HPA's maxReplicas")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/autoscale_sim.json")
    args = parser.parse_args()
    replica = measured(args.measured)
    load = trace(args.seconds, args.peak_replicas * replica.capacity_rps)
    # Both policies aim at 70% utilisation. For in-flight that level is, by Little's law,
    # lambda x W at rho = 0.7 under the same latency model: 0.7 C x S / (1 - 0.7).
    inflight_target = 0.7 * replica.capacity_rps * replica.base_latency_s / (1 - 0.7)
    runs = [
        simulate(load, replica, "inflight", inflight_target, 2, args.max_replicas),
        simulate(load, replica, "cpu", 0.7, 2, args.max_replicas),
        # conveyor_arrival_rate against 70% of the measured capacity: linear in the load,
        # unlike in-flight (which explodes at saturation) or CPU (which stops at 100%).
        simulate(load, replica, "arrivals", 0.7 * replica.capacity_rps, 2, args.max_replicas),
    ]
    report = {
        "replica": {
            "capacity_rps": replica.capacity_rps,
            "base_latency_ms": 1e3 * replica.base_latency_s,
        },
        "trace": {"seconds": args.seconds, "peak_rps": float(load.max())},
        "targets": {"inflight_per_pod": inflight_target, "cpu_utilisation": 0.7},
        "results": [r.summary() for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    _plot(load, replica, runs, args.out.with_suffix(".png"))
    cols = ("p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "seconds_over_10ms",
            "refused_fraction", "replica_seconds", "max_replicas")  # fmt: skip
    print(f"{'policy':10}" + "".join(f"{c:>19}" for c in cols))
    for row in report["results"]:
        print(f"{row['policy']:10}" + "".join(f"{row[c]:19.4g}" for c in cols))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _plot(load: np.ndarray, r: Replica, runs: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    minutes = np.arange(len(load)) / 60
    ax.plot(minutes, load / r.capacity_rps, color="0.7", lw=0.8, label="load (replicas' worth)")
    for run in runs:
        ax.plot(minutes, run.replicas, lw=1.5, label=f"replicas, scaling on {run.policy}")
    ax.set_xlabel("minutes")
    ax.set_ylabel("replicas")
    ax.legend(loc="upper left")
    ax.set_title("HPA scaling on Conveyor's in-flight or arrival-rate signal, or on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
