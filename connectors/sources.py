"""Bytewax sources for the embedded inputs: the simulator, a C-MAPSS file and a JSONL file.

Each is a ``FixedPartitionedSource`` whose resume state is the number of records already
emitted by that partition, so a run restarted from recovery continues where its last
snapshot ended (the simulator is deterministic, so it regenerates and skips).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.kafka_io import RawRecord
from models.schemas import Origin

BATCH = 500


class _IterPartition(StatefulSourcePartition[RawRecord, int]):
    def __init__(self, records: Iterator[RawRecord], resume: int | None) -> None:
        self._it = records
        self._pos = resume or 0
        for _ in itertools.islice(self._it, self._pos):
            pass

    def next_batch(self) -> list[RawRecord]:
        batch = list(itertools.islice(self._it, BATCH))
        if not batch:
            raise StopIteration
        self._pos += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._pos


class _IterSource(FixedPartitionedSource[RawRecord, int]):
    """Partitions named ``parts``; ``make(part)`` yields that partition's records."""

    def __init__(self, parts: list[str], make: Callable[[str], Iterator[RawRecord]]) -> None:
        self._parts = parts
        self._make = make

    def list_parts(self) -> list[str]:
        return self._parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        return _IterPartition(self._make(for_part), resume_state)


def simulator_source(config: Any, partitions: int = 1) -> _IterSource:
    """The built-in simulator; equipment ids are spread over ``partitions`` by CRC32."""
    from connectors.simulator import simulate

    def make(part: str) -> Iterator[RawRecord]:
        index = int(part.rsplit("-", 1)[1])
        name = f"simulator:{part}"
        n = 0
        for reading, _truth in simulate(config):
            if zlib.crc32(reading["equipment_id"].encode()) % partitions == index:
                yield RawRecord(reading, Origin(name, part, n))  # type: ignore[arg-type]
                n += 1

    return _IterSource([f"sim-{i}" for i in range(partitions)], make)


def cmapss_source(path: str | Path) -> _IterSource:
    """Replay a C-MAPSS file, one reading per row."""
    from connectors.cmapss import cmapss_readings

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"C-MAPSS source file not found: {path}")

    def make(part: str) -> Iterator[RawRecord]:
        for i, reading in enumerate(cmapss_readings(path)):
            yield RawRecord(reading, Origin(f"cmapss:{path.name}", "0", i))  # type: ignore[arg-type]

    return _IterSource(["cmapss"], make)


def jsonl_source(path: str | Path) -> _IterSource:
    """Replay a JSON-lines file; each non-blank line is one raw record (validated later)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL source file not found: {path}")

    def make(part: str) -> Iterator[RawRecord]:
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield RawRecord(line.rstrip(b"\r\n"), Origin(f"jsonl:{path.name}", "0", lineno))

    return _IterSource(["jsonl"], make)
