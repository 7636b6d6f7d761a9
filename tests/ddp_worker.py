"""Worker for tests/test_ddp.py: tiny BERT + IGU-LoRA under DDP (gloo, CPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from tiny import cls_batch, tiny_bert

from igulora import IguLoraConfig, get_igu_model

STEPS = 12


def config() -> IguLoraConfig:
    return IguLoraConfig(init_r=4, target_r=2, total_step=STEPS, tinit=2, tfinal=3, deltaT=2, ig_steps=4,
                         estimator="stochastic", modules_to_save=["classifier"], task_type="SEQ_CLS")


def global_batches() -> list[dict[str, torch.Tensor]]:
    return [cls_batch(n=8, seed=100 + t) for t in range(STEPS)]


def train(rank: int, world: int, ddp: bool) -> dict:
    torch.manual_seed(0)
    peft_model, alloc = get_igu_model(tiny_bert(), config())
    model = torch.nn.parallel.DistributedDataParallel(peft_model) if ddp else peft_model
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    masks, scores = [], []
    for batch in global_batches():
        local = {k: v.chunk(world)[rank] for k, v in batch.items()}
        model(**local).loss.backward()
        grads_before = [p.grad.clone() for p in alloc.params]
        opt.step()
        rec = alloc.step(local)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads_before, alloc.params)), "probe touched .grad"
        opt.zero_grad()
        if rec.masked:
            masks.append({k: v.clone() for k, v in alloc.keep.items()})
            scores.append(torch.cat([s for s in alloc.unit_scores().values()]))
    return {"masks": masks, "scores": scores}


def worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(train(rank, world, ddp=True), f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()
