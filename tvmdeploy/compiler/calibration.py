"""Samples that pruning and quantization measure on, and how their effect is scored.

Calibration data is an .npz with one array per model input (first axis: samples) and,
optionally, `label`/`labels`. Without it, seeded random inputs stand in (scored by
agreement with the original model, never by accuracy). Accuracy is judged by top-1
(accuracy with labels, else agreement) and by SQNR, 20*log10(|x| / |x - y|), of every
output against the original model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TvmDeployError
from ..runtime.inputs import random_inputs


class CalibrationError(TvmDeployError):
    """A calibration file that does not fit the model."""


RANDOM_SAMPLES = 32


@dataclass
class Calibration:
    source: str  # the file, or "random inputs"
    samples: list[list[np.ndarray]]  # per sample, one array per model input (batch 1)
    labels: np.ndarray | None


def load_calibration(path: str | Path, inputs) -> Calibration:
    """An .npz with one array per model input (first axis: samples) and optionally
    `label`/`labels` (integer class per sample)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration data {path}: no such file")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:  # numpy raises several types for a non-npz file
        raise CalibrationError(f"calibration data {path}: not a readable .npz file ({e})") from None
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in data]
    if missing:
        raise CalibrationError(
            f"calibration data {path}: no array for input(s) {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(repr, sorted(data))) or 'nothing'}); save it with np.savez(file, "
            + ", ".join(f"{n}=..." for n in names) + ")"
        )
    per_input, count = [], None
    for spec in inputs:
        array = data[spec.name]
        shape = tuple(spec.shape)
        if array.ndim == 0:
            raise CalibrationError(
                f"calibration data {path}: input {spec.name!r} is a single value; stack samples on a first axis "
                f"(shape [N{''.join(', ' + str(d) for d in shape)}])"
            )
        if shape and tuple(array.shape[1:]) == shape[1:] and shape[0] == 1:
            samples = [array[i : i + 1] for i in range(array.shape[0])]
        elif tuple(array.shape[1:]) == shape:
            samples = [array[i] for i in range(array.shape[0])]
        else:
            raise CalibrationError(
                f"calibration data {path}: input {spec.name!r} has shape {list(array.shape)}, expected "
                f"[N, {', '.join(map(str, shape[1:] if shape[0] == 1 else shape))}] (N samples of {spec.describe()})"
            )
        # np.asarray, not ascontiguousarray: that one turns a 0-d sample into shape (1,)
        samples = [np.require(np.asarray(s, dtype=spec.dtype), requirements="C") for s in samples]
        _refuse_non_finite(path, spec.name, samples)
        if count is not None and len(samples) != count:
            raise CalibrationError(f"calibration data {path}: inputs have different sample counts")
        count = len(samples)
        per_input.append(samples)
    if not count:
        raise CalibrationError(f"calibration data {path}: no samples")
    labels = data.get("label", data.get("labels"))
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != count or labels.dtype.kind not in "iu":
            raise CalibrationError(f"calibration data {path}: 'label' must hold one integer class per sample ({count})")
    return Calibration(str(path), [list(s) for s in zip(*per_input)], labels)


def _refuse_non_finite(path: Path, name: str, samples: list[np.ndarray]) -> None:
    """NaN or Inf in calibration data poisons every scale computed from it (an artifact
    with 0 % agreement): name the input and the first bad sample instead."""
    if not samples or samples[0].dtype.kind not in "fc":
        return
    bad = [i for i, sample in enumerate(samples) if not np.isfinite(sample).all()]
    if bad:
        raise CalibrationError(
            f"calibration data {path}: input {name!r} sample {bad[0]} holds NaN or Inf "
            f"({len(bad)} of {len(samples)} samples do); clean the data or drop those samples"
        )


def random_calibration(inputs, count: int = RANDOM_SAMPLES) -> Calibration:
    samples = [random_inputs(inputs, seed) for seed in range(count)]
    return Calibration("random inputs", samples, None)


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    noise = np.linalg.norm((reference - actual).astype(np.float64))
    signal = np.linalg.norm(reference.astype(np.float64))
    return float("inf") if noise == 0 else float(20 * np.log10(signal / noise)) if signal > 0 else float("-inf")


def top1(runs) -> np.ndarray:
    """[samples, positions] argmax of the first output's last axis."""
    return np.stack([np.argmax(r[0].reshape(-1, r[0].shape[-1]), axis=-1) for r in runs])


def confidence_drop(reference, outputs) -> float:
    """Points of probability (softmax of the first output) that the reference's top-1
    class loses, on average: a search's early warning. On data the model is sure of
    (its own training samples) top-1 moves only once the damage is large; the
    reference class's probability moves from the first step, and held-out top-1 with it."""
    ref = np.concatenate([r[0].reshape(-1, r[0].shape[-1]) for r in reference]).astype(np.float64)
    out = np.concatenate([o[0].reshape(-1, o[0].shape[-1]) for o in outputs]).astype(np.float64)
    if ref.shape[-1] < 2 or not np.isfinite(ref).all() or not np.isfinite(out).all():
        return 0.0
    cls = np.argmax(ref, axis=-1)
    rows = np.arange(len(cls))

    def prob(logits):
        z = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e[rows, cls] / e.sum(axis=-1)

    return 100.0 * float(np.mean(np.maximum(prob(ref) - prob(out), 0.0)))


def accuracy_report(reference, outputs, calibration: Calibration) -> dict:
    """How far `outputs` (runs of a changed model) are from `reference` (the original)."""
    ref_top1, out_top1 = top1(reference), top1(outputs)
    if calibration.labels is not None:
        metric = "top1_accuracy"
        before = 100.0 * float(np.mean(ref_top1[:, 0] == calibration.labels))
        after = 100.0 * float(np.mean(out_top1[:, 0] == calibration.labels))
    else:
        metric = "top1_agreement"
        before, after = 100.0, 100.0 * float(np.mean(ref_top1 == out_top1))
    sqnr = [
        sqnr_db(np.concatenate([r[i].reshape(-1) for r in reference]), np.concatenate([o[i].reshape(-1) for o in outputs]))
        for i in range(len(reference[0]))
    ]
    return {
        "metric": metric, "data": calibration.source, "samples": len(calibration.samples),
        "before": round(before, 3), "after": round(after, 3), "drop": round(before - after, 3),
        "output_sqnr_db": [round(x, 2) if np.isfinite(x) else None for x in sqnr],
    }
