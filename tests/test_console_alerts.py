"""The shipped Prometheus rules and Grafana dashboard (deploy/): valid for promtool, firing at the
seeds' thresholds (promtool's own rule tests), and reading only metrics and labels that a real
`GET /metrics` serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from blogqueue import ratelimit
from blogqueue.settings import RateLimit, Settings
from tests.conftest import wait_until
from tests.http_fixtures import Api, TokenFactory, keyword

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "blogqueue.json"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = ("promtool is not installed and `make promtool-deps` could not install it (it needs root and "
               "apt-get: apt-get install -y prometheus)")

SELECTOR = re.compile(r"\b(blogqueue_[a-zA-Z0-9_]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent)


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_the_rules_and_they_fire_at_the_seeds_thresholds() -> None:
    checked = _promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = _promtool("test", "rules", "alerts_test.yml")  # each alert below and at its threshold
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = _promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_rules_carry_the_seeds_thresholds() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert re.search(r"\)\s*>\s*1000$", rules["BlogqueueBacklogHigh"]["expr"].strip())
    assert rules["BlogqueueBacklogHigh"]["labels"]["severity"] == "warning"
    assert re.search(r"\)\s*>\s*5000$", rules["BlogqueueBacklogCritical"]["expr"].strip())
    assert rules["BlogqueueBacklogCritical"]["labels"]["severity"] == "critical"
    assert re.search(r"\)\s*>\s*0\.05\s", rules["BlogqueueErrorRateHigh"]["expr"])
    assert re.search(r"\)\s*>\s*0\.9$", rules["BlogqueueBucketUtilisationHigh"]["expr"].strip())


def _inputs(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    found = [(m.group(1), MATCHER.findall(m.group(2) or "")) for m in SELECTOR.finditer(expr)]
    assert found, f"no blogqueue metric in {expr!r}"
    return found


async def _scrape(api: Api, make_token: TokenFactory, settings: Settings, workers) -> str:
    """A real /metrics with every family present: a limited bucket in Redis, finished jobs, requests."""
    s = settings.replace(rate_limits={"openai": RateLimit(rpm=60, tpm=10_000)})
    redis = aioredis.Redis.from_url(s.redis_url)
    try:
        bucket = ratelimit.Limiter(s, redis).bucket("openai", "sk-proj-alerts-Zq8wLk2mNv7Tx4Rp98")
        await bucket.settle(await bucket.acquire(100, time.monotonic() + 5), used=50)
    finally:
        await redis.aclose()
    admin = await api.client(await make_token("ops", admin=True), settings=s)
    await admin.post("/v1/jobs", json={"jobs": keyword(2)})
    await admin.post("/v1/jobs", json={"jobs": keyword(1, run_at="2999-01-01T00:00:00Z")})  # a backlog
    workers(1)

    async def finished() -> bool:
        m = (await admin.get("/v1/metrics")).json()
        return m["counts"]["done"] == 2 and bool(m["workers"])

    await wait_until(finished, timeout=60, what="2 jobs done")
    return (await admin.get("/metrics")).text


async def test_every_alert_and_panel_reads_metrics_that_metrics_serves(api: Api, make_token: TokenFactory,
                                                                       settings: Settings, workers) -> None:
    text = await _scrape(api, make_token, settings, workers)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    by_name: dict[str, list[dict[str, str]]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s.labels)
    exprs = [r["expr"] for r in alert_rules()] + dashboard_exprs()
    assert len(exprs) >= 6 + 10
    for expr in exprs:
        label_names: set[str] = set()
        for name, matchers in _inputs(expr):
            assert name in by_name, f"{name} (in {expr!r}) is not in /metrics"
            series = by_name[name]
            label_names |= {k for labels in series for k in labels}
            for label, op, value in matchers:
                values = {labels.get(label) for labels in series}
                assert values - {None}, f"{name} has no label {label} (in {expr!r})"
                if op == "=":
                    assert value in values, f'{name}{{{label}="{value}"}} is not in /metrics'
                elif op == "=~":
                    for alt in value.split("|"):
                        assert any(re.fullmatch(alt, v or "") for v in values), f"{name}: {label}=~{alt} matches none"
        for group in BY.findall(expr):
            for label in (x.strip() for x in group.split(",") if x.strip()):
                assert label == "le" or label in label_names, f"by ({label}) in {expr!r}: no such label"
