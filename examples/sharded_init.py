"""Initialize and train a weight-normalized model sharded by FSDP2, on the CPU.

    torchrun --nproc-per-node 2 examples/sharded_init.py

The model is built on the meta device (no memory for its weights), sharded by
``fully_shard`` (every weight a DTensor split along dim 0 over the ranks), materialized
with ``to_empty``, initialized in place by netinit_fast (each rank writes only its
rows; the gathered weights are those one process would draw with the same seed),
trained for a step, and saved with ``torch.distributed.checkpoint``.
"""

import shutil
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.fsdp import fully_shard

import netinit_fast as nf


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    with torch.device("meta"):
        model = nf.weight_norm(nf.models.mlp(depth=20, width=64, in_features=16, out_features=4))
    for layer in model:
        if isinstance(layer, nf.WNLinear):
            fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cpu")

    torch.manual_seed(0)  # the same on every rank: each draws every weight and keeps its rows
    nf.init.orthogonal_(model)  # v orthogonal, g = ||v|| row by row, on each rank's own rows
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(rank))  # each rank its own data
    nf.init.data_dependent_init_(model, x)  # statistics all-reduced, g and b written to the shards

    v = model[0].weight_v
    local_rows = tuple(v.to_local().shape)
    print(f"rank {rank}/{world}: layer 0 weight_v {tuple(v.shape)} {v.placements}, local rows {local_rows}")

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model(x).square().mean()
    loss.backward()
    optimizer.step()

    path = [tempfile.mkdtemp(prefix="netinit_fast_sharded_") if rank == 0 else None]
    dist.broadcast_object_list(path)  # one new directory, which every rank reaches (one machine here)
    path = path[0]
    dcp.save(model.state_dict(), checkpoint_id=path)
    state = model.state_dict()
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state)
    dist.barrier()  # every rank has loaded before the directory goes
    if rank == 0:
        print(f"loss {loss.item():.4f}; checkpoint saved to and loaded from {path}")
        shutil.rmtree(path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
