"""HF Trainer integration: one allocator update per optimizer step, derived total_step, exact resume."""

import torch
from tiny import cls_batch, tiny_bert
from transformers import TrainingArguments

from igulora import IguLoraConfig, get_igu_model
from igulora.integrations import IguLoraTrainer
from igulora.peft_backend import read_adapter_ranks


def dataset(n=48):
    b = cls_batch(n=n, seed=3)
    return [{k: v[i] for k, v in b.items()} for i in range(n)]


def make_trainer(out, **kw):
    torch.manual_seed(0)
    cfg = IguLoraConfig(init_r=4, target_r=2, tinit=0.1, tfinal=0.25, deltaT=2, ig_steps=4,
                        modules_to_save=["classifier"], task_type="SEQ_CLS")
    peft_model, alloc = get_igu_model(tiny_bert(), cfg)
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             learning_rate=1e-2, report_to=[], save_strategy="steps", save_steps=3,
                             logging_strategy="no", seed=0, data_seed=0, use_cpu=True, **kw)
    return IguLoraTrainer(model=peft_model, args=args, allocator=alloc, train_dataset=dataset()), alloc


def test_total_step_derived_and_one_update_per_optimizer_step(tmp_path):
    trainer, alloc = make_trainer(tmp_path / "a", num_train_epochs=2)
    trainer.train()
    total = trainer.state.max_steps
    assert total == 12  # 48 examples / (4 x 2) per step x 2 epochs
    assert alloc.schedule.total_step == total and alloc.step_count == total
    final = [r for r in trainer.igu_callback.records if r.masked][-1]
    assert final.step == total - alloc.schedule.tfinal
    assert final.active_budget <= alloc.target_budget


def test_resume_matches_uninterrupted(tmp_path):
    trainer, alloc = make_trainer(tmp_path / "full", max_steps=12)
    trainer.train()
    batch = cls_batch(seed=11)
    with torch.no_grad():
        want = trainer.model(**batch).logits
    pattern = alloc.rank_pattern()

    trainer2, alloc2 = make_trainer(tmp_path / "full_copy", max_steps=12)
    trainer2.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))
    with torch.no_grad():
        got = trainer2.model(**batch).logits
    assert alloc2.rank_pattern() == pattern
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_save_model_writes_compact_adapter_quietly(tmp_path, recwarn):
    trainer, alloc = make_trainer(tmp_path / "a", max_steps=12)
    trainer.train()
    assert 0 in alloc.rank_pattern().values()  # a fully pruned module: the case PEFT warns about
    trainer.save_model(str(tmp_path / "final"))
    assert read_adapter_ranks(tmp_path / "final") == alloc.rank_pattern()
    assert not [w for w in recwarn if "invalid shape" in str(w.message)]
