"""MetaSchedule's JSON database files, read and merged as plain data.

The database is two files of JSON lines: workloads (`[structural hash, module]`) and
tuning records (`[workload line index, record]`). Records point at workloads by line
number, so files cannot simply be concatenated: merging re-indexes. A line cut short by
a killed process, garbage, or a record pointing at no workload is skipped (and counted),
never fatal. Files are only ever replaced whole (temporary
name + rename), so a reader never sees a half-written database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ...fsutil import atomic_write_text

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


@dataclass
class RecordSet:
    """Workloads and the records that refer to them, deduplicated, in file order."""

    workloads: list[str] = field(default_factory=list)  # raw JSON lines
    records: list[tuple[int, str]] = field(default_factory=list)  # (workload index, raw record JSON)
    skipped_lines: int = 0
    _workload_index: dict[str, int] = field(default_factory=dict, repr=False)
    _seen_records: set[tuple[int, str]] = field(default_factory=set, repr=False)

    def add_workload(self, line: str) -> int:
        index = self._workload_index.get(line)
        if index is None:
            index = self._workload_index[line] = len(self.workloads)
            self.workloads.append(line)
        return index

    def add_record(self, workload_line: str, record_json: str) -> bool:
        key = (self.add_workload(workload_line), record_json)
        if key in self._seen_records:
            return False
        self._seen_records.add(key)
        self.records.append(key)
        return True

    def merge(self, other: "RecordSet") -> int:
        """Add other's records (and their workloads); returns how many were new."""
        return sum(self.add_record(other.workloads[w], rec) for w, rec in other.records)

    def workload_hashes_with_records(self) -> set[str]:
        return {json.loads(self.workloads[w])[0] for w, _ in self.records}


def _json_lines(path: Path):
    if not path.is_file():
        return
    with open(path, "rb") as f:  # bytes: one undecodable line must not end the whole file
        for raw in f:
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                yield "", None
                continue
            if not line:
                continue
            try:
                yield line, json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                yield line, None


def read_database(folder: Path) -> RecordSet:
    result = RecordSet()
    raw_workloads: list[str | None] = []
    for line, value in _json_lines(folder / WORKLOAD_FILE):
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
        raw_workloads.append(line if ok else None)
        result.skipped_lines += not ok
        if ok:  # in file order, so a file this module wrote keeps its line numbers
            result.add_workload(line)
    for line, value in _json_lines(folder / RECORD_FILE):
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], int)
            and 0 <= value[0] < len(raw_workloads)
            and raw_workloads[value[0]] is not None
            and isinstance(value[1], list)
        )
        if not ok:
            result.skipped_lines += 1
            continue
        result.add_record(raw_workloads[value[0]], json.dumps(value[1], separators=(",", ":")))
    return result


def write_database(folder: Path, records: RecordSet) -> None:
    """Replace both files atomically (each by rename; records last, so that the record
    file never points past the end of the workload file)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / WORKLOAD_FILE, "".join(w + "\n" for w in records.workloads))
    atomic_write_text(folder / RECORD_FILE, "".join(f"[{w},{rec}]\n" for w, rec in records.records))
