"""deploy/prometheus checked by Prometheus' own promtool: the rule files are valid, each
alert fires on the series it is about and not on a near miss (prometheus_rules.test.yaml),
and the configuration loads with its discovery swapped for a static target."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import prometheus as prom

HERE = Path(__file__).resolve().parent
RULE_TESTS = HERE / "prometheus_rules.test.yaml"
TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(prom.PROMTOOL is None, reason=prom.NOT_INSTALLED.format("promtool"))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert prom.PROMTOOL is not None
    command = [prom.PROMTOOL, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def rules(path: Path) -> list[dict[str, Any]]:
    return [r for group in yaml.safe_load(path.read_text())["groups"] for r in group["rules"]]


def test_the_configuration_loads_the_rule_files_beside_it() -> None:
    names = {path.name for path in prom.rule_files()}
    assert names == {"recording-rules.yaml", "alerting-rules.yaml"}
    assert all(path.is_file() for path in prom.rule_files())


@pytest.mark.parametrize("path", prom.rule_files(), ids=lambda p: p.name)
def test_rule_file_is_valid(path: Path) -> None:
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_an_invalid_rule_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    group = {"name": "broken", "rules": [{"record": "model:x:sum", "expr": "sum by (model) (x"}]}
    broken.write_text(yaml.safe_dump({"groups": [group]}))
    result = promtool("check", "rules", broken)
    assert result.returncode != 0
    assert "parse error" in result.stderr


def test_alerts_fire_on_their_series_and_not_on_near_misses() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case() -> None:
    alerts = {r["alert"] for path in prom.rule_files() for r in rules(path) if "alert" in r}
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {t["alertname"] for case in cases for t in case.get("alert_rule_test", [])}
    assert alerts == tested


def test_a_changed_threshold_fails_the_cases(tmp_path: Path) -> None:
    """The cases bite: an error-ratio alert at 50% instead of 5% misses the failing model."""
    files = []
    for path in prom.rule_files():
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("> 0.05", "> 0.5"))
        files.append(str(copy))
    cases = yaml.safe_load(RULE_TESTS.read_text())
    cases["rule_files"] = files
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(cases))
    result = promtool("test", "rules", tmp_path / "cases.yaml")
    assert result.returncode != 0
    assert "ConveyorHighErrorRatio" in result.stdout + result.stderr


def test_the_configuration_is_valid(tmp_path: Path) -> None:
    # Debian's build of Prometheus leaves Kubernetes discovery out, so the job is checked
    # as the integration tests run it: one static target carrying the discovered labels.
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prom.local_config("127.0.0.1:8002", "15s")))
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_job_keeps_the_deployments_pods() -> None:
    labels = prom.discovered_labels(8002)
    config = yaml.safe_load(prom.CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == prom.JOB)
    for rule in job["relabel_configs"]:
        if rule.get("action") in ("keep", "drop"):
            values = ";".join(labels.get(name, "") for name in rule["source_labels"])
            kept = re.fullmatch(rule["regex"], values) is not None
            assert kept == (rule["action"] == "keep"), (rule, values)
