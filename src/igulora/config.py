"""The one configuration object of IGU-LoRA.

`IguLoraConfig` holds every knob of the method (see ``docs/method.md`` and
``docs/allocator.md``). It is validated in ``__post_init__`` with messages that name the
field and the bad value, and round-trips through JSON (``to_dict``/``from_dict``,
``save``/``load``).

The schedule has three phases, in optimizer steps, exactly as PEFT's AdaLoRA:

* warm-up: steps ``1..tinit`` keep the full initial budget and never mask;
* pruning: the budget falls along a cubic from the initial to the target budget,
  ``b(t) = b_T + (b_0 - b_T) * (1 - (t - tinit) / (T - tinit - tfinal))**3``,
  masking every ``deltaT`` steps;
* final: from step ``T - tfinal`` on, the mask is frozen and scores stop updating.

Worked example: ``total_step=100, tinit=0.1, tfinal=0.2, deltaT=5`` resolves to
``tinit=10, tfinal=20``: 10 warm-up steps, masks at steps 15, 20, ..., 75 on the cubic,
the final mask at step 80, and 20 steps of training with that mask frozen.

``tinit``, ``tfinal`` and ``deltaT`` may be given as integers (steps) or as floats in
``(0, 1)`` (fractions of ``total_step``). ``total_step`` may be left unset and filled in
by the training glue (the reference loop or the HF ``Trainer`` callback) from the
trainer's own step count; :meth:`IguLoraConfig.resolve` then turns fractions into steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ESTIMATORS = ("stochastic", "trapezoid", "paper-eq6", "coupled", "gradient")
"""IG estimators, see :mod:`igulora.scoring`. Estimators that probe an interior node."""
INTERIOR_ESTIMATORS = ("stochastic", "trapezoid", "paper-eq6", "coupled")
PROBE_ESTIMATORS = ("stochastic", "trapezoid", "paper-eq6")
"""Estimators that run extra forward+backward (probe) passes when they score."""
AUTO_SCORE_EVERY = 8
"""``score_every=None`` for a probe estimator: score every 8th step. Measured (BENCHMARKS.md,
``benchmarks/cost.py``) at 1.04x PEFT AdaLoRA's step time against 1.67x for every step, with no
measurable accuracy cost on the encoder suite."""
SCORES = ("snr", "product")
BUDGET_UNITS = ("params", "ranks")
LAMBDA_TERMS = ("score", "abs")
IG_FORMS = ("u", "alpha")
NONFINITE = ("skip", "stop")


@dataclass
class IguLoraConfig:
    """Configuration of an IGU-LoRA adapter and its rank allocator.

    Every field is documented once, here.
    """

    target_modules: list[str] | str | None = None
    """Module names (suffixes, as PEFT matches them) or one regex to adapt. ``None``: the
    attention and MLP linears of the architecture (see :func:`igulora.units.default_target_modules`)."""
    init_r: int = 12
    """Initial rank of every adapted matrix (``r`` of ``P diag(lambda) Q``)."""
    target_r: float = 8
    """Target average rank per adapted matrix at the end of pruning (ignored if ``target_budget`` is set)."""
    target_budget: int | None = None
    """Explicit final total budget in ``budget_unit`` units (parameters or ranks); overrides ``target_r``."""
    budget_unit: str = "params"
    """``params``: a rank unit costs ``d_in + d_out + 1`` parameters (budgets matched in parameters);
    ``ranks``: every unit costs 1 (AdaLoRA)."""
    total_step: int | None = None
    """Total optimizer steps T. Leave unset to let the training glue fill it in."""
    tinit: int | float = 0.1
    """Warm-up steps without pruning (int), or a fraction of ``total_step`` (float in (0, 1))."""
    tfinal: int | float = 0.2
    """Final steps with the mask frozen (int), or a fraction of ``total_step`` (float in (0, 1))."""
    deltaT: int | float = 10
    """Steps between two masking events (int >= 1), or a fraction of ``total_step``."""
    beta1: float = 0.85
    """EMA coefficient of the smoothed sensitivity ``I_t``."""
    beta2: float = 0.85
    """EMA coefficient of the uncertainty ``U_t`` (EMA of ``|s_t - I_t|``)."""
    eps: float = 1e-6
    """Added to ``U_t`` in the ``snr`` score ``I_t / (U_t + eps)``."""
    score: str = "snr"
    """``snr``: ``I / (U + eps)`` (paper); ``product``: ``I * U`` (AdaLoRA)."""
    lambda_term: str = "score"
    """First term of the unit score: ``score`` (the score of lambda_i) or ``abs`` (``|lambda_i|``)."""
    estimator: str = "stochastic"
    """Sensitivity estimator: ``stochastic``, ``trapezoid``, ``paper-eq6``, ``coupled`` or ``gradient``."""
    ig_steps: int = 20
    """N, the number of quadrature intervals of the IG path integral."""
    ig_form: str = "u"
    """Quadrature variable: ``u`` (nodes uniform in ``u = alpha**3``, smoother, default) or ``alpha``."""
    score_every: int | None = None
    """Update scores every k-th optimizer step (probe passes run only then). ``None`` (auto): 8 for the
    estimators with probe passes (``stochastic``, ``trapezoid``, ``paper-eq6``), 1 for ``gradient``
    and ``coupled``, which cost no extra pass. See :attr:`score_interval`."""
    reapply_mask: bool = True
    """Re-zero pruned singular values after every optimizer step (hard pruning). ``False`` reproduces
    PEFT AdaLoRA, where pruned values may regrow between masking events."""
    orth_reg_weight: float = 0.1
    """Weight of AdaLoRA's orthogonality regulariser on P and Q (added by PEFT to ``outputs.loss``)."""
    lora_alpha: float = 32.0
    """Adapter scaling numerator (the update is scaled by ``lora_alpha / init_r``)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input."""
    init_lora_weights: bool = True
    """PEFT's AdaLoRA init: lambda = 0, P and Q ~ N(0, 0.02)."""
    modules_to_save: list[str] | None = None
    """Extra modules trained in full and saved with the adapter (e.g. a classification head)."""
    task_type: str | None = None
    """PEFT task type (``SEQ_CLS``, ``CAUSAL_LM``, ...), recorded in the saved adapter config."""
    seed: int = 0
    """Seed of the allocator's own random generator (stochastic node, coupled alpha)."""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        _require_choice("estimator", self.estimator, ESTIMATORS)
        _require_choice("score", self.score, SCORES)
        _require_choice("budget_unit", self.budget_unit, BUDGET_UNITS)
        _require_choice("lambda_term", self.lambda_term, LAMBDA_TERMS)
        _require_choice("ig_form", self.ig_form, IG_FORMS)
        _require_int("init_r", self.init_r, minimum=1)
        if not isinstance(self.target_r, (int, float)) or isinstance(self.target_r, bool) or self.target_r < 0:
            raise ValueError(f"target_r must be a number >= 0, got {self.target_r!r}")
        if self.target_r > self.init_r:
            raise ValueError(
                f"target_r={self.target_r} is larger than init_r={self.init_r}: the target average rank "
                "must not exceed the initial rank"
            )
        if self.target_budget is not None:
            _require_int("target_budget", self.target_budget, minimum=0)
        min_steps = 2 if self.estimator in INTERIOR_ESTIMATORS else 1
        _require_int("ig_steps", self.ig_steps, minimum=min_steps, why=f"estimator={self.estimator!r}")
        if self.score_every is not None:
            _require_int("score_every", self.score_every, minimum=1)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if not (isinstance(self.orth_reg_weight, (int, float)) and self.orth_reg_weight >= 0):
            raise ValueError(f"orth_reg_weight must be >= 0, got {self.orth_reg_weight!r}")
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        if not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        for name in ("tinit", "tfinal"):
            _check_steps(name, getattr(self, name), allow_zero=True)
        _check_steps("deltaT", self.deltaT, allow_zero=False)
        if self.total_step is not None:
            _require_int("total_step", self.total_step, minimum=1)
            self.schedule_steps()  # validates the phases

    # ------------------------------------------------------------------ schedule
    def schedule_steps(self, total_step: int | None = None) -> tuple[int, int, int, int]:
        """Return ``(total_step, tinit, tfinal, deltaT)`` in optimizer steps.

        Fractions are rounded to the nearest step (``deltaT`` to at least 1).
        Raises ``ValueError`` when the schedule leaves no pruning phase.
        """
        total = self.total_step if total_step is None else total_step
        if total is None:
            raise ValueError(
                "total_step is not set: pass it in IguLoraConfig, or let the training loop / Trainer "
                "callback fill it in before the first allocator step"
            )
        _require_int("total_step", total, minimum=1)
        tinit = _to_steps(self.tinit, total)
        tfinal = _to_steps(self.tfinal, total)
        delta = max(1, _to_steps(self.deltaT, total))
        if tinit + tfinal >= total:
            raise ValueError(
                f"tinit + tfinal >= total_step ({tinit} + {tfinal} >= {total}): the schedule leaves no "
                "pruning phase; lower tinit/tfinal or train for more steps"
            )
        return total, tinit, tfinal, delta

    def with_total_step(self, total_step: int) -> IguLoraConfig:
        """A copy with ``total_step`` set (validated)."""
        return dataclasses.replace(self, total_step=total_step)

    @property
    def score_interval(self) -> int:
        """The effective ``score_every``: the set value, or for ``None`` 8 with a probe estimator, else 1."""
        if self.score_every is not None:
            return self.score_every
        return AUTO_SCORE_EVERY if self.estimator in PROBE_ESTIMATORS else 1

    @property
    def peft_modules_to_save(self) -> list[str] | None:
        """A fresh copy of ``modules_to_save`` for a PEFT config: PEFT extends the list it is given in
        place (e.g. with ``classifier`` and ``score`` for ``SEQ_CLS``), which would change this config."""
        return list(self.modules_to_save) if self.modules_to_save else None

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IguLoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown IguLoraConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> IguLoraConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class TrainArgs:
    """Settings of the reference loop (the CLI's training flags)."""

    output_dir: str
    """Run directory: checkpoints and logs are written here."""
    max_steps: int | None = None
    """Optimizer steps; ``None``: ``epochs`` passes over the data."""
    epochs: float = 1.0
    """Passes over the training data when ``max_steps`` is not set."""
    batch_size: int = 16
    """Micro-batch size."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x grad_accum)."""
    lr: float = 5e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.06
    """Linear warm-up of the LR over this fraction of the steps, then linear decay to 0."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    bf16: bool = False
    """Autocast forward passes to bfloat16 (scores stay float32)."""
    eval_every: int = 0
    """Evaluate every k optimizer steps (0: only at the end)."""
    save_every: int = 0
    """Checkpoint every k optimizer steps (0: about ten checkpoints per run)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_every: int = 10
    """Write a ``train_log.jsonl`` line every k steps."""
    seed: int = 0
    """Seed of data order, dropout and initialisation."""
    on_nonfinite: str = "skip"
    """A NaN/inf loss or gradient: ``skip`` the update (counted, logged) or ``stop`` the run."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.on_nonfinite not in NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {', '.join(NONFINITE)}, got {self.on_nonfinite!r}")

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps of the run for ``n_examples`` training examples."""
        if self.max_steps is not None:
            return self.max_steps
        micro = math.ceil(n_examples / self.batch_size)
        return max(1, math.ceil(self.epochs * micro / self.grad_accum))


def _to_steps(value: float, total: int) -> int:
    if isinstance(value, float) and 0.0 < value < 1.0:
        return int(math.floor(value * total + 0.5))
    return int(value)


def _check_steps(name: str, value: Any, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an int (steps) or a float in (0, 1) (fraction), got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} as a fraction of total_step must lie in (0, 1), got {value!r}")
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{name} must be {bound} steps, got {value!r}")


def _require_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _require_int(name: str, value: Any, *, minimum: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = f" (for {why})" if why else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{extra}, got {value!r}")


__all__ = ["BUDGET_UNITS", "ESTIMATORS", "SCORES", "IguLoraConfig"]
