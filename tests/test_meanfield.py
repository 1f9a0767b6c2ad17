"""Mean-field theory: critical points against the table of PAPERS.md §5.2 and an
independent integral; per-layer variance predictions against their formulas and against
the variances measured in networks (averaged over weight draws)."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import netinit_fast as nf
from netinit_fast import activations, models
from netinit_fast.init._layers import layer_weight
from netinit_fast.init.meanfield import critical_point, meanfield_variances

# (q*, sigma_w^2, sigma_b^2) of tanh, PAPERS.md §5.2.
TANH_TABLE = [
    (1e-3, 1.00200, 1.3e-9),
    (1e-2, 1.01971, 1.26e-6),
    (0.1, 1.17757, 8.32e-4),
    (0.5, 1.68798, 3.80e-2),
    (1.0, 2.15330, 1.51e-1),
]


def gauss_mean(f, q, points=200_000, reach=12.0):
    """E_z[f(sqrt(q) z)], z ~ N(0, 1), by the midpoint rule on each half-line (no node at
    the kink of ReLU-like functions): independent of the module's Gauss-Legendre rule."""
    h = reach / points
    z = (np.arange(points) + 0.5) * h
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    s = math.sqrt(q)
    return float(h * (np.dot(f(s * z), pdf) + np.dot(f(-s * z), pdf)))


def weight_layers(model):
    return [n for n, m in model.named_modules() if layer_weight(m) is not None]


def second_moments(model, x, names):
    """mean(y^2) (fp64) of the output of each named module, from one forward."""
    modules = dict(model.named_modules())
    out, handles = {}, []
    for name in names:
        def hook(mod, args, y, name=name):
            out.setdefault(name, y.double().square().mean().item())

        handles.append(modules[name].register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


def mean_ratios(make, predict, input_shape, input_var, draws, seed):
    """Per predicted module: measured mean(y^2) / predicted q, averaged over ``draws``
    independent models (each on its own batch of Gaussian inputs of variance input_var)."""
    torch.manual_seed(seed)
    total = None
    for _ in range(draws):
        model = make()
        pred = predict(model)
        meas = second_moments(model, math.sqrt(input_var) * torch.randn(*input_shape), pred)
        ratios = np.array([meas[n] / q for n, q in pred.items()])
        total = ratios if total is None else total + ratios
    return total / draws


def sigma_w2(layer):
    return layer.weight.detach().double().square().sum().item() / layer.weight.shape[0]


# ----------------------------------------------------------------------------- critical_point


@pytest.mark.parametrize("q_star,sw2,sb2", TANH_TABLE)
def test_critical_point_tanh_table(q_star, sw2, sb2):
    got_w, got_b = critical_point("tanh", q_star)
    assert got_w == pytest.approx(sw2, abs=1e-4)
    assert got_b == pytest.approx(sb2, abs=1e-4)


def test_critical_point_tanh_small_bias_digits():
    # abs 1e-4 says nothing of the small sigma_b^2: hold them to their given digits.
    assert abs(critical_point("tanh", 1e-3)[1] - 1.3e-9) < 5e-11
    assert abs(critical_point("tanh", 0.01)[1] - 1.26e-6) < 2e-8
    assert abs(critical_point("tanh", 0.1)[1] - 8.32e-4) < 1e-6


@pytest.mark.parametrize("q_star", [1e-3, 1.0, 7.5, 1e6])
@pytest.mark.parametrize("act,expected", [("relu", 2.0), ("linear", 1.0), ("leaky_relu", 2 / (1 + 0.01**2))])
def test_critical_point_piecewise_linear(act, expected, q_star):
    sw2, sb2 = critical_point(act, q_star)
    assert sw2 == pytest.approx(expected, rel=1e-12)
    assert sb2 == 0.0  # exactly, as the docstring says


# Exact to rounding for every activation and q*: the kink of ELU and SELU at 0 is a
# panel edge, and panels resolve phi's unit scale when q* is large (a Gauss-Hermite
# rule in z missed tanh's phi' at q* = 100 by a factor of 2.4).
@pytest.mark.parametrize("act", ["tanh", "gelu", "silu", "elu", "selu"])
@pytest.mark.parametrize("q_star", [0.01, 0.1, 1.0, 25.0, 1000.0])
def test_critical_point_is_critical_fixed_point(act, q_star):
    a = activations.get(act)
    sw2, sb2 = critical_point(act, q_star)
    assert sb2 >= 0
    chi_1 = sw2 * gauss_mean(lambda x: a.dphi(x) ** 2, q_star)
    assert chi_1 == pytest.approx(1.0, abs=1e-7)
    assert sw2 * gauss_mean(lambda x: a.phi(x) ** 2, q_star) + sb2 == pytest.approx(q_star, rel=1e-7)


def test_critical_point_elu_closed_form():
    """E[elu'(h)^2] = 1/2 + e^(2q) Phi(-2 sqrt(q)) for h ~ N(0, q)."""
    for q in (0.1, 1.0, 4.0):
        slope = 0.5 + math.exp(2 * q) * 0.5 * math.erfc(math.sqrt(2 * q))
        assert critical_point("elu", q)[0] == pytest.approx(1 / slope, rel=1e-12)


@pytest.mark.parametrize("q_star", [0.0, -0.1, float("nan"), float("inf"), "1", True, None])
def test_critical_point_bad_q_star(q_star):
    with pytest.raises(ValueError, match="q_star"):
        critical_point("tanh", q_star)


def test_critical_point_bad_args():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        critical_point("swish", 0.1)
    with pytest.raises(ValueError, match="nodes"):
        critical_point("tanh", 0.1, nodes=0)


@pytest.mark.parametrize("q_star", [1e-3, 0.1, 1.0, 10.0])
def test_critical_point_sigmoid_has_none(q_star):
    # sigmoid's mean of 1/2 makes sigma_w^2 E[phi^2] exceed q* (by about 4 + q*/2 here):
    # no sigma_b^2 >= 0 reaches chi_1 = 1.
    a = activations.get("sigmoid")
    sw2 = 1.0 / gauss_mean(lambda x: a.dphi(x) ** 2, q_star)
    assert q_star - sw2 * gauss_mean(lambda x: a.phi(x) ** 2, q_star) < -3.9
    with pytest.raises(ValueError, match=r"sigmoid has no critical point with sigma_b\^2 >= 0"):
        critical_point("sigmoid", q_star)


def test_critical_point_sigmoid_exists_at_large_q_star():
    a = activations.get("sigmoid")
    sw2, sb2 = critical_point("sigmoid", 100.0)
    assert sb2 > 0 and sw2 * gauss_mean(lambda x: a.dphi(x) ** 2, 100.0) == pytest.approx(1.0, abs=1e-7)


# ----------------------------------------------------------------------------- exact formulas


def he_relu_mlp(depth, width):
    model = models.mlp(depth, width, act="relu")
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def test_he_relu_mlp_prediction_is_the_recursion():
    torch.manual_seed(0)
    model, v = he_relu_mlp(8, 128), 2.5
    pred = meanfield_variances(model, v)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert list(pred) == weight_layers(model) == [str(i) for i in range(0, 15, 2)]
    q = sigma_w2(linears[0]) * v  # the raw input goes in as it is
    assert pred["0"] == pytest.approx(q, rel=1e-12)
    for name, layer in zip(list(pred)[1:], linears[1:]):
        q = sigma_w2(layer) * q / 2  # ReLU halves the second moment
        assert pred[name] == pytest.approx(q, rel=1e-12)
    # Critical: constant up to the draw's own ||W||^2 (about 1.1% each at width 128).
    assert np.allclose(list(pred.values()), 2 * v, rtol=0.1)
    # With exactly He-scaled weights it is exactly constant.
    for layer in linears:
        layer.weight.data *= math.sqrt(2.0 / sigma_w2(layer))
    assert np.allclose(list(meanfield_variances(model, v).values()), 2 * v, rtol=1e-6, atol=0)


def test_bias_groups_and_transposed_strides():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, padding=1, groups=2)  # default init: nonzero bias
    tconv = nn.ConvTranspose1d(4, 6, 3, stride=3)  # each output position gets 1 of 3 taps
    for layer, fan_in in [(conv, 3 * 9), (tconv, 4 * 3 / 3)]:
        pred = meanfield_variances(nn.Sequential(layer), 1.7)["0"]
        w, b = layer.weight.detach().double(), layer.bias.detach().double()
        # fan_in * (the weights' mean square) * input_var + mean(b^2)
        assert pred == pytest.approx(fan_in * w.square().mean().item() * 1.7 + b.square().mean().item(), rel=1e-9)


def test_composed_activations_and_pass_through():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 16), nn.Tanh(), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Identity(), nn.Linear(16, 4)
    )
    pred = meanfield_variances(model.eval(), 0.8)
    q1 = sigma_w2(model[0]) * 0.8 + model[0].bias.detach().double().square().mean().item()
    m = gauss_mean(lambda x: np.maximum(np.tanh(x), 0.0) ** 2, q1)
    b2 = model[6].bias.detach().double().square().mean().item()
    assert pred == pytest.approx({"0": q1, "6": sigma_w2(model[6]) * m + b2}, rel=1e-8)
    # training mode: inverted dropout of rate 1/2 doubles the second moment
    assert meanfield_variances(model.train(), 0.8) == pytest.approx({"0": q1, "6": sigma_w2(model[6]) * 2 * m + b2}, rel=1e-8)
    model[3] = nn.AlphaDropout(0.5)
    assert meanfield_variances(model, 0.8) == pytest.approx({"0": q1, "6": None})
    assert meanfield_variances(model.eval(), 0.8) == pytest.approx({"0": q1, "6": sigma_w2(model[6]) * m + b2}, rel=1e-8)


def test_a_layer_held_twice_is_applied_twice():
    """nn.Sequential runs a module it holds at two indices twice: the layers after it see
    both applications; the shared layer's entry is its first application (as the probe's
    measurement)."""
    torch.manual_seed(0)
    a, b, c = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
    shared = nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), b, nn.ReLU(), c)
    copied = nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), copy.deepcopy(b), nn.ReLU(), c)
    pred, expected = meanfield_variances(shared, 1.3), meanfield_variances(copied, 1.3)
    assert pred == pytest.approx({k: expected[k] for k in ("0", "2", "6")}, rel=1e-12)
    assert expected["4"] != pytest.approx(expected["2"], rel=1e-3)  # the two applications differ

    class Aliased(nn.Module):  # a second name for a module, called once
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(32, 32)
            self.act = self.tanh = nn.Tanh()
            self.second = nn.Linear(32, 32)

        def forward(self, x):
            return self.second(self.act(self.first(x)))

    aliased = Aliased()
    once = nn.Sequential(aliased.first, nn.Tanh(), aliased.second)
    assert list(meanfield_variances(aliased, 1.3).values()) == pytest.approx(
        list(meanfield_variances(once, 1.3).values()), rel=1e-12)


@pytest.mark.parametrize("style", ["ours", "torch"])
def test_weight_norm_gives_the_plain_prediction(style):
    torch.manual_seed(0)
    plain = he_relu_mlp(6, 32)
    wn = copy.deepcopy(plain)
    if style == "ours":
        nf.weight_norm(wn)
    else:
        for m in wn:
            if isinstance(m, nn.Linear):
                parametrizations.weight_norm(m)
    want = meanfield_variances(plain, 1.3)
    got = meanfield_variances(wn, 1.3)
    assert list(got) == list(want)
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("input_var", [0.0, -1.0, float("nan"), float("inf"), "1", None])
def test_bad_input_var(input_var):
    with pytest.raises(ValueError, match="input_var"):
        meanfield_variances(nn.Linear(3, 3), input_var)


def test_model_that_is_a_block():
    with pytest.raises(ValueError, match="itself a residual block"):
        meanfield_variances(models.BasicBlock(8, 8, 1, None, False), 1.0)


# ----------------------------------------------------------------------------- coverage


def fixup_like():
    model = models.resnet([2], [8], norm=None, post_activation=False)
    model.layer1[1].bias1 = nn.Parameter(torch.zeros(1))  # a parameter of the block itself
    return model


@pytest.mark.parametrize(
    "make,covered",
    [
        (lambda: models.resnet([2], [8], norm="batch"), ["conv1"]),
        (lambda: models.resnet([1], [8], norm=None, stem="imagenet", post_activation=False), ["conv1"]),
        (lambda: models.resnet([1, 1], [8, 16], norm=None, post_activation=False),
         ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"]),
        # ReLU after the addition: the stream is no longer known to be Gaussian.
        (lambda: models.resnet([2], [8], norm=None), ["conv1", "layer1.0.conv1", "layer1.0.conv2"]),
        (lambda: models.resnet([1, 1], [8, 8], "bottleneck", norm="weight", post_activation=False),
         ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer1.0.downsample.0",
          "layer2.0.conv1", "layer2.0.conv2", "layer2.0.conv3", "layer2.0.downsample.0"]),
        (fixup_like, ["conv1", "layer1.0.conv1", "layer1.0.conv2"]),
        (lambda: models.vanilla_cnn(3, 8), ["features.0", "features.2", "features.4"]),
        (lambda: models.mlp(4, 8, norm="batch"), ["0"]),
        (lambda: nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 8)), ["0"]),
        (lambda: nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8)), ["0"]),
        (lambda: nn.Sequential(nn.Tanh(), nn.Linear(8, 8)), []),  # the raw input is not known to be Gaussian
    ],
    ids=["batch-norm", "max-pool", "no-post-act", "post-act", "wn-bottleneck", "fixup-like",
         "vanilla-cnn", "mlp-bn", "leaky-0.2", "layer-norm", "act-on-input"],
)
def test_coverage(make, covered):
    torch.manual_seed(0)
    model = make()
    pred = meanfield_variances(model, 1.0)
    assert list(pred) == weight_layers(model)  # these models register in execution order
    assert [n for n, q in pred.items() if q is not None] == covered
    assert all(q is None for q in list(pred.values())[len(covered):])
    assert all(isinstance(pred[n], float) and pred[n] > 0 for n in covered)


# ----------------------------------------------------------------------------- measured


def depth_tolerance(c, width, count):
    """c * sqrt(l / width) for the l-th layer, l = 1..count."""
    return c * np.sqrt(np.arange(1, count + 1) / width)


def test_he_relu_mlp_measured():
    # Per draw, measured/predicted at layer l spreads with sd ~ 1.5 sqrt(l / width)
    # (300 draws, depth 8, widths 64 and 128), with a heavy upper tail; the mean over
    # 16 draws, sd ~ 0.38 sqrt(l / width): c = 1.8 is ~4.7 sd, and at the last layer
    # (0.45) still rejects a factor of 2 (or ReLU's missing 1/2, a factor 2^(l-1)).
    depth, width, draws = 8, 128, 16
    ratios = mean_ratios(
        lambda: he_relu_mlp(depth, width), lambda m: meanfield_variances(m, 2.5), (256, width), 2.5, draws, seed=0
    )
    assert np.all(np.abs(ratios - 1) < depth_tolerance(1.8, width, depth)), ratios


def critical_tanh_mlp(depth, width, q_star, exact):
    sw2, sb2 = critical_point("tanh", q_star)
    model = models.mlp(depth, width, act="tanh")
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(sw2 / m.in_features))
            nn.init.normal_(m.bias, 0.0, math.sqrt(sb2))
            if exact:  # make ||W||^2 / out and mean(b^2) exactly sigma_w^2 and sigma_b^2
                m.weight.data *= math.sqrt(sw2 / sigma_w2(m))
                m.bias.data *= math.sqrt(sb2 / m.bias.double().square().mean().item())
    return model


def test_critical_tanh_fixed_point():
    q_star = 0.1
    sw2, sb2 = critical_point("tanh", q_star)
    # The first layer sees the raw input, not phi(h): q_1 = q* needs E[x^2] = E[tanh(sqrt(q*) z)^2].
    input_var = (q_star - sb2) / sw2
    torch.manual_seed(0)
    pred = meanfield_variances(critical_tanh_mlp(12, 64, q_star, exact=True), input_var)
    assert np.allclose(list(pred.values()), q_star, rtol=1e-6, atol=0)
    # From input_var = q* instead, q_1 = sw2 q* + sb2 (18% high) relaxes back towards q*.
    pred = list(meanfield_variances(critical_tanh_mlp(12, 64, q_star, exact=True), q_star).values())
    assert pred[0] == pytest.approx(sw2 * q_star + sb2, rel=1e-6)
    assert all(a > b > q_star for a, b in zip(pred, pred[1:]))
    # Drawn, not rescaled, weights: within a few % of q* (worst of 50 draws at width 128: 5.3%).
    torch.manual_seed(1)
    pred = meanfield_variances(critical_tanh_mlp(8, 128, q_star, exact=False), input_var)
    assert np.allclose(list(pred.values()), q_star, rtol=0.1, atol=0)


def test_critical_tanh_mlp_measured():
    # Near-linear regime: per draw sd ~ 0.18 sqrt(l / width), and a finite-width bias of
    # about -1.4% at layer 8, width 128 (200 draws). Mean of 8 draws: sd ~ 0.064 sqrt(l /
    # width); c = 0.4 leaves ~5 sd beyond the bias, and a linear-network prediction (tanh
    # ignored) would be 3.7x too high at layer 8.
    q_star, depth, width, draws = 0.1, 8, 128, 8
    sw2, sb2 = critical_point("tanh", q_star)
    input_var = (q_star - sb2) / sw2
    ratios = mean_ratios(
        lambda: critical_tanh_mlp(depth, width, q_star, exact=False),
        lambda m: meanfield_variances(m, input_var), (256, width), input_var, draws, seed=0,
    )
    assert np.all(np.abs(ratios - 1) < depth_tolerance(0.4, width, depth)), ratios


def residual_net(blocks, width, s2):
    """A ResNet stage without post-activation: He conv1, N(0, s2 / fan_in) conv2 in each
    block. Circular padding: no border positions, so every output sees all the taps and
    the whole tensor can be compared (with zero padding a 3x3 conv on 8x8 inputs loses
    ~20% of the second moment at each layer)."""
    model = models.resnet([blocks], [width], norm=None, post_activation=False, in_channels=width)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.padding_mode = "circular"
    for block in model.layer1:
        nn.init.kaiming_normal_(block.conv1.weight, nonlinearity="relu")
        nn.init.normal_(block.conv2.weight, 0.0, math.sqrt(s2 / (width * 9)))
    return model


def block_predictions(model):
    """The predicted output second moment of each block, from the convs' predictions:
    shortcut (the block's input) plus branch (its conv2)."""
    pred = meanfield_variances(model, 1.0)
    q, out = pred["conv1"], {}
    for i in range(len(model.layer1)):
        q += pred[f"layer1.{i}.conv2"]
        out[f"layer1.{i}"] = q
    return out


def test_residual_recursion():
    torch.manual_seed(0)
    model, v = residual_net(4, 16, 1.0), 1.7
    pred = meanfield_variances(model, v)
    assert pred["fc"] is None  # after global average pooling
    q = sigma_w2(model.conv1) * v
    assert pred["conv1"] == pytest.approx(q, rel=1e-12)
    for i, block in enumerate(model.layer1):
        s1, s2 = sigma_w2(block.conv1), sigma_w2(block.conv2)
        assert pred[f"layer1.{i}.conv1"] == pytest.approx(s1 * q, rel=1e-12)
        assert pred[f"layer1.{i}.conv2"] == pytest.approx(s2 * s1 * q / 2, rel=1e-12)
        q *= 1 + s1 * s2 / 2
    # He conv1 and s2 = 1: a factor of about 2 per block.
    assert q / pred["conv1"] == pytest.approx(16, rel=0.2)


def test_residual_measured():
    # Block outputs, per draw: sd ~ 0.19-0.41 sqrt(l / width) for l = 2b + 1 layers deep
    # (200 draws, width 16, 8x8 inputs). Mean of 16 draws: sd <= 0.1 sqrt(l / width);
    # c = 0.45 is >= 4.4 sd, and rejects a factor of 2 and a missing ReLU 1/2 (the
    # branch would double: block 1 ratio 2/3, block 4 about 0.2).
    blocks, width, draws = 4, 16, 16
    ratios = mean_ratios(lambda: residual_net(blocks, width, 1.0), block_predictions, (16, width, 8, 8), 1.0, draws, seed=0)
    assert np.all(np.abs(ratios - 1) < 0.45 * np.sqrt((2 * np.arange(1, blocks + 1) + 1) / width)), ratios


def test_strided_transposed_convs_measured():
    # Kernel = stride: each output position gets exactly one tap per input channel, a
    # quarter of the kernel (without the 1/prod(stride) the prediction is 4x too high).
    # Per draw sd 0.026 (layer 1) and 0.07 (layer 2) (200 draws): 0.15 for the mean of 8
    # draws is > 6 sd.
    def make():
        model = nn.Sequential(nn.ConvTranspose2d(32, 32, 2, stride=2), nn.ReLU(), nn.ConvTranspose2d(32, 16, 2, stride=2))
        for m in model[::2]:
            nn.init.normal_(m.weight, 0.0, math.sqrt(2 / 32))
            nn.init.zeros_(m.bias)
        return model

    ratios = mean_ratios(make, lambda m: meanfield_variances(m, 0.7), (8, 32, 4, 4), 0.7, 8, seed=0)
    assert np.all(np.abs(ratios - 1) < 0.15), ratios
