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
the timestamp and id if given, and ``score`` in [0, 1] (0 for the first ``--warmup`` rows
of each id, then calibrated: about 1 row in 10,000 of normal data scores above 0.9999, the
flow's default alert threshold).

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

from models.anomaly import AnomalyDetector

MISSING = frozenset({"", "nan", "na", "n/a", "null", "none"})
DEFAULT_WARMUP = 60  # the flow's default (connectors.settings.AnomalySettings)
DEFAULT_WINDOW = 50


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


def score_file(
    source: IO[str],
    sink: IO[str],
    timestamp: str | None = None,
    ident: str | None = None,
    values: Sequence[str] | None = None,
    delimiter: str = ",",
    **detector_kw: Any,
) -> int:
    """Score every row of ``source`` into ``sink``; returns the number of rows."""
    reader = csv.reader(source, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise InputError("the input is empty (no header row)")
    columns = resolve_columns(header, timestamp, ident, values)
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(
        ["row"] + ([timestamp] if timestamp else []) + ([ident] if ident else []) + ["score"]
    )
    count = 0
    try:
        for n, ts, idv, score in score_rows(reader, columns, **detector_kw):
            out: list[object] = [n]
            if ts is not None:
                out.append(ts)
            if idv is not None:
                out.append(idv)
            out.append(f"{score:.9g}")
            writer.writerow(out)
            count = n
    except csv.Error as exc:
        raise InputError(f"line {reader.line_num}: {exc}") from None
    return count


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
    return p


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
            n = score_file(
                source,
                sink,
                args.timestamp_column,
                args.id_column,
                values or None,
                args.delimiter,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
