"""How `conveyor bench` shows its results: a table, JSON, and a latency-throughput plot."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from rich.table import Table

from runtime.loadtest.bench import Target


def _label(row: dict[str, Any]) -> str:
    if row["mode"] == "open":
        return f"{row['offered_rps']:.0f} req/s"
    return f"c={row['concurrency']}"


def table(target: Target, rows: list[dict[str, Any]]) -> Table:
    t = Table(title=f"{target.model} over {target.protocol} at {target.url}")
    for col in ("step", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "server queue ms",
                "server compute ms", "client CPU us/req", "errors"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in rows:
        compute = sum(r.get(f"server_{k}_ms", 0.0) for k in ("compute_input", "compute_infer",
                                                             "compute_output"))  # fmt: skip
        t.add_row(
            _label(r),
            f"{r['throughput_rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['p999_ms']:.2f}",
            f"{r['server_queue_ms']:.2f}" if "server_queue_ms" in r else "-",
            f"{compute:.2f}" if "server_queue_ms" in r else "-",
            f"{r['client_cpu_us_per_request']:.0f}",
            ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0",
        )
    return t


def write_json(path: Path, target: Target, rows: list[dict[str, Any]]) -> None:
    doc = {
        "target": {"url": target.url, "protocol": target.protocol, "model": target.model},
        "client": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "steps": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def plot(path: Path, target: Target, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib
    except ImportError:  # an optional extra: pip install conveyor-serve[bench]
        raise SystemExit("--plot needs matplotlib (pip install 'conveyor-serve[bench]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, marker in (("closed", "o"), ("open", "s")):
        steps = [r for r in rows if r["mode"] == mode]
        if not steps:
            continue
        x = [r["throughput_rps"] for r in steps]
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            ax.plot(x, [r[key] for r in steps], style, marker=marker,
                    label=f"{key[:-3]} ({mode} loop)")  # fmt: skip
        for r in steps:
            ax.annotate(_label(r), (r["throughput_rps"], r["p99_ms"]), fontsize=7)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{target.model} over {target.protocol}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
