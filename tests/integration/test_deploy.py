"""The files of deploy/ agree with the relay they deploy: the metrics their alerts and
dashboard read are ones a running relay exports, and stop timeouts outlast the grace."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

import outbox
from outbox.settings import Settings, parse_duration
from tests.integration.relay_harness import running_relay, wait_for
from tests.integration.test_observability import enqueue, get, samples

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "outbox-dashboard.json"
METRIC = re.compile(r"outbox_[a-z_]+")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
#: The grace a relay gets unless OUTBOX_SHUTDOWN_GRACE says otherwise.
DEFAULT_GRACE = Settings().shutdown_grace


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


USED = sorted({name for expr in alert_expressions() + dashboard_expressions()
               for name in METRIC.findall(expr)})  # fmt: skip


@pytest.fixture(scope="module")
def exported(engine: sa.Engine, dsn: str) -> Iterator[dict[str, Any]]:
    """The metric families a relay serves after a small workload, by name and type, and
    the relay's base URL while it runs."""
    registry = outbox.Registry()
    registry.register("deploy.ok", lambda job: None, queue="deploy")

    def fail(job: outbox.Job) -> None:
        raise RuntimeError("refused")

    registry.register("deploy.bad", fail, queue="deploy", max_attempts=1)
    jobs = [outbox.NewJob("deploy.ok", {"n": n}, queue="deploy") for n in range(3)]
    # A dead job at the head of a key, and one waiting behind it: a blocked key.
    jobs += [outbox.NewJob("deploy.bad", {}, key="deploy:1", queue="deploy")]
    jobs += [outbox.NewJob("deploy.ok", {}, key="deploy:1", queue="deploy")]
    enqueue(engine, jobs)
    with running_relay(registry, dsn, metrics_addr=("127.0.0.1", 0)) as worker:
        assert worker.http is not None
        base = "http://{}:{}".format(*worker.http.address)

        def settled() -> str | None:
            """Counters move at once; the queue gauges are read again every few seconds."""
            status, text = get(f"{base}/metrics")
            done = samples(text, "outbox_jobs_completed_total", queue="deploy")
            blocked = samples(text, "outbox_blocked_keys", queue="deploy")
            return text if status == 200 and done >= 4 and blocked == 1 else None

        text = wait_for(settled, timeout=30, what="the workload and the queue gauges")
        types: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                types[name] = kind
            elif line and not line.startswith("#"):
                types.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], "sample")
        yield {"types": types, "base": base}


@pytest.mark.parametrize("name", USED)
def test_metric_read_by_alerts_or_dashboard_is_one_the_relay_exports(
    name: str, exported: dict[str, Any]
) -> None:
    types = exported["types"]
    base = HISTOGRAM_SUFFIX.sub("", name)
    if base != name and types.get(base) == "histogram":
        name = base
    assert name in types, f"{name} is read by deploy/ but no relay exports it"


def test_probe_paths_of_the_deployment_answer_on_a_running_relay(
    exported: dict[str, Any],
) -> None:
    container = deployment()["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert get(exported["base"] + path)[0] == 200, f"{probe} {path}"


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    for args in (["check", "rules", str(ALERTS)],
                 ["test", "rules", str(ALERTS.with_name("alerts.test.yml"))]):  # fmt: skip
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_for_duration_severity_summary_and_runbook() -> None:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert "for" in rule, rule["alert"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys()
            anchor = rule["annotations"]["runbook_url"].partition("#")[2]
            assert f"\n### {anchor}\n" in (ROOT / "docs/howto/deploy.md").read_text().lower()


def deployment() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "kubernetes/deployment.yaml").read_text())
    return loaded


def systemd_directives(path: Path) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def systemd_seconds(text: str) -> float:
    """A systemd time span such as ``45s``, ``1min 30s`` or ``90``."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]*)", text)
    assert parts, f"not a time span: {text!r}"
    return sum(int(number) * units[unit] for number, unit in parts)


def test_kubernetes_waits_longer_than_the_relay_drains() -> None:
    spec = deployment()["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}
    grace = DEFAULT_GRACE
    if configured := env.get("OUTBOX_SHUTDOWN_GRACE"):
        grace = parse_duration(configured, name="OUTBOX_SHUTDOWN_GRACE")
    assert timedelta(seconds=spec["terminationGracePeriodSeconds"]) > grace


def test_systemd_waits_longer_than_the_relay_drains_and_signals_only_the_supervisor() -> None:
    unit = systemd_directives(DEPLOY / "systemd/outbox-relay.service")
    assert timedelta(seconds=systemd_seconds(unit["TimeoutStopSec"][-1])) > DEFAULT_GRACE
    assert unit["KillSignal"] == ["SIGTERM"]
    # With --processes N, SIGTERM to every process of the group would reach each relay
    # process twice (from systemd and from its supervisor), and a second signal means now.
    assert unit["KillMode"] == ["mixed"]


def test_metrics_listen_beyond_loopback_only_where_asked_in_a_container() -> None:
    args = deployment()["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--metrics-addr") + 1] == "0.0.0.0:9464"
    assert '"--metrics-addr", "0.0.0.0:9464"' in (DEPLOY / "container/Containerfile").read_text()
    unit = systemd_directives(DEPLOY / "systemd/outbox-relay.service")
    assert "OUTBOX_METRICS_ADDR=127.0.0.1:9464" in unit["Environment"]


def test_dashboard_is_json_and_every_panel_has_a_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"DS_PROMETHEUS", "queue"} <= names
