import math
import io
import pickle

import pytest
import torch

from sklearn_ugmm.nn import UGMMNet


def _data(n, d, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _net(n_inputs, hidden, n_outputs, seed=0, dtype=torch.float64, **options):
    torch.manual_seed(seed)
    net = UGMMNet(n_inputs, hidden, n_outputs, dtype=dtype, **options)
    net.init_from_data(_data(64, n_inputs, seed=seed + 1, dtype=dtype),
                       generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for layer in net.layers:  # non-uniform weights, so every component matters
            layer.logits.normal_(generator=torch.Generator().manual_seed(seed + 2))
    return net.eval()


def _loop(net, X, index, states):
    outs = []
    for s in states:
        X_s = X.clone()
        X_s[:, index] = s
        outs.append(net(X_s))
    out = torch.stack(outs, dim=1)
    return out[..., 0] if net.n_outputs == 1 else out


@pytest.mark.parametrize(
    "n_inputs, hidden, n_outputs, options, index",
    [
        (5, (), 1, {}, 2),
        (5, (7,), 3, {}, 0),
        (6, (8, 4), 1, {}, -1),
        (4, (6,), 2, {"tie_means": True}, 3),
        (1, (3,), 2, {}, 0),
        (1, (), 1, {"tie_means": True}, 0),
    ],
)
def test_score_states_matches_an_explicit_loop(n_inputs, hidden, n_outputs, options, index):
    net = _net(n_inputs, hidden, n_outputs, **options)
    X = _data(11, n_inputs, seed=3)
    states = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    with torch.no_grad():
        scores = net.score_states(X, index, states)
        expected = _loop(net, X, index, states)
    shape = (11, 4) if n_outputs == 1 else (11, 4, n_outputs)
    assert scores.shape == shape
    assert torch.allclose(scores, expected, rtol=0, atol=1e-10)


def test_score_states_ignores_the_column_it_sets():
    net = _net(4, (5,), 2)
    X = _data(7, 4, seed=4)
    X_other = X.clone()
    X_other[:, 1] = 1e3
    states = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(net.score_states(X, 1, states), net.score_states(X_other, 1, states), atol=1e-12)


def test_score_states_is_batched():
    # one call to the first layer's kernel for the rest, none per sample
    net = _net(6, (5,), 1)
    X = _data(300, 6, seed=5)
    calls = []
    for layer in net.layers:
        layer.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    net.score_states(X, 2, torch.arange(3.0, dtype=torch.float64))
    assert calls == [900]  # only the later layer runs, once, on batch x states rows


def test_score_states_rejects_bad_arguments():
    net = _net(3, (), 1)
    X = _data(4, 3)
    with pytest.raises(IndexError):
        net.score_states(X, 3, torch.tensor([0.0]))
    with pytest.raises(ValueError):
        net.score_states(X[:, :2], 0, torch.tensor([0.0]))


@pytest.mark.parametrize("tie_means", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["constant", "huge", "cauchy"])
def test_init_from_data_is_robust(kind, dtype, tie_means):
    g = torch.Generator().manual_seed(0)
    n, d = 500, 6
    if kind == "constant":
        X = torch.randn(n, d, generator=g, dtype=torch.float64)
        X[:, 0] = 3.0
        X[:, 1] = 0.0
        X[: n // 100, 2] = 7.0  # almost constant: the quartiles coincide
        X[n // 100 :, 2] = 1.0
    elif kind == "huge":
        X = torch.randn(n, d, generator=g, dtype=torch.float64) * 1e6
        X[:, 0] = 1e6 + torch.randn(n, generator=g, dtype=torch.float64)
    else:
        u = torch.rand(n, d, generator=g, dtype=torch.float64)
        X = torch.tan(torch.pi * (u - 0.5))  # standard Cauchy
        X[:5] *= 1e6  # a few extreme outliers on top of the heavy tails
    X = X.to(dtype)
    net = UGMMNet(d, (8, 4), 3, dtype=dtype, tie_means=tie_means)
    net.init_from_data(X, generator=torch.Generator().manual_seed(1))
    for layer in net.layers:
        assert torch.isfinite(layer.loc).all() and torch.isfinite(layer.raw_scale).all()
        assert layer.scale.min() >= 9.9 * layer.min_scale  # well above the floor
    out = net(X)
    assert torch.isfinite(out).all()
    loss = torch.nn.functional.cross_entropy(out, torch.arange(n) % 3)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    assert all(torch.isfinite(gr).all() for gr in grads)


def test_init_from_data_places_components_on_the_data():
    X = _data(400, 3, seed=6) * 5 + 100
    net = UGMMNet(3, (), 4, dtype=torch.float64)
    net.init_from_data(X, generator=torch.Generator().manual_seed(0))
    layer = net.layers[0]
    low, high = X.min(dim=0).values, X.max(dim=0).values
    assert ((layer.loc >= low) & (layer.loc <= high)).all()
    # the spread of each input, not the default U(0, 1) scales
    assert torch.allclose(layer.scale, torch.full_like(layer.scale, 5.0), rtol=0.3)


def _sparse_images(n=2000, n_pixels=60, seed=0):
    """Image-like data: exact-zero background, a class-dependent stroke of random intensity."""
    g = torch.Generator().manual_seed(seed)
    X = torch.zeros(n, n_pixels)
    label = torch.randint(3, (n,), generator=g)
    for c in range(3):
        rows = label == c
        on = torch.rand(int(rows.sum()), 15, generator=g) < 0.6
        X[rows, 10 * c : 10 * c + 15] = on * torch.rand(int(rows.sum()), 15, generator=g)
    return X


def test_init_from_data_focuses_hidden_neurons_on_their_templates_distinctive_inputs():
    X = _sparse_images()
    net = UGMMNet(X.shape[1], (16,), 3)
    net.init_from_data(X, generator=torch.Generator().manual_seed(0))
    hidden, output = net.layers
    assert torch.equal(output.logits, torch.zeros_like(output.logits))
    down_value = torch.tensor(math.log(1e-2), dtype=hidden.logits.dtype)
    assert bool(((hidden.logits == 0) | (hidden.logits == down_value)).all())
    # every hidden neuron down-weights some inputs (the zero background where
    # its template is zero too) and keeps its template's stroke inputs
    down = hidden.logits < 0
    assert bool(down.any(dim=1).all()) and bool((~down).any(dim=1).all())
    assert not bool((down & (hidden.loc > 0.5)).any())  # clearly "on" template pixels keep full weight
    # the point: hidden outputs vary much more across samples than with uniform weights
    with torch.no_grad():
        spread_focused = hidden(X).std(dim=0).median()
        hidden.logits.zero_()
        spread_uniform = hidden(X).std(dim=0).median()
    assert spread_focused > 2 * spread_uniform


def test_init_from_data_without_focus_keeps_uniform_weights_and_the_same_components():
    X = _sparse_images()
    focused, plain = UGMMNet(X.shape[1], (16,), 3), UGMMNet(X.shape[1], (16,), 3)
    focused.init_from_data(X, generator=torch.Generator().manual_seed(0))
    plain.init_from_data(X, generator=torch.Generator().manual_seed(0), focus=False)
    assert bool((focused.layers[0].logits < 0).any())
    assert torch.equal(plain.layers[0].logits, torch.zeros_like(plain.layers[0].logits))
    torch.testing.assert_close(plain.layers[0].loc, focused.layers[0].loc, rtol=0, atol=0)
    torch.testing.assert_close(plain.layers[0].scale, focused.layers[0].scale, rtol=0, atol=0)


def test_init_from_data_leaves_continuous_inputs_uniformly_weighted():
    X = torch.randn(1000, 5, generator=torch.Generator().manual_seed(0))
    net = UGMMNet(5, (8,), 2)
    net.init_from_data(X, generator=torch.Generator().manual_seed(0))
    assert torch.equal(net.layers[0].logits, torch.zeros_like(net.layers[0].logits))


def test_init_from_data_rejects_bad_input():
    net = UGMMNet(3, (), 2)
    with pytest.raises(ValueError):
        net.init_from_data(torch.zeros(0, 3))
    with pytest.raises(ValueError):
        net.init_from_data(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError):
        net.init_from_data(torch.zeros(4, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [(20, (16, 8), 3), (784, (128, 64), 10)])
def test_huge_inputs_through_a_deep_net(dtype, sizes):
    n_inputs, hidden, n_outputs = sizes
    torch.manual_seed(0)
    net = UGMMNet(n_inputs, hidden, n_outputs, dtype=dtype, dropout=0.1)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(8, n_inputs, generator=g, dtype=dtype)
    X[0] = 1e6
    X[1] = -1e6
    X[2, ::3] = 1e6
    X[3] *= 1e5
    X.requires_grad_()
    for init in (False, True):
        if init:
            net.init_from_data(X.detach())
        out = net(X)
        assert torch.isfinite(out).all()
        loss = torch.nn.functional.cross_entropy(out, torch.arange(8) % n_outputs)
        grads = torch.autograd.grad(loss, [X, *net.parameters()])
        assert all(torch.isfinite(gr).all() for gr in grads)


def test_set_generator_makes_training_reproducible():
    a, b = _net(4, (5,), 2, dropout=0.5), _net(4, (5,), 2, dropout=0.5)
    a.train().set_generator(torch.Generator().manual_seed(7))
    b.train().set_generator(torch.Generator().manual_seed(7))
    X = _data(6, 4)
    assert torch.equal(a(X), b(X))
    assert not torch.equal(a(X), a(X))


def test_pickle_and_state_dict_round_trip():
    net = _net(5, (6, 3), 2, dtype=torch.float32, dropout=0.2, tie_means=True)
    X = _data(9, 5, dtype=torch.float32)
    clone = pickle.loads(pickle.dumps(net))
    assert torch.equal(clone(X), net(X))
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = UGMMNet(5, (6, 3), 2, dropout=0.2, tie_means=True).eval()
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh(X), net(X))
    states = torch.tensor([0.0, 1.0])
    assert torch.equal(fresh.score_states(X, 1, states), net.score_states(X, 1, states))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_net_matches_cpu():
    net = _net(6, (5,), 2, dtype=torch.float32)
    X = _data(50, 6, dtype=torch.float32)
    cuda_net = pickle.loads(pickle.dumps(net)).cuda()
    assert torch.allclose(cuda_net(X.cuda()).cpu(), net(X), atol=1e-4)
    states = torch.tensor([0.0, 1.0])
    assert torch.allclose(
        cuda_net.score_states(X.cuda(), 2, states.cuda()).cpu(), net.score_states(X, 2, states), atol=1e-4
    )


def test_precision_penalty_sums_the_layers_and_starts_at_their_number():
    net = UGMMNet(5, (7, 4), 3, dtype=torch.float64)
    net.init_from_data(torch.randn(50, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert net.precision_penalty().item() == pytest.approx(3.0, rel=1e-9)
    with torch.no_grad():
        net.layers[1].raw_scale.sub_(1.0)
    total = sum(layer.precision_penalty() for layer in net.layers)
    torch.testing.assert_close(net.precision_penalty(), total)
    assert net.precision_penalty().item() > 3.0


def test_missing_inputs_found_by_one_sum():
    # forward() looks for NaN through x.sum() (NaN for any NaN, and for +inf
    # with -inf: then the elementwise check decides)
    net = UGMMNet(5, (4,), 3)
    net.init_from_data(torch.randn(50, 5))
    net.eval()
    x = torch.randn(8, 5)
    x[1, 2], x[3, 4] = math.inf, -math.inf  # sum NaN, nothing missing
    with torch.no_grad():
        plain = net.layers[1](net.layers[0](x))
        torch.testing.assert_close(net(x), plain, rtol=0, atol=0, equal_nan=True)
        x[5, 0] = math.nan  # now missing: the renormalised mixture
        observed = net.layers[1](net.layers[0].forward_observed(x, ~torch.isnan(x)))
        torch.testing.assert_close(net(x), observed, rtol=0, atol=0, equal_nan=True)
        assert not torch.equal(observed[5], plain[5])
