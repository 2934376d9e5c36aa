"""The Grafana dashboard in deploy/grafana: importable as is (JSON model, a data source
variable every query uses, unique ids, panels on the grid), and its GPU row reading only
Triton's GPU families. tests/integration/test_prometheus.py runs every query."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from runtime.monitoring.gpu import GpuSample
from runtime.monitoring.metrics import gpu_text
from tests import dashboard as dash

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dash.load()


def gpu_families() -> set[str]:
    """Every nv_gpu_* family the server can export: one GPU reporting every field."""
    sample = GpuSample(
        "GPU-0", utilization=0.5, memory_total_bytes=2, memory_used_bytes=1,
        power_w=100.0, power_limit_w=300.0, energy_j=10.0,
    )  # fmt: skip
    # Read the sample names as Prometheus stores them (the client's parser would add _total).
    lines = gpu_text([sample]).splitlines()
    return {re.split(r"[{ ]", line)[0] for line in lines if line and not line.startswith("#")}


def test_top_level_is_an_importable_dashboard(board: dict[str, Any]) -> None:
    assert board["id"] is None  # import and provisioning assign their own
    assert 8 <= len(board["uid"]) <= 40
    assert board["title"]
    assert board["schemaVersion"] >= 39
    assert {"from", "to"} <= board["time"].keys()
    assert isinstance(board["panels"], list)


def test_variables_are_a_prometheus_source_and_its_models(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    model = variables["model"]
    assert model["type"] == "query"
    assert model["datasource"] == DATASOURCE
    assert re.fullmatch(r"label_values\(\w+,\s*model\)", model["query"])


def test_panel_ids_are_unique(board: dict[str, Any]) -> None:
    rows = [p["id"] for p in board["panels"] if p["type"] == "row"]
    ids = rows + [p["id"] for _, p in dash.panels(board)]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_the_chosen_source(board: dict[str, Any]) -> None:
    for _, panel in dash.panels(board):
        assert panel["type"] in {"timeseries", "stat", "heatmap", "gauge", "bargauge", "table"}
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["description"], panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_sit_on_the_grid_without_overlapping(board: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= GRID_COLUMNS, panel["title"]
        for x, y in itertools.product(
            range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        ):
            assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
            cells[x, y] = panel["title"]


def test_queries_use_only_the_dashboard_variables(board: dict[str, Any]) -> None:
    for query in dash.queries(board):
        rendered = dash.render(query.expr, "m", "1m")
        assert "$" not in rendered, query.name
        if not query.per_machine:
            assert 'model=~"m"' in rendered, query.name  # follows the model picker


def test_the_gpu_row_reads_only_gpu_families(board: dict[str, Any]) -> None:
    gpu = gpu_families()
    queries = dash.queries(board)
    on_gpu = [q for q in queries if q.gpu]
    assert on_gpu, f"no panels under the {dash.GPU_ROW!r} row"
    for query in on_gpu:
        assert query.metrics(), query.name
        assert query.metrics() <= gpu, query.name
    for query in queries:
        if not query.gpu:
            assert not query.metrics() & gpu, f"{query.name} reads GPU families outside its row"


def test_render_puts_in_both_spellings_of_a_variable() -> None:
    expr = 'rate(x{model=~"$model", b="${model}"}[$__rate_interval]) + $other'
    assert dash.render(expr, "m", "15s") == 'rate(x{model=~"m", b="m"}[15s]) + $other'
