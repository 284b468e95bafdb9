"""`tvmdeploy` command line. Parsing and printing only: the work is in the Python API.

Errors a user can act on print one line to stderr and exit 1; anything unexpected
exits 2 and says how to get the traceback (--debug).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..compiler.quantization.config import ACTIVATIONS, OBSERVERS, SMOOTH_ALPHA
from ..compiler.quantization.config import SCHEMES as QUANTIZE_SCHEMES
from ..compiler.tuning.budget import CONVERGED_AFTER_TRIALS, DEFAULT_TRIALS
from ..errors import TvmDeployError, interrupt_requested, os_error_line, request_interrupt, summarize_exception


class UsageError(TvmDeployError):
    """A command-line argument that cannot be parsed into the API's types."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so staging folders are removed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        return args.handler(args) or 0
    except BaseException as e:
        if interrupt_requested() or isinstance(e, KeyboardInterrupt):
            print("tvmdeploy: interrupted", file=sys.stderr)
            return 130
        if isinstance(e, BrokenPipeError):
            return _reader_went_away()
        if args.debug or not isinstance(e, Exception):
            raise
        if isinstance(e, TvmDeployError):
            print(f"tvmdeploy: error: {e}", file=sys.stderr)
            global exit_without_cleanup
            # A thread is still blocked in TVM's RPC: the program (cli/__main__) ends with
            # os._exit, as interpreter exit could wait on that thread.
            exit_without_cleanup = type(e).__name__ == "RemoteTimeout"
            return 1
        if isinstance(e, OSError) and os_error_line(e):
            print(f"tvmdeploy: error: {os_error_line(e)}", file=sys.stderr)
            return 1
        if isinstance(e, MemoryError):
            print(f"tvmdeploy: error: out of memory ({summarize_exception(e, 300)}); check the shapes "
                  f"involved, or run on a machine with more memory", file=sys.stderr)
            return 1
        # A bug, or a TVM failure nobody anticipated.
        print(
            f"tvmdeploy: unexpected error: {summarize_exception(e)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 2


exit_without_cleanup = False  # set when a network wait timed out (see cli/__main__.py)


def _reader_went_away() -> int:
    """`tvmdeploy inspect | head`: the reader closed the pipe; end quietly, as `cat` does.

    stdout is pointed at /dev/null so that the interpreter's final flush does not fail too.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a writer ended by the pipe


def _raise_interrupt(signum, frame):
    # Raised inside a TVM callback, the KeyboardInterrupt comes back out of the FFI as
    # some other error; the flag lets main() still report it as an interruption, and the
    # compile stop at its next check even where a fallback swallowed that error.
    request_interrupt()
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvmdeploy",
        description="Compile trained models into fast, verified TVM artifacts, and run them.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile a model into an artifact folder")
    p.add_argument("model", help="model file: .onnx, .pt2 (torch.export.save) or .tflite")
    p.add_argument("--target", "-t", default="host", help="target preset name or .toml file (default: host)")
    p.add_argument("-o", "--output", help="artifact folder (default: artifacts/<model>-<target>)")
    _add_input_shape(p)
    p.add_argument("--tune", action="store_true", help="tune the kernels the tuning cache does not cover yet")
    p.add_argument("--tune-trials", type=int, default=None, metavar="N", help=f"tuning trials (implies --tune; default {DEFAULT_TRIALS}, or until --time-budget is spent)")
    _add_tuning_options(p)
    _add_shrink_options(p)
    p.add_argument("--sign", metavar="KEY", help="sign the artifact with this Ed25519 private key (from `tvmdeploy keygen`)")
    p.set_defaults(handler=_cmd_compile)

    p = sub.add_parser("tune", help="tune a model's kernels for a target into the tuning cache")
    p.add_argument("model", help="model file: .onnx, .pt2 (torch.export.save) or .tflite")
    p.add_argument("--target", "-t", default="host", help="target preset name or .toml file (default: host)")
    p.add_argument("--trials", type=int, default=None,
                   help=f"trials across all kernels (default {DEFAULT_TRIALS}; with --time-budget alone, until the time is spent)")
    _add_input_shape(p)
    _add_tuning_options(p)
    _add_shrink_options(p)
    p.add_argument("--tracker", metavar="HOST:PORT", help="measure on a device from this TVM RPC tracker (cross presets)")
    p.add_argument("--key", help="the device key under --tracker (e.g. the board's preset name)")
    p.set_defaults(handler=_cmd_tune)

    p = sub.add_parser("tuning", help="move tuning records: export a target's records, import them elsewhere")
    tuning = p.add_subparsers(dest="tuning_command", required=True, metavar="ACTION")
    q = tuning.add_parser("export", help="write a target's tuning records to one file")
    q.add_argument("--target", "-t", default="host", help="target preset name or .toml file (default: host)")
    q.add_argument("-o", "--output", required=True, help="file to write (.json)")
    q.add_argument("--cache-dir", help="tuning cache root (default: $TVMDEPLOY_CACHE_DIR or ~/.cache/tvmdeploy)")
    q.set_defaults(handler=_cmd_tuning_export)
    q = tuning.add_parser("import", help="merge an exported records file into the cache")
    q.add_argument("file", help="a file written by `tvmdeploy tuning export`")
    q.add_argument("--cache-dir", help="tuning cache root (default: $TVMDEPLOY_CACHE_DIR or ~/.cache/tvmdeploy)")
    q.set_defaults(handler=_cmd_tuning_import)

    p = sub.add_parser("run", help="run an artifact with the thin loader")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="NAME=FILE.npy | FILE.npz",
        help="input array from a .npy file, or all inputs by name from one .npz (repeatable)",
    )
    p.add_argument("--random-inputs", action="store_true", help="run on random inputs of the right shapes")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the artifact's)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: the artifact's)")
    p.add_argument("--repeat", type=int, default=10, help="timed runs for the latency figure (default 10)")
    p.add_argument("--save-outputs", metavar="FILE.npz", help="write the outputs to an .npz file")
    p.add_argument(
        "--trusted-key", action="append", default=[], metavar="PUB",
        help="only run it if its manifest is signed by this public key (.pub from `tvmdeploy keygen`; repeatable)",
    )
    _add_remote_options(p)
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing artifacts (KEY and KEY.pub)")
    p.add_argument("key", help="private key file to write (its public key goes to KEY.pub)")
    p.set_defaults(handler=_cmd_keygen)

    p = sub.add_parser("sign", help="sign an artifact's manifest with an Ed25519 private key")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--key", required=True, help="private key file (from `tvmdeploy keygen`)")
    p.set_defaults(handler=_cmd_sign)

    p = sub.add_parser("pack", help="pack an artifact folder into one bundle file (.tvmd) that `run` and load() take")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("-o", "--output", help="bundle file (default: <artifact>.tvmd)")
    p.set_defaults(handler=_cmd_pack)

    p = sub.add_parser("inspect", help="show an artifact's manifest and verify its files")
    p.add_argument("artifact", help="artifact folder (or .tvmd bundle)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB", help="also check its signature against this public key (repeatable)")
    p.set_defaults(handler=_cmd_inspect)

    p = sub.add_parser("bench", help="time an artifact against ONNX Runtime, interleaved in one process")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--compare", action="append", default=[], metavar="PEER", help="peer: onnxruntime (default; the model in the manifest), onnxruntime:MODEL.onnx (ONNX Runtime on another export, e.g. its int8 QDQ model), or another artifact folder of the same model (repeatable)")
    p.add_argument("--model", help="the source .onnx for the peer (default: the path in the manifest)")
    p.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: all cores)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs of each first (default 5)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs of each (default 30)")
    p.add_argument("--chart", help="PNG chart path (default: <artifact>-bench.png beside the folder)")
    _add_remote_options(p)
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser("board", help="an emulated aarch64 board (qemu-user) with TVM's RPC server")
    board = p.add_subparsers(dest="board_command", required=True, metavar="ACTION")
    q = board.add_parser("setup", help="install qemu/cross tools (apt, as root) and an aarch64 Python with TVM's runtime")
    q.set_defaults(handler=_cmd_board_setup)
    q = board.add_parser("start", help="start TVM's RPC server on the emulated board (127.0.0.1)")
    q.add_argument("--target", "-t", default="aarch64-cortex-a72", help="aarch64 preset whose CPU qemu emulates (default: aarch64-cortex-a72)")
    q.add_argument("--port", type=int, default=9090, help="server port (default 9090; the next free one if busy)")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    q.add_argument("--tracker", metavar="HOST:PORT", help="register with this TVM RPC tracker")
    q.add_argument("--local-tracker", action="store_true", help="also start a tracker on 127.0.0.1 and register with it")
    q.add_argument("--key", help="device key under the tracker (default: the preset name)")
    q.set_defaults(handler=_cmd_board_start)
    q = board.add_parser("stop", help="stop the board's RPC server (and tracker)")
    q.set_defaults(handler=_cmd_board_stop)
    q = board.add_parser("status", help="what is set up and running")
    q.set_defaults(handler=_cmd_board_status)

    p = sub.add_parser("targets", help="list the target presets")
    p.set_defaults(handler=_cmd_targets)
    return parser


def _add_input_shape(p) -> None:
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="static shape for an input with symbolic dimensions (repeatable)",
    )


def _add_remote_options(p) -> None:
    p.add_argument("--rpc", metavar="HOST:PORT", help="run on the device behind this TVM RPC server")
    p.add_argument("--tracker", metavar="HOST:PORT", help="run on a device from this TVM RPC tracker (with --key)")
    p.add_argument("--key", help="device key: under --tracker, or the server's key with --rpc")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="wait for the device's handshake and session at most this long (default 120)")


def _remote(args):
    """The remote device the arguments name, or None to run here."""
    if not (args.rpc or args.tracker or args.key):
        return None
    from ..runtime.remote import RemoteDevice

    from ..runtime.remote import SESSION_START_TIMEOUT_S

    if args.timeout is not None and not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    return RemoteDevice(rpc=args.rpc, tracker=args.tracker, key=args.key, timeout_s=args.timeout or SESSION_START_TIMEOUT_S)


def _add_tuning_options(p) -> None:
    p.add_argument("--trials-per-task", type=int, default=None, metavar="N", help="cap on trials per kernel")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES", help="wall-clock cap on tuning")
    p.add_argument("--patience", type=int, default=CONVERGED_AFTER_TRIALS, metavar="N",
                   help=f"end a kernel's search after N of its trials without a 1%% gain (default {CONVERGED_AFTER_TRIALS}; 0: never, spend the whole budget)")
    p.add_argument("--cache-dir", help="tuning cache root (default: $TVMDEPLOY_CACHE_DIR or ~/.cache/tvmdeploy)")


def _budget(trials: int | None, args):
    from ..compiler.tuning.budget import TuningBudget

    return TuningBudget(trials=trials, trials_per_task=args.trials_per_task, minutes=args.time_budget, patience=args.patience)


_MAX_DIM = 2**31 - 1  # what the manifest schema and TVM's int32 shape arithmetic allow


def parse_input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape:
            raise UsageError(f"--input-shape '{item}' must look like NAME=D0,D1,... (e.g. input=1,3,224,224)")
        if any(not 0 < d <= _MAX_DIM for d in shape):
            raise UsageError(f"--input-shape '{item}': every dimension must be between 1 and {_MAX_DIM}")
        shapes[name] = shape
    return shapes


def _add_shrink_options(p) -> None:
    """--prune / --quantize and their options: the same for compile and tune."""
    p.add_argument(
        "--prune", metavar="SCHEME[:RATIO]",
        help="structured:0.3 (remove 30%% of channels), magnitude:0.5 (zero 50%% of weights; also "
        "magnitude:alpha=1.0 or magnitude:0.5,scope=layer), or a scheme alone with --max-accuracy-drop",
    )
    p.add_argument(
        "--compress", action="append", metavar="SCHEME[:LEVEL]",
        help="lowrank:0.25 (factor layers at a quarter of their rank; also lowrank:rank=16, "
        "lowrank:energy=0.9), cluster:4 (share each layer's weights among 16 values; cluster:4,per_channel=1), "
        "or a scheme alone with --max-accuracy-drop; may be given more than once",
    )
    p.add_argument(
        "--max-accuracy-drop", type=float, default=None, metavar="POINTS",
        help="top-1 points that --prune, --compress and --quantize together may cost (accuracy with labels, "
        "else agreement), spent by one sensitivity search; needs --calibration-data",
    )
    p.add_argument(
        "--quantize", choices=list(QUANTIZE_SCHEMES),
        help="int8-weight: int8 weights, float compute; int8: calibrated int8 compute (needs --calibration-data)",
    )
    p.add_argument("--observer", choices=list(OBSERVERS), default=None, help="int8 activation ranges: max |x|, a percentile of |x|, or the threshold that minimizes the KL divergence between float and int8 histograms (default minmax)")
    p.add_argument("--percentile", type=float, default=None, help="for --observer percentile (default 99.99)")
    p.add_argument(
        "--activations", choices=list(ACTIVATIONS), default=None,
        help="int8 activation scales: static (one per tensor, calibrated), dynamic (one per row/token, at run "
        "time, for matmul layers), auto (dynamic for matmul layers fed several rows, e.g. transformer "
        "tokens; static for conv and single-row layers; the default)",
    )
    p.add_argument(
        "--smooth-alpha", default=None, metavar="A|none",
        help=f"int8: SmoothQuant migration strength in [0, 1] for matmul layers (kept where it lowers the "
        f"layer's error; default {SMOOTH_ALPHA}), or none",
    )
    p.add_argument(
        "--min-layer-sqnr", type=float, default=None, metavar="DB",
        help="int8: keep layers whose estimated int8 SQNR is below DB in float",
    )
    p.add_argument(
        "--calibration-data", metavar="FILE.npz",
        help="samples for pruning/quantization: one array per input (first axis: samples), optional 'label'",
    )


def _shrink_configs(args):
    """(prune config, compress configs, quantize config) from the parsed options; the
    accuracy budget goes to each (shrink.py spends one budget across several)."""
    prune = None
    if args.prune:
        from ..compiler.pruning import parse_prune_spec

        prune = parse_prune_spec(args.prune, args.max_accuracy_drop)
    quantize = None
    if args.quantize:
        from ..compiler.quantization import parse_quantize_spec

        quantize = parse_quantize_spec(
            args.quantize, observer=args.observer, percentile=args.percentile, min_layer_sqnr_db=args.min_layer_sqnr,
            activations=args.activations, smooth_alpha=args.smooth_alpha,
            max_accuracy_drop=args.max_accuracy_drop,
        )
    elif (args.observer or args.percentile is not None or args.min_layer_sqnr is not None or args.activations
          or args.smooth_alpha is not None):
        raise UsageError("--observer, --percentile, --min-layer-sqnr, --activations and --smooth-alpha go with --quantize int8")
    compress = []
    for spec in args.compress or ():
        from ..compiler.compression import parse_compress_spec

        compress.append(parse_compress_spec(spec, args.max_accuracy_drop))
    if args.max_accuracy_drop is not None and not (args.prune or args.quantize or compress):
        raise UsageError(
            "--max-accuracy-drop goes with --prune, --compress or --quantize (e.g. --prune structured --max-accuracy-drop 1.0)"
        )
    return prune, compress, quantize


def _cmd_compile(args) -> int:
    from ..compiler.pipeline import compile_model

    tune = args.tune or args.tune_trials is not None
    prune, compress, quantize = _shrink_configs(args)
    result = compile_model(
        args.model,
        target=args.target,
        output_dir=args.output,
        input_shapes=parse_input_shapes(args.input_shape),
        tune=_budget(args.tune_trials, args) if tune else None,
        cache_dir=args.cache_dir,
        prune=prune,
        compress=compress,
        quantize=quantize,
        calibration_data=args.calibration_data,
        sign_key=args.sign,
        max_accuracy_drop=args.max_accuracy_drop,
    )
    m = result.manifest
    print(f"compiled {m.model_name} for {m.preset} ({m.arch}, {m.device}) in {m.build_seconds:.1f} s")
    print(f"  import:  {import_line(result.reports.imported.to_json())}")
    schedule, tuning = result.reports.schedule, result.reports.schedule.tuning
    if tuning is not None:
        print(
            f"  tuning: {tuning.trials} new trials, {tuning.tasks_from_cache} of {len(tuning.tasks)} "
            f"kernels from the cache; estimated {_ms(tuning.estimated_ms)}, measured {_ms(result.reports.build.measured_ms)}"
        )
    print(
        f"  kernels: {schedule.kernels_from_cache} with tuned schedules from the cache, "
        f"{schedule.kernels_default} with default schedules (tune for more speed)"
    )
    pruning = result.reports.pruning
    if pruning is not None:
        b, a, acc = pruning.before, pruning.after, pruning.accuracy
        print(
            f"  pruning: {pruning.scheme}: MACs {b['macs']:,} -> {a['macs']:,}, non-zero params "
            f"{b['nonzero_params']:,} -> {a['nonzero_params']:,}, weight bytes {b['weight_bytes']:,} -> "
            f"{a['compact_weight_bytes'] if m.weights != 'embedded' else a['weight_bytes']:,}; "
            f"{acc['metric']} {acc['before']:.2f} -> {acc['after']:.2f} on {acc['data']}"
        )
        for skipped in pruning.skipped:
            print(f"    not pruned: {skipped['layer']} ({skipped['reason']})")
    quantization = result.reports.quantization
    if quantization is not None:
        b, a, acc = quantization.before, quantization.after, quantization.accuracy
        sqnr = ", ".join("inf" if s is None else f"{s:.1f}" for s in acc["output_sqnr_db"])
        print(
            f"  quantization: {quantization.scheme}: weight bytes {b['weight_bytes']:,} -> {a['weight_bytes']:,}; "
            f"output SQNR {sqnr} dB; {acc['metric']} {acc['before']:.2f} -> {acc['after']:.2f} on {acc['data']}"
        )
    compression = result.reports.compression
    if compression is not None:
        for method, rows in compression.layers.items():
            key = "rank" if method == "lowrank" else "bits"
            chosen = ", ".join(f"{r['layer']}={r[key]}" for r in rows if r[key] is not None) or "no layer"
            print(f"  {method}: {key} {chosen}")
    if result.reports.size_accuracy is not None:
        print("  " + result.reports.size_accuracy.text().replace("\n", "\n  "))
    print(f"  inputs:  {', '.join(s.describe() for s in m.inputs)}")
    print(f"  outputs: {', '.join(s.describe() for s in m.outputs)}")
    print(f"  artifact: {result.artifact_dir}")
    if args.sign:
        print(f"  signed with {args.sign} (manifest.sig)")
    print(f"run it with: tvmdeploy run {result.artifact_dir} --random-inputs")
    return 0


def _ms(value) -> str:
    return f"{value:.3f} ms" if value is not None else "n/a"


def _cmd_tune(args) -> int:
    from ..compiler.pipeline import tune_model

    prune, compress, quantize = _shrink_configs(args)
    report = tune_model(
        args.model,
        target=args.target,
        budget=_budget(args.trials, args),
        input_shapes=parse_input_shapes(args.input_shape),
        cache_dir=args.cache_dir,
        tracker=args.tracker,
        key=args.key,
        prune=prune,
        compress=compress,
        quantize=quantize,
        calibration_data=args.calibration_data,
        max_accuracy_drop=args.max_accuracy_drop,
    )
    print(
        f"{report.trials} new trials in {report.seconds:.0f} s ({report.stopped_by}); "
        f"{report.tasks_from_cache} of {len(report.tasks)} kernels from the cache; "
        f"estimated latency {_ms(report.estimated_ms)}"
    )
    print(report.table())
    print(f"records: {report.cache_folder}")
    return 0


def _cmd_tuning_export(args) -> int:
    from ..compiler import _tvm
    from ..compiler.presets import load_preset, resolve_preset
    from ..compiler.tuning.cache import TargetCache

    _, tvm_target = resolve_preset(load_preset(args.target))
    cache = TargetCache.open(_tvm.target_to_dict(tvm_target), _tvm.TVM_VERSION, args.cache_dir)
    count = cache.export(args.output)
    if count == 0:
        print(f"warning: no tuning records for {args.target} in {cache.folder}", file=sys.stderr)
    print(f"exported {count} records for {args.target} to {args.output}")
    return 0


def _cmd_tuning_import(args) -> int:
    from ..compiler import _tvm
    from ..compiler.tuning.cache import import_records

    cache, total, added = import_records(args.file, _tvm.TVM_VERSION, args.cache_dir)
    print(f"imported {added} new of {total} records into {cache.folder}")
    return 0


def _load_inputs(items: list[str], model) -> dict[str, "object"]:
    import numpy as np

    arrays = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep:
            file, name = item, None
        path = Path(file)
        if not path.is_file():
            raise UsageError(f"--input {item}: no such file {path}")
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as e:
            raise UsageError(f"--input {item}: {path} is not a .npy/.npz file ({summarize_exception(e)})") from None
        if name is None:
            if not hasattr(loaded, "files"):
                raise UsageError(f"--input {item}: a .npy file needs a name: --input NAME={path}")
            for key in loaded.files:
                try:
                    arrays[key] = loaded[key]
                except Exception as e:  # an object (pickled) array, a damaged member
                    raise UsageError(
                        f"--input {item}: {path} holds '{key}', which is not a plain numeric array "
                        f"({summarize_exception(e, 160)}); save it with numpy.savez from a numeric array"
                    ) from None
        else:
            arrays[name] = loaded
    expected = {s.name for s in model.inputs}
    unknown = sorted(set(arrays) - expected)
    if unknown:
        raise UsageError(
            f"--input names {', '.join(unknown)}, which the artifact does not take "
            f"(inputs: {', '.join(s.describe() for s in model.inputs)})"
        )
    return arrays


def _cmd_run(args) -> int:
    import numpy as np

    from ..runtime.loader import load, read_manifest

    if args.repeat < 0:
        raise UsageError(f"--repeat {args.repeat}: give the number of timed runs, 0 for none")
    if args.save_outputs:
        check_output_file(args.save_outputs, "--save-outputs")  # before the model runs, not after
    remote = _remote(args)
    trusted = args.trusted_key or None
    if remote is not None:
        from ..runtime.remote import load_remote

        if Path(args.artifact).is_file():
            raise UsageError(
                f"--rpc/--tracker upload an artifact folder, and {args.artifact} is a file (a bundle?); "
                f"give the artifact folder, or run the bundle here without --rpc/--tracker"
            )

        if trusted:  # checked here, before anything is uploaded
            from ..runtime.signing import verify_manifest_signature

            read_manifest(args.artifact)
            verify_manifest_signature(Path(args.artifact), trusted)
        model = load_remote(
            args.artifact, rpc=remote.rpc, tracker=remote.tracker, key=remote.key, threads=args.threads, timeout_s=remote.timeout_s
        )
    else:
        model = load(args.artifact, device=args.device, threads=args.threads, trusted_keys=trusted)
    if args.random_inputs:
        if args.input:
            raise UsageError("give either --input or --random-inputs, not both")
        inputs = dict(zip((s.name for s in model.inputs), model.random_inputs()))
    elif args.input:
        inputs = _load_inputs(args.input, model)
    else:
        raise UsageError(
            "no inputs: give --input NAME=FILE.npy for each of "
            f"({', '.join(s.describe() for s in model.inputs)}), an .npz with all of them, or --random-inputs"
        )
    outputs = model(**inputs)
    if remote is None:
        from ..runtime.tvm_library import mapped_tvm_libraries

        print(f"TVM libraries in this process: {', '.join(mapped_tvm_libraries()) or 'none'}")
    for spec, out in zip(model.outputs, outputs):
        flat = out.reshape(-1)
        summary = f"min {flat.min():.6g}  max {flat.max():.6g}  mean {flat.mean():.6g}" if flat.size else "empty"
        top = f"  argmax {int(flat.argmax())}" if flat.size and out.dtype.kind == "f" else ""
        print(f"output {spec.name}: {out.dtype}{list(out.shape)}  {summary}{top}")
    if args.repeat > 0:
        times = model.time([inputs[s.name] for s in model.inputs], repeat=args.repeat)
        print(f"latency: median {np.median(times) * 1e3:.3f} ms over {len(times)} runs (after 3 warm-up runs)")
    if args.save_outputs:
        _save_npz(args.save_outputs, {s.name: o for s, o in zip(model.outputs, outputs)})
        print(f"outputs written to {args.save_outputs}")
    return 0


def _save_npz(path: str, arrays: dict) -> None:
    """np.savez to a path can lose a failed write silently (it did to /dev/full): build the
    archive in memory, then write and flush it ourselves so that ENOSPC is an error."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()


def check_output_file(path: str, flag: str) -> None:
    """A file we will write later: its folder exists and is writable, and it is not a folder."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name (e.g. {target / 'outputs.npz'})")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable (permission denied); choose another path")


def _cmd_keygen(args) -> int:
    from ..compiler.signing import keygen

    private, public = keygen(args.key)
    print(f"private key: {private} (keep it secret; sign with `tvmdeploy sign ARTIFACT --key {private}`)")
    print(f"public key:  {public} (give it to devices: `tvmdeploy run ARTIFACT --trusted-key {public}`)")
    return 0


def _cmd_sign(args) -> int:
    from ..compiler.signing import sign_artifact

    signature = sign_artifact(args.artifact, args.key)
    print(f"signed {args.artifact}: {signature}")
    return 0


def _cmd_pack(args) -> int:
    from ..runtime.bundle import BUNDLE_SUFFIX, pack

    output = args.output or args.artifact.rstrip("/") + BUNDLE_SUFFIX
    path = pack(args.artifact, output)
    print(f"packed {args.artifact} into {path} ({path.stat().st_size:,} bytes)")
    print(f"run it with: tvmdeploy run {path} --random-inputs")
    return 0


def _cmd_inspect(args) -> int:
    if Path(args.artifact).is_file():  # a bundle: inspect what it unpacks to
        import shutil

        from ..runtime.bundle import unpack

        folder = unpack(args.artifact)
        try:
            return _inspect_folder(args, folder)
        except TvmDeployError as e:
            raise type(e)(str(e).replace(str(folder), args.artifact)) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _inspect_folder(args, Path(args.artifact))


def _inspect_folder(args, folder: Path) -> int:
    from ..runtime.artifact_manifest import read_manifest, verify_files
    from ..runtime.signing import SIGNATURE_NAME, verify_manifest_signature

    manifest = read_manifest(folder)
    if args.trusted_key:
        manifest = verify_manifest_signature(folder, args.trusted_key)
    if args.json:
        print(manifest.to_json(), end="")
    else:
        m = manifest
        print(f"{args.artifact}: {m.model_name} for preset {m.preset} ({m.arch}, {m.device})")
        print(f"  source:  {m.source_file} (sha256 {m.source_sha256[:16]}...)")
        if "import" in m.extra:
            print(f"  import:  {import_line(m.extra['import'])}")
        print(f"  inputs:  {', '.join(s.describe() for s in m.inputs)}")
        print(f"  outputs: {', '.join(s.describe() for s in m.outputs)}")
        print(f"  target:  {_target_line(m.target)}")
        if m.compute_capability:
            print(f"  gpu:     compute capability {m.compute_capability} or newer")
        print(f"  passes:  {', '.join(m.passes)}")
        print(f"  weights: {m.weights}; built in {m.build_seconds:.1f} s with " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
        if args.trusted_key:
            print(f"  signature: {SIGNATURE_NAME} verified against the trusted key(s)")
        elif (folder / SIGNATURE_NAME).is_file():
            print(f"  signature: {SIGNATURE_NAME} present, not checked (give --trusted-key PUB to check it)")
        else:
            print("  signature: none (unsigned)")
    # Sizes come from the verified descriptors: names are plain and inside the folder.
    sizes = verify_files(folder, manifest)
    if not args.json:
        for name, size in sizes.items():
            print(f"  file:    {name} ({size / 1e6:.2f} MB)")
        print("  files verified against the manifest's sha256")
    return 0


_FORMATS = {"onnx": "ONNX", "pytorch": "PyTorch", "tflite": "TFLite"}


def import_line(report: dict) -> str:
    """Which frontend imported the model and what the import rewrote (manifest extra["import"])."""
    versions = ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
    kind = _FORMATS.get(report.get("format"), report.get("format"))
    rewrites = report.get("rewrites") or []
    return (
        f"{kind}{f' ({versions})' if versions else ''} by {report.get('frontend')}; "
        f"rewrote: {', '.join(rewrites) if rewrites else 'nothing'}"
    )


def _target_line(target: dict) -> str:
    keys = ("kind", "mtriple", "mcpu", "mattr", "arch", "num-cores")
    line = ", ".join(f"{k}={target[k]}" for k in keys if k in target)
    if "host" in target:
        line += f"; host: {_target_line(target['host'])}"
    return line


def _cmd_bench(args) -> int:
    from ..runtime.bench import bench_artifact, write_chart

    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    remote = _remote(args)
    if remote is not None:
        # On the device only: ONNX Runtime would run here, not there, so no comparison.
        from ..runtime.remote import bench_remote

        print(bench_remote(args.artifact, remote, threads=args.threads, warmup=args.warmup, repeat=args.repeat).table())
        return 0
    chart = Path(args.chart) if args.chart else Path(str(Path(args.artifact)).rstrip("/") + "-bench.png")
    check_output_file(str(chart), "--chart")
    report = bench_artifact(
        args.artifact,
        compare=tuple(args.compare or ["onnxruntime"]),
        model_path=args.model,
        threads=args.threads,
        warmup=args.warmup,
        repeat=args.repeat,
    )
    print(report.table())
    print(f"chart: {write_chart(report, chart)}")
    return 0


def _cmd_targets(args) -> int:
    from ..compiler.presets import list_presets

    presets = list_presets()
    width = max(len(p.name) for p in presets)
    for p in presets:
        print(f"{p.name:<{width}}  {p.description}")
    return 0


def _cmd_board_setup(args) -> int:
    from .. import board

    b = board.setup(log=lambda line: print(line, flush=True))
    facts = b.facts()
    print(f"board ready: {b.root} ({facts.get('size_mb', '?')} MB, TVM {facts.get('tvm')} runtime only)")
    print("start it with: tvmdeploy board start [--target aarch64-cortex-a72] [--local-tracker]")
    return 0


def _cmd_board_start(args) -> int:
    from .. import board

    services = board.start(
        preset=args.target, host=args.host, port=args.port, tracker=args.tracker,
        local_tracker=args.local_tracker, key=args.key, log=lambda line: print(line, flush=True),
    )
    _print_services(services)
    server = services["server"]
    if server.tracker:
        print(f"run on it with: tvmdeploy run ARTIFACT --tracker {server.tracker} --key {server.key} --random-inputs")
        print(f"tune on it with: tvmdeploy tune MODEL --target {server.preset} --tracker {server.tracker} --key {server.key}")
    else:
        key = f" --key {server.key}" if server.key else ""
        print(f"run on it with: tvmdeploy run ARTIFACT --rpc {server.address}{key} --random-inputs")
    return 0


def _print_services(services) -> None:
    for s in services.values():
        if s.role == "server":
            under = f", registered with {s.tracker} as '{s.key}'" if s.tracker else ""
            print(f"RPC server: {s.address} (qemu-aarch64 -cpu {s.cpu}, preset {s.preset}{under}), pid {s.pid}")
        else:
            print(f"RPC tracker: {s.address}, pid {s.pid}")


def _cmd_board_stop(args) -> int:
    from .. import board

    stopped = board.stop()
    print("stopped: " + ", ".join(f"{s.role} on {s.address}" for s in stopped) if stopped else "nothing was running")
    return 0


def _cmd_board_status(args) -> int:
    from .. import board

    state = board.status()
    facts = state["facts"]
    if state["ready"]:
        timings = facts.get("timings", {})
        print(f"board: {state['board']} (set up in {timings.get('total_s', '?')} s, {facts.get('size_mb', '?')} MB, TVM {facts.get('tvm')})")
    else:
        print(f"board: not set up ({state['board']}); run `tvmdeploy board setup`")
    if state["services"]:
        _print_services(state["services"])
    else:
        print("not running")
    return 0
