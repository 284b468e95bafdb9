"""Shrinking the optimized graph, always in one order:

    prune -> low-rank -> cluster -> quantize (int8 / int8-weight / fp16)

Structured pruning removes channels first (later steps see the smaller layers),
low-rank factors what is left, clustering shares the values of the (factored) weights,
and int8 comes last (a clustered weight's shared values stay shared in int8).

One method, or several without a budget: each runs in turn (a method given its own
--max-accuracy-drop gates itself). Several methods under one --max-accuracy-drop, or
any --compress with a budget: one search spends the budget across all of them
(`_joint`): the int8 cost is measured first and set aside, then a sensitivity scan
over every (method, layer) knob and a greedy pass by stored bytes saved per point
lost pick the per-layer levels; the result is measured against the original model,
and a combination over budget gives no artifact. In a search, a layer is either
factored or clustered, never both, so the two commute.

Every step adds a row to the table users judge by (`SizeAccuracyTable`): parameters,
non-zero parameters, stored bytes, MACs, accuracy (or agreement) and output SQNR.
"""

from __future__ import annotations

from ...errors import TvmDeployError
from ..reports import SizeAccuracyTable
from .joint import JointSearch
from .methods import ShrunkGraph, Steps, channel_block, compress_fixed

ORDER = ("prune", "lowrank", "cluster", "quantize")


def shrink_graph(
    mod, inputs, prune=None, quantize=None, calibration_data=None, device="cpu", progress=None, target=None,
    compress=(), max_accuracy_drop=None,
) -> ShrunkGraph:
    """Pruning, compression and quantization of the optimized graph, the same for compile
    and tune (so tuning sees the kernels the artifact will have)."""
    from ..compression.config import CompressionError

    compress = _ordered(compress)
    asked = [c for c in (prune, *compress, quantize) if c is not None]
    calibration = None
    if calibration_data is not None:
        if not asked:
            raise TvmDeployError("--calibration-data is for --prune, --compress and --quantize; none was asked for")
        from ..calibration import load_calibration

        calibration = load_calibration(calibration_data, inputs)
    budgets = [c.max_accuracy_drop for c in asked if c.max_accuracy_drop is not None]
    budget = max_accuracy_drop if max_accuracy_drop is not None else (min(budgets) if budgets else None)
    if budget is not None and calibration is None:
        raise CompressionError("--max-accuracy-drop needs --calibration-data FILE.npz to measure accuracy on")
    if not asked:
        return _qdq_only(mod, inputs, progress, target)
    say = progress.message if progress is not None else (lambda text: None)
    from ..calibration import random_calibration

    data = calibration or random_calibration(inputs)
    table = SizeAccuracyTable(data=data.source)
    steps = Steps(mod, data, table, say)
    if budget is not None and (compress or len(asked) > 1):
        shrunk = _joint(mod, inputs, prune, compress, quantize, calibration, device, progress, target, budget, steps)
    else:
        shrunk = _in_turn(mod, inputs, prune, compress, quantize, calibration, device, progress, target, steps)
    shrunk.table = table
    if quantize is None:  # a QDQ model pruned or compressed: its Q/DQ layers still go int8
        qdq = _qdq_only(shrunk.mod, inputs, progress, target)
        shrunk.mod, shrunk.quantization = qdq.mod, qdq.quantization
    apart = _weights_apart(shrunk, compress)
    table.finish(apart)
    say(table.text())
    if apart:
        from .._tvm import relax
        from ..pruning.lift import lift_weights

        # Fold what is computed from weights (int8 zero-point corrections, packed
        # layouts) while they are still constants: as parameters it would run per call.
        shrunk.mod, shrunk.weights = lift_weights(relax.transform.FoldConstant()(shrunk.mod))
    return shrunk


def _weights_apart(shrunk: ShrunkGraph, compress) -> bool:
    """Weights travel beside the library when they compress there: magnitude-pruned
    zeros, or clustered values (when the search clustered at least one layer)."""
    if shrunk.pruning is not None and shrunk.pruning.stores_weights_apart:
        return True
    if shrunk.compression is None or not any(c.__class__.__name__ == "Clustering" for c in compress):
        return False
    return any(row.get("bits") for row in shrunk.compression.layers.get("cluster", []))


def _ordered(compress) -> list:
    from ..compression.config import SCHEMES, CompressionError, scheme_name

    compress = list(compress or ())
    names = [scheme_name(c) for c in compress]
    for name in set(names):
        if names.count(name) > 1:
            raise CompressionError(f"--compress {name} is given twice; give each method once")
    order = list(SCHEMES)
    return sorted(compress, key=lambda c: order.index(scheme_name(c)))


def _qdq_only(mod, inputs, progress, target) -> ShrunkGraph:
    # A pre-quantized (QDQ) model: its quantized layers compute in int8, not as float
    # (a model without QuantizeLinear/DequantizeLinear comes back unchanged).
    from ..quantization.quantize import quantize_qdq_model

    mod, quantization = quantize_qdq_model(mod, inputs, progress, target)
    return ShrunkGraph(mod, quantization=quantization)


def _in_turn(mod, inputs, prune, compress, quantize, calibration, device, progress, target, steps) -> ShrunkGraph:
    shrunk = ShrunkGraph(mod)
    if prune is not None:
        from ..pruning.config import scheme_name
        from ..pruning.prune import prune_graph

        shrunk.mod, shrunk.pruning = prune_graph(
            shrunk.mod, prune, inputs, calibration, progress, channel_multiple=channel_block(quantize, target)
        )
        steps.add(f"prune {scheme_name(prune)}", shrunk.mod, shrunk.pruning.accuracy)
    if compress:
        shrunk.mod, shrunk.compression = compress_fixed(shrunk.mod, compress, inputs, steps)
    if quantize is not None:
        from ..quantization.config import scheme_name
        from ..quantization.quantize import quantize_graph

        shrunk.mod, shrunk.quantization = quantize_graph(shrunk.mod, quantize, inputs, calibration, progress, device, target)
        steps.add(scheme_name(quantize), shrunk.mod, shrunk.quantization.accuracy, stats=shrunk.quantization.after, same_macs=True)
    return shrunk


def _joint(mod, inputs, prune, compress, quantize, calibration, device, progress, target, budget, steps) -> ShrunkGraph:
    search = JointSearch(mod, inputs, prune, compress, quantize, calibration, device, progress, target, budget, steps)
    return search.run()
