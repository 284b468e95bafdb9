"""MetaSchedule auto-scheduling of a model's kernels, into the target's tuning cache.

    (lowering.lower_for_tuning makes the kernels: the same lowering the build uses,
                       so tuned workloads match the kernels being built)
    tune               tune the kernels the cache does not cover yet, within a budget
    apply_cached       give every kernel the cache has a record for its best schedule
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import _tvm
from .._tvm import ms, relax, tvm
from ...errors import BuildError, TvmDeployError, summarize_exception
from ..kernels import register_intrinsics
from ..kernels.select import has_fixed_schedule, space_for_kernel
from .budget import CONVERGED_GAIN, DEFAULT_TRIALS, TuningBudget  # noqa: F401  (DEFAULT_TRIALS re-exported)
from .cache import TargetCache, done_entry, ledger_says_done
from .progress import Progress, ProgressState
from .database import load_database, load_database_healing, record_loads  # noqa: F401  (record_loads re-exported)
from .records import read_database

_log = logging.getLogger("tvmdeploy.tuning")

if TYPE_CHECKING:
    from .remote import RemoteMeasure

# The lowering shared by tuning and building: kernels must be structurally identical to
# the tuned workloads, or the records would not apply.
@dataclass
class TaskReport:
    name: str
    weight: int  # how many times the model calls this kernel
    flops: float
    source: str  # "cache" (record found), "tuned" (this run), "untuned" (no trial reached it:
    # its default schedule serves, measured when default_ms is set), "default" (a copy such
    # as reshape/concatenate: not worth tuning)
    trials: int = 0  # new trials this run
    best_ms: float | None = None  # best measured latency of one call
    default_ms: float | None = None  # the untuned default schedule, measured this run

    @property
    def gflops(self) -> float | None:
        return self.flops / self.best_ms / 1e6 if self.best_ms else None


@dataclass
class TuningReport:
    cache_folder: str
    tasks: list[TaskReport]
    trials: int  # new trials measured in this run
    tasks_from_cache: int  # tasks whose records were reused (no trials spent on them)
    seconds: float
    budget: dict
    stopped_by: str  # "nothing to tune", "trial budget", "time budget", "search space exhausted",
    # "converged" (every kernel's search ended: exhausted, or no 1 % gain in `patience` trials)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (trials, est. latency ms)

    @property
    def estimated_ms(self) -> float | None:
        """Sum over tuned kernels of calls x best time (kernels never tuned are not counted)."""
        measured = [t for t in self.tasks if t.source != "default"]
        if not measured or any(t.best_ms is None for t in measured):
            return None
        return sum(t.weight * t.best_ms for t in measured)

    def to_json(self) -> dict:
        d = asdict(self)
        d["estimated_ms"] = self.estimated_ms
        return d

    def table(self) -> str:
        rows = sorted(self.tasks, key=lambda t: -(t.weight * (t.best_ms or 0)))
        lines = [f"  {'task':<58}{'calls':>6}{'GFLOP':>9}{'default ms':>11}{'best ms':>10}{'GFLOPS':>9}{'trials':>8}  source"]
        for t in rows:
            best = f"{t.best_ms:.4f}" if t.best_ms is not None else "-"
            default = f"{t.default_ms:.4f}" if t.default_ms is not None else "-"
            gflops = f"{t.gflops:.1f}" if t.gflops else "-"
            lines.append(
                f"  {t.name[:57]:<58}{t.weight:>6}{t.flops / 1e9:>9.4f}{default:>11}{best:>10}{gflops:>9}{t.trials:>8}  {t.source}"
            )
        return "\n".join(lines)


def _load_healing(cache: TargetCache, folder: Path, records, wait: bool):
    """The MetaSchedule database of `records` in `folder`; records it cannot load are
    dropped here and removed from the shared cache (see TargetCache.forget)."""
    database, unloadable = load_database_healing(folder, records)
    if unloadable.records:
        removed = cache.forget(unloadable, wait)
        where = "removed from the cache" if removed else "left in the cache for a later run to remove"
        _log.warning(
            "tuning cache: dropped %d record(s) whose schedule MetaSchedule cannot replay (%s; their kernels get tuned again)",
            len(unloadable.records), where,
        )
    return database


def apply_cached(fused: tvm.ir.IRModule, target: tvm.target.Target, cache: TargetCache, ran=None) -> tuple[tvm.ir.IRModule, int]:
    """Schedule every kernel the cache has a record for; returns (module, kernels scheduled).
    ran: a PassLog that records MetaSchedule's pass when it scheduled any kernel."""
    records = cache.read()  # no lock, damaged lines dropped: a read-only cache serves too
    if not records.records:
        return fused, 0
    # TVM reads a private copy of the clean records, never the shared files themselves.
    with tempfile.TemporaryDirectory(prefix="tvmdeploy-db-") as clean:
        database = _load_healing(cache, Path(clean), records, wait=False)
        with target, database:  # the pass reads the current target when it is made
            apply_database = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)
            scheduled = apply_database(fused)
    count = sum(1 for _, f in scheduled.functions.items() if isinstance(f, _tvm.PrimFunc) and _tvm.is_scheduled(f))
    if count and ran is not None:
        ran.append(str(apply_database.info.name))
    return scheduled, count


def tune(
    fused: tvm.ir.IRModule,
    target: tvm.target.Target,
    cache: TargetCache,
    budget: TuningBudget,
    progress: Progress | None = None,
    measure: "RemoteMeasure | None" = None,
) -> TuningReport:
    """Tune the kernels of `fused` that the cache does not cover, merging records into it.

    measure: time candidates on a remote device (None: on this machine).
    """
    if target.kind.name == "cuda":
        _require_tuning_gpu(target)
    started = time.monotonic()
    deadline = _Deadline(started + 60 * budget.minutes if budget.minutes else None)
    progress = progress or Progress()
    extracted = ms.relax_integration.extract_tasks(fused, target)
    reports = [
        TaskReport(t.task_name, int(t.weight), _tvm.estimate_flops(t.dispatched[0]), "untuned") for t in extracted
    ]
    # Heaviest kernels first: the gradient scheduler gives every task a first batch in
    # order, and a time budget may end before the last ones get theirs.
    order = sorted(range(len(extracted)), key=lambda i: -reports[i].flops * reports[i].weight)
    extracted, reports = [extracted[i] for i in order], [reports[i] for i in order]
    with cache.session() as session:
        database = _load_healing(cache, session, read_database(session), wait=True)
        per_task = budget.per_task(len(extracted))
        ledger = cache.read_ledger()
        seeded = read_database(session)
        counts = Counter(json.loads(seeded.workloads[w])[0] for w, _ in seeded.records)
        todo, remaining = [], {}
        for task, report in zip(extracted, reports):
            shash = database.commit_workload(task.dispatched[0]).as_json()[0]
            record = database.query_tuning_record(task.dispatched[0], target, task.task_name)
            if record is not None:
                report.best_ms = _median_ms(record.run_secs)
            entry = ledger.get(shash)
            # Copies (reshape, concatenate) and kernels with one schedule: the default serves.
            if report.flops == 0 or has_fixed_schedule(_kernel_of(task)):
                report.source = "default"
                continue
            if (entry is None and record is not None) or ledger_says_done(entry, per_task, budget.patience):
                report.source = "cache"
            else:
                todo.append((task, report, shash))
                remaining[shash] = max(1, per_task - counts.get(shash, 0))
        from_cache = sum(r.source == "cache" for r in reports)
        if not todo or budget.trials == 0:
            return TuningReport(
                str(cache.folder), reports, 0, from_cache, time.monotonic() - started, asdict(budget),
                "nothing to tune" if not todo else "trial budget",
            )
        trials = sum(remaining.values()) if budget.trials is None else min(budget.trials, sum(remaining.values()))
        task_cap = max(remaining.values())
        callback = _ProgressCallback(
            [r for _, r, _ in todo], reports, trials, deadline, progress, started,
            merge=lambda: cache.merge(read_database(session)), timed=budget.trials is None,
            patience=budget.patience,
        )
        progress.message(
            f"tuning {len(todo)} of {len(extracted)} kernels ({from_cache} done before) for "
            f"{target.kind.name} {target.attrs.get('mcpu', '')}: {_budget_words(budget, trials, task_cap)}"
        )
        cache.update_ledger({shash: {"state": "started", "per_task": per_task} for _, _, shash in todo})
        log_dir = cache.folder / "logs" / time.strftime("%Y%m%d-%H%M%S")
        measurer = _Measurer(target, measure)
        try:
            with _stop_on_signals(deadline, progress), _native_warnings_to(log_dir / "tvm-warnings.log", progress):
                progress.message(f"measuring the untuned default of {len(todo)} kernel(s)")
                measure_defaults([(t, r) for t, r, _ in todo], target, database, measurer, deadline)
                callback.merge()
                progress.update(callback.state())
                _run_metaschedule(
                    [t for t, _, _ in todo], target, database, trials, task_cap, deadline, callback, log_dir, measurer
                )
        except Exception as e:
            raise BuildError(f"tuning failed: {summarize_exception(e)} (MetaSchedule logs: {log_dir})") from e
        finally:
            measurer.close()
        if deadline.interrupted:
            # Every measured batch is already merged into the cache and the ledger still
            # says "started", so the next run continues these kernels.
            raise KeyboardInterrupt
        stopped_by = _stopped_by(deadline, callback.exhausted_tasks, len(callback.converged_tasks), len(todo))
        if stopped_by != "time budget":  # a run cut short by time continues next time
            cache.update_ledger({
                shash: done_entry(per_task, budget.patience if i in callback.converged_tasks else None)
                for i, (_, _, shash) in enumerate(todo)
            })
        for _, report, _ in todo:
            if report.best_ms is not None:
                # No trial reached it this run: its default (measured just now) or an
                # earlier run's record serves.
                report.source = "tuned" if report.trials else "untuned" if report.default_ms is not None else "cache"
        progress.update(callback.state(), final=True)
    return TuningReport(
        str(cache.folder), reports, callback.trials, from_cache, time.monotonic() - started, asdict(budget),
        stopped_by, callback.curve,
    )


class _Measurer:
    """The builder and runner tuning measures with: MetaSchedule's candidates and the
    defaults they are compared against go through the same ones."""

    def __init__(self, target, measure: "RemoteMeasure | None" = None):
        llvm = target.kind.name == "llvm"
        self.cores = int(target.attrs.get("num-cores", os.cpu_count() or 1)) if llvm else (os.cpu_count() or 1)
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
        self.builder = _tvm.PooledBuilder(
            f_build=_tvm.metaschedule_build,
            f_export=measure.f_export() if measure else None,  # remote: link with the cross compiler
            # Once per worker process, not once per candidate.
            initializer=_builder_initializer(target),
            max_workers=self.cores,
            timeout_sec=60,
        )
        self.runner = (
            measure.runner(evaluator) if measure
            else ms.runner.LocalRunner(timeout_sec=30, evaluator_config=evaluator, initializer=_runner_initializer(target))
        )

    def close(self) -> None:
        self.builder.close()


def _budget_words(budget: TuningBudget, trials: int, task_cap: int) -> str:
    if budget.trials is None:
        return f"for {budget.minutes:g} min"
    return f"up to {trials} trials, {task_cap} per kernel" + (f", {budget.minutes:g} min" if budget.minutes else "")


def measure_defaults(tasks, target, database, measurer: _Measurer, deadline: "_Deadline") -> int:
    """Measure each kernel's untuned default schedule (default_schedule.cpu_default_schedule)
    with tuning's builder and runner, and commit it as a record: the database's best is
    then never a schedule slower than the default (short tuning runs measured on 2 busy
    cores used to pick noisy samples that were), and the search starts from it. Only
    kernels with no record yet (a continued run has measured them). CPU targets (GPU
    defaults are dlight's, applied to the whole module). Returns how many were committed."""
    from .default_schedule import cpu_default_schedule

    if target.kind.name != "llvm":
        return 0
    pending = []
    with _tvm.native_stderr_to(None):
        for task, report in tasks:
            if report.best_ms is not None or deadline.passed():
                continue
            schedule = cpu_default_schedule(task.dispatched[0]["main"], target)
            if schedule is not None:
                pending.append((task, report, schedule))
    if not pending:
        return 0
    built = measurer.builder.build([ms.builder.BuilderInput(sch.mod, target) for _, _, sch in pending])
    committed = 0
    for (task, report, schedule), result in zip(pending, built):
        if result.error_msg is not None or deadline.passed():
            continue
        args = ms.arg_info.ArgInfo.from_entry_func(schedule.mod, remove_preproc=True)
        (future,) = measurer.runner.run([ms.runner.RunnerInput(result.artifact_path, "cpu", args)])
        ran = future.result()
        _remove_artifact(result.artifact_path)
        if ran.error_msg is not None or not ran.run_secs:
            continue
        try:
            workload = database.commit_workload(task.dispatched[0])
            database.commit_tuning_record(ms.database.TuningRecord(schedule.trace, workload, ran.run_secs, target, args))
        except Exception as e:  # noqa: BLE001 - a trace the database cannot store: tuning proceeds without it
            _log.warning("default schedule of %s not recorded: %s", task.task_name, summarize_exception(e))
            continue
        report.best_ms = report.default_ms = _median_ms(ran.run_secs)
        committed += 1
    return committed


def _remove_artifact(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()
        Path(path).parent.rmdir()


def _run_metaschedule(tasks, target, database, trials, per_task, deadline, callback, log_dir: Path, measurer: _Measurer) -> None:
    cores = measurer.cores
    log_dir.mkdir(parents=True, exist_ok=True)
    register_intrinsics(target.kind.name)  # before TuneContext imports them all
    ms_logger = logging.getLogger(_tvm.METASCHEDULE_LOGGER)
    # MetaSchedule re-lists the logger's existing handlers by name in its logging config;
    # one without a name (or a previous run's file handler) breaks it: start clean.
    for handler in list(ms_logger.handlers):
        ms_logger.removeHandler(handler)
        handler.close()
    ms_logger.setLevel(logging.WARNING)  # the console handler MetaSchedule adds inherits this
    # One context per task, each with its kernel's design space (int8 kernels tensorize).
    contexts, weights = [], []
    # Small enough for about three rounds over all tasks within the global budget, so the
    # gradient scheduler can move trials to where the latency is, and at least two batches
    # per task (so a killed run has something left to continue).
    per_iter = _trials_per_iter(trials, per_task, len(tasks))
    # Each context (re)configures MetaSchedule's loggers with a console handler on stdout
    # and announces its "Logging directory" there: one line per kernel on the user's
    # terminal. INFO is off while they are made; afterwards the logs go to files only.
    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.INFO))
    try:
        for task_id, task in enumerate(tasks):
            search = _tvm.DeadlineSearch(
                _evolutionary_search(per_iter), deadline, callback.submitted, callback.exhausted,
                functools.partial(callback.converged, task_id),
            )
            [context], [weight] = ms.relax_integration.extracted_tasks_to_tune_contexts(
                extracted_tasks=[task],
                work_dir=str(log_dir),  # MetaSchedule writes its per-task logs under <work_dir>/logs
                space=space_for_kernel(_kernel_of(task), target),
                strategy=search,
                num_threads=cores,
                seed=0,
            )
            contexts.append(context)
            weights.append(weight)
    finally:
        logging.disable(disabled)
    _logs_to_files_only(ms_logger)
    ms.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=str(log_dir),
        max_trials_global=trials,
        max_trials_per_task=per_task,
        num_trials_per_iter=per_iter,
        builder=measurer.builder,
        runner=measurer.runner,
        database=database,
        cost_model=ms.cost_model.XGBModel(num_tuning_cores=cores),
        # A list replaces MetaSchedule's defaults (add to database, remove build artifact,
        # update cost model): keep them, ours last so it sees committed records.
        measure_callbacks=[*ms.MeasureCallback.create("default"), callback],
        task_scheduler="gradient",
    )


@contextlib.contextmanager
def _native_warnings_to(path: Path, progress: Progress):
    """TVM's C++ warnings (hundreds of "Tensorize failed" for candidates an int8 rule
    rejects) into a file; the progress line keeps the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = progress.stream
    if saved is sys.stderr:
        sys.stderr.flush()
        progress.stream = os.fdopen(os.dup(2), "w", buffering=1)
    try:
        with _tvm.native_stderr_to(path):
            yield
    finally:
        if progress.stream is not saved:
            progress.stream.close()
            progress.stream = saved


@contextlib.contextmanager
def _stop_on_signals(deadline: _Deadline, progress: Progress):
    """Ctrl-C / SIGTERM while MetaSchedule runs: stop handing out candidates, let the
    batches in flight finish, then raise KeyboardInterrupt from `tune`.

    An exception raised by a signal handler while C++ is calling back into Python ends
    in std::terminate (a segfault, seen in CI), so the handler only sets a flag. A second
    signal aborts at once; the cache recovers the dead run's session next time.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        if deadline.interrupted:
            os._exit(130)
        deadline.interrupted = True
        progress.message("tuning: stopping after the batches in flight (signal again to abort)")

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _kernel_of(task):
    """An extracted task's kernel (its dispatched module's PrimFunc)."""
    dispatched = task.dispatched[0]
    return dispatched["main"] if isinstance(dispatched, tvm.ir.IRModule) else dispatched


def _stopped_by(deadline: "_Deadline", exhausted_tasks: int, converged_tasks: int, tasks: int) -> str:
    if deadline.passed():
        return "time budget"
    if exhausted_tasks + converged_tasks < tasks:
        return "trial budget"
    return "converged" if converged_tasks else "search space exhausted"


def _evolutionary_search(per_iter: int):
    """MetaSchedule's evolutionary search, its population scaled to the batch: 8 samples
    per candidate measured, as its defaults (512 for batches of 64), at least 64. Each
    sample is postprocessed and scored, so a batch of 2 from 512 samples cost 1.5 s of
    search per int8 kernel (tensorized samples are the slow ones)."""
    population = min(512, max(64, 8 * per_iter))
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=min(50, population // 2))


def _trials_per_iter(trials: int, per_task: int, num_tasks: int) -> int:
    return max(1, min(64, -(-per_task // 2), max(8, trials // (3 * num_tasks)), trials // num_tasks))


def _runner_initializer(target):
    """The local runner's worker runs candidates on the thread pool a loaded artifact
    gets: the target's core count, workers asleep between kernels. Left to itself TVM
    takes half the logical CPUs (one thread on a 2-vCPU machine, where the artifact runs
    two) and spins 300000 rounds, so candidates were chosen by a measurement unlike the
    model run."""
    import functools

    if target.kind.name != "llvm":
        return None
    return functools.partial(configure_runner_threads, int(target.attrs.get("num-cores", 0)))


def configure_runner_threads(threads: int) -> None:
    """In a runner worker, before it runs a kernel (TVM sizes its pool on first use)."""
    from ...runtime.thread_pool import configure_thread_pool

    configure_thread_pool(tvm, threads)


def _builder_initializer(target):
    import functools

    if target.kind.name == "cuda":
        from ..cuda_build import builder_worker_setup

        return functools.partial(builder_worker_setup, str(target.attrs["arch"]))
    return functools.partial(register_intrinsics, target.kind.name)


def _require_tuning_gpu(target) -> None:
    """MetaSchedule measures every candidate on the GPU it tunes for: refuse early and clearly."""
    from ...runtime.devices import compute_capability_of_arch, cuda_status

    arch = str(target.attrs["arch"])
    status = cuda_status()
    if not status.available:
        raise TvmDeployError(
            f"no CUDA GPU: tuning for {arch} measures kernels on one, and {status.reason}; tune on a "
            f"machine with an {arch} GPU (compiling works without one: kernels get default GPU schedules)"
        )
    wanted = compute_capability_of_arch(arch)
    if status.compute_capability != wanted:
        raise TvmDeployError(
            f"tuning for {arch} needs a GPU of compute capability {wanted}, but {status.name} is "
            f"{status.compute_capability}: its timings would tune for the wrong GPU; use the preset for this GPU"
        )


def _logs_to_files_only(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
    logger.propagate = False


def _median_ms(run_secs) -> float | None:
    values = [float(s) for s in run_secs] if run_secs else []
    return float(np.median(values) * 1e3) if values else None


class _Deadline:
    def __init__(self, at: float | None):
        self.at = at
        self.interrupted = False

    def passed(self) -> bool:
        return self.interrupted or (self.at is not None and time.monotonic() > self.at)

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())


@tvm.ir.utils.derived_object
class _ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """After every measured batch: count trials, keep the best per kernel, report
    progress, and merge the new records into the shared cache. Also tells each kernel's
    search when it has converged (see TuningBudget.patience)."""

    def __init__(self, tuned, all_tasks, budget, deadline, progress, started, merge, timed: bool = False, patience: int = 0):
        super().__init__()
        self.tuned, self.all_tasks = tuned, all_tasks
        self.budget, self.deadline, self.progress, self.started = budget, deadline, progress, started
        self.timed = timed  # a time budget alone: the trial count is only a cap the clock reaches first
        self.merge = merge
        self.trials = 0
        self.submitted_trials = 0
        self.exhausted_tasks = 0  # tasks whose search found nothing new to measure
        self.patience = patience
        self.converged_tasks: set[int] = set()
        # Per task: the best time at its last gain of CONVERGED_GAIN or more (to begin with,
        # the best before its first batch: its default or an earlier run's), and trials since.
        self.gain_best: list[float | None] = [None] * len(tuned)
        self.since_gain = [0] * len(tuned)
        self.curve: list[tuple[int, float]] = []

    def submitted(self, count: int) -> None:
        """Candidates sent to the builder (measurements are joined later, in batches)."""
        self.submitted_trials += count
        self.progress.update(self.state())

    def exhausted(self) -> None:
        self.exhausted_tasks += 1

    def converged(self, task_id: int) -> bool:
        """Asked before each batch of a task: `patience` trials without a gain end it."""
        if self.patience and self.since_gain[task_id] >= self.patience:
            self.converged_tasks.add(task_id)
            return True
        return False

    def _count_gain(self, task_id: int, latency_ms: float | None) -> None:
        reference = self.gain_best[task_id]
        if latency_ms is not None and (reference is None or latency_ms < reference * (1 - CONVERGED_GAIN)):
            self.gain_best[task_id], self.since_gain[task_id] = latency_ms, 0
        else:
            self.since_gain[task_id] += 1

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        report = self.tuned[task_id]
        if self.gain_best[task_id] is None:
            self.gain_best[task_id] = report.best_ms
        for built, ran in zip(builder_results, runner_results):
            self.trials += 1
            report.trials += 1
            best = _median_ms(ran.run_secs) if built.error_msg is None and ran.error_msg is None else None
            if best is not None and (report.best_ms is None or best < report.best_ms):
                report.best_ms = best
            self._count_gain(task_id, best)
        self.merge()
        state = self.state()
        if state.estimated_ms is not None:
            self.curve.append((self.trials, round(state.estimated_ms, 6)))
        self.progress.update(state)

    def state(self) -> ProgressState:
        elapsed = time.monotonic() - self.started
        estimated = None
        measured = [t for t in self.all_tasks if t.source != "default"]
        if all(t.best_ms is not None for t in measured):
            estimated = sum(t.weight * t.best_ms for t in measured)
        remaining = self.deadline.remaining()
        progressed = max(self.trials, self.submitted_trials)
        if progressed:
            by_rate = elapsed / progressed * max(0, self.budget - progressed)
            remaining = by_rate if remaining is None else min(remaining, by_rate)
        return ProgressState(
            trials=self.trials,
            submitted=self.submitted_trials,
            trial_budget=None if self.timed else self.budget,
            tasks_done=sum(t.best_ms is not None for t in self.tuned),
            tasks_total=len(self.tuned),
            estimated_ms=estimated,
            elapsed_s=elapsed,
            remaining_s=remaining,
        )
