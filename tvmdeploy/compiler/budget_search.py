"""The sensitivity scan and greedy search that spend an accuracy budget.

Shared by pruning, compression and their combination. A plan offers knobs (one per
layer and method), each with a grid of levels from mildest to most aggressive, what a
level saves (MACs or bytes), and the weights a set of levels gives. The scan measures
every knob alone at every level; the greedy then raises, one step at a time, the knob
that saves the most per point of its (individually measured) drop, keeps the step when
the combined plan stays within the budget, and freezes the knob when it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Protocol


class Plan(Protocol):
    knobs: list

    def grid(self, knob: Hashable) -> Sequence: ...

    def saving(self, knob: Hashable, level) -> float: ...


def greedy_search(
    plan: Plan, drop_of: Callable[[dict], float], budget: float, table: list, level_name: str = "level",
    excludes: Callable[[Hashable], Sequence] = lambda knob: (),
    single: dict | None = None,
) -> dict:
    """{knob: level} for the knobs raised (knobs left untouched are absent).

    drop_of({knob: level, ...}): the measured drop of that plan, in points. table: gets
    one row per scan measurement. excludes(knob): knobs that must stay untouched once
    this one is raised (two methods that cannot both apply to one layer). single: the
    scan's measurements, kept between calls on the same plan (a second search under a
    smaller budget measures nothing twice)."""
    single = {} if single is None else single
    for knob in plan.knobs:
        for level in plan.grid(knob):
            if (knob, level) in single:
                continue
            drop = drop_of({knob: level})
            single[knob, level] = drop
            table.append({"layer": _label(knob), level_name: level, "drop": round(drop, 3), "saves": plan.saving(knob, level)})
    current: dict = {}
    frozen: set = set()
    while True:
        best, best_score = None, -1.0
        for knob in plan.knobs:
            if knob in frozen:
                continue
            grid = list(plan.grid(knob))
            step = grid.index(current[knob]) + 1 if knob in current else 0
            if step >= len(grid):
                continue
            nxt = grid[step]
            before = plan.saving(knob, current[knob]) if knob in current else 0
            gain = plan.saving(knob, nxt) - before
            cost = max(single[knob, nxt] - (single[knob, current[knob]] if knob in current else 0.0), 0.0) + 0.05
            if gain / cost > best_score:
                best, best_score = (knob, nxt), gain / cost
        if best is None:
            return current
        knob, nxt = best
        trial = {**current, knob: nxt}
        if drop_of(trial) <= budget + 1e-9:
            current = trial
            frozen.update(excludes(knob))
        else:
            frozen.add(knob)


def _label(knob) -> str:
    return "/".join(map(str, knob)) if isinstance(knob, tuple) else str(knob)
