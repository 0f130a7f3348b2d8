"""What the flow's /metrics exposes, and the metric names and labels a PromQL expression uses
(for the checks of the dashboards and the Prometheus rules)."""

from __future__ import annotations

import re

# Labels Prometheus adds to every scraped series (infra/prometheus/prometheus.yml).
TARGET_LABELS = frozenset({"job", "instance", "service"})

_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}
_GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


def exported_series() -> dict[str, frozenset[str]]:
    """Series name -> label names, of everything the flow's /metrics serves: the
    prometheus_client default registry (connectors.health serves it) after importing the
    flow's metrics and Bytewax's Kafka connector (its consumer-lag gauge), plus Prometheus's
    own ``up``. Bytewax's Rust metrics are only on Bytewax's API server, which is not scraped.

    >>> series = exported_series()
    >>> series["pm_readings_total"] >= {"equipment_type", "instance"}
    True
    >>> "le" in series["pm_event_lag_seconds_bucket"], "pm_readings" in series
    (True, False)
    """
    import bytewax.connectors.kafka  # noqa: F401  (registers bytewax_kafka_consumer_lag)
    from prometheus_client import REGISTRY

    import connectors.metrics  # noqa: F401

    out: dict[str, frozenset[str]] = {"up": TARGET_LABELS}
    for family in REGISTRY.collect():
        labels = set(TARGET_LABELS)
        for sample in family.samples:
            labels |= set(sample.labels) - {"le", "quantile"}
        if family.type == "counter":
            names = {f"{family.name}_total": labels}
        elif family.type == "histogram":
            names = {f"{family.name}_bucket": labels | {"le"}}
            names |= {f"{family.name}_{s}": labels for s in ("sum", "count")}
        elif family.type == "summary":
            names = {f"{family.name}_{s}": labels for s in ("sum", "count")}
            names[family.name] = labels | {"quantile"}
        elif family.type == "info":
            names = {f"{family.name}_info": labels}
        else:
            names = {family.name: labels}
        out.update({k: frozenset(v) for k, v in names.items()})
    # Labelled metrics without a sample yet: take their label names from the wrappers.
    from prometheus_client.metrics import MetricWrapperBase

    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            for fam in collector.describe():
                for name in [n for n in out if n == fam.name or n.startswith(fam.name + "_")]:
                    out[name] = out[name] | frozenset(collector._labelnames)
    return out


def _strip(expr: str) -> str:
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return re.sub(r"\[[^\]]*\]", " ", s)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords or label names).

    >>> sorted(metric_names(
    ...     'sum by (a) (rate(x_total{b="c"}[5m])) / ignoring(a) group_left sum(y) > 1e-3'))
    ['x_total', 'y']
    """
    s = re.sub(r"\{[^}]*\}", " ", _strip(expr))
    s = re.sub(_GROUPING, " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])[A-Za-z_:][\w:]*", s):
        if s[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() in _WORDS:
            continue
        names.add(m.group())
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched in its braces) for every ``metric{...}`` selector.

    >>> [(m, sorted(labels)) for m, labels in selector_labels('rate(x{a="1", b=~"2"}[5m]) + y')]
    [('x', ['a', 'b'])]
    """
    s = _strip(expr)
    return [
        (m[1], set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m[2])))
        for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", s)
    ]


def grouping_labels(expr: str) -> set[str]:
    """Label names in ``by``/``without``/``on``/``ignoring``/``group_*`` clauses.

    >>> sorted(grouping_labels("sum by (a, b) (x) / ignoring(c) group_left y"))
    ['a', 'b', 'c']
    """
    return {w for m in re.finditer(_GROUPING, _strip(expr)) for w in re.findall(r"\w+", m[2])}
