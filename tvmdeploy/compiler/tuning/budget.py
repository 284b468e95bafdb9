"""How much tuning to do: the budget the CLI parses into (no TVM import)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import TvmDeployError

DEFAULT_TRIALS = 1000  # across all kernels, when the user gives neither trials nor a time budget
# Per kernel when only a time budget is given (trials=None): more than a 2-core machine
# measures in an hour (about 4,700 trials over all kernels), so the clock ends the run.
TIMED_TRIALS_PER_TASK = 2000
# A kernel whose best time has not improved by CONVERGED_GAIN in this many of its own
# trials has converged: its search ends and the trials go elsewhere (or the run ends).
# Two batches of 64. Without it a time budget spent its last 40 minutes on a 0.2 % matmul.
CONVERGED_AFTER_TRIALS = 128
CONVERGED_GAIN = 0.01


@dataclass(frozen=True)
class TuningBudget:
    """How much tuning to do. The task scheduler spends trials where the latency is."""

    # Across all tasks. None (not given): DEFAULT_TRIALS, or with `minutes`, as many as the
    # minutes allow (a user who asks for an hour of tuning gets an hour).
    trials: int | None = None
    trials_per_task: int | None = None  # default: enough for the heaviest task, see below
    minutes: float | None = None  # wall clock, setup included
    # Trials without a 1 % gain that end a kernel's search; 0: never (spend the whole budget).
    patience: int = CONVERGED_AFTER_TRIALS

    def __post_init__(self):
        if self.trials is None and self.minutes is None:
            object.__setattr__(self, "trials", DEFAULT_TRIALS)  # frozen: set once, here
        if self.trials is not None and self.trials < 0:
            raise TvmDeployError(f"--trials must be >= 0, got {self.trials}")
        if self.trials_per_task is not None and self.trials_per_task < 1:
            raise TvmDeployError(f"--trials-per-task must be >= 1, got {self.trials_per_task}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise TvmDeployError(f"--patience must be a whole number of trials >= 0, got {self.patience}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            # nan or inf would never end a run that has no trial count to end it
            raise TvmDeployError(f"--time-budget must be a finite number of minutes > 0, got {self.minutes}")

    def per_task(self, num_tasks: int) -> int:
        if self.trials_per_task is not None:
            return self.trials_per_task
        if self.trials is None:
            return TIMED_TRIALS_PER_TASK
        # Room for the gradient scheduler to give the heavy tasks several times an even share.
        return min(self.trials, max(16, 4 * self.trials // max(1, num_tasks)))
