"""Hugging Face ``Trainer`` support.

``IguLoraTrainer`` is a ``Trainer`` that (1) remembers the last micro-batch of each optimizer
step for the probe passes, (2) calls ``allocator.step`` once per optimizer step through
:class:`IguLoraCallback` (``on_optimizer_step``: after ``optimizer.step()``, before
``zero_grad()``), (3) derives ``total_step`` from the trainer's own step count
(``max_steps``, or epochs x batches / accumulation), and (4) saves and restores the allocator
state with every checkpoint, so ``train(resume_from_checkpoint=...)`` resumes exactly::

    peft_model, allocator = get_igu_model(model, IguLoraConfig(init_r=12, target_r=8))
    trainer = IguLoraTrainer(model=peft_model, args=TrainingArguments(...), allocator=allocator,
                             train_dataset=train_ds)
    trainer.train()
    trainer.save_model("out")        # compact AdaLoRA adapter; stock peft loads it
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..allocator import IguAllocator

STATE_FILE = "igulora_allocator.pt"


class IguLoraCallback(TrainerCallback):
    """Calls ``allocator.step(batch)`` once per optimizer step. ``batch_source()`` returns the last
    micro-batch (``IguLoraTrainer`` provides it; with a plain ``Trainer`` use the ``gradient`` or
    ``coupled`` estimators, which need none)."""

    def __init__(self, allocator: IguAllocator, batch_source: Any = None) -> None:
        self.allocator = allocator
        self.batch_source = batch_source or (lambda: None)
        self.records: list[Any] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        schedule = self.allocator.schedule
        if schedule is None or schedule.total_step != state.max_steps:
            self.allocator.set_total_step(state.max_steps)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        record = self.allocator.step(self.batch_source())
        if record.masked:
            self.records.append(record)


class IguLoraTrainer(Trainer):
    """A ``Trainer`` with IGU-LoRA rank allocation (pass ``allocator=``)."""

    def __init__(self, *args: Any, allocator: IguAllocator, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allocator = allocator
        self._igu_last_inputs: dict[str, Any] | None = None
        self.igu_callback = IguLoraCallback(allocator, lambda: self._igu_last_inputs)
        self.add_callback(self.igu_callback)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self._igu_last_inputs = inputs
        return super().training_step(model, inputs, *args, **kwargs)

    @contextlib.contextmanager
    def _full_rank(self) -> Iterator[None]:
        """Checkpoints keep full-rank adapter tensors (masked units are zeros) so that resuming restores
        the same shapes; the final ``save_model()`` writes the compact adapter."""
        cfg = self.allocator.model.peft_config[self.allocator.adapter]
        pattern, cfg.rank_pattern = cfg.rank_pattern, None
        try:
            yield
        finally:
            cfg.rank_pattern = pattern

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        with self._full_rank():
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        with self._full_rank():
            super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            from ..io import atomic_torch_save

            atomic_torch_save(folder / STATE_FILE, self.allocator.state_dict())

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The compact adapter (``rank_pattern`` applied; fully pruned modules as ``(0, d)`` tensors)."""
        from ..peft_backend import pruned_modules_saved

        with pruned_modules_saved():
            super().save_model(output_dir, _internal_call)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint:
            if resume_from_checkpoint is True:
                from transformers.trainer_utils import get_last_checkpoint

                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    raise ValueError(f"no checkpoint found in {self.args.output_dir} to resume from")
            path = os.path.join(str(resume_from_checkpoint), STATE_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint} has no {STATE_FILE}: not an IGU-LoRA checkpoint")
            self.allocator.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
