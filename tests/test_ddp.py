"""Data parallel (2 processes, gloo on CPU): identical masks and scores on every rank, equal to one process
with the same global batch."""

import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker


def test_two_ranks_agree_with_single_process(tmp_path):
    world = 2
    mp.spawn(ddp_worker.worker, args=(world, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=world, join=True)
    results = [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=False) for r in range(world)]
    single = ddp_worker.train(0, 1, ddp=False)
    assert len(results[0]["masks"]) >= 4
    for event, (m0, m1, ms) in enumerate(zip(results[0]["masks"], results[1]["masks"], single["masks"])):
        for name in m0:
            assert torch.equal(m0[name], m1[name]), f"ranks disagree at mask event {event}: {name}"
            assert torch.equal(m0[name], ms[name]), f"DDP differs from single process at event {event}: {name}"
    for s0, s1, ss in zip(results[0]["scores"], results[1]["scores"], single["scores"]):
        assert torch.equal(s0, s1)  # scores identical across ranks, not just masks
        # one process sums the same examples in another order: equal up to float32 rounding
        torch.testing.assert_close(s0, ss, rtol=1e-4, atol=1e-6)
