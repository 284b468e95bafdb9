"""ONNX's own node tests through tvmdeploy and through plain TVM: a report, not a test.

The onnx wheel ships no `backend/test/data/node`, so the cases are generated with the
onnx package's test-case generators (`onnx.backend.test.case.node.collect_testcases`).
Each case (one model, its inputs, ONNX's reference outputs) is run two ways:

    tvmdeploy   compile_model(model.onnx, "host") -> load -> run (the whole pipeline)
    plain TVM   relax.frontend.onnx.from_onnx -> tvm.compile(llvm) -> VirtualMachine

and classified as pass / wrong (numbers, shapes or dtypes differ; rtol 1e-3, atol 1e-5)
/ clear error (tvmdeploy: a TvmDeployError; plain TVM: an exception in import or build)
/ crash (an unexpected exception, a timeout, or the worker process dying). Cases run in
worker processes that are restarted after a crash, so one segfault costs one case.

    python tests/benchmarks/onnx_conformance.py                      # everything (~1,855 cases)
    python tests/benchmarks/onnx_conformance.py --ops Slice,Pad,TopK --jobs 2 --json report.json

The summary names every case plain TVM passes and tvmdeploy does not ("regressions").
Not part of the default test run (minutes to hours: one compile per case).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RTOL, ATOL = 1e-3, 1e-5
MARK = "@@conformance "  # prefixes the worker's result lines (TVM and onnx print too)


def collect(ops: list[str] | None):
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    cases = [c for c in cases if c.model is not None and c.data_sets]
    if ops:
        wanted = set(ops)
        cases = [c for c in cases if any(n.op_type in wanted for n in c.model.graph.node)]
    return sorted(cases, key=lambda c: c.name)


def _arrays(values):
    import numpy as np
    from onnx import TensorProto, numpy_helper

    out = []
    for v in values:
        if isinstance(v, TensorProto):
            v = numpy_helper.to_array(v)
        if not isinstance(v, np.ndarray):
            return None  # sequences, maps, optionals: not tensors
        out.append(v)
    return out


def _compare(got, expected) -> str | None:
    import numpy as np

    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        g = np.asarray(g)
        if g.shape != e.shape:
            return f"output {i}: shape {g.shape}, expected {e.shape}"
        if e.dtype.kind in "fc":
            if not np.allclose(g.astype(e.dtype), e, rtol=RTOL, atol=ATOL, equal_nan=True):
                return f"output {i}: max |diff| {float(np.nanmax(np.abs(g.astype(np.float64) - e))):.3g}"
        elif not np.array_equal(g.astype(e.dtype) if g.dtype != e.dtype else g, e):
            return f"output {i}: values differ"
    return None


def run_tvmdeploy(case, inputs, expected, folder: Path) -> tuple[str, str]:
    import onnx

    from tvmdeploy import compile_model, load
    from tvmdeploy.errors import TvmDeployError

    path = folder / "model.onnx"
    onnx.save(case.model, path)
    try:
        result = compile_model(path, "host", output_dir=folder / "artifact")
        model = load(result.artifact_dir)
        names = [i.name for i in case.model.graph.input if i.name not in {t.name for t in case.model.graph.initializer}]
        got = model(**dict(zip(names, inputs)))
    except TvmDeployError as e:
        message = str(e)
        return ("error" if message.strip() else "crash"), (message.splitlines()[0][:300] if message.strip() else "(empty message)")
    except Exception as e:  # noqa: BLE001 - the report classifies it
        return "crash", f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
    wrong = _compare(got, expected)
    return ("wrong", wrong) if wrong else ("pass", "")


def run_plain_tvm(case, inputs, expected) -> tuple[str, str]:
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        names = [i.name for i in case.model.graph.input if i.name not in {t.name for t in case.model.graph.initializer}]
        shapes = {n: list(x.shape) for n, x in zip(names, inputs)}
        dtypes = {n: str(x.dtype) for n, x in zip(names, inputs)}
        mod = from_onnx(case.model, shape_dict=shapes, dtype_dict=dtypes)
        target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
        executable = tvm.compile(mod, target)
        vm = relax.VirtualMachine(executable, tvm.cpu())
        result = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    except Exception as e:  # noqa: BLE001
        text = str(e).strip().splitlines()
        return "error", f"{type(e).__name__}: {text[-1][:300] if text else ''}"
    flat = []

    def walk(value):
        if isinstance(value, (list, tuple)) or type(value).__name__ in ("Array", "ADT", "Tuple"):
            for v in value:
                walk(v)
        elif hasattr(value, "numpy"):
            flat.append(value.numpy())
        else:
            flat.append(np.asarray(value))

    walk(result)
    wrong = _compare(flat, expected)
    return ("wrong", wrong) if wrong else ("pass", "")


def worker(indices: list[int], ops, timeout: int) -> None:
    """Runs the given cases, one JSON line each (after a "start" line, so a crash is attributed)."""
    import signal

    os.environ.setdefault("TVM_NUM_THREADS", "1")
    cases = collect(ops)

    def alarm(signum, frame):
        raise TimeoutError(f"over {timeout} s")

    signal.signal(signal.SIGALRM, alarm)
    for i in indices:
        case = cases[i]
        print(MARK + json.dumps({"start": i}), flush=True)
        record = {"index": i, "name": case.name, "ops": sorted({n.op_type for n in case.model.graph.node})}
        inputs, expected = _arrays(case.data_sets[0][0]), _arrays(case.data_sets[0][1])
        if inputs is None or expected is None:
            record["tvmdeploy"] = record["tvm"] = ["skip", "non-tensor inputs or outputs"]
        else:
            for key, run in (("tvm", lambda: run_plain_tvm(case, inputs, expected)),):
                signal.alarm(timeout)
                try:
                    record[key] = list(run())
                except TimeoutError as e:
                    record[key] = ["crash", str(e)]
                finally:
                    signal.alarm(0)
            with tempfile.TemporaryDirectory() as tmp:
                signal.alarm(timeout)
                try:
                    record["tvmdeploy"] = list(run_tvmdeploy(case, inputs, expected, Path(tmp)))
                except TimeoutError as e:
                    record["tvmdeploy"] = ["crash", str(e)]
                finally:
                    signal.alarm(0)
        print(MARK + json.dumps(record), flush=True)


def run_all(count: int, ops, jobs: int, timeout: int, log) -> list[dict]:
    """Split the cases over `jobs` worker processes; restart a worker after the case it died on."""
    queues = [list(range(j, count, jobs)) for j in range(jobs)]
    records: dict[int, dict] = {}
    script = Path(__file__).resolve()
    procs = {}

    def launch(j):
        if not queues[j]:
            return
        args = [sys.executable, str(script), "--worker", ",".join(map(str, queues[j])), "--timeout", str(timeout)]
        if ops:
            args += ["--ops", ",".join(ops)]
        procs[j] = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    for j in range(jobs):
        launch(j)
    import selectors

    selector = selectors.DefaultSelector()
    for j, p in procs.items():
        selector.register(p.stdout, selectors.EVENT_READ, j)
    current = {}
    while selector.get_map():
        for key, _ in selector.select():
            j = key.data
            line = key.fileobj.readline()
            if not line:  # the worker ended: done, or died on `current[j]`
                selector.unregister(key.fileobj)
                procs[j].wait()
                if j in current and current[j] not in records:
                    i = current.pop(j)
                    records[i] = {"index": i, "tvmdeploy": ["crash", f"worker died (exit {procs[j].returncode})"],
                                  "tvm": ["crash", "not run: worker died"]}
                    queues[j] = queues[j][queues[j].index(i) + 1:]
                    launch(j)
                    if j in procs and procs[j].poll() is None:
                        selector.register(procs[j].stdout, selectors.EVENT_READ, j)
                continue
            if not line.startswith(MARK):
                continue  # something the importer or TVM printed
            message = json.loads(line[len(MARK):])
            if "start" in message:
                current[j] = message["start"]
            else:
                records[message["index"]] = message
                log(message)
    return [records[i] for i in sorted(records)]


def summarize(records: list[dict], cases) -> dict:
    names = {i: c.name for i, c in enumerate(cases)}
    for r in records:
        r.setdefault("name", names.get(r["index"]))
    counted = [r for r in records if r["tvmdeploy"][0] != "skip"]
    ours, theirs = Counter(r["tvmdeploy"][0] for r in counted), Counter(r["tvm"][0] for r in counted)
    regressions = [r for r in counted if r["tvm"][0] == "pass" and r["tvmdeploy"][0] != "pass"]
    n = max(len(counted), 1)
    return {
        "cases": len(records),
        "counted": len(counted),
        "skipped": len(records) - len(counted),
        "tvmdeploy": dict(ours),
        "plain_tvm": dict(theirs),
        "tvmdeploy_pass_rate": round(100.0 * ours["pass"] / n, 1),
        "plain_tvm_pass_rate": round(100.0 * theirs["pass"] / n, 1),
        "regressions": [{"name": r["name"], "tvmdeploy": r["tvmdeploy"]} for r in regressions],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", help="only cases using these ONNX op types (comma-separated)")
    parser.add_argument("--limit", type=int, help="only the first N cases (after --ops)")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 0), help="worker processes")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per case and path (default 120)")
    parser.add_argument("--json", help="write the records and summary here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    ops = args.ops.split(",") if args.ops else None
    if args.worker is not None:
        worker([int(i) for i in args.worker.split(",") if i], ops, args.timeout)
        return 0
    cases = collect(ops)
    count = min(len(cases), args.limit) if args.limit else len(cases)
    started = time.monotonic()
    print(f"{count} ONNX node test cases, {args.jobs} workers", file=sys.stderr)

    def log(record):
        print(f"{record['tvmdeploy'][0]:>6} {record['tvm'][0]:>6}  {record['name']}", file=sys.stderr, flush=True)

    records = run_all(count, ops, args.jobs, args.timeout, log)
    summary = summarize(records, cases)
    summary["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "regressions"}, indent=1))
    print(f"regressions (plain TVM passes, tvmdeploy does not): {len(summary['regressions'])}")
    for r in summary["regressions"]:
        print(f"  {r['name']}: {r['tvmdeploy'][0]}: {r['tvmdeploy'][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
