"""The three provisioned Grafana dashboards, panel by panel.

Every PromQL expression may name only series the flow's /metrics serves (taken from the
prometheus_client registry, not from a list kept here), with labels those series carry.
Every SQL query (and SQL template variable) runs, with Grafana's macros expanded, on a freshly
migrated database on both schema paths: plain PostgreSQL 15 (PM_TEST_DATABASE_URL) and
TimescaleDB (PM_TEST_TIMESCALE_URL), with a small fleet history, and answers correctly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from connectors.migrate import apply_migrations
from tests.promql import exported_series, grouping_labels, metric_names, selector_labels

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMETHEUS = "prometheus"
POSTGRES = "grafana-postgresql-datasource"
TITLES = {
    "equipment-health.json": "Equipment Health Overview",
    "system-performance.json": "System Performance",
    "model-performance.json": "Model Performance",
}


def load(name: str) -> dict[str, Any]:
    data = json.loads((GRAFANA / "dashboards" / name).read_text())
    assert isinstance(data, dict)
    return data


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def targets(dash: dict[str, Any], kind: str) -> Iterator[tuple[str, str]]:
    """(where, query) of every panel target and template variable of a data source type."""
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            ds = t.get("datasource") or panel["datasource"]
            if ds["type"] == kind:
                yield panel["title"], t["expr"] if kind == PROMETHEUS else t["rawSql"]
    for var in dash["templating"]["list"]:
        if var["datasource"]["type"] == kind:
            yield f"variable {var['name']}", var["query"]


def all_targets(kind: str) -> list[tuple[str, str, str]]:
    return [(p.name, where, q) for p in DASHBOARDS for where, q in targets(load(p.name), kind)]


# --- structure ---------------------------------------------------------------------------


def test_the_three_dashboards_are_provisioned_from_this_folder() -> None:
    assert {p.name: load(p.name)["title"] for p in DASHBOARDS} == TITLES
    assert len({load(p.name)["uid"] for p in DASHBOARDS}) == 3
    doc = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"


def test_panels_use_the_provisioned_datasources_and_do_not_overlap() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yml").read_text())
    provisioned = {ds["uid"]: ds["type"] for ds in doc["datasources"]}
    for path in DASHBOARDS:
        dash = load(path.name)
        refs = [n["datasource"] for n in walk(dash) if isinstance(n, dict) and "datasource" in n]
        for ref in refs:
            if ref.get("type") != "grafana":  # the built-in annotations source
                assert provisioned.get(ref["uid"]) == ref["type"], f"{path.name}: {ref}"
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), path.name
        cells: dict[tuple[int, int], str] = {}
        for panel in dash["panels"]:
            assert panel["title"] and panel.get("description"), panel
            assert panel.get("targets"), panel["title"]
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


def test_template_variables_used_are_defined() -> None:
    builtin = {"__timeFilter", "__timeGroupAlias", "__interval", "__rate_interval", "__all"}
    for path in DASHBOARDS:
        dash = load(path.name)
        defined = {v["name"] for v in dash["templating"]["list"]}
        text = json.dumps(dash["panels"]) + json.dumps(dash["templating"])
        used = set(re.findall(r"\$\{?(\w+)", text)) - builtin
        assert used <= defined, f"{path.name}: undefined variables {used - defined}"


# --- PromQL ------------------------------------------------------------------------------


def test_every_promql_query_names_exported_series_and_their_labels() -> None:
    exported = exported_series()
    checked = 0
    for name, where, expr in all_targets(PROMETHEUS):
        wanted: set[str] = set()
        if m := re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr):  # a variable query
            expr, wanted = m[1], {m[2]}
        names = metric_names(expr)
        assert names, f"{name} / {where}: no metric in {expr}"
        unknown = names - set(exported)
        assert unknown == set(), f"{name} / {where}: not exported: {unknown}"
        for metric, labels in selector_labels(expr):
            extra = labels - exported[metric]
            assert extra == set(), f"{name} / {where}: {metric} has no label {extra}"
        carried = set().union(*(exported[n] for n in names))
        assert grouping_labels(expr) | wanted <= carried, f"{name} / {where}: {expr}"
        checked += 1
    assert checked >= 40


def test_every_flow_metric_has_a_panel() -> None:
    used = set().union(*(metric_names(e) for _, _, e in all_targets(PROMETHEUS)))
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    flow = {n for n in exported_series() if n.startswith(("pm_", "bytewax_"))}
    missing = {n for n in flow if re.sub(r"_(bucket|sum|count)$", "", n) not in bases}
    assert missing == set(), f"flow metrics without a panel: {missing}"


def test_model_dashboard_covers_version_drift_distribution_anomaly_and_errors() -> None:
    dash = load("model-performance.json")
    prom = " ".join(e for _, e in targets(dash, PROMETHEUS))
    sql = " ".join(q for _, q in targets(dash, POSTGRES))
    for metric in ("pm_model_info", "pm_model_reloads_total", "pm_feature_drift_max"):
        assert metric in prom
    assert 'pm_anomaly_score_bucket{le="0.99"' in prom  # the anomaly rate
    assert "pm_dead_letters_total" in prom and "pm_imputed_sensors_total" in prom
    assert "width_bucket" in sql and "percentile_cont" in sql  # distributions
    assert "model_version" in sql and "FROM feature_drift" in sql
    assert "maintenance_events" in sql  # RUL error against recorded failures


# --- SQL on both schema paths ------------------------------------------------------------

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)
VARIABLES = {
    "equipment_type": ["turbofan_engine", "pump"],
    "equipment_id": ["turbofan-0001", "pump-0001"],
}


def expand(text: str, variables: dict[str, list[str]] = VARIABLES) -> str:
    """Expand the Grafana macros and variables the dashboards use, as Grafana's PostgreSQL
    data source does with TimescaleDB on (time range T0 - 1 day to T0 + 1 day, 1 h interval).

    >>> print(expand("SELECT $__timeGroupAlias(p.ts, $__interval) WHERE $__timeFilter(ts)", {}))
    ... # doctest: +ELLIPSIS
    SELECT time_bucket('3600s', p.ts) AS "time" WHERE ts BETWEEN '2026-11-19T08:00:00+00:00' AND ...
    """
    lo, hi = (T0 - timedelta(days=1)).isoformat(), (T0 + timedelta(days=1)).isoformat()
    text = re.sub(r"\$__timeFilter\(([\w.]+)\)", rf"\1 BETWEEN '{lo}' AND '{hi}'", text)
    text = re.sub(
        r"\$__timeGroupAlias\(([\w.]+),\s*\$__interval\)",
        "time_bucket('3600s', \\1) AS \"time\"",
        text,
    )
    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        text = re.sub(rf"\$\{{?{name}\b\}}?", quoted, text)
    assert "$" not in text, text
    return text


def seed(dsn: str) -> None:
    """A little fleet history, written with INSERT (the TimescaleDB test server has no COPY)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO equipment (equipment_id, equipment_type, first_seen, last_seen) "
            "VALUES ('turbofan-0001', 'turbofan_engine', %s, %s), ('pump-0001', 'pump', %s, %s)",
            (T0, T0 + H, T0, T0),
        )
        predictions = [  # equipment, ts, RUL h, health, anomaly, status, version
            ("turbofan-0001", T0, 900.0, 0.9, 0.1, "ok", "3"),
            ("turbofan-0001", T0 + H, 60.0, 0.6, 0.5, "warning", "4"),
            ("pump-0001", T0, 10.0, 0.2, 0.99, "critical", "4"),
        ]
        conn.cursor().executemany(
            "INSERT INTO predictions (equipment_id, ts, model_name, model_version, rul, rul_unit,"
            " rul_hours, rul_lower, rul_upper, health, anomaly_score, status, top_sensors)"
            " VALUES (%s, %s, 'pm', %s, %s, 'hours', %s, %s, %s, %s, %s, %s, ARRAY['T24'])",
            [(e, ts, v, r, r, 0.8 * r, 1.2 * r, h, a, st) for e, ts, r, h, a, st, v in predictions],
        )
        half = timedelta(minutes=30)
        alerts = [  # id, equipment, ts, rule, severity, state, acknowledged
            ("a1", "turbofan-0001", T0, "health_low", "warning", "firing", False),
            ("a2", "turbofan-0001", T0 + H, "health_low", "warning", "resolved", False),
            ("a3", "turbofan-0001", T0, "rul_low", "critical", "firing", False),
            ("a4", "pump-0001", T0, "anomaly_high", "critical", "firing", True),
            ("a5", "pump-0001", T0, "health_low", "warning", "firing", False),
            ("a6", "pump-0001", T0 + half, "health_low", "critical", "escalated", False),
            # fires again 1 h after it resolved: a flap (within the 6 h dwell)
            ("a7", "turbofan-0001", T0 + 2 * H, "health_low", "warning", "firing", False),
        ]
        conn.cursor().executemany(
            "INSERT INTO alerts (alert_id, equipment_id, ts, rule, severity, state, value,"
            " threshold, message, acknowledged_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, 1.0, 2.0, 'm', CASE WHEN %s THEN now() END)",
            alerts,
        )
        # pump-0001 failed 12 h after its 10 h prediction (band 8-12 h: inside).
        conn.execute(
            "INSERT INTO maintenance_events (equipment_id, ts, kind, note)"
            " VALUES ('pump-0001', %s, 'failure', 'bearing')",
            (T0 + 12 * H,),
        )
        conn.cursor().executemany(
            "INSERT INTO feature_drift (ts, equipment_type, model_version, feature, psi)"
            " VALUES (%s, 'pump', '4', %s, %s)",
            [(T0, "vib__std_60", 0.7), (T0, "temp__mean_10", 0.2), (T0 + H, "vib__std_60", 0.3)],
        )


@pytest.fixture(params=["postgresql", "timescaledb"])
def fleet_db(request: pytest.FixtureRequest) -> str:
    """A fresh database on each schema path, migrated, with the seed history."""
    fixture = "fresh_db" if request.param == "postgresql" else "fresh_tsdb"
    dsn = str(request.getfixturevalue(fixture))
    apply_migrations(dsn)
    seed(dsn)
    return dsn


def run_all(dsn: str, dash: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Title -> rows (as dicts) of every SQL panel; variables must return their seed values."""
    results: dict[str, list[dict[str, Any]]] = {}
    with psycopg.connect(dsn) as conn:
        for var in dash["templating"]["list"]:
            if var["datasource"]["type"] == POSTGRES:
                rows = conn.execute(expand(var["query"])).fetchall()
                assert {r[0] for r in rows} == set(VARIABLES[var["name"]]), var["name"]
        for panel in dash["panels"]:
            for target in panel["targets"]:
                if "rawSql" not in target:
                    continue
                cur = conn.execute(expand(target["rawSql"]))
                cols = [d.name for d in cur.description or []]
                if target["format"] == "time_series":
                    assert cols[0] == "time", panel["title"]
                results[panel["title"]] = [dict(zip(cols, row, strict=True)) for row in cur]
    return results


@pytest.mark.integration
def test_equipment_health_queries_answer_correctly(fleet_db: str) -> None:
    results = run_all(fleet_db, load("equipment-health.json"))
    latest = results["Latest status per equipment"]
    assert [(r["equipment"], r["status"], r["type"], r["model"]) for r in latest] == [
        ("pump-0001", "critical", "pump", "pm v4"),
        ("turbofan-0001", "warning", "turbofan_engine", "pm v4"),
    ]
    assert results["Equipment by status"] == [{"critical": 1, "warning": 1, "ok": 0}]
    open_alerts = {(r["equipment"], r["rule"], r["state"]) for r in results["Open alerts"]}
    assert open_alerts == {
        ("turbofan-0001", "rul_low", "firing"),
        ("turbofan-0001", "health_low", "firing"),
        ("pump-0001", "health_low", "escalated"),
    }
    assert results["Open alerts"][0]["severity"] == "critical"
    assert results["Open alerts (count)"] == [{"critical": 2, "warning": 1}]
    assert len(results["Alert history"]) == 7
    health = {(r["metric"], r["health_avg"]) for r in results["Health (hourly average)"]}
    assert ("turbofan-0001", 0.9) in health and ("pump-0001", 0.2) in health
    rul = results["Remaining useful life (hours)"]
    assert {r["metric"] for r in rul} == {"turbofan-0001", "pump-0001"}
    assert [r["kind"] for r in results["Maintenance and failures"]] == ["failure"]

    # The fatigue panels give the figures of `pm alerts fatigue` (connectors.fleet_fatigue).
    from connectors import fleet_queries as fq
    from connectors.fleet_fatigue import fatigue

    with fq.connect(fleet_db) as conn:
        report = fatigue(fq.all_alerts(conn), fq.observed_spans(conn)).to_json_dict()
    for panel, key, figures in (
        ("Alert fatigue per rule", "rule", report["rules"]),
        ("Alert fatigue per machine", "equipment", report["machines"]),
    ):
        got = [
            {
                "key": r[key],
                "alerts": r["alerts"],
                "per_machine_day": float(r["per machine-day"]),
                "episodes": r["episodes"],
                "flaps": r["flaps"],
                "flap_rate": float(r["flap rate"] or 0),
                "acked": r["acked"],
                "ack_median_s": r["time to ack (median)"],
                "ack_max_s": r["time to ack (max)"],
            }
            for r in results[panel]
        ]
        assert [g["key"] for g in got] == [f["key"] for f in figures], panel
        for g, f in zip(got, figures, strict=True):
            for name in ("ack_median_s", "ack_max_s"):
                assert (g[name] is None) == (f[name] is None), (panel, g["key"], name)
                if f[name] is not None:
                    assert float(g[name]) == pytest.approx(f[name], abs=0.1)
                g[name] = f[name]
            assert g == {k: f[k] for k in g}, panel
    flaps = {(f["key"], f["flaps"]) for f in report["rules"] + report["machines"] if f["flaps"]}
    assert flaps == {("health_low", 1), ("turbofan-0001", 1)}
    assert [f["acked"] for f in report["rules"] if f["key"] == "anomaly_high"] == [1]


@pytest.mark.integration
def test_model_performance_queries_answer_correctly(fleet_db: str) -> None:
    results = run_all(fleet_db, load("model-performance.json"))
    by_version = results["Predictions by model version"]
    versions = {(r["version"], r["type"]): r["predictions"] for r in by_version}
    assert versions == {("3", "turbofan_engine"): 1, ("4", "turbofan_engine"): 1, ("4", "pump"): 1}
    hist = [(r["RUL"], r["predictions"]) for r in results["RUL distribution (hours)"]]
    assert hist == [("0-24 h", 1), ("48-72 h", 1), ("480+ h", 1)]  # 10 h, 60 h and 900 h
    quantiles = results["Health distribution (p10, median, p90)"]
    assert [r["median"] for r in quantiles] == pytest.approx([0.55, 0.6])  # (0.9, 0.2) then 0.6
    band = sorted((r["metric"], r["band_hours"]) for r in results["RUL band width (median, hours)"])
    assert [b[0] for b in band] == ["3", "4", "4"]
    assert [b[1] for b in band] == pytest.approx([360.0, 4.0, 24.0])
    (acc,) = results["RUL error against recorded failures"]
    assert (acc["version"], acc["type"], acc["predictions"]) == ("4", "pump", 1)
    assert acc["MAE (h)"] == pytest.approx(2.0) and acc["bias (h)"] == pytest.approx(-2.0)
    assert acc["band coverage"] == pytest.approx(1.0)
    drift = {(r["metric"], r["psi"]) for r in results["Drift history (max PSI, stored)"]}
    assert drift == {("pump v4", 0.7), ("pump v4", 0.3)}
    imputed = results["Predictions made with imputed sensors (share)"]
    assert imputed and all(r["imputed"] == 0 for r in imputed)
