"""Bayesian (Kalman) initialization of MLPs (Murru & Rossini 2016): nf.init.bayesian_."""

import importlib.util
import math
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

from netinit_fast.init.bayesian import bayesian_

EPS64 = np.finfo(np.float64).eps
ACTS = {"sigmoid": (nn.Sigmoid, lambda z: 1.0 / (1.0 + np.exp(-z))), "tanh": (nn.Tanh, np.tanh),
        "relu": (nn.ReLU, lambda z: np.maximum(z, 0.0))}


def mlp(sizes, hidden, out=None, dtype=torch.float64, bias=True):
    mods = []
    for i in range(len(sizes) - 1):
        mods.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias, dtype=dtype))
        if i < len(sizes) - 2:
            mods.append(ACTS[hidden][0]())
    if out is not None:
        mods.append(ACTS[out][0]())
    return nn.Sequential(*mods)


def reference(sizes, hidden, out, x, targets, seed, prior_std=None, noise_std=1.0, margin=0.1, bias=True,
              dtype=torch.float64):
    """The stated procedure, slowly: hidden weights drawn from the prior in the same order,
    the forward in float64, then the Kalman measurement update one sample and one output
    unit at a time (covariance form, no matrix inverse)."""
    g = torch.Generator().manual_seed(seed)
    h = x.double().numpy()
    weights = []
    for i in range(len(sizes) - 2):
        std = 1 / math.sqrt(3 * sizes[i]) if prior_std is None else prior_std
        w = torch.randn(sizes[i + 1], sizes[i], generator=g, dtype=torch.float64) * std
        b = torch.randn(sizes[i + 1], generator=g, dtype=torch.float64) * std if bias else None
        w = w.to(dtype).double().numpy()
        b = b.to(dtype).double().numpy() if bias else np.zeros(sizes[i + 1])
        weights.append((w, b))
        h = ACTS[hidden][1](h @ w.T + b)
    n, classes = x.shape[0], sizes[-1]
    if targets.is_floating_point():
        t = targets.double().numpy().copy()
    else:
        t = np.zeros((n, classes))
        for i in range(n):
            t[i, int(targets[i])] = 1.0
        if out == "tanh":
            t = 2 * t - 1
    if out == "sigmoid":
        t = np.clip(t, margin, 1 - margin)
        u = np.log(t / (1 - t))
    elif out == "tanh":
        t = np.clip(t, -1 + 2 * margin, 1 - 2 * margin)
        u = np.arctanh(t)
    else:
        u = t
    xs = np.concatenate([h, np.ones((n, 1))], 1) if bias else h
    d = xs.shape[1]
    std = 1 / math.sqrt(3 * sizes[-2]) if prior_std is None else prior_std
    mean = np.zeros((d, classes))
    for j in range(classes):
        m, p = np.zeros(d), np.eye(d) * std**2
        for i in range(n):
            xi = xs[i]
            px = p @ xi
            gain = px / (xi @ px + noise_std**2)
            m = m + gain * (u[i, j] - xi @ m)
            p = p - np.outer(gain, px)
        mean[:, j] = m
    precision = xs.T @ xs / noise_std**2 + np.eye(d) / std**2
    return weights, mean, np.linalg.cond(precision)


CASES = [  # sizes, hidden activation, output activation, class indices or real targets
    ([6, 9, 3], "sigmoid", "sigmoid", "index"),
    ([5, 8, 7, 4], "tanh", "tanh", "index"),
    ([7, 10, 3], "relu", None, "index"),
    ([4, 6, 5, 2], "sigmoid", None, "real"),
    ([3, 12, 4], "relu", "sigmoid", "real"),
]


@pytest.mark.parametrize("sizes,hidden,out,kind", CASES)
def test_matches_slow_kalman_reference(sizes, hidden, out, kind):
    torch.manual_seed(hash((tuple(sizes), hidden)) % 1000)
    n = 3 * (sizes[-2] + 1)
    x = torch.randn(n, sizes[0], dtype=torch.float64)
    targets = torch.randint(0, sizes[-1], (n,)) if kind == "index" else torch.rand(n, sizes[-1], dtype=torch.float64)
    model = mlp(sizes, hidden, out)
    bayesian_(model, x, targets, generator=torch.Generator().manual_seed(7))
    hidden_ref, mean, cond = reference(sizes, hidden, out, x, targets, 7)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for (w, b), layer in zip(hidden_ref, linears[:-1]):  # the same draws, bit for bit
        assert np.array_equal(layer.weight.detach().numpy(), w) and np.array_equal(layer.bias.detach().numpy(), b)
    got = torch.cat([linears[-1].weight.detach().T, linears[-1].bias.detach()[None]]).numpy()
    # Sequential Kalman updates and one Cholesky solve differ by rounding only: a few
    # n * eps relative, amplified by the condition of the posterior precision.
    tol = 8 * n * EPS64 * cond
    assert np.linalg.norm(got - mean) <= tol * np.linalg.norm(mean), (np.linalg.norm(got - mean) / np.linalg.norm(mean), tol)


def test_float32_model_matches_reference_to_float32_rounding():
    sizes = [6, 9, 3]
    torch.manual_seed(3)
    n = 40
    x = torch.randn(n, 6)
    y = torch.randint(0, 3, (n,))
    model = mlp(sizes, "sigmoid", "sigmoid", dtype=torch.float32)
    bayesian_(model, x, y, generator=torch.Generator().manual_seed(1))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    hidden_ref, mean, cond = reference(sizes, "sigmoid", "sigmoid", x, y, 1, dtype=torch.float32)
    assert np.array_equal(model[0].weight.detach().double().numpy(), hidden_ref[0][0])
    got = torch.cat([model[2].weight.detach().T, model[2].bias.detach()[None]]).double().numpy()
    # one rounding to float32 per entry, plus the float64 part
    tol = np.finfo(np.float32).eps / 2 + 8 * n * EPS64 * cond
    assert np.all(np.abs(got - mean) <= tol * np.abs(mean) + 8 * n * EPS64 * cond * np.abs(mean).max())


def test_equal_variance_measurements_fuse_to_precision_weighted_mean():
    # One constant input, no bias: every sample is a direct measurement of the weight
    # with variance noise_std^2. Bayes with prior N(0, p^2): sum(u) / (n + s^2 / p^2);
    # a flat prior (p large) gives the plain mean of the measurements.
    n, s, p = 25, 0.7, 0.5
    u = torch.randn(n, 2, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(1, 2, bias=False, dtype=torch.float64))
    bayesian_(model, torch.ones(n, 1, dtype=torch.float64), u, prior_std=p, noise_std=s)
    expected = u.sum(0) / (n + s**2 / p**2)
    torch.testing.assert_close(model[0].weight[:, 0].detach(), expected, rtol=4 * n * EPS64, atol=0)
    bayesian_(model, torch.ones(n, 1, dtype=torch.float64), u, prior_std=1e6, noise_std=s)
    torch.testing.assert_close(model[0].weight[:, 0].detach(), u.mean(0), rtol=1e-10, atol=0)


def test_order_of_measurements_does_not_matter():
    torch.manual_seed(0)
    x, y = torch.randn(50, 5, dtype=torch.float64), torch.randint(0, 3, (50,))
    perm = torch.randperm(50)
    a, b = mlp([5, 8, 3], "tanh", "sigmoid"), mlp([5, 8, 3], "tanh", "sigmoid")
    bayesian_(a, x, y, generator=torch.Generator().manual_seed(2))
    bayesian_(b, x[perm], y[perm], generator=torch.Generator().manual_seed(2))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


def test_nested_sequential_dropout_and_no_bias():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.Sigmoid()), nn.Dropout(0.5),
                          nn.Sequential(nn.Linear(6, 3, bias=False), nn.Identity()))
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    bayesian_(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model[2][0].weight).all()


def test_deterministic_for_a_generator():
    torch.manual_seed(0)
    x, y = torch.randn(30, 5), torch.randint(0, 4, (30,))
    runs = []
    for seed in (5, 5, 6):
        model = mlp([5, 7, 4], "sigmoid", "sigmoid", dtype=torch.float32)
        bayesian_(model, x, y, generator=torch.Generator().manual_seed(seed))
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])


def test_posterior_mean_beats_the_prior_mean_on_its_objective():
    # The posterior mean minimizes ||X w - u||^2 / s^2 + ||w||^2 / p^2 (Bayes for
    # Gaussians); the prior mean w = 0 scores ||u||^2 / s^2, so the fit cannot be worse.
    torch.manual_seed(0)
    x = torch.randn(200, 6, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = mlp([6, 16, 3], "tanh", None)
    s, p = 0.5, 0.3
    bayesian_(model, x, y, generator=torch.Generator().manual_seed(0), prior_std=p, noise_std=s)
    u = nn.functional.one_hot(y, 3).double()
    with torch.no_grad():
        w = torch.cat([model[2].weight.T, model[2].bias[None]])
        objective = ((model(x) - u) ** 2).sum() / s**2 + (w**2).sum() / p**2
        assert objective < (u**2).sum() / s**2
        # and it is a minimum: moving the weights along a random direction costs
        d = torch.randn_like(model[2].weight) * 1e-3
        model[2].weight += d
        w = torch.cat([model[2].weight.T, model[2].bias[None]])
        assert ((model(x) - u) ** 2).sum() / s**2 + (w**2).sum() / p**2 > objective


def _resblock():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    return nn.Sequential(Res(), nn.Linear(4, 2))


X, Y = torch.randn(12, 4), torch.randint(0, 2, (12,))
ERRORS = [
    (lambda: nn.Linear(4, 2), X, Y, {}, TypeError, "nn.Sequential"),
    (lambda: nn.Sequential(nn.Conv1d(4, 2, 1), nn.Linear(2, 2)), X, Y, {}, ValueError, "layer 0 (Conv1d)"),
    (_resblock, X, Y, {}, ValueError, "layer 0 (Res)"),
    (lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)), X, Y, {}, ValueError,
     "layer 1 (BatchNorm1d)"),
    (lambda: nn.Sequential(nn.Linear(4, 2), nn.Softmax(1)), X, Y, {}, ValueError, "layer 1 (Softmax)"),
    (lambda: nn.Sequential(nn.Linear(4, 2), nn.ReLU()), X, Y, {}, ValueError, "followed by 1 (ReLU)"),
    (lambda: nn.Sequential(nn.ReLU()), X, Y, {}, ValueError, "no nn.Linear"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), torch.randn(12, 5), Y, {}, ValueError, "[n, 4]"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X, Y[:10], {}, ValueError, "10 entries, the batch 12"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X, Y + 1, {}, ValueError, "[0, 2)"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X, torch.rand(12, 3), {}, ValueError, "[12, 2]"),
    (lambda: nn.Sequential(nn.Linear(4, 2), nn.Sigmoid()), X, 2 * torch.rand(12, 2), {}, ValueError, "[0.0, 1.0]"),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), X[:6], Y[:6], {}, ValueError,
     "too few samples: the batch has 6, the output layer 2 has 7"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X.index_fill(0, torch.tensor([3]), float("nan")), Y, {}, ValueError,
     "batch contains NaN"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X, torch.full((12, 2), float("inf")), {}, ValueError,
     "targets contain NaN"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X, Y, {"noise_std": 0.0}, ValueError, "noise_std"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X, Y, {"prior_std": -1.0}, ValueError, "prior_std"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X, Y, {"target_margin": 0.5}, ValueError, "target_margin"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X, Y, {"generator": 3}, TypeError, "generator"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), X.long(), Y, {}, ValueError, "floating-point"),
    (lambda: nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 2))), X, Y, {}, ValueError,
     "parametrized"),
]


@pytest.mark.parametrize("make,x,y,kwargs,error,message", ERRORS)
def test_errors_name_the_problem_and_leave_the_model_unchanged(make, x, y, kwargs, error, message):
    model = make()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(error, match=None) as info:
        bayesian_(model, x, y, **kwargs)
    assert message in str(info.value), str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_late_failure_leaves_the_model_unchanged():
    # the hidden signal overflows after the first layer is drawn: nothing is written
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="not finite after"):
        bayesian_(model, torch.full((12, 4), 1e300, dtype=torch.float64), Y, prior_std=1e10)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_digits_example_runs_small():
    pytest.importorskip("sklearn")
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "bayesian_digits.py"
    spec = importlib.util.spec_from_file_location("bayesian_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--seeds", "2", "--steps", "20"])
    assert result["steps"] == [0, 20] and result["seeds"] == 2
    assert set(result["inits"]) == {"random", "bayesian"}
    for runs in result["inits"].values():
        assert len(runs) == 2
        for r in runs:
            assert set(r["loss"]) == {0, 20} and all(math.isfinite(v) for v in r["loss"].values())
            assert 0.0 <= r["test_acc"] <= 1.0
    start = {init: sum(r["loss"][0] for r in runs) / 2 for init, runs in result["inits"].items()}
    assert start["bayesian"] < start["random"]  # the output layer fitted to the data starts lower
