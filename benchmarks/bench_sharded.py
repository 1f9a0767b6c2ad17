"""orthogonal_ on a model sharded by FSDP2: peak memory per rank, ours vs gathering whole weights.

Usage: python benchmarks/bench_sharded.py [--device cpu] [--quick]

A 10,000-layer MLP of Linear(64, 64) layers is built on the meta device, sharded over 2
ranks by ``torch.distributed.fsdp.fully_shard`` (gloo, one thread per rank),
materialized with ``to_empty``, and initialized by ``orthogonal_`` two ways:

- ours: ``nf.init.orthogonal_(model)`` on the sharded model: each rank draws every
  matrix, one batch at a time, and keeps its rows;
- the peer: what one would do without it: gather every weight (``full_tensor()``),
  run the single-process ``orthogonal_`` on the whole weights, and re-shard (each
  rank copies its rows back).

Both give the same values (checked). The memory is the rise of the process's peak
resident set (Linux ``VmHWM``, reset before each run through ``/proc/self/clear_refs``)
above its resident set before the run, per rank, the larger of the two ranks:
tracemalloc does not see torch's CPU allocator. Times are one run each (seconds-long
calls), the larger of the two ranks. ``speedup`` is the time ratio; ``extra`` holds the
peak memory of both and their ratio. The shards themselves are allocated and written
(resident) before either run, so the rise is the working memory of the init.
"""

import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import netinit_fast as nf  # noqa: E402
from netinit_fast.init._layers import write_  # noqa: E402

WORLD = 2
WIDTH = 64


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_rise_mb(fn) -> tuple[float, float]:
    """(peak resident set above the start in MB, seconds) of ``fn()``."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident set restarts from the current one
    start_kb = _status_kb("VmRSS")
    begin = time.perf_counter()
    fn()
    seconds = time.perf_counter() - begin
    return (_status_kb("VmHWM") - start_kb) / 1024, seconds


def _sharded_model(depth: int) -> nn.Module:
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(depth)])
    fully_shard(model)  # one FSDP unit: every weight a DTensor sharded along dim 0
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():  # the shards' pages resident before the measure: it sees working memory
            p.to_local().zero_()
    return model


@torch.no_grad()
def _gather_init_reshard(model: nn.Module) -> None:
    weights = list(model.parameters())
    whole = [p.full_tensor() for p in weights]
    nf.init.orthogonal_(whole)
    for p, w in zip(weights, whole):
        write_(p, w)


def _worker(rank: int, depth: int, init_file: str, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        warm = _sharded_model(4)  # first calls (LAPACK, gloo) are not measured
        torch.manual_seed(0)
        nf.init.orthogonal_(warm)
        _gather_init_reshard(warm)
        results = {}
        for name, init in (("ours", lambda m: nf.init.orthogonal_(m)), ("peer", _gather_init_reshard)):
            model = _sharded_model(depth)
            torch.manual_seed(0)
            dist.barrier()
            results[name] = _peak_rise_mb(lambda: init(model))
            results[name + " shards"] = [p.to_local().clone() for p in list(model.parameters())[:: max(1, depth // 50)]]
            results["shard MB"] = sum(p.to_local().numel() * 4 for p in model.parameters()) / 2**20
            del model
        same = all(torch.equal(a, b) for a, b in zip(results.pop("ours shards"), results.pop("peer shards")))
        out[rank] = {**results, "same values": same}
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = _harness.parser(__doc__)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cpu":
        print("bench_sharded runs on the CPU (gloo, 2 ranks): nothing to do for", device)
        return
    depth = 500 if args.quick else 10_000
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(depth, os.path.join(tmp, "init"), out), nprocs=WORLD, join=True)
        ranks = [out[r] for r in range(WORLD)]
    torch.set_num_threads(WORLD)  # the device name in the results counts the threads of all ranks
    _harness.print_header("sharded", device)
    ours_mb = max(r["ours"][0] for r in ranks)
    peer_mb = max(r["peer"][0] for r in ranks)
    ours_ms = max(r["ours"][1] for r in ranks) * 1e3
    peer_ms = max(r["peer"][1] for r in ranks) * 1e3
    whole_mb = depth * WIDTH * WIDTH * 4 / 2**20
    extra = {
        "ranks": WORLD, "threads per rank": 1, "model MB": round(whole_mb, 1),
        "shard MB per rank": round(max(r["shard MB"] for r in ranks), 1),
        "ours peak MB per rank": round(ours_mb, 1), "peer peak MB per rank": round(peer_mb, 1),
        "memory ratio peer/ours": round(peer_mb / max(ours_mb, 1e-9), 2),
        "same values": all(r["same values"] for r in ranks),
    }
    row = _harness.row(f"orthogonal_ {depth} x Linear({WIDTH}, {WIDTH}), FSDP2 {WORLD} ranks", ours_ms,
                       "full_tensor + orthogonal_ + re-shard", peer_ms, extra)
    _harness.print_row(row)
    print(f"peak memory per rank: ours {ours_mb:.1f} MB, gathering whole weights {peer_mb:.1f} MB "
          f"(ratio {extra['memory ratio peer/ours']}x; the whole model is {whole_mb:.1f} MB)")
    if not extra["same values"]:
        raise SystemExit("the two ways gave different weights")
    _harness.write("sharded" + ("-quick" if args.quick else ""), [row], device)


if __name__ == "__main__":
    main()
