"""The reference loop: gradient accumulation, exact resume, non-finite steps, Ctrl-C."""

import math
import os
import signal

import pytest
import torch
from tiny import cls_batch, tiny_bert

from igulora import IguLoraConfig
from igulora.methods import build_method
from igulora.train import Checkpointer, CheckpointError, TrainArgs, TrainingStopped, fit


def rows(n=64):
    b = cls_batch(n=n, seed=5)
    return [{k: v[i] for k, v in b.items()} for i in range(n)]


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def evaluate(model):
    model.eval()
    with torch.no_grad():
        b = cls_batch(n=16, seed=77)
        return {"loss": model(**b).loss.item(), "primary": -model(**b).loss.item()}


def setup(method="igulora", total=16, **cfg_kw):
    torch.manual_seed(0)
    cfg = IguLoraConfig(init_r=4, target_r=2, tinit=2, tfinal=4, deltaT=2, ig_steps=4,
                        modules_to_save=["classifier"], task_type="SEQ_CLS", **cfg_kw)
    return build_method(tiny_bert(), method, cfg, total)


def args(tmp_path, **kw):
    base = {"output_dir": str(tmp_path), "max_steps": 16, "batch_size": 4, "grad_accum": 2, "lr": 1e-2,
            "save_every": 4, "log_every": 1}
    return TrainArgs(**{**base, **kw})


def test_grad_accum_one_allocator_update_per_optimizer_step(tmp_path):
    model, ctrl = setup()
    fit(model, ctrl, rows(), collate, args(tmp_path))
    assert ctrl.step_count == 16
    final = ctrl.history[-1]
    assert final["step"] == 16 - 4 and final["active_budget"] <= ctrl.target_budget
    assert ctrl.history[-1]["budget"] == ctrl.target_budget


@pytest.mark.parametrize("method", ["igulora", "adalora", "lora"])
def test_resume_after_crash_is_exact(tmp_path, method):
    model, ctrl = setup(method)
    want = fit(model, ctrl, rows(), collate, args(tmp_path / "a"), evaluate=evaluate)
    want_pattern = ctrl.rank_pattern()

    def crash(step, loss):
        if step == 11:
            raise RuntimeError("simulated crash")
        return loss

    model, ctrl = setup(method)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(model, ctrl, rows(), collate, args(tmp_path / "b"), evaluate=evaluate, loss_hook=crash)
    model, ctrl = setup(method)
    got = fit(model, ctrl, rows(), collate, args(tmp_path / "b"), evaluate=evaluate, resume=True)
    assert ctrl.rank_pattern() == want_pattern
    assert abs(got.metrics["loss"] - want.metrics["loss"]) <= 1e-6
    logged = [int(line.split('"step": ')[1].split(",")[0].split("}")[0])
              for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 17))  # nothing lost, nothing logged twice


def test_nan_step_is_skipped_and_counted(tmp_path, caplog):
    model, ctrl = setup(score_every=1)  # step 5 is a scoring step

    def nan_at_5(step, loss):
        return loss * float("nan") if step == 5 else loss

    result = fit(model, ctrl, rows(), collate, args(tmp_path), loss_hook=nan_at_5)
    assert result.nonfinite_steps == 1 and ctrl.nonfinite_skips == 1
    assert all(torch.isfinite(v).all() for v in ctrl.avg.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "non-finite" in caplog.text
    assert math.isfinite(result.final_loss)


def test_nan_stop_flag(tmp_path):
    model, ctrl = setup()
    with pytest.raises(TrainingStopped, match="non-finite"):
        fit(model, ctrl, rows(), collate, args(tmp_path, on_nonfinite="stop"),
            loss_hook=lambda s, loss: loss * float("nan") if s == 3 else loss)
    assert Checkpointer(tmp_path).latest().name == "step-00000003.pt"


def test_ctrl_c_saves_checkpoint_and_stops(tmp_path):
    model, ctrl = setup()

    def interrupt_at_6(step, loss):
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    with pytest.raises(TrainingStopped, match="interrupted at step 6/16"):
        fit(model, ctrl, rows(), collate, args(tmp_path), loss_hook=interrupt_at_6)
    assert Checkpointer(tmp_path).load()["step"] == 6


def test_corrupt_checkpoint_is_explained(tmp_path):
    model, ctrl = setup()
    with pytest.raises(ZeroDivisionError):
        fit(model, ctrl, rows(), collate, args(tmp_path), loss_hook=lambda s, loss: 1 / 0 if s == 5 else loss)
    latest = Checkpointer(tmp_path).latest()
    latest.write_bytes(b"not a checkpoint")
    model, ctrl = setup()
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint .*step-00000004.pt"):
        fit(model, ctrl, rows(), collate, args(tmp_path), resume=True)


@pytest.mark.parametrize("method", ["igulora", "lora", "adalora"])
def test_building_a_method_leaves_the_config_unchanged(method):
    """PEFT extends ``modules_to_save`` in place for SEQ_CLS; our config (saved as the run's
    config.json) must keep what the user gave."""
    cfg = IguLoraConfig(init_r=4, target_r=2, tinit=2, tfinal=4, deltaT=2, modules_to_save=["classifier"],
                        task_type="SEQ_CLS")
    before = cfg.to_dict()
    build_method(tiny_bert(), method, cfg, 16)
    assert cfg.to_dict() == before
