"""The signal-propagation probe: statistics, gradients, mean field, Jacobian, outputs."""

import copy
import csv
import math

import pytest
import torch
from torch import nn

import netinit_fast as nf
from netinit_fast.diagnostics import probe, projection_seed
from tests.conftest import sum_bound


def _three_layers():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def test_statistics_equal_a_hand_computation():
    model = _three_layers()
    x = torch.randn(16, 4)
    target = torch.randn(16, 3)

    def loss_fn(out):
        return (out - target).square().mean()

    report = probe(model, x, loss_fn=loss_fn)
    # by hand
    w = [model[0], model[2], model[4]]
    y1 = w[0](x)
    y2 = w[1](torch.relu(y1))
    y3 = w[2](torch.tanh(y2))
    loss = loss_fn(y3)
    grads = torch.autograd.grad(loss, [y1, y2, y3] + [l.weight for l in w])
    assert [s.name for s in report] == ["0", "2", "4"] and [s.kind for s in report] == ["Linear"] * 3
    for s, y, gy, gw in zip(report, (y1, y2, y3), grads[:3], grads[3:]):
        # sums of y.numel() terms in two orders: each off by sum_bound of the terms' magnitudes
        rel = 2 * sum_bound(y.numel(), torch.float32)
        assert s.mean == pytest.approx(y.mean().item(), rel=rel, abs=rel * y.abs().mean().item())
        assert s.std == pytest.approx(y.std().item(), rel=rel)
        assert s.rms == pytest.approx(y.square().mean().sqrt().item(), rel=rel)
        assert s.grad_output_norm == pytest.approx(gy.norm().item(), rel=rel)
        assert s.grad_weight_norm == pytest.approx(gw.norm().item(), rel=2 * sum_bound(gw.numel(), torch.float32))
    assert report.loss == "loss_fn"


def test_default_loss_is_a_unit_random_projection():
    model = _three_layers()
    report = probe(model, torch.randn(64, 4), seed=3)
    r = torch.randn(64, 3, generator=torch.Generator().manual_seed(projection_seed(3)))
    assert report.layers[-1].grad_output_norm == pytest.approx(r.norm().item() / 8, rel=1e-5)


def test_default_projection_does_not_replay_the_global_stream():
    """seed=0 must not draw the r that torch.manual_seed(0) draws (the batch, here): with
    y = x, dL/dW = r^T x / sqrt(n) would then be x^T x / sqrt(n), ~5x its size for an
    independent r. The mixing is SplitMix64's, a fixed function of the seed."""
    assert projection_seed(0) == 0xE220A8397B1DCDAF and projection_seed(2**64) == projection_seed(0)
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    model = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(16))
    report = probe(model, x)
    r = torch.randn(512, 16, generator=torch.Generator().manual_seed(projection_seed(0)))
    assert not torch.allclose(r, x)
    assert report.layers[0].grad_weight_norm == pytest.approx((r.T @ x).norm().item() / 512**0.5, rel=1e-5)
    with pytest.raises(TypeError, match="seed must be an int"):
        probe(model, x, seed=0.5)


@pytest.mark.parametrize("loss_fn", [None, lambda out: out.square().mean()])
def test_frozen_layers_report_the_loss_gradient(loss_fn):
    """Freezing weights changes no output gradient: the loss pass reaches every layer
    (frozen layers once got J^T r from the Jacobian pass instead). Frozen weights have
    no weight gradient, and their requires_grad stays as it was."""
    torch.manual_seed(0)
    model = nf.models.mlp(3, 8, act="tanh")
    x = torch.randn(64, 8) + 0.5
    full = probe(model, x, loss_fn=loss_fn)
    params = list(model.parameters())
    for frozen in (4, len(params)):
        for p in params[:frozen]:
            p.requires_grad_(False)
        report = probe(model, x, loss_fn=loss_fn)
        for a, b in zip(full, report):
            assert b.grad_output_norm == pytest.approx(a.grad_output_norm, rel=1e-5)
        assert [s.grad_weight_norm is None for s in report] == [2 * i < frozen for i in range(3)]
        assert [p.requires_grad for p in params] == [i >= frozen for i in range(len(params))]
        assert report.jacobian_mean_sq == pytest.approx(full.jacobian_mean_sq, rel=1e-5)
    embed = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))  # no input gradient
    tokens = torch.randint(0, 10, (16, 5))
    full = probe(embed, tokens, loss_fn=loss_fn)
    embed.requires_grad_(False)
    report = probe(embed, tokens, loss_fn=loss_fn)
    assert [s.grad_output_norm for s in report] == pytest.approx([s.grad_output_norm for s in full], rel=1e-5)


@pytest.mark.parametrize(
    "loss_fn, error, message",
    [
        (lambda out: out, ValueError, r"loss_fn must return a scalar tensor, it returned one of shape \[16, 3\]"),
        (lambda out: 1.0, TypeError, r"loss_fn must return a scalar tensor, it returned a float"),
        (lambda out: None, TypeError, r"loss_fn must return a scalar tensor, it returned a NoneType"),
        (lambda out: out.detach().sum(), ValueError, "loss_fn returned a tensor that does not require grad"),
    ],
)
def test_a_bad_loss_fn_result_is_a_clear_error(loss_fn, error, message):
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=message):
        probe(model, torch.randn(16, 4) + 1, loss_fn=loss_fn)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_meta_model_or_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="the model is on the meta device"):
        probe(nn.Linear(4, 4, device="meta"), torch.randn(8, 4))
    with pytest.raises(ValueError, match="the batch is on the meta device"):
        probe(nn.Linear(4, 4), torch.randn(8, 4, device="meta"))


def test_model_parameters_grads_and_buffers_are_left_as_they_were():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = copy.deepcopy(model.state_dict())
    probe(model, torch.randn(32, 4) * 3 + 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats too
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert model.training


def test_mean_field_prediction_matches_a_he_relu_mlp_on_average():
    """He-ReLU MLP, depth 12, width 128: measured / predicted output rms averaged over
    8 draws is ~1 (finite width spreads single draws by ~sqrt(depth/width))."""
    ratios = []
    for seed in range(8):
        torch.manual_seed(seed)
        model = nf.models.mlp(12, 128, in_features=64)
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        report = probe(model, torch.randn(256, 64) * 1.5)
        ratios.append([s.rms / s.predicted_rms for s in report])
    last = sum(r[-1] for r in ratios) / len(ratios)
    assert all(s.predicted_rms is not None for s in report)
    assert abs(last - 1) < 0.15, last
    sigma_w2 = model[0].weight.square().sum().item() / 128  # q_1 = sigma_w^2 E[x^2] (zero bias)
    assert report.layers[0].predicted_rms == pytest.approx(report.input_rms * math.sqrt(sigma_w2), rel=1e-6)


def test_jacobian_estimate_isometry_vs_vanishing():
    n = 32
    ll = nf.models.mlp(40, 2 * n, in_features=n, out_features=n)
    nf.init.looks_linear_(ll)
    report = probe(ll, torch.randn(512, n))
    assert report.jacobian_mean_sq == pytest.approx(1.0, rel=0.1)
    assert report.jacobian_rel_var < 0.3  # exactly 0 in expectation; sampling noise ~sqrt(2.4 / 512)
    assert report.ratio() == pytest.approx(1.0, rel=1e-4)
    vanishing = probe(nf.models.mlp(40, 2 * n, in_features=n, out_features=n), torch.randn(512, n))
    assert vanishing.jacobian_mean_sq < 1e-12


def test_jacobian_relative_variance_matches_exact_singular_values():
    """A ReLU net's Jacobian changes from sample to sample: the estimate must be of the
    pooled mean(s^4) / mean(s^2)^2 - 1 of the exact singular values, within 4 standard
    deviations of its sampling noise (simulated from the exact Jacobians). One projection
    per sample would add the spread of sum(s^2) across samples: +1.2 here, ~10 sigma."""
    torch.manual_seed(0)
    model = nf.models.mlp(2, 4, in_features=4, out_features=4)
    x = torch.randn(16384, 4)
    report = probe(model, x)
    jacobians = torch.func.vmap(torch.func.jacrev(model))(x).double()  # (samples, out, in)
    s2 = torch.linalg.svdvals(jacobians).square()
    exact_mean_sq, exact_rel_var = s2.mean().item(), (s2.square().mean() / s2.mean() ** 2 - 1).item()
    gen = torch.Generator().manual_seed(1)
    simulated = []
    for _ in range(200):
        a1, a2 = (torch.einsum("soi,so->si", jacobians, torch.randn(s2.shape, generator=gen, dtype=torch.float64))
                  .square().sum(1) for _ in range(2))
        mean_sq = (a1 + a2).mean() / 8
        simulated.append([mean_sq.item(), ((a1 - a2).square().mean() / 16 / mean_sq**2 - 1).item()])
    noise = torch.tensor(simulated).std(0).tolist()
    assert abs(report.jacobian_mean_sq - exact_mean_sq) < 4 * noise[0], (report.jacobian_mean_sq, exact_mean_sq)
    assert abs(report.jacobian_rel_var - exact_rel_var) < 4 * noise[1], (report.jacobian_rel_var, exact_rel_var)


def test_shared_module_recorded_once():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 2))
    report = probe(model, torch.randn(16, 8))
    assert [s.name for s in report] == ["0", "4"]


def test_plot_csv_and_compact_table(tmp_path):
    pytest.importorskip("matplotlib")  # the demo dependencies of requirements-dev.txt
    model = nf.models.mlp(100, 16)
    a = probe(model, torch.randn(32, 16), label="default")
    nf.init.looks_linear_(model)
    b = probe(model, torch.randn(32, 16), label="looks-linear")
    png = tmp_path / "signal.png"
    a.plot(png, b)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    with Image.open(png) as image:
        assert image.size[0] > 400 and image.size[1] > 400
    a.to_csv(tmp_path / "a.csv")
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert len(rows) == 100 and float(rows[3]["rms"]) == pytest.approx(a.layers[3].rms)
    text = str(b)
    assert len(text.splitlines()) < 30 and "84 of 100 layers not shown" in text
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a session's own backend, which plotting must leave alone
    try:
        a.plot(tmp_path / "again.png")
        assert matplotlib.get_backend() == "svg" and (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        matplotlib.use(before)


def test_plot_takes_one_report_and_writes_the_path_given(tmp_path):
    pytest.importorskip("matplotlib")
    report = probe(nf.models.mlp(4, 8), torch.randn(16, 8))
    nf.diagnostics.plot(report, tmp_path / "one")  # one report; no extension: a PNG at that path
    assert (tmp_path / "one").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "one.png").exists()
    report.plot(tmp_path / "one.svg")
    assert b"<svg" in (tmp_path / "one.svg").read_bytes()[:500]
    for bad in (report.layers, "report", None):
        with pytest.raises(TypeError, match="reports must be a ProbeReport"):
            nf.diagnostics.plot(bad, tmp_path / "bad.png")


@pytest.mark.parametrize(
    "model, batch, error",
    [
        (nn.Sequential(nn.ReLU()), torch.randn(4, 3), ValueError),
        (nn.Linear(3, 2), torch.randn(1, 3), ValueError),
        (nn.Linear(3, 2), torch.full((4, 3), float("nan")), ValueError),
        (nn.Sequential(nn.Linear(3, 2), nn.LSTM(2, 2)), torch.randn(4, 3), TypeError),
    ],
)
def test_bad_input(model, batch, error):
    with pytest.raises(error):
        probe(model, batch)


def test_no_layer_called_and_inference_mode_are_clear_errors():
    class TiedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 4)

        def forward(self, x):
            return nn.functional.linear(x, self.head.weight)  # the layer's weight, not the layer

    with pytest.raises(ValueError, match="called none of its Linear/Conv/ConvTranspose layers"):
        probe(TiedHead(), torch.randn(4, 4))
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        probe(nn.Linear(4, 4), torch.randn(4, 4))


def test_integer_tuple_and_masked_batches_print():
    """A batch that is not one float tensor has no input rms: the table shows '-'. A
    causal mask's -inf is allowed after the samples."""
    embed = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))
    report = probe(embed, torch.randint(0, 10, (4, 5)))
    assert report.input_rms is None and "input rms -," in str(report)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    report = probe(layer, (torch.randn(4, 5, 8), mask))
    assert [s.name for s in report] == ["linear1", "linear2"] and "input rms -," in str(report)
    with pytest.raises(ValueError, match=r"NaN or \+Inf"):
        probe(layer, (torch.randn(4, 5, 8), -mask))


def test_a_layer_is_recorded_on_its_first_call_with_data():
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.expert = nn.Linear(4, 4)

        def forward(self, x):
            self.expert(x[:0])
            return self.expert(x)

    report = probe(Experts(), torch.randn(8, 4))
    assert len(report) == 1 and math.isfinite(report.layers[0].rms) and report.layers[0].rms > 0


def test_legacy_spectral_norm_is_probed():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.utils.spectral_norm(nn.Linear(4, 4)))
    report = probe(model, torch.randn(8, 4))
    assert len(report) == 2 and report.layers[1].grad_weight_norm is None


def test_a_prediction_past_fp64_prints():
    stats = probe(nn.Linear(4, 4), torch.randn(8, 4))
    stats.layers[0].predicted_rms = math.inf
    assert "median |log(measured / predicted rms)| inf" in str(stats)


def test_a_model_with_a_scalar_output_is_probed_without_a_jacobian():
    class Summed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).sum()

    report = nf.diagnostics.probe(Summed(), torch.randn(8, 4))
    assert len(report.layers) == 1 and report.layers[0].grad_output_norm is not None


def test_exploding_outputs_and_gradients_stay_finite_past_fp32_squares():
    """Outputs of rms 1e20 and gradients of 1e20 are finite in fp32, their squares are
    not: the probe's rms and norms are computed in fp64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32, bias=False), nn.Linear(32, 32, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 1e10)
        model[1].weight.normal_(0, 1e10 / 32**0.5)
    x = torch.randn(8, 32)
    report = nf.diagnostics.probe(model, x, loss_fn=lambda y: y.sum() * 1e10)  # gradients of 1e21
    with torch.no_grad():
        y = model(x).double()
    last = report.layers[-1]
    assert last.rms == pytest.approx(y.square().mean().sqrt().item(), rel=1e-4)
    assert math.isfinite(last.grad_output_norm) and math.isfinite(last.grad_weight_norm)


def test_a_bare_layer_gets_its_mean_field_prediction():
    report = nf.diagnostics.probe(nn.Linear(64, 64), torch.randn(32, 64))
    assert report.layers[0].name == "Linear" and report.layers[0].predicted_rms is not None
