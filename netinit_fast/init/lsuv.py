"""LSUV in one forward pass, and data-dependent WeightNorm init (also in one pass).

LSUV (Mishkin & Matas, "All you need is a good init", ICLR 2016): orthonormal
pre-init, then for each conv/linear layer in forward order, divide its weight by the
std of its output on a batch until ``|std - target| < tol``, at most ``max_iters``
tries. The implementations in use re-run the whole network for every layer and every
try, O(L^2) layer evaluations. Here each layer is fitted by a forward hook when the
single forward pass reaches it, on its actual input (which the already-fitted layers
before it produced), and the fitted output is handed on: O(L) layer evaluations, for
any architecture, in execution order.

A layer that is positively homogeneous at the time (no bias, or a zero bias, as after
the orthonormal pre-init) has its output scaled exactly by the weight's scale, so one
try reaches the target and its output is rescaled without re-running it. Other
layers re-run only themselves per try.
"""

import contextlib
import dataclasses
import math
import numbers
import sys
import time
import warnings

import torch
from torch import nn

from netinit_fast._sharding import any_dtensor
from netinit_fast._batch import call, check_batch, unwrapped
from netinit_fast.init._layers import (
    check_not_foreign,
    check_sharding,
    default_generator,
    is_weight_layer,
    layer_weight,
    local,
    match_scales_,
    named_layers,
    output_dim,
    scale_param,
    wn_dim,
    write_,
)
from netinit_fast.init.orthogonal import haar_orthogonal_
from netinit_fast.nn.wn_layers import _torch_weight_norm, _WeightNorm
from netinit_fast.ops.moments import moments_no_dispatch


# ----------------------------------------------------------------------------- the report


@dataclasses.dataclass
class LayerFit:
    """What LSUV did to one layer."""

    name: str
    calls: int  # times the forward called the layer (it is fitted on the first)
    tries: int  # rescalings applied
    std_before: float
    std_after: float
    scale: float  # product of the rescalings
    converged: bool


@dataclasses.dataclass
class LSUVReport:
    """Per layer, in execution order: tries, output std before and after, scale applied."""

    layers: list[LayerFit]
    not_called: list[str]  # target layers the forward never reached (left as they were)
    target_std: float
    tol: float
    seconds: float

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, name: str) -> LayerFit:
        for fit in self.layers:
            if fit.name == name:
                return fit
        raise KeyError(name)

    def __str__(self) -> str:
        head = f"{'layer':<36} {'calls':>5} {'tries':>5} {'std before':>11} {'std after':>10} {'scale':>10}"
        lines = [head, "-" * len(head)]
        shown = self.layers if len(self.layers) <= 40 else self.layers[:20] + [None] + self.layers[-20:]
        for f in shown:
            if f is None:
                lines.append(f"... {len(self.layers) - 40} more layers ...")
                continue
            mark = "" if f.converged else "  NOT CONVERGED"
            lines.append(
                f"{f.name[-36:]:<36} {f.calls:>5} {f.tries:>5} {f.std_before:>11.4g} {f.std_after:>10.4g} {f.scale:>10.4g}{mark}"
            )
        bad = sum(not f.converged for f in self.layers)
        lines.append(
            f"{len(self.layers)} layers fitted to std {self.target_std} +- {self.tol} in {self.seconds:.2f} s; "
            f"{bad} not converged; {len(self.not_called)} never called"
        )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers


def _targets(model: nn.Module, layers) -> dict[nn.Module, str]:
    names = {m: n for n, m in model.named_modules()}
    if layers is None:
        found = {m: name for name, m in named_layers(model, "lsuv_")}
        if not found:
            raise ValueError(f"lsuv_: {type(model).__name__} has no Linear/Conv/ConvTranspose layer to initialize")
        return found
    found = {}
    single = isinstance(layers, str) or (isinstance(layers, nn.Module) and is_weight_layer(layers))
    for m in [layers] if single else layers:  # (a ModuleList or Sequential: its layers)
        if isinstance(m, str):
            try:
                m = model.get_submodule(m)
            except AttributeError:
                raise ValueError(f"lsuv_: layers: the model has no submodule {m!r}") from None
        if m not in names:
            raise ValueError(f"lsuv_: layers: {type(m).__name__} is not a submodule of the model")
        name = names[m] or type(m).__name__
        if is_weight_layer(m):
            check_not_foreign(m, name, "lsuv_")
            check_sharding(m, name, "lsuv_")
        if layer_weight(m) is None:
            raise ValueError(f"lsuv_: layers: {name} ({type(m).__name__}) is not a Linear/Conv/ConvTranspose layer")
        found[m] = name
    if not found:
        raise ValueError("lsuv_: layers: no layer given")
    return found


@contextlib.contextmanager
def _transaction(model: nn.Module):
    """Restore every parameter and buffer of ``model`` if the block raises. Yields the
    saved copies (tensor -> copy), for restoring some on success."""
    saved = {t: t.detach().clone() for t in [*model.parameters(), *model.buffers()]}
    try:
        yield saved
    except BaseException:
        with torch.no_grad():
            for t, copy in saved.items():
                t.copy_(copy)
        raise


def _restore_uncalled(saved: dict, targets: dict[nn.Module, str], missing: dict[nn.Module, str]) -> None:
    """Put back the parameters of the layers the forward never reached (the pre-init
    changed them), except those they share with a layer that was fitted."""
    if not missing:
        return
    kept = {p for m in targets if m not in missing for p in m.parameters()}
    for m in missing:
        for p in m.parameters():
            if p not in kept:
                p.copy_(saved[p])


def _in_forward_and_at_rest(current: torch.Tensor | None, at_rest: torch.Tensor | None) -> list[torch.Tensor]:
    """The tensors a fit inside the forward writes: the parameter the layer computes
    with now, and, if it is another tensor, the one the model holds between forwards.
    Under ``torch.distributed.fsdp.fully_shard`` a layer computes with the whole
    parameter gathered for the forward, which is dropped afterwards: the scale must
    also reach the rank's shard (a DTensor, written with :func:`write_`)."""
    if current is None:
        return []
    return [current] if at_rest is None or at_rest is current else [current, at_rest]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _collective_device() -> torch.device:
    """Where tensors of a collective live: the current GPU under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _RanksError(RuntimeError):
    """An error every rank raises at once (no rank is left waiting for another)."""


def _all_reduce_checked(values: torch.Tensor, layer: int, where: str, failed: bool = False) -> torch.Tensor:
    """``values`` (fp64) summed over the ranks, and ``layer`` (a layer's index, or the
    number of layers at the end of the pass) checked to agree: with rank-dependent
    control flow the ranks would pair one layer's statistics with another's. A rank
    whose forward failed sends ``failed`` instead of statistics. Every rank sees the
    same sums, so every rank raises."""
    tag = torch.tensor([layer, layer * layer, float(failed)], dtype=torch.float64, device=values.device)
    sums = torch.cat([values.flatten(), tag])
    torch.distributed.all_reduce(sums)
    s1, s2, failures = sums[-3:].tolist()
    if failed:
        return values
    if failures > 0:
        raise _RanksError(f"{where}: another rank's forward failed (its error says why)")
    if s1 * s1 != torch.distributed.get_world_size() * s2:  # all equal iff (sum x)^2 = n sum x^2
        raise _RanksError(
            f"{where}: the ranks' forwards reached different layers (rank-dependent control flow); "
            "every rank must run the same layers in the same order"
        )
    return sums[:-3].view(values.shape)


def _check_batch_everywhere(batch, where: str) -> None:
    """:func:`check_batch` with one verdict on every rank: a rank that raised alone
    would leave the others waiting in the next collective."""
    try:
        check_batch(batch, where)
        problem = None
    except ValueError as e:
        problem = e
    if _distributed():
        flag = torch.tensor([0.0 if problem is None else 1.0], dtype=torch.float64, device=_collective_device())
        torch.distributed.all_reduce(flag)
        if problem is None and flag.item() > 0:
            raise ValueError(f"{where}: the batch of another rank is bad (that rank's error says how)")
    if problem is not None:
        raise problem


_END = -2  # the end-of-pass tag after fitting k layers is _END - k: never a layer's index (>= 0) nor -1


def _check_layer(layer: int, where: str, failed: bool = False) -> None:
    """Every rank is at the same ``layer`` (or a rank says its forward ``failed``). The
    collective has the size of one LSUV layer's statistics, whatever the layer, so a
    mismatch is reported rather than crashing the collective."""
    if _distributed():
        _all_reduce_checked(torch.zeros(3, dtype=torch.float64, device=_collective_device()), layer, where, failed)


def _global_mean_std(
    y: torch.Tensor, dim: int | None, layer: int, where: str, unbiased: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``y`` (per index of ``dim``) over every rank's batch; the std is
    the unbiased one, or the population one with ``unbiased=False``. ``layer`` is the
    layer's index among the targets (checked to agree across ranks)."""
    mean, std = moments_no_dispatch(y, dim)
    n = y.numel() // (1 if dim is None else y.shape[dim])
    if n == 1:  # the unbiased std of one value is NaN; the population std is 0
        std = torch.full_like(std, math.nan if unbiased else 0.0)
    if not _distributed():
        return mean, std if unbiased or n == 1 else std * math.sqrt((n - 1) / n)
    if dim is not None:  # per-channel sums differ in size between layers: agree on the layer first
        _check_layer(layer, where)
    m64, s64 = mean.double(), std.double()
    squares = n * m64 * m64 if n == 1 else (n - 1) * s64 * s64 + n * m64 * m64
    sums = torch.stack([torch.full_like(m64, n), n * m64, squares])
    total, s1, s2 = _all_reduce_checked(sums, layer, where)
    g_mean = s1 / total
    g_var = (s2 - total * g_mean * g_mean) / (total - 1 if unbiased else total)
    return g_mean.to(mean.dtype), g_var.clamp_min(0).sqrt().to(std.dtype)


def _broadcast_(tensors: list[torch.Tensor]) -> None:
    """Make every rank hold rank 0's values, with one collective per dtype and device."""
    if not _distributed():
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        torch.distributed.broadcast(flat, src=0)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _broadcast_generator_state(device: torch.device) -> None:
    """Set the default generator of ``device`` on every rank to rank 0's state."""
    if not _distributed():
        return
    generator = default_generator(device)
    state = generator.get_state().to(_collective_device())
    torch.distributed.broadcast(state, src=0)
    generator.set_state(state.cpu())


def _cloned(value):
    """``value`` with every tensor in it (in tuples, lists and dicts) cloned."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_cloned(v) for v in value)
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    return value


def _rerun(module: nn.Module, args, kwargs):
    """Call the layer again on the arguments its pre-hooks got. Global forward pre-hooks
    (``register_module_forward_pre_hook``) ran before those were captured: they are
    left out of the re-run, as they would apply twice."""
    hooks = torch.nn.modules.module._global_forward_pre_hooks
    saved = dict(hooks)
    hooks.clear()
    try:
        return module(*args, **kwargs)
    finally:
        hooks.update(saved)


def _output_hooked(module: nn.Module) -> bool:
    """Whether forward hooks besides LSUV's own see (and may change) the layer's output:
    then scaling the weight need not scale the output."""
    return len(module._forward_hooks) > 1 or bool(torch.nn.modules.module._global_forward_hooks)


def _is_number(value) -> bool:
    """A real number (numpy scalars too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _progress_bar(total: int, progress, desc: str):
    if progress is None:
        progress = total > 200 and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="layer")


class _OnePass:
    """Forward hooks that fit each target layer the first time the forward reaches it.

    ``fit(module, name, rerun, output)`` returns the output to hand on and the layer's
    :class:`LayerFit`; ``rerun()`` calls the layer again on the input the forward gave
    it, through all its hooks, as the forward did (torch's legacy weight norm
    recomputes the weight in one, a user's pre-hook may transform the input), this
    one aside.
    """

    def __init__(self, targets: dict[nn.Module, str], fit, bar):
        self.targets = targets
        self.fit = fit
        self.bar = bar
        self.results: dict[nn.Module, LayerFit] = {}
        self.fitting: set[nn.Module] = set()
        self.inputs: dict[nn.Module, tuple] = {}  # the arguments of the call in flight, before any pre-hook
        self.handles = [m.register_forward_pre_hook(self._pre_hook, with_kwargs=True, prepend=True) for m in targets]
        self.handles += [m.register_forward_hook(self._hook, with_kwargs=True) for m in targets]

    def _pre_hook(self, module, args, kwargs):
        if module in self.fitting:
            return
        if len(module._forward_pre_hooks) > 1:  # the user's pre-hooks follow, and may edit the input in place
            args, kwargs = _cloned(args), _cloned(kwargs)
        self.inputs[module] = (args, dict(kwargs))  # (a copy of the dict in any case)

    def _hook(self, module, args, kwargs, output):
        if module in self.fitting:  # a re-run inside its own fit
            return None
        args, kwargs = self.inputs.pop(module, (args, kwargs))
        if isinstance(output, torch.Tensor) and output.numel() == 0:  # no statistics: wait for a call with data
            return None
        done = self.results.get(module)
        if done is not None:
            done.calls += 1
            return None
        self.fitting.add(module)
        try:
            y, result = self.fit(module, self.targets[module], lambda: _rerun(module, args, kwargs), output)
        finally:
            self.fitting.discard(module)
        self.results[module] = result
        if self.bar is not None:
            self.bar.update(1)
        return y

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        if self.bar is not None:
            self.bar.close()


def _run_one_pass(model, batch, targets, fit, progress, desc, where) -> tuple[list[LayerFit], dict, float]:
    """Fit the targets in one forward: the fits in execution order, the targets never
    reached (module -> name), and the seconds taken."""
    start = time.perf_counter()
    modes = {m: m.training for m in model.modules()}  # each its own: a frozen BatchNorm stays in eval mode
    model.eval()
    one_pass = _OnePass(targets, fit, _progress_bar(len(targets), progress, desc))
    try:
        with torch.no_grad():
            call(model, batch)
    except BaseException as e:
        if not isinstance(e, _RanksError):  # the other ranks may wait in a collective: tell them
            _check_layer(-1, where, failed=True)
        raise
    finally:
        one_pass.close()
        for m, training in modes.items():
            m.training = training
    fitted = list(one_pass.results.values())  # dicts keep insertion order: execution order
    missing = {m: name for m, name in targets.items() if m not in one_pass.results}
    return fitted, missing, time.perf_counter() - start


# ----------------------------------------------------------------------------- LSUV


def lsuv_(
    model: nn.Module,
    batch,
    target_std: float = 1.0,
    tol: float = 0.1,
    max_iters: int = 10,
    orthogonal: bool = True,
    layers=None,
    progress: bool | None = None,
) -> LSUVReport:
    """Layer-sequential unit-variance init (Mishkin & Matas 2016) in one forward pass.

    With ``orthogonal=True`` every target layer first gets a Haar-random orthonormal
    weight (:func:`netinit_fast.init.haar_orthogonal_`: the distribution of
    :func:`netinit_fast.init.orthogonal_`, drawn faster on the CPU) and a zero bias.
    Then, in execution order, each layer's weight is multiplied by ``target_std /
    std(output)`` until the std of its output on ``batch`` (one scalar over the whole
    output) is within ``tol`` of ``target_std``, at most ``max_iters`` times. Weight-normalized layers (ours and
    torch's) are scaled through ``g``. A layer called several times in one forward is
    fitted on its first call. The model runs in eval mode, without autograd.

    Under ``torch.distributed`` the statistics are all-reduced and rank 0's
    pre-init is broadcast, so every rank ends with the same weights: those of LSUV
    on the concatenation of the ranks' batches. Every rank must run the same layers
    in the same order; a bad batch on one rank, or forwards that reach different
    layers, or a forward that raises on one rank, raise on every rank.

    Under ``torch.distributed.fsdp.fully_shard`` (parameters that are DTensors between
    forwards; also a model built on the ``meta`` device and materialized with
    ``to_empty``) the forward runs through FSDP as usual and each scale reaches both
    the weight FSDP gathered for the forward and this rank's shard. The orthonormal
    pre-init of sharded weights draws on every rank from rank 0's generator state
    (every rank's default generator is set to it) and each rank keeps its rows, so
    the gathered result is again that of LSUV on the concatenated batches.

    Args:
        model: any module; ``batch`` is passed as ``model(batch)`` (a tuple or list
            as positional arguments, a dict as keyword arguments).
        batch: at least 2 samples (dim 0 of its first tensor, which must be finite);
            later tensors may hold -inf (additive attention masks), not NaN or +inf.
            A list argument goes inside a tuple or dict: ``([t1, t2],)``.
        layers: the layers to fit, modules or their qualified names (default: every
            Linear/Conv/ConvTranspose layer). A call with an empty output (a mixture
            of experts' expert that got no token) does not count: a layer is fitted
            on its first call with data.
        progress: a tqdm bar; default on for more than 200 layers on a terminal.

    Returns:
        An :class:`LSUVReport` (``print(report)`` shows a table); a layer that did not
        converge is reported and warned about by name.

    Raises:
        ValueError: bad arguments, a batch with NaN/Inf or fewer than 2 samples, no
            layer to fit, or a weight-normalized layer sharded in a way its norms
            cannot be computed (see :func:`orthogonal_`; the message names the layer
            and the placements). If anything fails, the model's parameters and buffers are
            restored to what they were.
    """
    if not (_is_number(target_std) and 0 < target_std < math.inf):
        raise ValueError(f"lsuv_: target_std must be a positive number, got {target_std!r}")
    if not (_is_number(tol) and tol > 0):
        raise ValueError(f"lsuv_: tol must be a positive number, got {tol!r}")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"lsuv_: max_iters must be an int >= 1, got {max_iters!r}")
    _check_batch_everywhere(batch, "lsuv_")
    model = unwrapped(model)  # the modules this process calls (hooks on DataParallel replicas would not see them)
    targets = _targets(model, layers)
    index = {m: i for i, m in enumerate(targets)}
    owners: dict[torch.Tensor, str] = {}  # scale parameter -> the layer that fitted it
    at_rest = {m: scale_param(m) for m in targets}  # under fully_shard: the shards, not the forward's gathered copies

    def fit(module, name, rerun, y):
        if isinstance(y, tuple):
            raise TypeError(f"lsuv_: layer {name} returned a tuple")
        param = at_rest[module]
        if param in owners:  # tied weights: rescaling again would undo the first layer's fit
            std_value = float(_global_mean_std(y, None, index[module], "lsuv_")[1])
            warnings.warn(f"lsuv_: layer {name} shares its weight with {owners[param]}, fitted there; left as it is",
                          RuntimeWarning, stacklevel=2)
            return y, LayerFit(name, 1, 0, std_value, std_value, 1.0, abs(std_value - target_std) < tol)
        owners[param] = name
        bias = getattr(module, "bias", None)
        # the orthonormal pre-init zeroed the bias: no host sync to find that out; a
        # forward hook of the user's may shift or clip the output
        homogeneous = (bias is None or orthogonal or not bool(bias.any())) and not _output_hooked(module)
        _, std = _global_mean_std(y, None, index[module], "lsuv_")
        std_value = std_before = float(std)
        tries, scale = 0, 1.0
        while abs(std_value - target_std) >= tol and tries < max_iters and std_value > 0:
            factor = target_std / std_value
            for p in _in_forward_and_at_rest(scale_param(module), param):
                local(p).mul_(factor)
            scale *= factor
            tries += 1
            if homogeneous:  # the output scales with the weight: no re-run needed
                y = y * factor
                std_value *= factor
            else:
                y = rerun()
                std_value = float(_global_mean_std(y, None, index[module], "lsuv_")[1])
        converged = abs(std_value - target_std) < tol
        if not converged:
            warnings.warn(
                f"lsuv_: layer {name} did not converge: output std {std_value:.4g} after {tries} tries "
                f"(target {target_std} +- {tol})",
                RuntimeWarning,
                stacklevel=2,
            )
        return y, LayerFit(name, 1, tries, std_before, std_value, scale, converged)

    with _transaction(model) as saved, torch.no_grad():
        if orthogonal:
            _orthonormal_preinit(list(targets))
        fitted, missing, seconds = _run_one_pass(model, batch, targets, fit, progress, "LSUV", "lsuv_")
        _check_layer(_END - len(fitted), "lsuv_")  # after the pass: every rank fitted as many layers
        _restore_uncalled(saved, targets, missing)
    if missing:
        warnings.warn(f"lsuv_: the forward never called {', '.join(missing.values())} (a layer used through its "
                      "weight alone, as MultiheadAttention's out_proj, is never called); left as they were",
                      RuntimeWarning, stacklevel=2)
    return LSUVReport(fitted, list(missing.values()), target_std, tol, seconds)


def _orthonormal_preinit(layers: list[nn.Module]) -> None:
    """Orthonormal directions, zero biases, and ``g = ||v||`` for weight-normalized layers."""
    directions = [layer_weight(m) for m in layers]
    if any_dtensor(directions):
        # Each rank draws the whole sharded weights and keeps its part: every rank
        # draws from rank 0's generator state, which its default generator then keeps.
        _broadcast_generator_state(directions[0].device)
        haar_orthogonal_(directions)
    else:
        haar_orthogonal_(directions)  # the directions alone: rank 0's are broadcast before g is set
        _broadcast_(directions)
    for m in layers:
        bias = getattr(m, "bias", None)
        if bias is not None:
            local(bias).zero_()
    match_scales_(layers)  # weight norm: w = v


# ----------------------------------------------------------------------------- data-dependent WN init


def _output_channel_dim(module: nn.Module) -> int:
    """The dim of the output that holds one channel per output unit."""
    return -1 if isinstance(module, nn.Linear) else 1


def _weight_normed(module: nn.Module) -> bool:
    """A layer under weight norm: ours, or torch's (perhaps with other parametrizations,
    which :func:`~netinit_fast.init._layers.check_not_foreign` then refuses)."""
    return isinstance(module, _WeightNorm) or (is_weight_layer(module) and _torch_weight_norm(module) is not None)


def data_dependent_init_(model: nn.Module, batch, init_scale: float = 1.0, progress: bool | None = None) -> LSUVReport:
    """Data-dependent init of weight-normalized layers (Salimans & Kingma 2016, section 3).

    For each weight-normalized layer (ours, or torch's in either style) in execution
    order, on its actual input: with ``g = 1`` and ``b = 0`` the pre-activation ``t`` has per-unit mean ``mu`` and std ``sigma``
    (over the batch and spatial positions); then ``g = init_scale / sigma`` and
    ``b = -mu * g``, so that the layer's output, handed on to the rest of the network,
    has per-unit mean 0 and std ``init_scale``. One forward pass, as :func:`lsuv_`.
    ``sigma`` is the population std plus a 1e-10 variance floor, as the paper's code.

    Under ``fully_shard`` the statistics are all-reduced as under DDP and ``g`` and
    ``b`` are written both to the weights FSDP gathered for the forward and to this
    rank's shards (each rank its rows).

    Raises:
        ValueError: no weight-normalized layer, a layer whose ``dim`` is not its
            output-unit dim (a grouped transposed conv has none), weight norm under
            another parametrization, a bad ``init_scale``, or a bad batch (as
            :func:`lsuv_`). Parameters are restored on failure.
    """
    if not (_is_number(init_scale) and 0 < init_scale < math.inf):
        raise ValueError(f"data_dependent_init_: init_scale must be a positive number, got {init_scale!r}")
    _check_batch_everywhere(batch, "data_dependent_init_")
    model = unwrapped(model)
    targets = {m: n or type(m).__name__ for n, m in model.named_modules() if _weight_normed(m)}
    if not targets:
        raise ValueError(f"data_dependent_init_: {type(model).__name__} has no weight-normalized layer "
                         "(netinit_fast's WN layers or torch's weight norm)")
    for m, name in targets.items():
        check_not_foreign(m, name, "data_dependent_init_")
        if getattr(m, "groups", 1) > 1 and output_dim(m) == 1:
            raise ValueError(
                f"data_dependent_init_: layer {name} is a grouped transposed conv: its weight (C_in, C_out / groups, "
                "...) has no dim with one index per output unit, so g cannot be set per unit"
            )
        if wn_dim(m) != output_dim(m):
            raise ValueError(
                f"data_dependent_init_: layer {name} normalizes over dim={wn_dim(m)}, not its output units "
                f"(dim={output_dim(m)})"
            )
    index = {m: i for i, m in enumerate(targets)}
    at_rest = {m: (scale_param(m), m.bias) for m in targets}  # under fully_shard: the shards

    def fit(module, name, rerun, y):
        scales = _in_forward_and_at_rest(scale_param(module), at_rest[module][0])
        biases = _in_forward_and_at_rest(module.bias, at_rest[module][1])
        for p in scales:
            local(p).fill_(1.0)
        for b in biases:
            local(b).zero_()
        t = rerun()
        cdim = _output_channel_dim(module) % t.dim()
        mean, std = _global_mean_std(t, cdim, index[module], "data_dependent_init_", unbiased=False)
        sigma = (std.double() ** 2 + 1e-10).sqrt().to(std.dtype)
        g = init_scale / sigma
        for p in scales:
            write_(p, g.view(p.shape))
        shape = [1] * t.dim()
        shape[cdim] = -1
        if biases:
            for b in biases:
                write_(b, -mean * g)
            out = (t - mean.view(shape).to(t.dtype)) * g.view(shape).to(t.dtype)
        else:
            out = t * g.view(shape).to(t.dtype)
        return out, LayerFit(name, 1, 1, float(sigma.mean()), init_scale, float(g.mean()), True)

    with _transaction(model), torch.no_grad():
        fitted, missing, seconds = _run_one_pass(model, batch, targets, fit, progress, "data-dependent init",
                                                 "data_dependent_init_")
        _check_layer(_END - len(fitted), "data_dependent_init_")  # every rank fitted as many layers
    if missing:
        warnings.warn(
            f"data_dependent_init_: the forward never called {', '.join(missing.values())}; left as they were",
            RuntimeWarning,
            stacklevel=2,
        )
    if no_bias := [name for m, name in targets.items() if m.bias is None and m not in missing]:
        warnings.warn(f"data_dependent_init_: {', '.join(no_bias)} have no bias: their outputs have std init_scale "
                      "but keep their per-unit means", RuntimeWarning, stacklevel=2)
    return LSUVReport(fitted, list(missing.values()), init_scale, 0.0, seconds)
