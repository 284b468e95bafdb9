"""MetaSchedule databases over the cache's records, loaded so that a damaged record costs
its re-tuning, never a failed compile (kept apart from the tuner: the cache checks records
with `record_loads` when it imports them, and the tuner uses the cache)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .._tvm import ms
from ..kernels import register_intrinsics
from .records import RECORD_FILE, WORKLOAD_FILE, RecordSet, write_database

_log = logging.getLogger("tvmdeploy.tuning")


def load_database(folder: Path):
    # Loading replays every record's trace, and int8 records tensorize with tvmdeploy's
    # intrinsics: a database read before they are registered fails ("TensorIntrin
    # 'tvmdeploy_dot_16x4_vnni' is not registered") in an fp32 compile sharing the cache.
    register_intrinsics("llvm")
    return ms.database.JSONDatabase(
        path_workload=str(folder / WORKLOAD_FILE),
        path_tuning_record=str(folder / RECORD_FILE),
        allow_missing=True,
    )


def load_database_healing(folder: Path, records: RecordSet):
    """(a MetaSchedule database of `records` written to `folder`, the records TVM cannot load).

    TVM loads a database all or nothing (one record whose trace does not replay fails the
    whole load with "parallel_for_dynamic error"), so on failure each record is tried on its
    own and only the loadable ones are kept: a damaged record costs its re-tuning, never a
    failed compile. The caller removes the others from the shared cache (TargetCache.forget).
    """
    write_database(folder, records)
    try:
        return load_database(folder), RecordSet()
    except Exception:  # noqa: BLE001 - TVM raises its own error types from the FFI
        pass
    good, dropped = RecordSet(), RecordSet()
    for index, record in records.records:
        loads = record_loads(records.workloads[index], record)
        (good if loads else dropped).add_record(records.workloads[index], record)
    write_database(folder, good)
    return load_database(folder), dropped


def record_loads(workload_line: str, record_json: str) -> bool:
    """Whether MetaSchedule can load this record (its trace replays on its workload)."""
    register_intrinsics("llvm")  # int8 records name tvmdeploy's intrinsics
    try:
        workload = ms.database.Workload.from_json(json.loads(workload_line))
        ms.database.TuningRecord.from_json(json.loads(record_json), workload)
        return True
    except Exception:  # noqa: BLE001 - TVM's errors for a bad trace vary; any is "cannot load"
        return False
