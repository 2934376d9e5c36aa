"""The Grafana dashboard in deploy/grafana: its panels in order, their queries, and a
query as Prometheus runs it once Grafana has put in the dashboard's variables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "conveyor-dashboard.json"
GPU_ROW = "GPU"  # the row whose panels show Triton's per-GPU families, empty without a GPU
# Rows of the machines' own families (per replica, not per model): no model picker there.
MACHINE_ROWS = {"Host", GPU_ROW}
# The metric families Conveyor exports all start with one of these.
_METRIC = re.compile(r"\b(?:nv|conveyor)_[a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class Query:
    """One target of one panel, and the row the panel sits in."""

    panel: str
    row: str
    ref_id: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref_id}]"

    @property
    def gpu(self) -> bool:
        return self.row == GPU_ROW

    @property
    def per_machine(self) -> bool:
        return self.row in MACHINE_ROWS

    def metrics(self) -> set[str]:
        """The metric names the query reads (histograms' `_bucket` and `_count` included)."""
        return set(_METRIC.findall(self.expr))


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(row title, panel) for every panel but the rows, in order; a collapsed row holds
    its panels inside itself, an open one is followed by them."""
    row = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            yield from ((row, p) for p in panel.get("panels", []))
        else:
            yield row, panel


def queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], row, target["refId"], target["expr"])
        for row, panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def render(expr: str, model: str, rate_interval: str) -> str:
    """The query as Grafana sends it with one model picked; an unknown variable stays."""
    for name, value in (("model", model), ("__rate_interval", rate_interval)):
        expr = expr.replace(f"${{{name}}}", value)
        expr = re.sub(rf"\${name}\b", value.replace("\\", "\\\\"), expr)
    return expr
