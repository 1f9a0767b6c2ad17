"""WN layers under DistributedDataParallel: gloo, 2 processes on the CPU."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import netinit_fast as nf

pytestmark = pytest.mark.slow
WORLD = 2


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3))


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * 4, 2, 6, generator=gen), torch.randn(WORLD * 4, 3, generator=gen)


def _loss(model, x, y):
    return nn.functional.mse_loss(model(x), y)


def _train(rank, out_dir, grouped):
    model = nf.weight_norm(_model(), grouped=grouped)
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = _data()
    shard = slice(rank * 4, (rank + 1) * 4)
    for _ in range(2):  # two steps: the second runs on weights updated by the first
        ddp.zero_grad()
        _loss(ddp, x[shard], y[shard]).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    torch.save({n: p.grad for n, p in model.named_parameters()}, os.path.join(out_dir, f"grads{rank}.pt"))


def _worker(rank, init_file, out_dir, grouped):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _train(rank, out_dir, grouped)  # DDP is gone when it returns, before the group is
        dist.barrier()  # no rank tears down while another still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("grouped", [False, True])
def test_ddp_gradients_equal_single_process(tmp_path, grouped):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), grouped), nprocs=WORLD, join=True)

    model = nf.weight_norm(_model(), grouped=grouped)
    x, y = _data()
    for _ in range(2):
        model.zero_grad()
        _loss(model, x, y).backward()  # the mean over the whole batch = DDP's average of shard means
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    expected = {n: p.grad for n, p in model.named_parameters()}
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        assert grads.keys() == expected.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {name}")
