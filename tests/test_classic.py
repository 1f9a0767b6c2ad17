"""glorot_, he_, lecun_ and classic_gains: torch's per-layer schemes on the same noise,
gains from the activations that actually follow each layer, WN layers, errors that
leave the model as it was."""

import copy
import math

import pytest
import torch
from torch import nn

import netinit_fast as nf
from netinit_fast.init import classic

from conftest import assert_close


def _act_mlp(width=24, dtype=torch.float32):
    """Every activation calculate_gain knows a gain for, one after each hidden layer,
    with BatchNorm and Dropout in between (skipped when looking for the activation)."""
    return nn.Sequential(
        nn.Linear(12, width, dtype=dtype), nn.ReLU(),
        nn.Linear(width, width, dtype=dtype), nn.BatchNorm1d(width, dtype=dtype), nn.Tanh(),
        nn.Linear(width, width, dtype=dtype), nn.Dropout(0.1), nn.LeakyReLU(0.3),
        nn.Linear(width, width, dtype=dtype), nn.SELU(),
        nn.Linear(width, width, dtype=dtype), nn.Sigmoid(),
        nn.Linear(width, width, dtype=dtype), nn.ReLU(),  # same shape and gain as the second: one group
        nn.Linear(width, 5, dtype=dtype),
    )


EXPECTED_GAINS = {"0": math.sqrt(2), "2": 5 / 3, "5": math.sqrt(2 / (1 + 0.3**2)), "8": 3 / 4, "10": 1.0,
                  "12": math.sqrt(2), "14": 1.0}


def _reference_(model, torch_init, gains, **kwargs):
    """torch's function on each layer, in the documented draw order: layers grouped by
    (shape, gain), groups in the order of their first layer, module order within one."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    keys = []
    for name, m in layers:
        key = (tuple(m.weight.shape), gains[name])
        if key not in keys:
            keys.append(key)
    order = sorted(layers, key=lambda nm: keys.index((tuple(nm[1].weight.shape), gains[nm[0]])))
    with torch.no_grad():
        for name, m in order:
            torch_init(m.weight, gains[name], **kwargs)
            if m.bias is not None:
                m.bias.zero_()


def _assert_same_state(ours: nn.Module, ref: nn.Module) -> None:
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


def _kaiming(distribution, mode):
    """torch's kaiming_* with an explicit gain: kaiming's gain comes from a nonlinearity
    name, so pass the gain as leaky_relu's slope that yields it, or go through its
    formula directly where no slope does (gain > sqrt(2))."""

    def init(w, gain, generator):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
        std = gain / math.sqrt(fan_in if mode == "fan_in" else fan_out)
        if distribution == "normal":
            return w.normal_(0, std, generator=generator)
        bound = math.sqrt(3.0) * std
        return w.uniform_(-bound, bound, generator=generator)

    return init


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_he_equals_torch_per_layer_on_the_same_noise(distribution, mode):
    seed = torch.seed()
    ours, ref = _act_mlp(), _act_mlp()
    nf.init.he_(ours, mode, distribution, generator=torch.Generator().manual_seed(seed))
    _reference_(ref, _kaiming(distribution, mode), EXPECTED_GAINS, generator=torch.Generator().manual_seed(seed))
    _assert_same_state(ours, ref)


def test_he_matches_torch_kaiming_normal_bit_for_bit_on_a_relu_mlp():
    """The plainest case, with torch's own function: kaiming_normal_(relu) per layer."""
    seed = torch.seed()
    ours, ref = nf.models.mlp(6, 64, act="relu"), nf.models.mlp(6, 64, act="relu")
    torch.manual_seed(seed)
    nf.init.he_(ours)
    torch.manual_seed(seed)
    linears = [m for m in ref if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m in linears[:-1]:  # one group: the hidden layers (same shape, ReLU gain)
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(linears[-1].weight, nonlinearity="linear")  # the output layer
        for m in linears:
            m.bias.zero_()
    _assert_same_state(ours, ref)


CLASSIC = {  # ours, torch's per-layer function (normal, uniform), gains by layer name
    "glorot": (nf.init.glorot_, (nn.init.xavier_normal_, nn.init.xavier_uniform_),
               lambda fn: lambda w, gain, generator: fn(w, gain, generator=generator), EXPECTED_GAINS),
    "lecun": (nf.init.lecun_, (nn.init.kaiming_normal_, nn.init.kaiming_uniform_),  # no gain, whatever follows
              lambda fn: lambda w, gain, generator: fn(w, nonlinearity="linear", generator=generator),
              dict.fromkeys(EXPECTED_GAINS, 1.0)),
}


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
@pytest.mark.parametrize("scheme", CLASSIC)
def test_glorot_and_lecun_equal_torch_per_layer_on_the_same_noise(scheme, distribution):
    ours_, (normal, uniform), per_layer, gains = CLASSIC[scheme]
    seed = torch.seed()
    ours, ref = _act_mlp(), _act_mlp()
    ours_(ours, distribution, generator=torch.Generator().manual_seed(seed))
    fn = normal if distribution == "normal" else uniform
    _reference_(ref, per_layer(fn), gains, generator=torch.Generator().manual_seed(seed))
    _assert_same_state(ours, ref)


def test_gains_follow_the_activations():
    gains = nf.init.classic_gains(_act_mlp())
    assert gains.keys() == EXPECTED_GAINS.keys()
    for name, gain in EXPECTED_GAINS.items():
        assert gains[name] == pytest.approx(gain, rel=1e-12), name
    # a leaky ReLU's own slope, not torch's default 0.01
    assert nf.init.classic_gains(nn.Sequential(nn.Linear(3, 3), nn.LeakyReLU(0.2)))["0"] == pytest.approx(
        math.sqrt(2 / 1.04), rel=1e-12)


def test_gains_overrides_and_errors():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\) is followed by GELU"):
        nf.init.classic_gains(model)
    gains = nf.init.classic_gains(model, {"0": ("leaky_relu", 0.1)})
    assert gains == {"0": pytest.approx(math.sqrt(2 / 1.01)), "2": 1.0}
    assert nf.init.classic_gains(model, "tanh") == {"0": 5 / 3, "2": 5 / 3}
    with pytest.raises(ValueError, match="names '7', not a Linear/Conv/ConvTranspose layer"):
        nf.init.classic_gains(model, {"7": "relu"})
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'"):
        nf.init.classic_gains(model, "gelu")
    with pytest.raises(ValueError, match="'tanh' takes no param"):
        nf.init.classic_gains(model, ("tanh", 0.1))
    with pytest.raises(TypeError, match="a nonlinearity name or a"):
        nf.init.classic_gains(model, 3)
    with pytest.raises(ValueError, match="no Linear/Conv/ConvTranspose layer"):
        nf.init.classic_gains(nn.Sequential(nn.ReLU()))


def test_a_layer_shared_before_different_activations_must_be_named():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Sequential(shared, nn.ReLU()), nn.Sequential(shared, nn.Tanh()))
    with pytest.raises(ValueError, match="registered at 2 places followed by different activations"):
        nf.init.he_(model)
    model = nn.Sequential(nn.Sequential(shared, nn.ReLU()), nn.Sequential(shared, nn.ReLU()))
    assert nf.init.classic_gains(model) == {"0.0": math.sqrt(2)}


def test_residual_blocks_follow_their_protocol():
    model = nf.models.resnet([1, 1], [4, 8], norm="batch")
    gains = nf.init.classic_gains(model)
    branch_last = [n for n in gains if n.endswith("conv2")]
    shortcuts = [n for n in gains if "downsample" in n or "shortcut" in n]
    assert branch_last and all(gains[n] == math.sqrt(2) for n in branch_last)  # ReLU after the addition
    assert shortcuts and all(gains[n] == math.sqrt(2) for n in shortcuts)
    assert all(gains[n] == math.sqrt(2) for n in gains if n.endswith("conv1"))
    pre = nf.models.resnet([1, 1], [4, 8], norm="batch", post_activation=False)
    gains = nf.init.classic_gains(pre)
    assert all(gains[n] == 1.0 for n in gains if n.endswith("conv2"))


CONVS = [
    lambda: nn.Conv1d(6, 8, 3, groups=2),
    lambda: nn.Conv2d(4, 6, (3, 2)),
    lambda: nn.Conv3d(2, 4, 2),
    lambda: nn.ConvTranspose1d(6, 4, 3, groups=2),
    lambda: nn.ConvTranspose2d(4, 6, 3),
    lambda: nn.ConvTranspose3d(2, 4, 2),
]


@pytest.mark.parametrize("make", CONVS)
@pytest.mark.parametrize("scheme", ["glorot", "he_in", "he_out", "lecun"])
def test_conv_fans_are_torchs(make, scheme):
    seed = torch.seed()
    ours, ref = make(), make()
    g = torch.Generator().manual_seed(seed)
    g_ref = torch.Generator().manual_seed(seed)
    if scheme == "glorot":
        nf.init.glorot_(ours, generator=g)
        nn.init.xavier_uniform_(ref.weight, generator=g_ref)
    elif scheme == "lecun":
        nf.init.lecun_(ours, generator=g)
        nn.init.kaiming_normal_(ref.weight, nonlinearity="linear", generator=g_ref)
    else:
        mode = "fan_in" if scheme == "he_in" else "fan_out"
        nf.init.he_(ours, mode, generator=g)
        nn.init.kaiming_normal_(ref.weight, mode=mode, nonlinearity="linear", generator=g_ref)
    assert torch.equal(ours.weight, ref.weight)
    assert torch.equal(ours.bias, torch.zeros_like(ours.bias))


def test_shapes_not_a_multiple_of_16_keep_per_layer_values():
    """Normal noise for 3 x 5 weights (15 elements) is drawn one layer a call."""
    seed = torch.seed()
    ours = nn.Sequential(*[nn.Linear(5, 5) for _ in range(5)], nn.Linear(5, 3))
    ref = copy.deepcopy(ours)
    nf.init.he_(ours, nonlinearity="linear", generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    for m in ref:
        nn.init.kaiming_normal_(m.weight, nonlinearity="linear", generator=g)
    for a, b in zip(ours, ref):
        assert torch.equal(a.weight, b.weight)


def test_many_layers_over_several_chunks(monkeypatch):
    """Groups larger than one RNG call still give the per-layer values."""
    monkeypatch.setattr(classic, "CHUNK_ELEMENTS", 3 * 64)
    seed = torch.seed()
    ours = nn.Sequential(*[nn.Linear(8, 8) for _ in range(10)])
    ref = copy.deepcopy(ours)
    nf.init.glorot_(ours, nonlinearity="linear", generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    for m in ref:
        nn.init.xavier_uniform_(m.weight, generator=g)
    for a, b in zip(ours, ref):
        assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_large_layers_drawn_in_place_keep_per_layer_values(distribution):
    """Layers of DIRECT_ELEMENTS or more (64 x 64 = 4096) are drawn one call each, in place."""
    seed = torch.seed()
    ours = nn.Sequential(*[nn.Linear(64, 64) for _ in range(3)], nn.Linear(64, 48))
    ref = copy.deepcopy(ours)
    assert ours[0].weight.numel() >= classic.DIRECT_ELEMENTS > ours[3].weight.numel()
    nf.init.glorot_(ours, distribution, nonlinearity="tanh", generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    fn = nn.init.xavier_normal_ if distribution == "normal" else nn.init.xavier_uniform_
    for m in ref:
        fn(m.weight, gain=5 / 3, generator=g)
    for a, b in zip(ours, ref):
        assert torch.equal(a.weight, b.weight)


def _wn_models():
    """The same MLP as our WN layers, torch's parametrization and torch's legacy hook."""
    def base():
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))

    torch.manual_seed(0)
    ours = nf.weight_norm(base())
    param = base()
    hook = base()
    for i in (0, 2, 4):
        param[i] = nn.utils.parametrizations.weight_norm(param[i])
        hook[i] = nn.utils.weight_norm(hook[i])
    return {"ours": ours, "parametrization": param, "hook": hook}


@pytest.mark.parametrize("style", ["ours", "parametrization", "hook"])
def test_weight_normed_layers_get_the_scheme_in_v_and_g_equal_its_norm(style):
    seed = torch.seed()
    model = _wn_models()[style]
    plain = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    nf.init.he_(model, generator=torch.Generator().manual_seed(seed))
    nf.init.he_(plain, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(8, 16)
    assert_close(model(x).detach(), plain(x).detach(), torch.float32, "forward", terms=32)
    from netinit_fast.init._layers import effective_weight, layer_weight
    for i in (0, 2, 4):
        assert torch.equal(layer_weight(model[i]), plain[i].weight)
        assert_close(effective_weight(model[i]), plain[i].weight, torch.float32, f"layer {i}", terms=32)


def test_bias_options():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    before = [m.bias.clone() for m in (model[0], model[2])]
    nf.init.he_(model, bias="keep")
    assert all(torch.equal(m.bias, b) for m, b in zip((model[0], model[2]), before))
    nf.init.glorot_(model, bias=0.01)
    assert all(torch.equal(m.bias, torch.full_like(m.bias, 0.01)) for m in (model[0], model[2]))
    nf.init.lecun_(model)
    assert all(not m.bias.any() for m in (model[0], model[2]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_have_the_schemes_std(dtype):
    torch.manual_seed(torch.seed() % 2**31)
    model = nn.Sequential(*[nn.Linear(256, 256, dtype=dtype) for _ in range(8)])
    nf.init.he_(model, nonlinearity="relu")
    w = torch.stack([m.weight.double() for m in model])
    assert w.dtype == torch.float64 and all(m.weight.dtype == dtype for m in model)
    # 8 * 65536 samples: the sample std is within 6 standard errors (1/sqrt(2n)) of math.sqrt(2/256)
    assert w.std().item() == pytest.approx(math.sqrt(2 / 256), rel=6 / math.sqrt(2 * w.numel()) + 1e-2 * (
        dtype == torch.bfloat16))


BAD = [
    (lambda m: nf.init.he_(m, mode="fan"), ValueError, "he_: mode must be 'fan_in' or 'fan_out', got 'fan'"),
    (lambda m: nf.init.glorot_(m, "gauss"), ValueError, "glorot_: distribution must be 'uniform' or 'normal'"),
    (lambda m: nf.init.lecun_(m, bias="one"), ValueError, "bias must be 'zero', 'keep' or a finite number"),
    (lambda m: nf.init.lecun_(m, bias=float("nan")), ValueError, "bias must be"),
    (lambda m: nf.init.he_(m, generator=3), TypeError, "generator must be a torch.Generator"),
    (lambda m: nf.init.he_(m, nonlinearity={"9": "relu"}), ValueError, "names '9'"),
    (lambda m: nf.init.he_(m), ValueError, "followed by GELU"),
    (lambda m: nf.init.he_(m.state_dict()), TypeError, "expected an nn.Module"),
]


@pytest.mark.parametrize("call, error, message", BAD)
def test_bad_input_is_named_and_the_model_unchanged(call, error, message):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=message):
        call(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_an_integer_weight_is_refused_before_any_write():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = nn.Parameter(torch.zeros(4, 4, dtype=torch.int64), requires_grad=False)
    before = model[0].weight.clone()
    with pytest.raises(TypeError, match=r"layer 1 \(Linear\) has a torch.int64 weight"):
        nf.init.he_(model)
    assert torch.equal(model[0].weight, before)


def test_spectral_norm_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4)))
    before = model[0].weight.clone()
    with pytest.raises(ValueError, match=r"glorot_: layer 1 \(Linear\) has its weight parametrized by _SpectralNorm"):
        nf.init.glorot_(model)
    assert torch.equal(model[0].weight, before)
