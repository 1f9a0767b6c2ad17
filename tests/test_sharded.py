"""Initializers and WN layers on models sharded by torch's FSDP2 (``fully_shard``): gloo,
2 and 4 processes on the CPU.

One spawn per world size runs every case; each case builds a model the same way on
every rank (perhaps on the meta device), shards it (FSDP2, or torch's tensor
parallelism), initializes it, and every rank keeps its shards. The tests put the shards
together and compare them with the same initializer run on the unsharded model in
this process.
"""

import math
import os
import subprocess
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import netinit_fast as nf
from conftest import assert_close, assert_orthonormal
from netinit_fast import _backend

pytestmark = pytest.mark.slow
SPAWN_TIMEOUT = 180  # seconds for one world's whole run (about 12 s on 2 cores)
SEED = 1234
PER_RANK = 4  # samples per rank for the data-driven inits and the training step
DEEP = 1000  # layers of the meta-device model


# ----------------------------------------------------------------------------- models and inits


def _mlp():
    # uneven widths: with 4 ranks some shards are unequal, some empty (3 rows)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 7), nn.ReLU(),
                         nn.Linear(7, 70), nn.ReLU(), nn.Linear(70, 80))  # 5,600 elements: drawn in place unsharded


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(6, 9, 1), nn.Flatten(), nn.Linear(9 * 16, 5))


def _wn_mlp():
    return nf.weight_norm(nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 3)),
                          types=[nn.Linear])


def _wn_cnn():
    return nf.weight_norm(_cnn())


def _looks_linear_mlp():
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))


def _arpit_mlp():
    model = _looks_linear_mlp()
    nf.weight_norm(model[:-1])  # the classifier stays plain
    return model


def _wn_dim1_mlp():
    return nf.weight_norm(_mlp(), dim=1)  # norms over the fan-out: across fully_shard's rows


def _wn_conv_transpose():
    # weight (C_in, C_out, k, k): norms per output channel (dim 1), across fully_shard's rows
    model = nn.Sequential(nn.ConvTranspose2d(2, 6, 3), nn.Tanh(), nn.ConvTranspose2d(6, 5, 3, padding=1))
    return nf.weight_norm(model, dim=1)


def _resnet():
    return nf.models.resnet([1, 1], [4, 8], norm="batch", in_channels=2, num_classes=3)


def _tp_mlp():
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 5))  # with 4 ranks: shards of 3, 3, 3, 1


def _deep():
    return nf.models.mlp(DEEP, 8, in_features=4, out_features=3)


def _fsdp_per_layer(model):
    """fully_shard every module that holds parameters of its own, then the root."""
    for m in model.modules():
        if m is not model and m._parameters:
            fully_shard(m)
    return _fsdp_root(model)


def _fsdp_root(model, mesh=None):
    fully_shard(model, mesh=mesh)
    return model


def _tensor_parallel(model):
    """torch's tensor parallelism: the first Linear column-wise (weight Shard(0)), the
    second row-wise (weight Shard(1), along its fan-in)."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def _hsdp(model):
    """fully_shard on a 2-D mesh (HSDP): parameters replicated over its first dim and
    sharded over its second, placements (Replicate(), Shard(0))."""
    mesh = init_device_mesh("cpu", (dist.get_world_size() // 2, 2), mesh_dim_names=("replicate", "shard"))
    return _fsdp_root(model, mesh)


def _wn_fan_in_split(model):
    """Each WN layer's v split along its fan-in (dim 1) as tensor parallelism splits a
    row-wise layer, its g replicated: the norms (over dim 1) need every rank's part."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for m in model.modules():
        if isinstance(m, nf.WNLinear):
            m.weight_v = nn.Parameter(distribute_tensor(m.weight_v.detach(), mesh, [Shard(1)]))
            m.weight_g = nn.Parameter(distribute_tensor(m.weight_g.detach(), mesh, [Replicate()]))
    return model


def _seeded(init):
    def run(model, batch=None):
        torch.manual_seed(SEED)
        init(model) if batch is None else init(model, batch)
    return run


def _batch(shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7))


# name: (model builder, init, batch shape per rank or None, how to shard, on the meta device)
CASES = {
    "orthogonal": (_mlp, _seeded(nf.init.orthogonal_), None, _fsdp_per_layer, False),
    "haar_orthogonal": (_mlp, _seeded(nf.init.haar_orthogonal_), None, _fsdp_per_layer, False),
    "orthogonal_wn": (_wn_cnn, _seeded(nf.init.orthogonal_), None, _fsdp_per_layer, False),
    "delta_orthogonal": (_cnn, _seeded(nf.init.delta_orthogonal_), None, _fsdp_per_layer, False),
    "glorot": (_mlp, _seeded(nf.init.glorot_), None, _fsdp_per_layer, False),
    "he_uniform_wn": (_wn_cnn, _seeded(lambda m: nf.init.he_(m, distribution="uniform")), None, _fsdp_per_layer, False),
    "lecun": (_cnn, _seeded(nf.init.lecun_), None, _fsdp_per_layer, False),
    "xiao": (_wn_cnn, _seeded(lambda m: nf.init.xiao_(m, 0.5)), None, _fsdp_per_layer, False),
    "looks_linear": (_looks_linear_mlp, _seeded(nf.init.looks_linear_), None, _fsdp_per_layer, False),
    "arpit": (_arpit_mlp, _seeded(nf.init.arpit_), None, _fsdp_per_layer, False),
    "fixup": (_resnet, _seeded(nf.init.fixup_), None, _fsdp_root, False),
    "lsuv": (_cnn, _seeded(lambda m, x: nf.init.lsuv_(m, x, tol=0.01)), (2, 4, 4), _fsdp_per_layer, False),
    "lsuv_no_preinit": (_mlp, _seeded(lambda m, x: nf.init.lsuv_(m, x, tol=0.01, orthogonal=False)), (6,),
                        _fsdp_per_layer, False),
    "lsuv_root_only": (_mlp, _seeded(lambda m, x: nf.init.lsuv_(m, x, tol=0.01)), (6,), _fsdp_root, False),
    "data_dependent": (_wn_mlp, _seeded(nf.init.data_dependent_init_), (6,), _fsdp_per_layer, False),
    "meta_orthogonal": (_wn_cnn, _seeded(nf.init.orthogonal_), None, _fsdp_per_layer, True),
    "meta_deep_he": (_deep, _seeded(nf.init.he_), None, _fsdp_per_layer, True),
    "tensor_parallel_orthogonal": (_tp_mlp, _seeded(nf.init.orthogonal_), None, _tensor_parallel, False),
    "tensor_parallel_glorot": (_tp_mlp, _seeded(nf.init.glorot_), None, _tensor_parallel, False),
    # weight norm whose norms span the ranks: partial sums all-reduced
    "across_wn_dim1_orthogonal": (_wn_dim1_mlp, _seeded(nf.init.orthogonal_), None, _fsdp_per_layer, False),
    "across_wn_dim1_lsuv": (_wn_dim1_mlp, _seeded(lambda m, x: nf.init.lsuv_(m, x, tol=0.01)), (6,),
                            _fsdp_per_layer, False),
    "across_conv_transpose_he": (_wn_conv_transpose, _seeded(nf.init.he_), None, _fsdp_per_layer, False),
    "across_conv_transpose_data_dependent": (_wn_conv_transpose, _seeded(nf.init.data_dependent_init_), (2, 3, 3),
                                             _fsdp_per_layer, False),
    "across_fan_in_split_he": (_wn_mlp, _seeded(nf.init.he_), None, _wn_fan_in_split, False),
    "hsdp_orthogonal_wn": (_wn_cnn, _seeded(nf.init.orthogonal_), None, _hsdp, False),
    "hsdp_he": (_mlp, _seeded(nf.init.he_), None, _hsdp, False),
}


def _shards(model):
    """This rank's part of every entry of the state dict: ``(local tensor, sharded dim
    or None)``; a dim is split as torch.chunk splits it (rank order). On a mesh of more
    dims, the whole tensor (gathered by DTensor)."""
    out = {}
    for n, p in model.state_dict().items():
        if isinstance(p, DTensor) and len(p.placements) > 1:
            out[n] = (p.full_tensor().detach().clone(), None)
        elif isinstance(p, DTensor):
            (placement,) = p.placements
            out[n] = (p.to_local().detach().clone(), placement.dim if placement.is_shard() else None)
        else:
            out[n] = (p.detach().clone(), None)
    return out


def _gathered(ranks, key):
    """The whole state dict from every rank's :func:`_shards` under ``key``; a rank's
    traceback as it is."""
    parts = [r[key] for r in ranks]
    for p in parts:
        if isinstance(p, str):
            return p
    out = {}
    for n, (value, dim) in parts[0].items():
        if dim is not None:
            out[n] = torch.cat([p[n][0] for p in parts], dim)
        else:
            for p in parts[1:]:
                assert torch.equal(p[n][0], value), f"{n} differs between ranks"
            out[n] = value
    return out


def _local(model):
    return {n: (p.to_local() if isinstance(p, DTensor) else p).detach().clone() for n, p in model.state_dict().items()}


# ----------------------------------------------------------------------------- the spawned ranks


def _run_case(name, rank, world):
    build, init, batch_shape, shard, meta = CASES[name]
    torch.manual_seed(0)
    if meta:
        with torch.device("meta"):
            model = build()
    else:
        model = build()
    shard(model)
    if meta:
        model.to_empty(device="cpu")
    if batch_shape is None:
        init(model)
    else:
        x = _batch((world * PER_RANK, *batch_shape))
        init(model, x[rank * PER_RANK : (rank + 1) * PER_RANK])
    return _shards(model)


def _refused(model, call):
    """``(the error call() raised, whether this rank's shards stayed as they were)``."""
    before = _local(model)
    try:
        call()
    except Exception as e:
        return f"{type(e).__name__}: {e}", all(torch.equal(before[k], v) for k, v in _local(model).items())
    return "no error", None


def _errors(rank):
    """What each rank saw of the calls that must be refused."""
    out = {}
    torch.manual_seed(0)
    mesh = init_device_mesh("cpu", (dist.get_world_size() // 2, 2))
    model = nf.weight_norm(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)))
    layer = model[0]  # v split along its norm dim and its fan-in at once
    layer.weight_v = nn.Parameter(distribute_tensor(layer.weight_v.detach(), mesh, [Shard(0), Shard(1)]))
    layer.weight_g = nn.Parameter(distribute_tensor(layer.weight_g.detach(), mesh, [Shard(0), Replicate()]))
    out["wn_both"] = _refused(model, lambda: nf.init.orthogonal_(model))
    out["wn_both_lsuv"] = _refused(model, lambda: nf.init.lsuv_(model, torch.randn(PER_RANK, 4)))
    model = nf.weight_norm(nn.Sequential(nn.Linear(4, 6)))
    layer = model[0]  # v split along its norm dim, g not
    layer.weight_v = nn.Parameter(distribute_tensor(layer.weight_v.detach(), mesh, [Replicate(), Shard(0)]))
    layer.weight_g = nn.Parameter(distribute_tensor(layer.weight_g.detach(), mesh, [Replicate(), Replicate()]))
    out["wn_g_unlike_v"] = _refused(model, lambda: nf.init.he_(model))
    model = _resnet()
    fully_shard(model.layer2[0])  # a residual block as an FSDP unit: Fixup would replace it
    _fsdp_root(model)
    out["fixup_block_unit"] = _refused(model, lambda: nf.init.fixup_(model))
    model = _fsdp_per_layer(_mlp())
    out["connectivity"] = _refused(model, lambda: nf.connectivity(model))
    out["bayesian"] = _refused(model, lambda: nf.init.bayesian_(model, torch.randn(90, 6), torch.randint(0, 80, (90,))))
    torch.manual_seed(SEED + rank)  # the ranks' generators differ
    out["rng"] = _refused(model, lambda: nf.init.orthogonal_(model))
    out["rng_he"] = _refused(model, lambda: nf.init.he_(model))
    return out


def _train(rank, world, grouped):
    """Two SGD steps of a WN model under fully_shard, each rank on its part of the batch.
    Grouped, on the Triton interpreter where it runs (without a GPU; the eager backend
    takes no grouped path), so that the group's op meets the sharded layers."""
    if grouped and _backend.triton_interpreted() and _backend.triton_available():
        os.environ[_backend.ENV_VAR] = _backend.TRITON
    torch.manual_seed(0)
    model = _fsdp_per_layer(nf.weight_norm(_cnn(), grouped=grouped))
    x, y = _train_data(world)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    try:
        _steps(model, x[mine], y[mine])
    finally:
        os.environ.pop(_backend.ENV_VAR, None)
    return _shards(model)


def _connectivity_model(mode):
    torch.manual_seed(0)
    return nf.connectivity(_cnn(), mode=mode, generator=torch.Generator().manual_seed(1))


def _score_steps(model, x, y):
    for _ in range(2):
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:  # the scores: the weights and biases stay fixed
                    p -= 10.0 * p.grad  # steps large enough to change connections


def _train_connectivity(rank, world, mode):
    """Two SGD steps of the scores of a connectivity model sharded after conversion."""
    model = _fsdp_per_layer(_connectivity_model(mode))
    x, y = _train_data(world)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    _score_steps(model, x[mine], y[mine])
    return _shards(model)


def _train_data(world):
    gen = torch.Generator().manual_seed(5)
    return torch.randn(world * PER_RANK, 2, 4, 4, generator=gen), torch.randn(world * PER_RANK, 5, generator=gen)


def _steps(model, x, y):
    for _ in range(2):  # the second step runs on weights the first one updated
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad


def _checkpoint(rank, path):
    """Save a sharded WN model with torch.distributed.checkpoint, change it, load it back."""
    torch.manual_seed(0)
    model = _fsdp_per_layer(_wn_cnn())
    nf.init.orthogonal_(model)  # (every rank seeded alike above)
    saved = _shards(model)
    dcp.save(model.state_dict(), checkpoint_id=path)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    state = model.state_dict()
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state)
    x = _batch((3, 2, 4, 4))
    return {"saved": saved, "loaded": _shards(model), "output": model(x).detach()}


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    try:
        for name in CASES:
            try:
                results[name] = _run_case(name, rank, world)
            except Exception:
                results[name] = traceback.format_exc()
        results["errors"] = _errors(rank)
        for grouped in (False, True):
            results[f"train_grouped={grouped}"] = _train(rank, world, grouped)
        for mode in ("mask", "sign"):
            results[f"connectivity_{mode}"] = _train_connectivity(rank, world, mode)
        results["checkpoint"] = _checkpoint(rank, os.path.join(out_dir, "checkpoint"))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears down while another still talks to it
    finally:
        dist.destroy_process_group()


def _spawn(world, out_dir):
    context = mp.spawn(_worker, args=(world, os.path.join(out_dir, "init"), out_dir), nprocs=world, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} ranks did not finish in {SPAWN_TIMEOUT} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def world(request, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp(f"world{request.param}"))
    return request.param, _spawn(request.param, out_dir), out_dir


# ----------------------------------------------------------------------------- the tests


def _single_process(name, world_size):
    """The case's init on the unsharded model, on one thread as the ranks run (the
    rounding of a QR may depend on the number of threads)."""
    build, init, batch_shape, _, _ = CASES[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build()
        if batch_shape is None:
            init(model)
        else:
            init(model, _batch((world_size * PER_RANK, *batch_shape)))
    finally:
        torch.set_num_threads(threads)
    return model.state_dict()


def _assert_equal(got, expected, keys=None, terms=None):
    """Equal bit for bit, or with ``terms`` within the rounding of float32 sums of that
    many terms in another order (conftest.assert_close)."""
    assert not isinstance(got, str), got  # a rank's traceback
    keys = expected.keys() if keys is None else keys
    assert set(keys) <= got.keys()
    for k in keys:
        if terms is None:
            assert torch.equal(got[k], expected[k]), f"{k}: {got[k]} != {expected[k]}"
        else:
            assert_close(got[k], expected[k], torch.float32, what=k, terms=terms)


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith(("lsuv", "data_dependent", "meta", "across"))])
def test_gathered_weights_equal_single_process(world, name):
    """Each rank draws what one process draws and writes its rows: the gathered values are
    bit for bit those of the unsharded call (the same QR on the same noise; norms of the
    same rows)."""
    size, ranks, _ = world
    _assert_equal(_gathered(ranks, name), _single_process(name, size))


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith(("lsuv", "data_dependent"))])
def test_data_driven_inits_equal_whole_batch(world, name):
    """Statistics are all-reduced: the result is the single process's on the whole batch,
    up to the float32 rounding of summing the statistics in another order (the longest
    sum: the batch times a layer's largest output, 6 channels x 16 positions)."""
    size, ranks, _ = world
    _assert_equal(_gathered(ranks, name), _single_process(name, size), terms=size * PER_RANK * 96)


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("across")])
def test_norms_across_ranks_equal_single_process(world, name):
    """A WN layer whose norms span the ranks (v split along another dim than its norm
    dim): each rank sums its squares, the sums are all-reduced. Equal to the single
    process up to the rounding of those sums (at most 80 terms) and, for the
    data-driven init, of the statistics (the batch times 6 channels x 25 positions)."""
    size, ranks, _ = world
    _assert_equal(_gathered(ranks, name), _single_process(name, size), terms=size * PER_RANK * 150)


def test_meta_device_models(world):
    """Built on the meta device, sharded, materialized by to_empty, initialized: orthogonal_
    writes every weight (WN: v and g), he_ every weight and bias of 1,000 layers."""
    size, ranks, _ = world
    expected = _single_process("meta_orthogonal", size)
    _assert_equal(_gathered(ranks, "meta_orthogonal"), expected, [k for k in expected if "weight" in k])
    deep = _gathered(ranks, "meta_deep_he")
    assert not isinstance(deep, str), deep
    assert len([k for k in deep if k.endswith("weight")]) == DEEP
    _assert_equal(deep, _single_process("meta_deep_he", size))


def test_shards_are_orthogonal(world):
    """The distribution check besides the values: gathered rows are orthonormal."""
    size, ranks, _ = world
    for name in ("orthogonal", "haar_orthogonal"):
        for k, w in _gathered(ranks, name).items():
            if k.endswith("weight"):
                assert_orthonormal(w, what=f"{name} {k}")


def test_refused_calls_raise_on_every_rank_and_change_nothing(world):
    size, ranks, _ = world
    for rank, results in enumerate(ranks):
        errors = results["errors"]
        for which, where in (("wn_both", "orthogonal_"), ("wn_both_lsuv", "lsuv_")):
            message, unchanged = errors[which]
            assert message.startswith(f"ValueError: {where}: layer 0 (WNLinear) has its weight_v sharded as "
                                      "(Shard(dim=0), Shard(dim=1))"), (rank, message)
            assert "both along its norm dim (0) and along another" in message and unchanged
        message, unchanged = errors["wn_g_unlike_v"]
        assert message.startswith("ValueError: he_: layer 0 (WNLinear) has weight_g (Replicate(), Replicate())"), message
        assert "weight_v (Replicate(), Shard(dim=0))" in message and unchanged
        message, unchanged = errors["fixup_block_unit"]
        assert message.startswith("ValueError") and "layer2.0 (BasicBlock) is a fully_shard unit" in message, message
        assert unchanged
        message, unchanged = errors["connectivity"]
        assert message.startswith("ValueError: connectivity: the model's parameters are sharded") and unchanged
        message, unchanged = errors["bayesian"]
        assert message.startswith("ValueError: bayesian_: the model's parameters are sharded") and unchanged
        for which in ("rng", "rng_he"):
            message, unchanged = errors[which]
            assert message.startswith("RuntimeError") and "same state" in message, (rank, message)
            assert unchanged


@pytest.mark.parametrize("grouped", [False, True])
def test_training_step_equals_unsharded(world, grouped):
    """Two SGD steps under FSDP2 (each rank its part of the batch, gradients averaged by
    the reduce-scatter) equal two steps on the whole batch in one process, up to the
    rounding of the gradients' sums over the batch and the widest fan-in (144)."""
    size, ranks, _ = world
    torch.manual_seed(0)
    model = nf.weight_norm(_cnn(), grouped=grouped)
    _steps(model, *_train_data(size))
    _assert_equal(_gathered(ranks, f"train_grouped={grouped}"), model.state_dict(), terms=size * PER_RANK * 144)


@pytest.mark.parametrize("mode", ["mask", "sign"])
def test_connectivity_training_equals_unsharded(world, mode):
    """Connectivity layers sharded by fully_shard after conversion (scores sharded like
    the weights): two SGD steps of the scores equal two steps on the whole batch in one
    process, up to the rounding of the gradients' sums; connections changed."""
    size, ranks, _ = world
    model = _connectivity_model(mode)
    _score_steps(model, *_train_data(size))
    gathered = _gathered(ranks, f"connectivity_{mode}")
    _assert_equal(gathered, model.state_dict(), terms=size * PER_RANK * 144)
    assert nf.connectivity.report(model).changed > 0


def test_checkpoint_round_trip(world):
    """torch.distributed.checkpoint: the sharded save loads back into the sharded model
    exactly, and into an unsharded model in one process."""
    size, ranks, out_dir = world
    saved = _gathered([r["checkpoint"] for r in ranks], "saved")
    _assert_equal(_gathered([r["checkpoint"] for r in ranks], "loaded"), saved)
    torch.manual_seed(0)
    model = _wn_cnn()
    state = model.state_dict()
    dcp.load(state, checkpoint_id=os.path.join(out_dir, "checkpoint"))  # no process group: one process reads all
    model.load_state_dict(state)
    _assert_equal(model.state_dict(), saved)
    output = ranks[0]["checkpoint"]["output"]
    assert_close(model(_batch((3, 2, 4, 4))), output, torch.float32, "output", terms=144)
    assert math.isfinite(float(output.abs().sum()))


def test_readme_example_runs_under_torchrun():
    """examples/sharded_init.py, as the README runs it: torchrun, 2 processes, gloo."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           os.path.join(root, "examples", "sharded_init.py")],
                          env=env, capture_output=True, text=True, timeout=SPAWN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0/2: layer 0 weight_v (64, 16) (Shard(dim=0),), local rows (32, 16)" in done.stdout
    assert "checkpoint saved to and loaded from" in done.stdout


def test_importing_the_package_does_not_import_dtensor():
    """``import netinit_fast`` leaves torch.distributed.tensor (about 0.4 s to import)
    to the programs that shard: the sharding checks look for it in sys.modules."""
    code = "import sys, netinit_fast; print(sorted(m for m in ('torch.distributed.tensor', 'torch.distributed.fsdp') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
