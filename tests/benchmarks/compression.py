"""The compression table: each method alone and combined, on the digits CNN (real weights,
held-out split) and on a tiny transformer text classifier trained here in seconds.
Not a test: it prints the README's table (size, MACs, held-out accuracy, output SQNR
from the manifest, latency vs the fp32 artifact in one interleaved bench run).

    .venv/bin/python tests/benchmarks/compression.py [--model digits|transformer] [--budget 1.0]

Run nothing else meanwhile (latency ratios only mean something on a quiet machine).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> compile_model options (budgeted ones use --max-accuracy-drop)
    "fp32": {},
    "prune structured": {"prune": "structured"},
    "lowrank": {"compress": ["lowrank"]},
    "cluster 4 bits": {"compress": ["cluster:4"], "fixed": True},
    "int8": {"quantize": "int8", "fixed": True},
    "prune + int8": {"prune": "structured", "quantize": "int8"},
    "lowrank + int8": {"compress": ["lowrank"], "quantize": "int8"},
    "all combined": {"prune": "structured", "compress": ["lowrank", "cluster"], "quantize": "int8"},
}


def transformer_fixture(work: Path, seed: int = 0) -> tuple[Path, Path, dict]:
    """A 1-layer transformer encoder classifier (d_model 64, 4 heads) on a synthetic task
    (which of 4 token groups occurs most in a 32-token sequence), trained for ~20 s."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vocab, seq, classes = 64, 32, 4

    def data(n):
        ids = rng.integers(0, vocab, (n, seq))
        counts = np.stack([np.isin(ids, np.arange(c * 8, c * 8 + 8)).sum(1) for c in range(classes)], 1)
        return ids.astype(np.int64), np.argmax(counts + rng.random(counts.shape) * 0.5, 1)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, 64)
            self.encoder = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.head = nn.Linear(64, classes)

        def forward(self, ids):
            return self.head(self.encoder(self.embed(ids)).mean(1))

    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x_train, y_train = data(6000)
    for epoch in range(6):
        for i in range(0, len(x_train), 64):
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x_train[i : i + 64])), torch.from_numpy(y_train[i : i + 64]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    path = work / "transformer.onnx"
    torch.onnx.export(model, (torch.from_numpy(x_train[:1]),), path, input_names=["ids"], output_names=["logits"], dynamo=False)
    calibration = work / "transformer-calibration.npz"
    np.savez(calibration, ids=x_train[:300], label=y_train[:300])
    x_test, y_test = data(500)
    return path, calibration, {"ids": x_test, "label": y_test}


def digits_fixture() -> tuple[Path, Path, dict]:
    from tvmdeploy.data import DIGITS_CALIBRATION, DIGITS_CNN, DIGITS_TEST

    test = np.load(DIGITS_TEST)
    return DIGITS_CNN, DIGITS_CALIBRATION, {"image": test["image"], "label": test["label"]}


def held_out_accuracy(artifact: Path, test: dict) -> float:
    from tvmdeploy import load

    model = load(artifact)
    name = model.inputs[0].name
    hits = [np.argmax(model(test[name][i : i + 1])[0]) == test["label"][i] for i in range(len(test["label"]))]
    return 100.0 * float(np.mean(hits))


def compile_variant(onnx_path, calibration, options: dict, budget: float, out: Path):
    from tvmdeploy import compile_model
    from tvmdeploy.compiler.compression import parse_compress_spec
    from tvmdeploy.compiler.pruning import parse_prune_spec
    from tvmdeploy.compiler.quantization import parse_quantize_spec

    drop = None if options.get("fixed") else budget
    kwargs = {}
    if "prune" in options:
        kwargs["prune"] = parse_prune_spec(options["prune"], drop)
    if "compress" in options:
        kwargs["compress"] = [parse_compress_spec(s, drop) for s in options["compress"]]
    if "quantize" in options:
        kwargs["quantize"] = parse_quantize_spec(options["quantize"], max_accuracy_drop=drop)
    if kwargs:
        kwargs.update(calibration_data=calibration, max_accuracy_drop=drop)
    return compile_model(onnx_path, output_dir=out, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits", choices=["digits", "transformer"])
    parser.add_argument("--budget", type=float, default=1.0, help="--max-accuracy-drop for the budgeted variants")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    from tvmdeploy.errors import TvmDeployError
    from tvmdeploy.runtime.bench import bench_artifact

    work = Path(args.work or tempfile.mkdtemp(prefix="tvmdeploy-compression-"))
    work.mkdir(parents=True, exist_ok=True)
    onnx_path, calibration, test = digits_fixture() if args.model == "digits" else transformer_fixture(work)
    rows = []
    for name, options in VARIANTS.items():
        out = work / name.replace(" ", "_").replace("+", "and")
        try:
            result = compile_variant(onnx_path, calibration, options, args.budget, out)
        except TvmDeployError as e:  # a variant over budget gives no artifact: say so in the table
            rows.append((name, None, str(e).splitlines()[0]))
            continue
        table = result.manifest.extra.get("size_accuracy", {}).get("rows")
        rows.append((name, out, table))
    base = rows[0][1]
    report = bench_artifact(base, compare=tuple(str(r[1]) for r in rows[1:] if r[1] is not None), repeat=args.repeat)
    fp32_acc = held_out_accuracy(base, test)
    print(f"\n{args.model}: CPU {platform.processor() or platform.machine()} ({_cpu_name()}), budget {args.budget} point(s)")
    print("| variant | stored bytes | MACs | held-out top-1 | calibration drop | output SQNR dB | latency vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name, out, table in rows:
        if out is None:
            print(f"| {name} | - | - | - | - | - | no artifact: {table} |")
            continue
        acc = held_out_accuracy(out, test)
        if table:
            first, last = table[0], table[-1]
            size = f"{last['stored_bytes']:,} ({last['stored_bytes'] / first['stored_bytes']:.3f}x)"
            macs = f"{last['macs'] / first['macs']:.3f}x"
            drop = f"{last['drop']:.2f}"
            sqnr = ", ".join("inf" if v is None else f"{v:.1f}" for v in last.get("output_sqnr_db") or [])
        else:
            size, macs, drop, sqnr = "1.000x", "1.000x", "-", "-"
        ratio = "1.000" if out == base else f"{1.0 / report.ratio(out.name):.3f}"
        print(f"| {name} | {size} | {macs} | {acc:.2f} ({acc - fp32_acc:+.2f}) | {drop} | {sqnr} | {ratio} |")
    print("\n" + report.table())


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
