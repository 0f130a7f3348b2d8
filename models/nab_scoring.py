# ruff: noqa: E501 (long lines kept as in the shared original)
"""NAB (Numenta Anomaly Benchmark v1.1) scoring of per-row anomaly scores.

Vendored from the project's shared tools (``nab_score.py``) so the evaluation and its tests
need nothing outside the repository; ``python -m models.nab_scoring`` is the same command.
The scoring rules and profiles are those of NAB (https://github.com/numenta/NAB, Copyright
2014-2024 Numenta Inc., MIT licence); this is a re-implementation from their description,
not NAB's code. Checked there against NAB's published per-file scores.

usage:
  python -m models.nab_scoring --scores DIR_OR_FILE [DIR_OR_FILE ...] [--data-dir ../data/nab-dev]
               [--profile standard|reward_low_FP_rate|reward_low_FN_rate|all]  (default all;
                         low_FP / low_FN accepted as short names)
               [--threshold T | --threshold PROFILE=T ... | --optimize | --nab-thresholds DETECTOR]
               [--compare DETECTOR]

Score files: CSV with columns `timestamp` and `anomaly_score` (values in [0, 1]; other
columns ignored), one per NAB data file, with the same rows as the data file. A score
file is matched to the NAB data file whose name it contains (`nyc_taxi.csv`,
`numenta_nyc_taxi.csv`, ...); directories are searched recursively for *.csv.
--data-dir holds data/<category>/*.csv, labels/combined_windows.json and, optionally,
config/profiles.json, config/thresholds.json, results/per_file_scores/ (default:
../shared/data/nab-dev from the project root).

Thresholds: --threshold T applies T to every profile (PROFILE=T sets one profile);
--nab-thresholds DETECTOR takes the published per-profile thresholds of DETECTOR from
config/thresholds.json; --optimize (the default) picks, per profile, the threshold that
maximises the total raw score over the given files. The optimiser is exact, not a
grid or hill climb: the raw score only changes where the threshold crosses a score
value, so it evaluates every distinct post-probation score value (incrementally, rows
sorted by descending score) plus the "never alarm" threshold (1.0, or just above 1.0
when some score equals 1.0), and takes the highest threshold among ties (1e-9).

Scoring (from our description of NAB v1.1, not from NAB's code): per file the first
P = min(floor(0.15 N), 750) rows are ignored; a row is a detection when
score >= threshold; each labelled window earns the value of its earliest detection,
A_TP * sigma(-(r - i + 1) / W) / sigma(-1), or -A_FN when undetected; each detection
outside every window earns -A_FP before the first window ends, else
A_FP * sigma((i - r') / (W' - 1)) for the last window (r', W') that ended before it,
with sigma(y) = 2 / (1 + exp(5 y)) - 1 (-1 for y > 3). TP/FP/FN/TN are row counts.
Normalised NAB = 100 * (S - S_null) / (S_perfect - S_null) over the given files, with
S_perfect = A_TP * windows and S_null = -A_FN * windows (the null detector never alarms).

Output: per profile, a table of files (windows, raw score, TP, FP, FN, TN), the total
and the normalised score; the last line is a summary such as
`NAB standard=55.47 low_FP=49.27 low_FN=61.54 files=7`. Exit 0 on success, 2 on bad
input, 1 when --compare finds a mismatch.

Validation: on published detector outputs with their published thresholds (--nab-thresholds
DETECTOR --compare DETECTOR) it reproduces every published per-file Score (to 1e-9) and the
TP/FP/FN/TN counts in results/per_file_scores (42 of 42 rows checked). The exact optimiser was
checked against a brute-force search.
  Do not validate against the S(t)_* columns of the detector outputs (older scorer).
Needs Python 3.9+ and numpy.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
SHORT = {"standard": "standard", "reward_low_FP_rate": "low_FP", "reward_low_FN_rate": "low_FN"}
PROFILE_ALIASES = {"low_FP": "reward_low_FP_rate", "low_FN": "reward_low_FN_rate"}
# Cost matrices of NAB v1.1 (used when the data dir has no config/profiles.json).
DEFAULT_WEIGHTS = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}
PROBATION_FRACTION = 0.15
PROBATION_CAP = 0.15 * 5000  # 750 rows
TIE_TOL = 1e-9
# the NAB development set beside the project (../shared/data/nab-dev from the project root)
DEFAULT_DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "nab-dev"
)


class BadInput(Exception):
    """Raised for anything wrong with the arguments or input files (exit 2)."""


# ----------------------------------------------------------------------------- maths
def scaled_sigmoid(y):
    """sigma(y) = 2 / (1 + exp(5 y)) - 1, and -1 for y > 3 (array or scalar)."""
    y = np.asarray(y, dtype=float)
    with np.errstate(over="ignore"):
        s = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, s)


def probation_rows(n_rows: int) -> int:
    return int(min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_CAP))


@dataclass
class NabFile:
    """One NAB data file with its score column and window geometry."""

    key: str  # category/name.csv, as in the label file
    scores: np.ndarray  # per-row anomaly scores
    windows: list  # [(l, r)] inclusive row indices, sorted, non-overlapping
    probation: int
    in_window: np.ndarray = field(init=False)  # window index per row, -1 outside

    def __post_init__(self):
        self.in_window = np.full(len(self.scores), -1, dtype=np.int64)
        for k, (lo, hi) in enumerate(self.windows):
            self.in_window[lo : hi + 1] = k

    def row_values(self, w: dict) -> np.ndarray:
        """v_i: what a detection at row i would earn under cost weights w."""
        n = len(self.scores)
        idx = np.arange(n, dtype=float)
        v = np.full(n, -w["fp"], dtype=float)
        ends = np.array([hi for _, hi in self.windows], dtype=np.int64)
        widths = np.array([hi - lo + 1 for lo, hi in self.windows], dtype=float)
        inside = self.in_window >= 0
        if inside.any():
            k = self.in_window[inside]
            y = -(ends[k] - idx[inside] + 1.0) / widths[k]
            v[inside] = w["tp"] * scaled_sigmoid(y) / float(scaled_sigmoid(-1.0))
        # Outside windows: relative to the most recent window that ended before row i.
        out = ~inside
        if len(ends) and out.any():
            prev = np.searchsorted(ends, np.arange(n)[out], side="left") - 1
            has_prev = prev >= 0
            rows = idx[out][has_prev]
            j = prev[has_prev]
            with np.errstate(divide="ignore", invalid="ignore"):
                y = (rows - ends[j]) / (widths[j] - 1.0)  # W' = 1 gives +inf: full penalty
            vo = v[out]
            vo[has_prev] = w["fp"] * scaled_sigmoid(y)
            v[out] = vo
        return v

    def score_at(self, threshold: float, w: dict) -> dict:
        """Raw score and TP/FP/FN/TN row counts at one threshold."""
        n = len(self.scores)
        counted = np.arange(n) >= self.probation
        detected = (self.scores >= threshold) & counted
        inside = self.in_window >= 0
        v = self.row_values(w)
        total = 0.0
        for k in range(len(self.windows)):
            hit = detected & (self.in_window == k)
            total += float(v[hit].max()) if hit.any() else -w["fn"]
        total += float(v[detected & ~inside].sum())
        return {
            "score": total,
            "TP": int((detected & inside).sum()),
            "FP": int((detected & ~inside).sum()),
            "FN": int((~detected & inside & counted).sum()),
            "TN": int((~detected & ~inside & counted).sum()),
        }


def optimize_threshold(files: list, w: dict) -> tuple:
    """Exact maximiser of the summed raw score over thresholds; returns (theta, S)."""
    sc: Any = []
    val: Any = []
    win: Any = []
    n_windows = 0
    for f in files:
        keep = np.arange(len(f.scores)) >= f.probation
        v = f.row_values(w)
        sc.append(f.scores[keep])
        val.append(v[keep])
        gw = f.in_window[keep].copy()
        gw[gw >= 0] += n_windows  # global window ids
        win.append(gw)
        n_windows += len(f.windows)
    sc, val, win = np.concatenate(sc), np.concatenate(val), np.concatenate(win)
    base = -w["fn"] * n_windows  # never alarm
    max_score = float(sc.max()) if len(sc) else 0.0
    never = 1.0 if max_score < 1.0 else float(np.nextafter(max(max_score, 1.0), np.inf))
    if len(sc) == 0:
        return never, base
    order = np.argsort(-sc, kind="stable")  # rows in the order they switch on
    sc, val, win = sc[order], val[order], win[order]
    gain = np.where(win < 0, val, 0.0)  # false positives add their own value
    for k in np.unique(win[win >= 0]):  # a window earns the best value switched on so far
        pos = np.flatnonzero(win == k)
        best = np.maximum.accumulate(val[pos])
        gain[pos] = np.diff(np.concatenate(([-w["fn"]], best)))
    totals = base + np.cumsum(gain)
    last_of_group = np.flatnonzero(np.r_[sc[1:] != sc[:-1], True])
    cand_theta = np.r_[never, sc[last_of_group]]  # descending thresholds
    cand_total = np.r_[base, totals[last_of_group]]
    best_i = int(np.flatnonzero(cand_total >= cand_total.max() - TIE_TOL)[0])
    return float(cand_theta[best_i]), float(cand_total[best_i])


# ----------------------------------------------------------------------------- input
def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def read_csv(path: str, needed: tuple) -> tuple:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BadInput(f"{path}: cannot read CSV ({e})") from None
    if not rows:
        raise BadInput(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in needed if c not in header]
    if missing:
        raise BadInput(f"{path}: missing column(s) {', '.join(missing)} (header: {header})")
    cols = {c: header.index(c) for c in needed}
    body = [r for r in rows[1:] if any(x.strip() for x in r)]
    out = {}
    for c, j in cols.items():
        try:
            out[c] = [r[j] for r in body]
        except IndexError:
            raise BadInput(f"{path}: a row has fewer fields than the header") from None
    return out, len(body)


def resolve_data_dir(arg: str | None) -> str:
    cands = [arg] if arg else [DEFAULT_DATA_DIR]
    for c in cands:
        if os.path.isfile(os.path.join(c, "labels", "combined_windows.json")):
            return c
    raise BadInput(f"data dir {cands[0]!r} has no labels/combined_windows.json")


def load_json(path: str, what: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read {what} {path} ({e})") from None


def load_weights(data_dir: str) -> dict:
    path = os.path.join(data_dir, "config", "profiles.json")
    if not os.path.isfile(path):
        return DEFAULT_WEIGHTS
    raw = load_json(path, "profiles")
    try:
        return {
            p: {k: float(raw[p]["CostMatrix"][k + "Weight"]) for k in ("tp", "fp", "fn")}
            for p in PROFILES
        }
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"{path}: unexpected layout ({e})") from None


def list_data_files(data_dir: str) -> dict:
    """basename -> [category/basename] for every data/<category>/*.csv."""
    root = os.path.join(data_dir, "data")
    by_name: dict[str, list[str]] = {}
    if os.path.isdir(root):
        for cat in sorted(os.listdir(root)):
            d = os.path.join(root, cat)
            if os.path.isdir(d):
                for name in sorted(os.listdir(d)):
                    if name.endswith(".csv"):
                        by_name.setdefault(name, []).append(f"{cat}/{name}")
    if not by_name:
        raise BadInput(f"no data/<category>/*.csv under {data_dir}")
    return by_name


def match_score_file(path: str, by_name: dict) -> str | None:
    """NAB key (category/name.csv) whose file name the score file's name contains."""
    base = os.path.basename(path)
    hits = [n for n in by_name if n in base]
    if not hits:
        return None
    longest = max(len(n) for n in hits)
    hits = [n for n in hits if len(n) == longest]
    keys = [k for n in hits for k in by_name[n]]
    if len(keys) > 1:  # same name in several categories: use the parent folder
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        keys = [k for k in keys if k.split("/")[0] == parent] or keys
    if len(keys) > 1:
        raise BadInput(f"{path}: ambiguous, matches {keys}")
    return keys[0]


def collect_score_files(items: list, by_name: dict) -> dict:
    found: dict[str, str] = {}  # key -> path
    for item in items:
        if os.path.isdir(item):
            paths = sorted(
                os.path.join(dp, f) for dp, _, fs in os.walk(item) for f in fs if f.endswith(".csv")
            )
            explicit = False
        elif os.path.isfile(item):
            paths, explicit = [item], True
        else:
            raise BadInput(f"{item}: no such file or directory")
        for p in paths:
            key = match_score_file(p, by_name)
            if key is None:
                if explicit:
                    raise BadInput(f"{p}: name contains no NAB data file name")
                print(f"warning: skipping {p} (no NAB data file name in it)", file=sys.stderr)
                continue
            if key in found and os.path.abspath(found[key]) != os.path.abspath(p):
                raise BadInput(f"two score files for {key}: {found[key]} and {p}")
            found[key] = p
    if not found:
        raise BadInput("no score file matched a NAB data file")
    return found


def load_file(key: str, score_path: str, data_dir: str, windows_json: dict) -> NabFile:
    data_path = os.path.join(data_dir, "data", key)
    data, n = read_csv(data_path, ("timestamp",))
    sc, m = read_csv(score_path, ("timestamp", "anomaly_score"))
    if m != n:
        raise BadInput(f"{score_path}: {m} rows, but {key} has {n}")
    try:
        data_ts = [parse_ts(t) for t in data["timestamp"]]
    except ValueError as e:
        raise BadInput(f"{data_path}: bad timestamp ({e})") from None
    if sc["timestamp"] != data["timestamp"]:
        try:
            score_ts = [parse_ts(t) for t in sc["timestamp"]]
        except ValueError as e:
            raise BadInput(f"{score_path}: bad timestamp ({e})") from None
        bad = next(
            (i for i, (a, b) in enumerate(zip(score_ts, data_ts, strict=True)) if a != b), None
        )
        if bad is not None:
            raise BadInput(
                f"{score_path}: row {bad + 1} timestamp {sc['timestamp'][bad]!r} != data {data['timestamp'][bad]!r}"
            )
    try:
        scores = np.array([float(x) for x in sc["anomaly_score"]], dtype=float)
    except ValueError as e:
        raise BadInput(f"{score_path}: non-numeric anomaly_score ({e})") from None
    if (
        not np.all(np.isfinite(scores))
        or scores.min(initial=0.0) < 0.0
        or scores.max(initial=0.0) > 1.0
    ):
        raise BadInput(f"{score_path}: anomaly_score must be finite and in [0, 1]")
    if key not in windows_json:
        raise BadInput(f"{key}: not in labels/combined_windows.json")
    # Window rows: l = first and r = last row whose timestamp lies in [start, end].
    # (Membership is tested row by row: some NAB files have a short stretch where
    # time steps backwards, e.g. machine_temperature_system_failure.csv.)
    ts = np.array(data_ts, dtype="datetime64[us]")
    windows = []
    for pair in windows_json[key]:
        try:
            start, end = (np.datetime64(parse_ts(t), "us") for t in pair)
        except (ValueError, TypeError) as e:
            raise BadInput(f"{key}: bad window {pair!r} ({e})") from None
        rows = np.flatnonzero((ts >= start) & (ts <= end))
        if len(rows) == 0:
            print(f"warning: {key}: window {pair} holds no rows; ignored", file=sys.stderr)
            continue
        windows.append((int(rows[0]), int(rows[-1])))
    windows.sort()
    for (_, h0), (l1, _) in itertools.pairwise(windows):
        if l1 <= h0:
            raise BadInput(f"{key}: overlapping windows in the label file")
    return NabFile(key=key, scores=scores, windows=windows, probation=probation_rows(n))


# ----------------------------------------------------------------------------- CLI
def parse_thresholds(values: list, profiles: list) -> dict:
    out = {}
    for v in values:
        name, sep, num = v.rpartition("=")
        try:
            t = float(num)
        except ValueError:
            raise BadInput(f"--threshold {v!r}: not a number") from None
        if not math.isfinite(t):
            raise BadInput(f"--threshold {v!r}: not finite")
        if sep:
            name = PROFILE_ALIASES.get(name, name)
            if name not in PROFILES:
                raise BadInput(f"--threshold {v!r}: unknown profile {name!r}")
            out[name] = t
        else:
            out.update({p: t for p in PROFILES})
    missing = [p for p in profiles if p not in out]
    if missing:
        raise BadInput(f"--threshold: no threshold for profile(s) {', '.join(missing)}")
    return out


def load_published(data_dir: str, detector: str, profile: str) -> dict:
    path = os.path.join(data_dir, "results", "per_file_scores", f"{detector}_{profile}_scores.csv")
    if not os.path.isfile(path):
        raise BadInput(f"--compare: no {path}")
    cols, _ = read_csv(path, ("File", "Score", "TP", "TN", "FP", "FN"))
    return {
        f: {"score": float(s), "TP": int(tp), "TN": int(tn), "FP": int(fp), "FN": int(fn)}
        for f, s, tp, tn, fp, fn in zip(
            cols["File"], cols["Score"], cols["TP"], cols["TN"], cols["FP"], cols["FN"], strict=True
        )
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scores", nargs="+", required=True, metavar="DIR_OR_FILE")
    ap.add_argument(
        "--data-dir",
        default=None,
        help="NAB data dir (default ../shared/data/nab-dev from the project root)",
    )
    ap.add_argument(
        "--profile", default="all", choices=list(PROFILES) + ["low_FP", "low_FN", "all"]
    )
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--threshold", action="append", metavar="T|PROFILE=T")
    g.add_argument(
        "--optimize", action="store_true", help="maximise the total score per profile (default)"
    )
    g.add_argument(
        "--nab-thresholds",
        metavar="DETECTOR",
        help="use DETECTOR's thresholds from config/thresholds.json",
    )
    ap.add_argument(
        "--compare", metavar="DETECTOR", help="check per-file rows against results/per_file_scores"
    )
    args = ap.parse_args(argv)
    profiles = (
        list(PROFILES)
        if args.profile == "all"
        else [PROFILE_ALIASES.get(args.profile, args.profile)]
    )

    try:
        data_dir = resolve_data_dir(args.data_dir)
        weights = load_weights(data_dir)
        windows_json = load_json(
            os.path.join(data_dir, "labels", "combined_windows.json"), "labels"
        )
        by_name = list_data_files(data_dir)
        score_paths = collect_score_files(args.scores, by_name)
        files = [load_file(k, score_paths[k], data_dir, windows_json) for k in sorted(score_paths)]
        if args.threshold:
            thresholds, how = parse_thresholds(args.threshold, profiles), "given"
        elif args.nab_thresholds:
            table = load_json(os.path.join(data_dir, "config", "thresholds.json"), "thresholds")
            try:
                thresholds = {
                    p: float(table[args.nab_thresholds][p]["threshold"]) for p in profiles
                }
            except (KeyError, TypeError, ValueError):
                raise BadInput(
                    f"config/thresholds.json has no thresholds for {args.nab_thresholds!r}"
                ) from None
            how = f"published for {args.nab_thresholds}"
        else:
            thresholds, how = {}, "optimised over these files"
        published = (
            {p: load_published(data_dir, args.compare, p) for p in profiles} if args.compare else {}
        )
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    summary, mismatches = [], 0
    n_windows = sum(len(f.windows) for f in files)
    width = max(len(f.key) for f in files)
    for p in profiles:
        w = weights[p]
        if p not in thresholds:
            thresholds[p], swept = optimize_threshold(files, w)
        else:
            swept = None
        th = thresholds[p]
        print(
            f"== {p} (A_TP={w['tp']:g} A_FP={w['fp']:g} A_FN={w['fn']:g})  threshold={th!r} ({how})"
        )
        head = f"{'file':<{width}} {'windows':>7} {'raw_score':>12} {'TP':>6} {'FP':>6} {'FN':>6} {'TN':>7}"
        print(head + ("  published" if args.compare else ""))
        total = {"score": 0.0, "TP": 0, "FP": 0, "FN": 0, "TN": 0}
        ok_files, max_diff = 0, 0.0
        for f in files:
            r = f.score_at(th, w)
            for k in total:
                total[k] += r[k]
            line = f"{f.key:<{width}} {len(f.windows):>7} {r['score']:>12.6f} {r['TP']:>6} {r['FP']:>6} {r['FN']:>6} {r['TN']:>7}"
            if args.compare:
                ref = published[p].get(f.key)
                if ref is None:
                    line += "  (no published row)"
                    mismatches += 1
                else:
                    diff = abs(r["score"] - ref["score"])
                    max_diff = max(max_diff, diff)
                    same = diff <= 1e-6 and all(r[k] == ref[k] for k in ("TP", "FP", "FN", "TN"))
                    ok_files += same
                    mismatches += not same
                    line += (
                        "  match"
                        if same
                        else (
                            f"  MISMATCH published score={ref['score']:.6f} TP={ref['TP']} FP={ref['FP']} FN={ref['FN']} TN={ref['TN']}"
                        )
                    )
            print(line)
        print(
            f"{'TOTAL':<{width}} {n_windows:>7} {total['score']:>12.6f} {total['TP']:>6} {total['FP']:>6} {total['FN']:>6} {total['TN']:>7}"
        )
        if swept is not None and abs(swept - total["score"]) > 1e-6:
            print(
                f"warning: optimiser total {swept:.9f} != direct total {total['score']:.9f}",
                file=sys.stderr,
            )
        perfect, null = w["tp"] * n_windows, -w["fn"] * n_windows
        if perfect > null:
            nab = 100.0 * (total["score"] - null) / (perfect - null)
            print(
                f"normalised NAB ({p}) = {nab:.2f}   (S_perfect={perfect:g}, S_null={null:g}, windows={n_windows})"
            )
            summary.append(f"{SHORT[p]}={nab:.2f}")
        else:
            print(f"normalised NAB ({p}) = n/a (no windows in these files)")
            summary.append(f"{SHORT[p]}=n/a")
        if args.compare:
            print(
                f"compare {args.compare} {p}: {ok_files}/{len(files)} files match (max |score diff| {max_diff:.2e})"
            )
        print()
    sys.stdout.flush()
    print(f"NAB {' '.join(summary)} files={len(files)}")
    return EXIT_MISMATCH if mismatches else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
