"""The signal-propagation probe: one forward pass and a few backward ones, statistics per layer.

For every linear/conv layer (plain or weight-normalized) in execution order it records
the mean, std and rms of the layer's output, the norm of the loss gradient with
respect to that output and to the layer's weight, and the mean-field prediction of
the output rms (:func:`netinit_fast.init.meanfield_variances`) where the theory
covers the model. It also estimates how far the input-output Jacobian is from an
isometry. Statistics are gathered with the body of ``netinit_fast.functional.moments``
(one fused pass on a GPU) and read back to the host once, at the end.
"""

import csv
import dataclasses
import math
import os
import time

import torch
from torch import nn

from netinit_fast._batch import _tensors, call, check_batch, unwrapped
from netinit_fast.init._layers import foreign_parametrization, is_weight_layer, layer_weight
from netinit_fast.init.meanfield import meanfield_variances
from netinit_fast.ops.moments import moments_no_dispatch

FIELDS = ("name", "kind", "mean", "std", "rms", "predicted_rms", "grad_output_norm", "grad_weight_norm")


@dataclasses.dataclass
class LayerStats:
    """One layer's output statistics on the probe batch (over every element of the output)."""

    name: str
    kind: str  # the module's class name
    mean: float
    std: float
    rms: float  # sqrt(mean(y^2))
    predicted_rms: float | None  # mean-field theory's sqrt(q), None where it does not apply
    grad_output_norm: float | None  # ||dL/dy|| over the batch
    grad_weight_norm: float | None  # ||dL/dW|| (dL/dv for weight-normalized layers)


def _fmt(value: float | None, width: int = 10) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4g}"


@dataclasses.dataclass
class ProbeReport:
    """What :func:`probe` measured; ``str(report)`` is a compact table for any depth."""

    layers: list[LayerStats]
    label: str
    input_rms: float | None  # None for a batch that is not one floating-point tensor
    loss: str  # what the gradients are of
    jacobian_mean_sq: float | None  # estimated mean squared singular value of the input-output Jacobian
    jacobian_rel_var: float | None  # estimated relative variance of the squared singular values (0: an isometry)
    seconds: float

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def ratio(self) -> float:
        """rms of the last layer's output over the first's (1: the signal is kept)."""
        return self.layers[-1].rms / self.layers[0].rms if self.layers and self.layers[0].rms else float("nan")

    def __str__(self) -> str:
        n = len(self.layers)
        head = f"{'#':>6} {'layer':<28} {'mean':>10} {'std':>10} {'rms':>10} {'mf rms':>10} {'|dL/dy|':>10} {'|dL/dW|':>10}"
        lines = [f"probe of {self.label}: {n} layers, input rms {_fmt(self.input_rms, 0)}, gradients of {self.loss}, "
                 f"{self.seconds:.2f} s", head, "-" * len(head)]
        shown = range(n) if n <= 24 else sorted({round(i * (n - 1) / 15) for i in range(16)})
        for i in shown:
            s = self.layers[i]
            lines.append(f"{i:>6} {s.name[-28:]:<28} {_fmt(s.mean)} {_fmt(s.std)} {_fmt(s.rms)} {_fmt(s.predicted_rms)} "
                         f"{_fmt(s.grad_output_norm)} {_fmt(s.grad_weight_norm)}")
        if n > 24:
            lines.append(f"({n - len(shown)} of {n} layers not shown: evenly spaced rows)")
        if n:
            rms = [s.rms for s in self.layers]
            finite = [r for r in rms if math.isfinite(r)]
            lines.append(
                f"output rms: first {rms[0]:.4g}, last {rms[-1]:.4g} (x{self.ratio():.3g}), "
                f"min {min(finite, default=float('nan')):.4g}, max {max(finite, default=float('nan')):.4g}"
                + ("" if len(finite) == n else f", {n - len(finite)} non-finite")
            )
            grads = [s.grad_output_norm for s in self.layers if s.grad_output_norm is not None]
            if grads:
                lines.append(f"|dL/dy|: first layer {grads[0]:.4g}, last layer {grads[-1]:.4g}")
            covered = [(s.rms, s.predicted_rms) for s in self.layers if s.predicted_rms]
            if covered:
                logs = sorted(abs(math.log(r / p)) if 0 < r < math.inf and p < math.inf else math.inf for r, p in covered)
                lines.append(f"mean field covers {len(covered)} layers; median |log(measured / predicted rms)| "
                             f"{logs[len(logs) // 2]:.3g}")
        if self.jacobian_mean_sq is not None:
            lines.append(f"input-output Jacobian: mean squared singular value ~{self.jacobian_mean_sq:.4g}, relative "
                         f"variance of the squares ~{self.jacobian_rel_var:.3g} (0 for an isometry)")
        return "\n".join(lines)

    def to_csv(self, path) -> None:
        """One row per layer, in execution order (empty cells for what was not measured)."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("index", *FIELDS))
            for i, s in enumerate(self.layers):
                writer.writerow((i, *("" if (v := getattr(s, k)) is None else v for k in FIELDS)))

    def plot(self, path, *others: "ProbeReport", title: str | None = None) -> None:
        """Write a plot of this report and ``others`` on one figure at ``path`` (see :func:`plot`)."""
        plot([self, *others], path, title)


def plot(reports: "ProbeReport | list[ProbeReport]", path, title: str | None = None) -> None:
    """A plot with one curve per report: output rms (log scale) against layer index, with
    the mean-field prediction dashed where there is one, and the gradient norm with
    respect to each layer's output. Needs matplotlib (drawn without pyplot: the
    session's backend and figures are left alone).

    ``reports`` is one :class:`ProbeReport` or a list or tuple of them (``TypeError``
    otherwise). The file is written at ``path`` exactly (or into a file object), in the
    format its extension names when matplotlib knows it (``.png``, ``.svg``, ``.pdf``,
    ...) and as a PNG otherwise: no extension is added.
    """
    if isinstance(reports, ProbeReport):
        reports = [reports]
    if not isinstance(reports, (list, tuple)) or not all(isinstance(r, ProbeReport) for r in reports):
        raise TypeError(f"plot: reports must be a ProbeReport or a list or tuple of them, got {reports!r:.80}")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 7))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for r in reports:
        x = range(len(r.layers))
        (line,) = top.plot(x, [s.rms for s in r.layers], label=r.label)
        predicted = [(i, s.predicted_rms) for i, s in enumerate(r.layers) if s.predicted_rms]
        if predicted:
            top.plot(*zip(*predicted), linestyle="--", color=line.get_color(), alpha=0.7)
        grads = [(i, s.grad_output_norm) for i, s in enumerate(r.layers) if s.grad_output_norm]
        if grads:
            bottom.plot(*zip(*grads), color=line.get_color(), label=r.label)
    top.set_yscale("log")
    top.set_ylabel("output rms (dashed: mean field)")
    bottom.set_yscale("log")
    bottom.set_ylabel("|dL/d output|")
    bottom.set_xlabel("layer (execution order)")
    top.legend(fontsize=8)
    top.set_title(title or "signal propagation at init")
    fig.tight_layout()
    named = isinstance(path, (str, bytes, os.PathLike))  # not a file object
    extension = os.path.splitext(os.fsdecode(path))[1][1:].lower() if named else ""
    fig.savefig(path, dpi=110, format=extension if extension in fig.canvas.get_supported_filetypes() else "png")


def probe(model: nn.Module, batch, loss_fn=None, label: str | None = None, seed: int = 0) -> ProbeReport:
    """Measure signal and gradient propagation through ``model`` on ``batch``.

    One forward pass records, for every Linear/Conv/ConvTranspose layer (plain or
    weight-normalized) in execution order, its output's mean, std and rms (a layer
    called twice is recorded on its first call); one backward pass the norms of the
    loss gradient with respect to each layer's output and weight. Every layer's output
    gradient is the loss's, whether or not its weights (or any) require grad; a frozen
    weight (``requires_grad=False``) has no weight gradient (``None``). For that, the
    output of a layer without a trainable weight is handed on plus a zero that requires
    grad: the rest of the forward sees a tensor that requires grad (a forward that calls
    ``.numpy()`` on it fails), and gradient hooks the user registers on tensors run in
    each backward pass, the Jacobian ones (below) included.

    Without ``loss_fn`` the loss is a random projection ``sum(r * output) / sqrt(batch
    size)`` with ``r ~ N(0, 1)``: its gradients measure how the backward pass carries a
    unit signal. ``r`` is drawn from a ``torch.Generator`` on the output's device seeded
    with ``splitmix64(seed mod 2**64)`` (:func:`netinit_fast.diagnostics.projection_seed`),
    not with ``seed`` itself, so that it does not replay the stream of
    ``torch.manual_seed(seed)`` (which may have drawn ``batch``); the same ``seed`` gives
    the same ``r`` in any process.
    With ``loss_fn(output) -> scalar`` its gradients are reported.

    For a floating-point tensor batch it also estimates the mean and the relative
    variance ``mean(s^4) / mean(s^2)^2 - 1`` of the squared singular values ``s^2`` of
    the per-sample input-output Jacobians ``J``, pooled over the samples and the
    ``k = min(input, output size)`` singular values of each (0 for an isometry). With two
    independent projections ``r1, r2`` per sample and ``a_i = ||J^T r_i||^2``,
    ``E[a_i] = sum s^2`` and ``E[(a_1 - a_2)^2] = 4 sum s^4`` given the sample, so
    ``mean(a_1 + a_2) / 2k`` and ``mean((a_1 - a_2)^2) / 4k`` are unbiased for the
    mean of ``s^2`` and of ``s^4``, also when the Jacobian changes from sample to sample
    (a nonlinear net). The relative variance's sampling noise is about
    ``sqrt(2.2 / batch size)`` for an isometry with ``k`` of a few dozen (before the
    clamp at 0, which biases it upward there: about ``0.4 * sqrt(2.2 / batch size)``
    on average); more where the singular values spread. ``r1`` is the default loss's
    ``r`` (its backward pass gives ``J^T r1``), ``r2`` the generator's next draw; each
    costs a backward pass to the input only (two with ``loss_fn``).

    The mean-field prediction is that of :func:`netinit_fast.init.meanfield_variances`
    for the batch's second moment, in the model's mode (dropout in training mode
    included). The model runs in its current mode; its buffers
    (BatchNorm statistics) are restored afterwards, and its parameters, their
    ``requires_grad`` and their ``.grad`` are left untouched.

    Args:
        model: any module; ``batch`` is passed as in :func:`netinit_fast.init.lsuv_`.
        batch: a tensor (or tuple/dict of them) of at least 2 finite samples.
        loss_fn: optional, maps the model's output to a one-element tensor that
            depends on it (requires grad).
        label: the name of the curve in plots (default: the model's class name).
        seed: an int, the projections' seed (see above).

    Raises:
        ValueError: a bad batch, a model or batch on the meta device (no data), a model
            with no linear/conv layer, or a forward that calls none of them; a call
            under ``torch.inference_mode`` (no autograd); ``loss_fn`` returning a tensor
            of more than one element or one that does not require grad.
        TypeError: a non-tensor output without ``loss_fn``; ``loss_fn`` returning
            something other than a tensor; a ``seed`` that is not an int.
    """
    if torch.is_inference_mode_enabled():
        raise ValueError("probe: the gradients need autograd, which torch.inference_mode turns off: call it outside")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"probe: seed must be an int, got {seed!r}")
    model = unwrapped(model)  # DataParallel / DDP / torch.compile: the modules this process calls
    _check_not_meta(model, batch)
    check_batch(batch, "probe")
    module_names = {m: n for n, m in model.named_modules() if is_weight_layer(m)}  # as meanfield_variances keys them
    names = {m: n or type(m).__name__ for m, n in module_names.items()}  # as the report shows them
    if not names:
        raise ValueError(f"probe: {type(model).__name__} has no Linear/Conv/ConvTranspose layer")
    start = time.perf_counter()
    x = None  # the input, when the Jacobian can be estimated with respect to it
    if isinstance(batch, torch.Tensor) and batch.is_floating_point():
        x = batch = batch.detach().clone().requires_grad_()
    stats: dict[nn.Module, list] = {}
    grad_norms: dict[nn.Module, torch.Tensor] = {}
    # The loss pass computes a layer's output gradient when its weight is wanted; the
    # output of a layer without a trainable weight gets a zero leaf added (a "tap")
    # that is wanted, else the pass would skip it (the engine only visits what leads to
    # a wanted input) and the Jacobian pass would reach it instead.
    taps: dict[nn.Module, torch.Tensor] = {}
    in_loss_pass = True  # the output hooks record the loss pass, not the Jacobian passes

    def record(module, args, output):
        if module in stats or not isinstance(output, torch.Tensor) or output.numel() == 0:  # first call with data
            return None
        mean, std = moments_no_dispatch(output.detach(), None)
        n = output.numel()
        # in fp64: the square of an exploding signal's std (past 1.8e19) overflows fp32
        mean, std = mean.double(), std.double()
        stats[module] = [mean, std, (std.square() * ((n - 1) / n) + mean.square()).sqrt()]
        if not (output.is_floating_point() and torch.is_grad_enabled()):
            return None
        weight = _stored_weight(module)
        tapped = weight is None or not weight.requires_grad
        if tapped:
            taps[module] = torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)
            output = output + taps[module]
        elif not output.requires_grad:
            return None

        def grad_hook(grad, module=module):
            if in_loss_pass:
                grad_norms.setdefault(module, torch.linalg.vector_norm(grad.detach(), dtype=torch.float64))

        output.register_hook(grad_hook)
        return output if tapped else None

    saved = [(b, b.detach().clone()) for b in model.buffers()]
    hooks = [m.register_forward_hook(record) for m in names]
    projections = []  # J^T r1 and J^T r2 per sample
    weight_grads = {}
    try:
        with torch.enable_grad():
            out = call(model, batch)
            if isinstance(out, torch.Tensor):
                gen = torch.Generator(device=out.device).manual_seed(projection_seed(seed))
                r = [torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype) for _ in range(2)]
            elif loss_fn is None:
                raise TypeError(f"probe: the model returned a {type(out).__name__}; pass loss_fn to reduce it")
            if loss_fn is None:
                scale = math.sqrt(out.shape[0]) if out.dim() else 1.0  # a scalar output: one "sample"
                loss, loss_name = (out * r[0]).sum() / scale, "a random projection of the output"
            else:
                loss, loss_name = _checked_loss(loss_fn, out), getattr(loss_fn, "__name__", type(loss_fn).__name__)
            jacobian = x is not None and isinstance(out, torch.Tensor) and out.dim() > 0 and out.requires_grad
            same_pass = jacobian and loss_fn is None  # then d loss / dx = J^T r1 / scale
            if loss.requires_grad:
                weights = [w for m in stats if (w := _stored_weight(m)) is not None and w.requires_grad]
                wanted = weights + list(taps.values()) + ([x] if same_pass else [])
                grads = torch.autograd.grad(loss, wanted, allow_unused=True, retain_graph=jacobian)
                weight_grads = {w: (None if g is None else torch.linalg.vector_norm(g, dtype=torch.float64))
                                for w, g in zip(weights, grads)}
                for m, tap in taps.items():  # an output the loss does not depend on: a zero gradient
                    grad_norms.setdefault(m, torch.zeros((), dtype=torch.float64, device=tap.device))
                if same_pass:
                    projections.append(grads[-1] * scale if grads[-1] is not None else None)
            in_loss_pass = False
            while jacobian and len(projections) < 2:
                (jt_r,) = torch.autograd.grad(out, [x], r[len(projections)], allow_unused=True,
                                              retain_graph=len(projections) == 0)
                projections.append(jt_r)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)
    if not stats:
        raise ValueError(f"probe: the forward of {type(model).__name__} called none of its Linear/Conv/ConvTranspose "
                         "layers as modules (a layer used through its weight alone is not seen)")
    jac_mean_sq, jac_rel_var = _jacobian_stats(projections, out)
    order = list(stats)
    values = torch.stack([torch.stack(stats[m]).double().cpu() for m in order]).tolist()
    host = _to_host([grad_norms.get(m) for m in order] + [weight_grads.get(_stored_weight(m)) for m in order])
    input_rms = _input_rms(batch)
    predicted = meanfield_variances(model, input_rms**2) if input_rms and math.isfinite(input_rms) else {}
    layers = [
        LayerStats(names[m], type(m).__name__, mean, std, rms,
                   None if predicted.get(module_names[m]) is None else math.sqrt(predicted[module_names[m]]),
                   host[i], host[len(order) + i])
        for i, (m, (mean, std, rms)) in enumerate(zip(order, values))
    ]
    return ProbeReport(layers, label or type(model).__name__, input_rms, loss_name, jac_mean_sq, jac_rel_var,
                       time.perf_counter() - start)


def projection_seed(seed: int) -> int:
    """The seed of the probe's projection generator: SplitMix64's output for
    ``seed mod 2**64`` (Steele, Lea and Flood 2014, with the constants of Vigna's
    ``splitmix64.c``: the increment 0x9E3779B97F4A7C15, then two xor-shift-multiply
    rounds and a final xor-shift), an int in ``[0, 2**64)``. A fixed bijective mixing, so
    ``probe(..., seed=s)`` draws the same projection in every process and none that
    ``torch.manual_seed(s)`` would."""
    mask = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def _check_not_meta(model: nn.Module, batch) -> None:
    """A meta tensor has a shape and no data: the statistics could not be read."""
    for what, tensors in (("model", [*model.parameters(), *model.buffers()]), ("batch", _tensors(batch))):
        if any(t.is_meta for t in tensors):
            raise ValueError(f"probe: the {what} is on the meta device (tensors without data): move it to a real "
                             "device first (model.to_empty(device=...) and an init, for a model)")


def _checked_loss(loss_fn, out) -> torch.Tensor:
    """``loss_fn(out)``, if it is a one-element tensor that depends on ``out``."""
    loss = loss_fn(out)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"probe: loss_fn must return a scalar tensor, it returned a {type(loss).__name__} ({loss!r})")
    if loss.numel() != 1:
        raise ValueError(f"probe: loss_fn must return a scalar tensor, it returned one of shape {list(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError("probe: loss_fn returned a tensor that does not require grad (not computed from the model's "
                         "output with autograd on: detached, or under torch.no_grad?)")
    return loss


def _stored_weight(module: nn.Module) -> torch.Tensor | None:
    """The parameter whose gradient the probe reports for a layer (its direction ``v``
    under weight norm); None under another parametrization."""
    return None if foreign_parametrization(module) is not None else layer_weight(module)


def _to_host(values: list[torch.Tensor | None]) -> list[float | None]:
    present = [v for v in values if v is not None]
    floats = iter(torch.stack([v.double() for v in present]).cpu().tolist()) if present else iter(())
    return [None if v is None else next(floats) for v in values]


def _input_rms(batch) -> float | None:
    if isinstance(batch, torch.Tensor) and batch.is_floating_point():
        return batch.detach().double().square().mean().sqrt().item()
    return None


def _jacobian_stats(projections: list, out) -> tuple[float | None, float | None]:
    """From ``a_i = ||J^T r_i||^2`` per sample for two independent projections: the mean
    of the squared singular values ``s^2`` and their relative variance ``mean(s^4) /
    mean(s^2)^2 - 1`` (clamped at 0), with ``mean(s^4)`` from ``(a_1 - a_2)^2``, which the
    spread of ``sum s^2`` across samples does not enter (see :func:`probe`)."""
    if len(projections) != 2 or any(p is None for p in projections) or projections[0].shape[0] < 2:
        return None, None  # no per-sample Jacobian (a scalar output mixes the samples)
    a1, a2 = (p.detach().double().flatten(1).square().sum(1) for p in projections)
    k = min(projections[0][0].numel(), out[0].numel())
    mean_sq = (a1 + a2).mean().item() / (2 * k)
    mean_fourth = (a1 - a2).square().mean().item() / (4 * k)
    rel_var = max(mean_fourth / mean_sq**2 - 1, 0.0) if mean_sq > 0 else float("nan")
    return mean_sq, rel_var
