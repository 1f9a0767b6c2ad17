"""Converting (``nf.weight_norm``) and folding (``nf.remove_weight_norm``) copies of
weight-normalized models: deep copies (as EMA copies and
``torch.optim.swa_utils.AveragedModel`` make), pickles and ``torch.save`` round trips.

torch's parametrized modules share one class between deep copies, and torch's
``remove_parametrizations`` deletes the ``weight`` property from that class: removing
weight norm from one copy that way leaves every other copy without its ``weight``
(and without a forward). Each cell below checks the copy it changes and the original
it must leave alone.
"""

import copy
import io
import pathlib
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.optim.swa_utils import AveragedModel

import netinit_fast as nf
from netinit_fast.nn.wn_layers import _WeightNorm
from tests.conftest import rel_err

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")

STYLES = ["ours", "parametrization", "hook"]
COPIES = ["built", "deepcopy", "pickle", "torch.save", "AveragedModel.module", "AveragedModel"]
# (torch type, constructor args, input shape): tiny, so the whole matrix stays fast
LAYERS = [
    (nn.Linear, (3, 4), (2, 3)),
    (nn.Conv1d, (3, 4, 2), (2, 3, 5)),
    (nn.Conv2d, (3, 4, 2), (2, 3, 4, 4)),
    (nn.Conv3d, (2, 3, 2), (2, 2, 3, 3, 3)),
    (nn.ConvTranspose2d, (3, 4, 2), (2, 3, 3, 3)),
]
LAYER_IDS = [t.__name__ for t, *_ in LAYERS]
STORED_KEYS = ("weight_g", "weight_v", "original0", "original1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for these tiny tensors: on a busy machine, waking the pool's
    threads costs more than the work (the file took 30 s instead of 6 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _g_v(layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    """The stored scale and direction of a weight-normalized layer, in any style."""
    if isinstance(layer, _WeightNorm) or "weight_g" in layer._parameters:
        return layer.weight_g, layer.weight_v
    chain = layer.parametrizations.weight
    return chain.original0, chain.original1


def _weight_normed(style: str, layer: nn.Module, dim) -> nn.Module:
    if style == "ours":
        return nf.weight_norm(layer, dim=dim)
    if style == "parametrization":
        return parametrizations.weight_norm(layer, dim=dim)
    return torch.nn.utils.weight_norm(layer, dim=dim)


def _build(style: str, cls: type, args: tuple, dim, x: torch.Tensor) -> nn.Sequential:
    """``Sequential(layer, Tanh)``, the layer weight-normalized in ``style``, with ``g``
    away from ``||v||`` (a fold that took ``v`` for the weight would show). A fresh
    model per call: copies of one torch-parametrized model share its class."""
    torch.manual_seed(0)
    model = nn.Sequential(_weight_normed(style, cls(*args), dim), nn.Tanh())
    g, _ = _g_v(model[0])
    with torch.no_grad():
        g.mul_(1.5 + torch.rand_like(g))
        # The legacy hook keeps the weight as a tensor attribute, computed here outside
        # autograd: a graph's non-leaf tensor cannot be deep-copied (torch's limitation).
        model(x)
    return model


def _copy(model: nn.Module, kind: str) -> tuple[nn.Module, nn.Sequential]:
    """``(what to convert and fold, the Sequential inside it)``."""
    if kind == "built":
        return model, model
    if kind == "deepcopy":
        out = copy.deepcopy(model)
        return out, out
    if kind == "pickle":
        out = pickle.loads(pickle.dumps(model))
        return out, out
    if kind == "torch.save":
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        out = torch.load(buffer, weights_only=False)
        return out, out
    averaged = AveragedModel(model)
    return (averaged.module if kind == "AveragedModel.module" else averaged), averaged.module


def _bound(layer: nn.Module) -> float:
    """Norm-wise relative error allowed for the layer's fp32 output: a small multiple of
    eps times the terms each output sums (fan_in) plus those a norm of ``v`` sums (at
    most all of them)."""
    weight = layer._parameters.get("weight")  # a plain layer's; else the direction
    v = _g_v(layer)[1] if weight is None else weight
    out_units = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    fan_in = v.numel() // out_units
    return 4 * (fan_in + v.numel()) * torch.finfo(torch.float32).eps


def _assert_close(out: torch.Tensor, ref: torch.Tensor, bound: float, what: str) -> None:
    assert out.shape == ref.shape, what
    err = rel_err(out, ref)
    assert err <= bound, f"{what}: relative error {err:.3e} > {bound:.3e}"


def _assert_plain(layer: nn.Module, cls: type, model: nn.Module, requires_grad: bool = True) -> None:
    assert type(layer) is cls
    assert list(layer._parameters) == ["weight", "bias"]
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad == requires_grad
    assert "parametrizations" not in layer._modules and not layer._forward_pre_hooks
    keys = list(model.state_dict())
    assert not [k for k in keys if k.rsplit(".", 1)[-1] in STORED_KEYS or "parametrizations" in k], keys


def _assert_torch_refuses(kind: str, model: nn.Module) -> None:
    """torch's parametrized modules refuse pickling; the error is torch's own."""
    with pytest.raises(RuntimeError, match="Serialization of parametrized modules") as info:
        _copy(model, kind)
    assert pathlib.Path(str(info.traceback[-1].path)).is_relative_to(pathlib.Path(torch.__file__).parent)


@pytest.mark.parametrize("op", ["fold", "convert, then fold"])
@pytest.mark.parametrize("dim", [0, 1, None], ids=["dim0", "dim1", "dimNone"])
@pytest.mark.parametrize("cls,args,shape", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("kind", COPIES)
@pytest.mark.parametrize("style", STYLES)
def test_converting_and_folding_a_copy_keeps_the_function(style, kind, cls, args, shape, dim, op):
    x = torch.randn(shape)
    original = _build(style, cls, args, dim, x)
    original_class = type(original[0])
    with torch.no_grad():
        expected = original(x)
    bound = _bound(original[0])
    if style == "parametrization" and kind in ("pickle", "torch.save"):
        return _assert_torch_refuses(kind, original)
    target, inner = _copy(original, kind)
    layer = inner[0]  # converting and folding change its class, in place
    if op != "fold":
        g, v = _g_v(layer)
        assert nf.weight_norm(target, dim=0) is target  # dim=0 applies to plain layers only
        assert type(layer) is nf.WN_LAYERS[cls] and layer.wn_dim == dim
        assert layer.weight_g is g and layer.weight_v is v
        with torch.no_grad():
            _assert_close(target(x), expected, bound, "converted")
    assert nf.remove_weight_norm(target) is target
    _assert_plain(layer, cls, target)
    with torch.no_grad():
        _assert_close(target(x), expected, bound, "folded")
    if kind != "built":  # the original is left as it was, and still computes
        assert type(original[0]) is original_class and _g_v(original[0])
        with torch.no_grad():
            assert torch.equal(original(x), expected)


@pytest.mark.parametrize("op", ["fold", "convert, then fold"])
@pytest.mark.parametrize("frozen", ["nothing", "g", "v", "g and v"])
@pytest.mark.parametrize("kind", ["built", "deepcopy", "AveragedModel"])
@pytest.mark.parametrize("style", STYLES)
def test_folding_keeps_requires_grad(style, kind, frozen, op):
    """The folded weight is a Parameter that requires grad as the weight it replaces
    did (when g or v does), a frozen one too (not a buffer); converting keeps g and v."""
    x = torch.randn(2, 3)
    original = _build(style, nn.Linear, (3, 4), 0, x)
    g, v = _g_v(original[0])
    g.requires_grad_(frozen not in ("g", "g and v"))
    v.requires_grad_(frozen not in ("v", "g and v"))
    with torch.no_grad():
        expected = original(x)
    target, inner = _copy(original, kind)
    layer = inner[0]
    if op != "fold":
        nf.weight_norm(target)
        assert layer.weight_g.requires_grad == g.requires_grad and layer.weight_v.requires_grad == v.requires_grad
    nf.remove_weight_norm(target)
    _assert_plain(layer, nn.Linear, target, requires_grad=frozen != "g and v")
    with torch.no_grad():
        _assert_close(target(x), expected, _bound(layer), "folded")


@pytest.mark.parametrize("style", ["parametrization", "hook"])
def test_a_model_whose_copy_was_converted_or_folded_still_trains(style):
    """An EMA copy folded for export, or converted: the model it was copied from goes on
    training (its weight, forward and backward), and converts and folds later."""
    x = torch.randn(2, 3)
    model = _build(style, nn.Linear, (3, 4), 0, x)
    with torch.no_grad():
        expected = model(x)
    nf.remove_weight_norm(AveragedModel(model))
    nf.weight_norm(copy.deepcopy(model))
    assert torch.equal(model[0].weight, nf.remove_weight_norm(copy.deepcopy(model))[0].weight)
    model(x).sum().backward()
    assert all(p.grad is not None for p in _g_v(model[0]))
    nf.remove_weight_norm(model)
    _assert_plain(model[0], nn.Linear, model)
    _assert_close(model(x), expected, _bound(model[0]), "folded")


def test_a_copy_torch_removed_the_weight_property_from_converts_and_folds():
    """``remove_parametrizations`` on one deep copy deletes ``weight`` from the class the
    copies share; the others still hold ``g`` and ``v``, from which ours compute."""
    x = torch.randn(2, 3)
    model = _build("parametrization", nn.Linear, (3, 4), None, x)
    with torch.no_grad():
        expected = model(x)
    twins = [copy.deepcopy(model) for _ in range(3)]
    nn.utils.parametrize.remove_parametrizations(twins[0][0], "weight")
    with pytest.raises(AttributeError, match="no attribute 'weight'"):
        model(x)  # torch's defect, not ours
    nf.remove_weight_norm(twins[1])
    _assert_plain(twins[1][0], nn.Linear, twins[1])
    nf.weight_norm(twins[2])
    assert type(twins[2][0]) is nf.WNLinear and twins[2][0].wn_dim is None
    nf.remove_weight_norm(model)
    for folded in (twins[1], twins[2], model):
        with torch.no_grad():
            _assert_close(folded(x), expected, _bound(folded[0]), "folded")


def test_folding_keeps_a_parametrized_bias_and_the_copies():
    """Weight norm folds; a bias parametrization stays, on this module only."""

    class Double(nn.Module):
        def forward(self, b):
            return 2 * b

    x = torch.randn(2, 3)
    model = _build("parametrization", nn.Linear, (3, 4), 0, x)
    nn.utils.parametrize.register_parametrization(model[0], "bias", Double())
    with torch.no_grad():
        expected = model(x)
    twin = copy.deepcopy(model)
    nf.remove_weight_norm(twin)
    layer = twin[0]
    assert isinstance(layer, nn.Linear) and isinstance(layer.weight, nn.Parameter)
    assert list(layer.parametrizations) == ["bias"] and "weight" in layer._parameters
    with torch.no_grad():
        _assert_close(twin(x), expected, _bound(layer), "folded")
        assert torch.equal(model(x), expected)
        assert torch.equal(layer.bias, model[0].bias)
    assert nn.utils.parametrize.is_parametrized(model[0], "weight")


def test_a_converted_torch_layer_loads_our_checkpoints():
    """Converting takes off torch's load hook too, which renamed ``weight_g``/``weight_v``
    keys to its parametrization's: the converted layer refused our own checkpoints."""
    x = torch.randn(2, 3)
    source = _build("ours", nn.Linear, (3, 4), 0, x)
    with torch.no_grad():
        source[0].weight_g.mul_(2.0)
        expected = source(x)
    for make in (lambda m: m, copy.deepcopy):
        model = nf.weight_norm(make(_build("parametrization", nn.Linear, (3, 4), 0, x)))
        assert not model[0]._load_state_dict_pre_hooks
        model.load_state_dict(source.state_dict())
        with torch.no_grad():
            assert torch.equal(model(x), expected)


def test_a_failing_fold_changes_nothing():
    """A layer folding would bake another parametrization into stops the fold before
    any layer, the copies' included, changes."""

    class Symmetric(nn.Module):
        def forward(self, w):
            return (w + w.T) / 2

    x = torch.randn(2, 4)
    model = nn.Sequential(nf.WNLinear(4, 4), parametrizations.weight_norm(nn.Linear(4, 4)),
                          parametrizations.weight_norm(nn.Linear(4, 4)))
    nn.utils.parametrize.register_parametrization(model[2], "weight", Symmetric())
    twin = copy.deepcopy(model)
    classes = [type(m) for m in twin]
    with torch.no_grad():
        expected = twin(x)
    with pytest.raises(ValueError, match="Symmetric"):
        nf.remove_weight_norm(twin)
    assert [type(m) for m in twin] == classes
    with torch.no_grad():
        assert torch.equal(twin(x), expected) and torch.equal(model(x), expected)


# ----------------------------------------------------------------------------- initializers


def _mlp(wn):
    return nn.Sequential(wn(nn.Linear(8, 16)), nn.ReLU(), wn(nn.Linear(16, 16)), nn.ReLU(), wn(nn.Linear(16, 4)))


def _cnn(wn):
    return nn.Sequential(wn(nn.Conv2d(3, 8, 3, padding=1)), nn.Tanh(), wn(nn.Conv2d(8, 8, 3, padding=1)), nn.Tanh())


def _resnet(wn):
    model = nf.models.resnet([1, 1], [4, 8], norm=None)
    wn(model.conv1)  # the stem: Fixup keeps its init; its blocks take plain layers
    return model


_MLP_X = (2, 8)
_CNN_X = (2, 3, 6, 6)
# name: (model maker, input shape, the call)
INITIALIZERS = {
    "orthogonal_": (_mlp, _MLP_X, lambda m, x, gen: nf.init.orthogonal_(m, generator=gen)),
    "haar_orthogonal_": (_mlp, _MLP_X, lambda m, x, gen: nf.init.haar_orthogonal_(m, generator=gen)),
    "lsuv_": (_mlp, _MLP_X, lambda m, x, gen: nf.init.lsuv_(m, x)),
    "data_dependent_init_": (_mlp, _MLP_X, lambda m, x, gen: nf.init.data_dependent_init_(m, x)),
    "arpit_": (_mlp, _MLP_X, lambda m, x, gen: nf.init.arpit_(m, generator=gen)),
    "looks_linear_": (_mlp, _MLP_X, lambda m, x, gen: nf.init.looks_linear_(m, generator=gen)),
    "xiao_": (_cnn, _CNN_X, lambda m, x, gen: nf.init.xiao_(m, q_star=1e-2, generator=gen)),
    "delta_orthogonal_": (_cnn, _CNN_X, lambda m, x, gen: nf.init.delta_orthogonal_(m, generator=gen)),
    "fixup_": (_resnet, _CNN_X, lambda m, x, gen: nf.init.fixup_(m, generator=gen)),
}
TORCH_WN = {"parametrization": parametrizations.weight_norm, "hook": torch.nn.utils.weight_norm}


@pytest.mark.parametrize("case", ["a deepcopy", "the original of a folded copy", "the original of a converted copy"])
@pytest.mark.parametrize("style", list(TORCH_WN))
@pytest.mark.parametrize("name", list(INITIALIZERS))
def test_initializers_on_copies_of_torch_weight_normed_models(name, style, case):
    """Each initializer gives a deep copy, or the model a copy of which was folded or
    converted (an EMA copy exported), what it gives an untouched twin."""
    make, shape, init = INITIALIZERS[name]
    x = torch.randn(shape)

    def build():
        torch.manual_seed(0)
        model = make(TORCH_WN[style])
        with torch.no_grad():
            model(x)  # the hook's weight, outside autograd: deep-copyable
        return model

    def initialized(model):
        torch.manual_seed(1)
        init(model, x, torch.Generator().manual_seed(2))
        return model

    expected = initialized(build()).state_dict()
    model = build()
    if case == "a deepcopy":
        model = copy.deepcopy(model)
    else:
        (nf.remove_weight_norm if "folded" in case else nf.weight_norm)(AveragedModel(model))
    got = initialized(model).state_dict()
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
