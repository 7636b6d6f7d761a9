"""Budget schedule: pure Python, no tensors.

AdaLoRA's cubic schedule in optimizer steps ``t = 1..T``:

* ``t <= tinit``: budget ``b_0`` (the initial budget), no masking;
* ``tinit < t < T - tfinal``: ``b(t) = int(b_T + (b_0 - b_T) * (1 - (t - tinit) / (T - tinit - tfinal))**3)``,
  masking when ``t % deltaT == 0``;
* ``t == T - tfinal``: budget ``b_T``, the final mask (always applied);
* ``t > T - tfinal``: budget ``b_T``, the mask is frozen.

This reproduces ``peft.tuners.adalora.RankAllocator.budget_schedule`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Phase(str, Enum):
    WARMUP = "warmup"
    PRUNE = "prune"
    FINAL_MASK = "final_mask"
    FROZEN = "frozen"


@dataclass(frozen=True)
class BudgetSchedule:
    """The cubic budget schedule.

    Args:
        init_budget: ``b_0``, total budget at the start (units of the budget unit).
        target_budget: ``b_T``, total budget at the end of pruning.
        total_step: ``T``, total optimizer steps.
        tinit: warm-up steps.
        tfinal: final steps with the mask frozen.
        deltaT: steps between two masking events in the pruning phase.
    """

    init_budget: int
    target_budget: int
    total_step: int
    tinit: int
    tfinal: int
    deltaT: int

    def __post_init__(self) -> None:
        if self.target_budget > self.init_budget:
            raise ValueError(
                f"target budget {self.target_budget} is above the initial budget {self.init_budget}"
            )
        if self.tinit + self.tfinal >= self.total_step:
            raise ValueError(
                f"tinit + tfinal >= total_step ({self.tinit} + {self.tfinal} >= {self.total_step})"
            )
        if self.deltaT < 1:
            raise ValueError(f"deltaT must be >= 1, got {self.deltaT}")

    @property
    def final_step(self) -> int:
        """The step at which the final mask is taken: ``T - tfinal``."""
        return self.total_step - self.tfinal

    def phase(self, step: int) -> Phase:
        if step <= self.tinit:
            return Phase.WARMUP
        if step < self.final_step:
            return Phase.PRUNE
        if step == self.final_step:
            return Phase.FINAL_MASK
        return Phase.FROZEN

    def budget(self, step: int) -> int:
        """``b(step)``, the budget in force after the allocator step ``step``."""
        phase = self.phase(step)
        if phase is Phase.WARMUP:
            return self.init_budget
        if phase is not Phase.PRUNE:
            return self.target_budget
        frac = 1.0 - (step - self.tinit) / (self.total_step - self.tfinal - self.tinit)
        return int((self.init_budget - self.target_budget) * frac**3 + self.target_budget)

    def is_mask_step(self, step: int) -> bool:
        """Whether the allocator recomputes the mask at ``step``."""
        phase = self.phase(step)
        if phase is Phase.PRUNE:
            return step % self.deltaT == 0
        return phase is Phase.FINAL_MASK

    def updates_scores(self, step: int) -> bool:
        """Scores are updated at every step before the final mask (as in PEFT AdaLoRA)."""
        return step < self.final_step

    def curve(self) -> list[tuple[int, int]]:
        """``[(step, budget)]`` for every step ``1..T`` (for plots)."""
        return [(t, self.budget(t)) for t in range(1, self.total_step + 1)]
