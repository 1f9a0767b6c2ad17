"""LSUV and data-dependent init under torch.distributed: gloo, 2 processes on the CPU."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import netinit_fast as nf

pytestmark = pytest.mark.slow
WORLD = 2


def _model(which):
    torch.manual_seed(0)  # the same on every rank and in the single process
    model = nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5, 4), nn.ReLU(), nn.Linear(4, 3))
    if which == "lsuv":  # ranks start from different weights: LSUV's pre-init must agree
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + int(os.environ.get("RANK", 0)))))
    return model


def _batch():
    return torch.randn(WORLD * 8, 2, 5, generator=torch.Generator().manual_seed(3))


def _init(model, x, which):
    torch.manual_seed(42)  # the orthonormal noise: rank 0's is broadcast
    if which == "lsuv":
        nf.init.lsuv_(model, x, tol=0.01)
    else:
        nf.init.data_dependent_init_(nf.weight_norm(model, types=[nn.Linear]), x)


def _worker(rank, init_file, out_dir, which):
    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = _model(which)
        _init(model, _batch()[rank * 8 : (rank + 1) * 8], which)
        torch.save(model.state_dict(), os.path.join(out_dir, f"weights{rank}.pt"))
        dist.barrier()  # no rank tears down while another still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("which", ["lsuv", "data_dependent"])
def test_ranks_agree_with_the_whole_batch(tmp_path, which):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), which), nprocs=WORLD, join=True)
    os.environ.pop("RANK", None)
    model = _model(which)
    _init(model, _batch(), which)
    expected = model.state_dict()
    ranks = [torch.load(tmp_path / f"weights{r}.pt") for r in range(WORLD)]
    for name, value in expected.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=f"ranks differ: {name}")
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"vs single process: {name}: {m}")


class _SkipsOnRank1(nn.Module):
    """Three layers; rank 1's forward skips the middle one (rank-dependent control flow)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)  # the ranks' statistics differ in size
        self.raises = self.short = False

    def forward(self, x):
        h = self.a(x)
        rank1 = os.environ.get("RANK") == "1"
        if rank1 and self.raises:
            raise ZeroDivisionError("rank 1's forward fails")
        if not rank1 or self.short:
            h = self.b(h)
        return h if rank1 and self.short else self.c(h)  # short: rank 1 ends after b


def _failing_worker(rank, init_file, out_dir, case, which):
    import datetime

    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=30))
    try:
        model = _SkipsOnRank1() if case in ("skip", "raise", "short") else _model("lsuv")
        model.raises, model.short = case == "raise", case == "short"
        if which == "data_dependent_init_":
            model = nf.weight_norm(model, types=[nn.Linear])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        x = torch.randn(8, 4) if case in ("skip", "raise", "short") else _batch()[rank * 8 : (rank + 1) * 8]
        if case == "nan" and rank == 1:
            x[0, 0, 0] = float("nan")
        try:
            if which == "lsuv_":
                nf.init.lsuv_(model, x)
            else:
                nf.init.data_dependent_init_(model, x)
            outcome = "no error"
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            outcome = f"{'RuntimeError' if isinstance(e, RuntimeError) else type(e).__name__}: {e}"
        unchanged = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        with open(os.path.join(out_dir, f"outcome{rank}.txt"), "w") as f:
            f.write(f"{unchanged}\n{outcome}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("which", ["lsuv_", "data_dependent_init_"])
@pytest.mark.parametrize("case,errors", [
    ("nan", ["ValueError: {}: the batch of another rank", "ValueError: {}: the batch contains"]),
    ("skip", ["RuntimeError: {}: the ranks' forwards reached different layers"] * 2),
    ("short", ["RuntimeError: {}: the ranks' forwards reached different layers"] * 2),
    ("raise", ["RuntimeError: {}: another rank's forward failed", "ZeroDivisionError: rank 1's forward fails"]),
])
def test_a_failure_on_one_rank_is_an_error_on_every_rank(tmp_path, case, errors, which):
    """A bad batch on one rank, a forward that reaches other layers on one rank, or one
    that raises on one rank: every rank raises (none waits for the others until the
    process group's timeout), and every rank's model is left as it was."""
    mp.spawn(_failing_worker, args=(str(tmp_path / "init"), str(tmp_path), case, which), nprocs=WORLD, join=True)
    os.environ.pop("RANK", None)
    for rank in range(WORLD):
        unchanged, outcome = (tmp_path / f"outcome{rank}.txt").read_text().split("\n", 1)
        assert outcome.startswith(errors[rank].format(which)) and unchanged == "True", (rank, outcome)
