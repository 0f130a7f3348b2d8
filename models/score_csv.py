"""Score any time series in a CSV file with the flow's anomaly detector.

``python -m models.score_csv --input FILE.csv [--timestamp-column C] [--value-columns A B ...]
[--id-column ID] --output SCORES.csv``

Rows are scored in file order, each before it is learnt, exactly as the flow scores an
equipment's readings (:class:`models.anomaly.AnomalyDetector`, the flow's default settings);
with ``--id-column``, every id gets its own detector, as every equipment does. The value
columns (default: every column but the timestamp and id ones) may be one (a univariate
series) or many; an empty cell (or NaN / NA / null) is a missing value, which the detector
tolerates. Values are scored as given: turn a raw vibration waveform into its RMS first.

The output has one row per input row, in the same order: ``row`` (1-based data row number),
the timestamp and id if given, ``score`` in [0, 1] (0 for the first ``--warmup`` rows
of each id, then calibrated: about 1 row in 10,000 of normal data scores above 0.9999, the
flow's default alert threshold), and ``alert``: the ``anomaly_high`` transition the flow's
alert rule (:func:`alerting.rules.evaluate`: threshold, consecutive count, hysteresis,
cooldown, as ``--anomaly-warning`` ... ``--cooldown-s``, the flow's defaults) raises at that
row, e.g. ``firing warning``, ``escalated critical``, ``resolved warning``, else empty. A
``firing`` is a page. The rule runs on event time: the timestamp column (ISO 8601, naive
means UTC, or epoch seconds / milliseconds), or rows ``--period-s`` apart without one. A
summary of the pages (how many, when) is printed.

Bad input (missing file or column, a non-numeric value, a short row) is reported with the
line at fault, and the exit status is 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from alerting.rules import ANOMALY_HIGH, FIRING, AlertState, Thresholds, evaluate
from models.anomaly import AnomalyDetector
from models.likelihood import ScoreLikelihood
from models.schemas import Prediction, iso_to_ms, ms_to_iso

MISSING = frozenset({"", "nan", "na", "n/a", "null", "none"})
DEFAULT_WARMUP = 60  # the flow's default (connectors.settings.AnomalySettings)
DEFAULT_WINDOW = 50
DEFAULT_PERIOD_S = 60.0  # event time between rows when there is no timestamp column
MAX_LISTED_PAGES = 10  # pages listed one by one in the summary


class InputError(ValueError):
    """The input cannot be scored; the message says where and why."""


@dataclass(frozen=True)
class Columns:
    """Positions of the columns in the header."""

    values: tuple[tuple[str, int], ...]
    timestamp: int | None
    ident: int | None


def resolve_columns(
    header: Sequence[str],
    timestamp: str | None,
    ident: str | None,
    values: Sequence[str] | None,
) -> Columns:
    """Find the named columns (default values: all but the timestamp and id ones).

    >>> resolve_columns(["ts", "a", "b"], "ts", None, None).values
    (('a', 1), ('b', 2))
    >>> resolve_columns(["ts", "a"], "time", None, None)
    Traceback (most recent call last):
    ...
    models.score_csv.InputError: no column 'time' in the header (columns: ts, a)
    """
    names = [h.strip() for h in header]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"duplicate column names in the header: {', '.join(dup)}")
    where = {n: i for i, n in enumerate(names)}

    def find(name: str) -> int:
        if name not in where:
            raise InputError(f"no column {name!r} in the header (columns: {', '.join(names)})")
        return where[name]

    ts = find(timestamp) if timestamp else None
    idc = find(ident) if ident else None
    if values:
        chosen = [(v, find(v)) for v in values]
    else:
        chosen = [(n, i) for i, n in enumerate(names) if i not in (ts, idc)]
    if not chosen:
        raise InputError("no value columns to score")
    if {i for _, i in chosen} & {ts, idc}:
        raise InputError("a value column cannot also be the timestamp or id column")
    return Columns(tuple(chosen), ts, idc)


def parse_value(text: str, line: int, column: str) -> float | None:
    """A cell as a float, ``None`` when missing; anything else is an :class:`InputError`.

    >>> parse_value(" 1.5 ", 2, "x"), parse_value("NA", 2, "x")
    (1.5, None)
    >>> parse_value("abc", 7, "x")
    Traceback (most recent call last):
    ...
    models.score_csv.InputError: line 7, column 'x': 'abc' is not a number
    """
    cell = text.strip()
    if cell.lower() in MISSING:
        return None
    try:
        value = float(cell)
    except ValueError:
        raise InputError(f"line {line}, column {column!r}: {cell!r} is not a number") from None
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise InputError(f"line {line}, column {column!r}: {cell!r} is not finite")
    return value


def parse_time(text: str, line: int, column: str) -> int:
    """A timestamp cell as epoch ms: ISO 8601 (naive means UTC) or epoch s / ms (> 1e11).

    >>> parse_time("2014-04-01 00:05:00", 2, "t"), parse_time("60", 2, "t")
    (1396310700000, 60000)
    >>> parse_time("yesterday", 9, "t")
    Traceback (most recent call last):
    ...
    models.score_csv.InputError: line 9, column 't': 'yesterday' is not a timestamp
    """
    cell = text.strip()
    try:
        number = float(cell)
    except ValueError:
        try:
            return iso_to_ms(cell)
        except (ValueError, OverflowError):
            pass
    else:
        if math.isfinite(number) and 0 <= number < 1e15:
            return round(number if number > 1e11 else number * 1000.0)
    raise InputError(f"line {line}, column {column!r}: {cell!r} is not a timestamp")


@dataclass(frozen=True)
class Page:
    """One alert onset (``firing``): where, for whom, and how severe."""

    row: int
    ts_ms: int
    ident: str | None
    severity: str


class AlertRule:
    """The flow's ``anomaly_high`` rule over scored rows, one :class:`AlertState` per id.

    >>> rule = AlertRule(Thresholds(cooldown_s=0))
    >>> [rule.step(None, i * 60_000, s) for i, s in enumerate([0.1, 1.0, 1.0, 0.2])]
    ['', 'firing critical', '', 'resolved critical']
    """

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.states: dict[str | None, AlertState] = {}

    def step(self, ident: str | None, ts_ms: int, score: float) -> str:
        """The rule's transition at this row (``"state severity"``), or ``""``."""
        state = self.states.get(ident)
        if state is None:
            state = self.states[ident] = AlertState()
        p = Prediction(
            ident or "series", "csv", ts_ms, None, "hours", None, None, None, 1.0, score,
            "ok", "score_csv", "0",
        )  # fmt: skip
        out = [a for a in evaluate(state, p, self.thresholds) if a.rule == ANOMALY_HIGH]
        return "; ".join(f"{a.state} {a.severity}" for a in out)


def page_summary(pages: Sequence[Page], rows: int, timed: bool) -> str:
    """What would have paged, in a few lines (times as ISO 8601 when they are real).

    >>> print(page_summary([Page(7, 360_000, None, "warning")], 100, True))
    would have paged 1 time in 100 rows (warning 1, critical 0):
      row 7 at 1970-01-01T00:06:00.000Z warning
    """
    if not pages:
        return f"would have paged 0 times in {rows} rows"
    crit = sum(p.severity == "critical" for p in pages)
    lines = [
        f"would have paged {len(pages)} time{'s' if len(pages) != 1 else ''} in {rows} rows "
        f"(warning {len(pages) - crit}, critical {crit}):"
    ]
    shown = pages if len(pages) <= MAX_LISTED_PAGES else pages[: MAX_LISTED_PAGES - 1]
    for p in shown:
        when = f" at {ms_to_iso(p.ts_ms)}" if timed else ""
        who = f" {p.ident}" if p.ident is not None else ""
        lines.append(f"  row {p.row}{when}{who} {p.severity}")
    if len(shown) < len(pages):
        last = pages[-1]
        when = f" at {ms_to_iso(last.ts_ms)}" if timed else ""
        lines.append(
            f"  ... {len(pages) - len(shown) - 1} more ..., the last: row {last.row}{when}"
        )
    return "\n".join(lines)


def score_rows(
    rows: Iterator[list[str]], columns: Columns, **detector_kw: Any
) -> Iterator[tuple[int, str | None, str | None, float]]:
    """``(row number, timestamp, id, score)`` per data row; line numbers count the header.

    >>> cols = resolve_columns(["t", "x"], "t", None, None)
    >>> rows = [[str(i), str(i % 3)] for i in range(5)]
    >>> [s for _, _, _, s in score_rows(iter(rows), cols, warmup=2, window_size=2)][:2]
    [0.0, 0.0]
    """
    detectors: dict[str | None, AnomalyDetector] = {}
    width = 1 + max(
        [i for _, i in columns.values] + [c for c in (columns.timestamp, columns.ident) if c]
    )
    for n, row in enumerate(rows, 1):
        line = n + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            raise InputError(f"line {line}: empty row")
        if len(row) < width:
            raise InputError(f"line {line}: {len(row)} fields, the header needs {width}")
        ts = row[columns.timestamp] if columns.timestamp is not None else None
        ident = row[columns.ident] if columns.ident is not None else None
        x = {}
        for name, i in columns.values:
            value = parse_value(row[i], line, name)
            if value is not None:
                x[name] = value
        det = detectors.get(ident)
        if det is None:
            det = detectors[ident] = AnomalyDetector(**detector_kw)
        yield n, ts, ident, det.score_learn(x)


@dataclass(frozen=True)
class ScoredRow:
    """One data row after the detector and the alert rule."""

    row: int
    timestamp: str | None
    ident: str | None
    score: float
    ts_ms: int
    alert: str  # the rule's transition here ("firing warning", ...), or ""
    likelihood: float | None = None  # what the rule judged, with ``likelihood=True``

    @property
    def signal(self) -> float:
        """The value the alert rule judged: the likelihood when on, else the score."""
        return self.score if self.likelihood is None else self.likelihood


def score_and_alert(
    rows: Iterator[list[str]],
    columns: Columns,
    thresholds: Thresholds | None = None,
    period_s: float = DEFAULT_PERIOD_S,
    timestamp_name: str = "timestamp",
    likelihood: bool = False,
    **detector_kw: Any,
) -> Iterator[ScoredRow]:
    """Score rows as :func:`score_rows` does, and run the flow's alert rule on the scores
    (with ``likelihood``, on each id's :class:`~models.likelihood.ScoreLikelihood` of them:
    an experimental option, not in the flow).

    >>> cols = resolve_columns(["x"], None, None, None)
    >>> rows = [[str(i % 3)] for i in range(4)]
    >>> [r.ts_ms for r in score_and_alert(iter(rows), cols, period_s=30, warmup=2, window_size=2)]
    [0, 30000, 60000, 90000]
    """
    rule = AlertRule(thresholds if thresholds is not None else Thresholds())
    period_ms = period_s * 1000.0
    lik: dict[str | None, ScoreLikelihood] = {}
    for n, ts, ident, score in score_rows(rows, columns, **detector_kw):
        ts_ms = (
            parse_time(ts, n + 1, timestamp_name) if ts is not None else round((n - 1) * period_ms)
        )
        if likelihood:
            lk = lik.get(ident)
            if lk is None:
                lk = lik[ident] = ScoreLikelihood()
            value = lk.update(score)
            yield ScoredRow(n, ts, ident, score, ts_ms, rule.step(ident, ts_ms, value), value)
        else:
            yield ScoredRow(n, ts, ident, score, ts_ms, rule.step(ident, ts_ms, score))


def score_file(
    source: IO[str],
    sink: IO[str],
    timestamp: str | None = None,
    ident: str | None = None,
    values: Sequence[str] | None = None,
    delimiter: str = ",",
    thresholds: Thresholds | None = None,
    period_s: float = DEFAULT_PERIOD_S,
    likelihood: bool = False,
    **detector_kw: Any,
) -> tuple[int, list[Page]]:
    """Score every row of ``source`` into ``sink``; returns the number of rows and the pages."""
    reader = csv.reader(source, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise InputError("the input is empty (no header row)")
    columns = resolve_columns(header, timestamp, ident, values)
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(
        ["row"]
        + ([timestamp] if timestamp else [])
        + ([ident] if ident else [])
        + ["score"]
        + (["likelihood"] if likelihood else [])
        + ["alert"]
    )
    count = 0
    pages: list[Page] = []
    rows = score_and_alert(
        reader, columns, thresholds, period_s, timestamp or "timestamp", likelihood, **detector_kw
    )
    try:
        for r in rows:
            out: list[object] = [r.row]
            if r.timestamp is not None:
                out.append(r.timestamp)
            if r.ident is not None:
                out.append(r.ident)
            out.append(f"{r.score:.9g}")
            if r.likelihood is not None:
                out.append(f"{r.likelihood:.9g}")
            out.append(r.alert)
            writer.writerow(out)
            count = r.row
            if r.alert.startswith(FIRING):
                pages.append(Page(r.row, r.ts_ms, r.ident, r.alert.split()[1]))
    except csv.Error as exc:
        raise InputError(f"line {reader.line_num}: {exc}") from None
    return count, pages


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.score_csv",
        description="Score each row of a CSV time series with the flow's anomaly detector "
        "(score in [0, 1], calibrated per series).",
    )
    p.add_argument("--input", required=True, help="CSV file with a header row")
    p.add_argument("--output", required=True, help="CSV file to write the scores to")
    p.add_argument("--timestamp-column", help="copied to the output (rows stay in file order)")
    p.add_argument(
        "--value-columns",
        nargs="+",
        metavar="COL",
        help="columns to score, space- or comma-separated (default: all but timestamp and id)",
    )
    p.add_argument("--id-column", help="one detector per distinct value (e.g. equipment id)")
    p.add_argument("--delimiter", default=",", help="field separator (default ',')")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="rows scored 0 per id")
    p.add_argument("--calibration-size", type=int, default=500, help="rows of memory")
    p.add_argument("--seed", type=int, default=0)
    th = Thresholds()
    a = p.add_argument_group(
        "alert rule", "the flow's anomaly_high rule (defaults: the flow's, PM_ALERTS__*)"
    )
    a.add_argument("--anomaly-warning", type=float, default=th.anomaly_warning)
    a.add_argument("--anomaly-critical", type=float, default=th.anomaly_critical)
    a.add_argument("--min-consecutive", type=int, default=th.anomaly_min_consecutive)
    a.add_argument("--hysteresis", type=float, default=th.hysteresis)
    a.add_argument("--cooldown-s", type=float, default=th.cooldown_s, help="event-time seconds")
    a.add_argument(
        "--period-s",
        type=float,
        default=DEFAULT_PERIOD_S,
        help="event time between rows when there is no --timestamp-column",
    )
    a.add_argument(
        "--likelihood",
        action="store_true",
        help="experimental, not in the flow: the rule judges the likelihood of the score "
        "(models.likelihood; adds a likelihood column)",
    )
    return p


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    """The rule's settings from the command line (ValueError when inconsistent)."""
    return Thresholds(
        anomaly_warning=args.anomaly_warning,
        anomaly_critical=args.anomaly_critical,
        anomaly_min_consecutive=args.min_consecutive,
        hysteresis=args.hysteresis,
        cooldown_s=args.cooldown_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = [v.strip() for arg in args.value_columns or [] for v in arg.split(",") if v.strip()]
    if args.warmup < 2:
        parser.error(f"--warmup must be >= 2, got {args.warmup}")
    if args.calibration_size < 10:
        parser.error(f"--calibration-size must be >= 10, got {args.calibration_size}")
    if len(args.delimiter) != 1:
        parser.error(f"--delimiter must be one character, got {args.delimiter!r}")
    try:
        thresholds = thresholds_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    if not (math.isfinite(args.period_s) and args.period_s > 0):
        parser.error(f"--period-s must be > 0, got {args.period_s}")
    detector_kw = {
        "warmup": args.warmup,
        "window_size": min(DEFAULT_WINDOW, args.warmup),
        "calibration_size": args.calibration_size,
        "seed": args.seed,
    }
    out_path = Path(args.output)
    out_dir = out_path.parent
    if not out_dir.is_dir():
        print(f"error: output directory {str(out_dir)!r} does not exist", file=sys.stderr)
        return 2
    tmp = None
    try:
        with (
            open(args.input, newline="", encoding="utf-8-sig") as source,
            tempfile.NamedTemporaryFile(
                "w", dir=out_dir, prefix=f".{out_path.name}.", delete=False, newline=""
            ) as sink,
        ):
            tmp = sink.name
            n, pages = score_file(
                source,
                sink,
                args.timestamp_column,
                args.id_column,
                values or None,
                args.delimiter,
                thresholds,
                args.period_s,
                args.likelihood,
                **detector_kw,
            )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a temporary file is private; the result need not be
        os.replace(tmp, out_path)
        tmp = None
    except InputError as exc:
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"error: {args.input}: not UTF-8 text ({exc.reason})", file=sys.stderr)
        return 2
    except (OSError, csv.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    print(f"scored {n} rows of {args.input} into {out_path}", file=sys.stderr)
    print(page_summary(pages, n, timed=args.timestamp_column is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
