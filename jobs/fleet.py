"""``pm``: the operator's command line (fleet status, alerts, the web page).

    pm fleet status [--json] [--redis-url URL]        machines by risk
    pm fleet status --equipment ID [--plot FILE.png]  one machine's history and alerts
    pm alerts open [--json]                           open alerts
    pm alerts ack ALERT_ID --by NAME                  acknowledge (idempotent)
    pm alerts fatigue [--dwell-hours H] [--json]      alert-fatigue figures
    pm web [--bind 127.0.0.1] [--port 8501]           the fleet web page
    pm maintenance add ID --to TIME [--from TIME] --reason TEXT [--by NAME]
                                                      a maintenance window (no notifications)
    pm maintenance list [--equipment ID] [--json]     maintenance windows, newest first

The database comes from ``--database-url`` or the settings (``PM_DATABASE_URL`` or the
``PM_CONFIG`` YAML); alert thresholds from the settings too. Exit codes: 0 ok, 1 unknown
equipment or alert, 2 bad usage, configuration or database error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from pydantic import ValidationError

from connectors import fleet_queries as q
from connectors.fleet_fatigue import DEFAULT_DWELL_S, duration_text, fatigue
from connectors.settings import Settings, load_settings
from models.logsafe import redact, safe_for_log


class UsageError(Exception):
    """A problem the operator can fix (printed as one line, exit code 2)."""


def _s(x: Any, width: int = 60) -> str:
    """Text from the database, safe for a terminal."""
    return "-" if x is None else safe_for_log(x, width)


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _t(ts: datetime | None) -> str:
    return "-" if ts is None else ts.strftime("%Y-%m-%d %H:%M:%SZ")


def rul_text(m: q.MachineStatus) -> str:
    """``62.0 h [48.1-75.3]``: the RUL in hours and its band."""
    if m.rul_hours is None:
        return "-"
    if m.rul_lower_hours is None or m.rul_upper_hours is None:
        return f"{m.rul_hours:.1f} h"
    return f"{m.rul_hours:.1f} h [{m.rul_lower_hours:.1f}-{m.rul_upper_hours:.1f}]"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table (a Markdown pipe table, so it pastes into notes as well).

    >>> print(table(["a", "bb"], [["1", "2"]]))
    | a | bb |
    |---|----|
    | 1 | 2  |
    """
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def status_table(machines: Sequence[q.MachineStatus]) -> str:
    headers = ["#", "equipment", "type", "status", "RUL [band]", "health", "anomaly",
               "active alerts", "last reading"]  # fmt: skip
    rows = [
        [
            str(i),
            _s(m.equipment_id, 40),
            _s(m.equipment_type, 20),
            _s(m.status or "no data", 10),
            rul_text(m),
            _f(m.health, ".3f"),
            _f(m.anomaly_score, ".3f"),
            _s(", ".join(m.active_alerts) or "-", 80),
            _t(m.last_reading),
        ]
        for i, m in enumerate(machines, 1)
    ]
    return table(headers, rows)


def alerts_table(alerts: Sequence[dict[str, Any]], with_equipment: bool = True) -> str:
    headers = ["time", *(["equipment"] if with_equipment else []), "rule", "severity", "state",
               "value", "threshold", "alert id", "acknowledged"]  # fmt: skip
    rows = [
        [
            _t(a["ts"]),
            *([_s(a["equipment_id"], 40)] if with_equipment else []),
            _s(a["rule"], 20),
            _s(a["severity"], 10),
            _s(a["state"], 10),
            _f(a["value"], ".3f"),
            _f(a["threshold"], ".3f"),
            _s(a["alert_id"], 40),
            f"{_s(a['acknowledged_by'], 40)} {_t(a['acknowledged_at'])}"
            if a["acknowledged_at"]
            else "-",
        ]
        for a in alerts
    ]
    return table(headers, rows)


def _json(obj: Any) -> str:
    def default(x: Any) -> Any:
        if isinstance(x, datetime):
            return x.isoformat()
        if hasattr(x, "to_json_dict"):
            return x.to_json_dict()
        raise TypeError(f"not JSON serialisable: {type(x).__name__}")

    return json.dumps(obj, default=default, indent=2)


def _redis_status(url: str) -> dict[str, dict[str, Any]]:
    from connectors.redis_state import RedisStatusStore

    store = RedisStatusStore(url, retry_attempts=1)
    try:
        return {eq: store.read(eq) for eq in store.equipment_ids()}
    finally:
        store.close()


def cmd_status(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    with q.connect(dsn) as conn:
        if args.equipment is None:
            if args.plot:
                raise UsageError("--plot needs --equipment ID")
            fresh = _redis_status(args.redis_url) if args.redis_url else None
            machines = q.fleet_status(conn, fresh)
            print(_json({"machines": machines}) if args.json else status_table(machines))
            return 0
        m = q.machine(conn, args.equipment)
        if m is None:
            print(f"fleet: unknown equipment {safe_for_log(args.equipment)}", file=sys.stderr)
            return 1
        hist = q.history(conn, args.equipment, limit=max(args.limit, args.plot_points))
        alerts = q.alerts_for(conn, args.equipment)
    if args.plot:
        from connectors.fleet_plot import trajectory_png

        png = trajectory_png(args.equipment, hist[-args.plot_points :], alerts, settings.alerts)
        Path(args.plot).write_bytes(png)
    shown = hist[-args.limit :]
    if args.json:
        print(_json({"machine": m, "history": shown, "alerts": alerts}))
    else:
        print(status_table([m]))
        print(f"\nlast {len(shown)} predictions:")
        print(table(
            ["time", "status", "RUL h", "band h", "health", "anomaly", "top sensors", "model"],
            [[_t(r["ts"]), _s(r["status"], 10), _f(r["rul_hours"]),
              f"{_f(r['rul_lower_hours'])}-{_f(r['rul_upper_hours'])}", _f(r["health"], ".3f"),
              _f(r["anomaly_score"], ".3f"), _s(",".join(r["top_sensors"] or []), 40),
              _s(r["model_version"], 20)] for r in shown],
        ))  # fmt: skip
        print(f"\n{len(alerts)} alert transitions:")
        print(alerts_table(alerts, with_equipment=False))
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0


def cmd_alerts_open(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    with q.connect(dsn) as conn:
        rows = q.open_alerts(conn)
    print(_json({"open_alerts": rows}) if args.json else alerts_table(rows))
    return 0


def cmd_alerts_ack(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    try:
        q.check_ack_name(args.by)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with q.connect(dsn) as conn:
        try:
            r = q.acknowledge(conn, args.alert_id, args.by)
        except q.UnknownAlert:
            print(f"alerts: unknown alert id {safe_for_log(args.alert_id)}", file=sys.stderr)
            return 1
    if args.json:
        print(_json(r.__dict__))
        return 0
    what = "already acknowledged" if r.already else "acknowledged"
    print(f"{_s(r.alert_id)} ({_s(r.equipment_id)} {_s(r.rule)}): {what} by "
          f"{_s(r.acknowledged_by)} at {_t(r.acknowledged_at)}")  # fmt: skip
    return 0


def cmd_alerts_fatigue(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    with q.connect(dsn) as conn:
        report = fatigue(q.all_alerts(conn), q.observed_spans(conn), args.dwell_hours * 3600)
    if args.json:
        print(_json(report))
        return 0
    headers = ["alerts", "per machine-day", "episodes", "flaps", "flap rate", "acked",
               "ack median", "ack max"]  # fmt: skip

    def cells(f: dict[str, Any]) -> list[str]:
        return [str(f["alerts"]), f"{f['per_machine_day']:.2f}", str(f["episodes"]),
                str(f["flaps"]), f"{f['flap_rate']:.0%}", str(f["acked"]),
                duration_text(f["ack_median_s"]), duration_text(f["ack_max_s"])]  # fmt: skip

    machines = [f.to_json_dict() for f in report.machines]
    print(f"per machine (flap: re-fired within {args.dwell_hours:g} h of resolving):")
    print(
        table(
            ["equipment", "machine-days", *headers],
            [[_s(f["key"], 40), f"{f['machine_days']:.2f}", *cells(f)] for f in machines],
        )
    )
    print("\nper rule:")
    rules = [f.to_json_dict() for f in report.rules]
    print(table(["rule", *headers], [[_s(f["key"], 30), *cells(f)] for f in rules]))
    return 0


def _when(text: str) -> datetime:
    """``--from``/``--to``: ISO-8601 (naive means UTC) or ``now``."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not an ISO-8601 time: {safe_for_log(text, 40)!r}") from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def cmd_maintenance_add(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    from connectors.maintenance import add_window

    starts, ends = _when(args.starts), _when(args.ends)
    if not ends > starts:
        raise UsageError(f"--to ({_t(ends)}) must be after --from ({_t(starts)})")
    if not args.reason.strip() or not args.equipment_id.strip():
        raise UsageError("the equipment id and --reason must not be empty")
    by = args.by or getpass.getuser()
    w = add_window(dsn, args.equipment_id, starts, ends, args.reason, by)
    if args.json:
        print(_json(w.to_json_dict()))
    else:
        print(f"maintenance window {w.id}: {_s(w.equipment_id, 40)} from {_t(w.starts_at)} "
              f"to {_t(w.ends_at)} ({_s(w.reason)}, by {_s(w.created_by, 40)}): alerts are "
              "recorded, not notified")  # fmt: skip
    return 0


def cmd_maintenance_list(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    from connectors.maintenance import list_windows

    windows = list_windows(dsn, args.equipment, limit=args.limit)
    if args.json:
        print(_json([w.to_json_dict() for w in windows]))
        return 0
    headers = ["id", "equipment", "from", "to", "reason", "by"]
    rows = [[str(w.id), _s(w.equipment_id, 40), _t(w.starts_at), _t(w.ends_at), _s(w.reason),
             _s(w.created_by, 40)] for w in windows]  # fmt: skip
    print(table(headers, rows) if rows else "no maintenance windows")
    return 0


def cmd_web(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    from jobs.web import serve

    return serve(dsn, settings.alerts, args.bind, args.port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", help="PostgreSQL DSN (default: PM_DATABASE_URL)")
    common.add_argument("--json", action="store_true", help="JSON output, for scripts")
    sub = p.add_subparsers(dest="command", required=True)

    fleet = sub.add_parser("fleet", help="fleet status").add_subparsers(dest="sub", required=True)
    st = fleet.add_parser("status", parents=[common], help="machines by risk, or one machine")
    st.add_argument("--equipment", metavar="ID", help="one machine's history and alerts")
    st.add_argument("--plot", metavar="FILE.png", help="with --equipment: write its trajectory")
    st.add_argument("--limit", type=int, default=20, help="predictions shown (default 20)")
    st.add_argument("--plot-points", type=int, default=2000, help="predictions plotted")
    st.add_argument("--redis-url", help="take each machine's latest status from Redis")
    st.set_defaults(func=cmd_status)

    alerts = sub.add_parser("alerts", help="open alerts, acknowledge, fatigue figures")
    asub = alerts.add_subparsers(dest="sub", required=True)
    asub.add_parser("open", parents=[common], help="open alerts").set_defaults(func=cmd_alerts_open)
    ack = asub.add_parser("ack", parents=[common], help="acknowledge an alert")
    ack.add_argument("alert_id")
    ack.add_argument("--by", required=True, metavar="NAME", help="who acknowledges")
    ack.set_defaults(func=cmd_alerts_ack)
    fat = asub.add_parser("fatigue", parents=[common], help="alert-fatigue figures")
    fat.add_argument(
        "--dwell-hours",
        type=float,
        default=DEFAULT_DWELL_S / 3600,
        help="a re-fire within this long after resolving is a flap (default 6)",
    )
    fat.set_defaults(func=cmd_alerts_fatigue)

    mnt = sub.add_parser("maintenance", help="maintenance windows: alerts recorded, not sent")
    msub = mnt.add_subparsers(dest="sub", required=True)
    madd = msub.add_parser("add", parents=[common], help="add a window for one machine")
    madd.add_argument("equipment_id", metavar="ID")
    madd.add_argument("--from", dest="starts", default="now", metavar="TIME",
                      help="start, ISO-8601 (naive = UTC) or 'now' (default)")  # fmt: skip
    madd.add_argument("--to", dest="ends", required=True, metavar="TIME", help="end, ISO-8601")
    madd.add_argument("--reason", required=True, help="why (shown in the list)")
    madd.add_argument("--by", metavar="NAME", help="who (default: the login name)")
    madd.set_defaults(func=cmd_maintenance_add)
    mls = msub.add_parser("list", parents=[common], help="windows, newest end first")
    mls.add_argument("--equipment", metavar="ID", help="one machine's windows")
    mls.add_argument("--limit", type=int, default=100, help="rows shown (default 100)")
    mls.set_defaults(func=cmd_maintenance_list)

    web = sub.add_parser("web", parents=[common], help="serve the fleet web page")
    web.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    web.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    web.set_defaults(func=cmd_web)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dsn = ""
    try:
        settings = load_settings()
        dsn = args.database_url or (
            settings.database_url.get_secret_value() if settings.database_url else ""
        )
        if not dsn:
            raise UsageError("no database: set PM_DATABASE_URL or pass --database-url")
        if getattr(args, "limit", 1) < 1 or getattr(args, "plot_points", 1) < 1:
            raise UsageError("--limit and --plot-points must be at least 1")
        return int(args.func(args, settings, dsn))
    except UsageError as exc:
        print(f"pm: {exc}", file=sys.stderr)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"pm: bad configuration: {redact(str(exc), [dsn])}", file=sys.stderr)
    except psycopg.errors.UndefinedTable as exc:
        hint = "no fleet schema here: run python -m connectors.migrate --database-url URL"
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"pm: {hint} ({redact(first, [dsn])})", file=sys.stderr)
    except psycopg.Error as exc:  # psycopg may echo the DSN, password included
        print(f"pm: database error: {redact(str(exc).strip(), [dsn])}", file=sys.stderr)
    except redis.RedisError as exc:
        secrets = [dsn, getattr(args, "redis_url", None) or ""]
        print(f"pm: redis error: {redact(str(exc), secrets)}", file=sys.stderr)
    except OSError as exc:
        print(f"pm: {redact(str(exc), [dsn])}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
