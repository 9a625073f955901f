import io
import math
import pickle

import pytest
import torch
from torch.func import functional_call

from sklearn_ugmm.nn import UGMMLayer, UGMMProductLayer, ugmm_log_density

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _formula(x, layer, log_weights=None):
    """The issue's definition, written out independently of the kernel."""
    if log_weights is None:
        log_weights = torch.log_softmax(layer.logits, dim=1)
    scale = layer.min_scale + torch.nn.functional.softplus(layer.raw_scale)
    if layer.tie_means:
        # log N(loc[j] | x[b, k], scale[j, k]^2)
        diff = layer.loc[None, :, None] - x[:, None, :]
    else:
        # log N(x[b, k] | loc[j, k], scale[j, k]^2)
        diff = x[:, None, :] - layer.loc[None, :, :]
    log_n = -0.5 * (diff / scale) ** 2 - torch.log(scale) - HALF_LOG_2PI
    return torch.logsumexp(log_weights[None] + log_n, dim=-1)


def _layer(n_in=6, n_out=4, seed=0, dtype=torch.float64, **options):
    g = torch.Generator().manual_seed(seed)
    layer = UGMMLayer(n_in, n_out, dtype=dtype, generator=g, **options)
    with torch.no_grad():
        layer.logits.normal_(generator=g)
        layer.raw_scale.add_(0.3 * torch.randn(layer.raw_scale.shape, generator=g, dtype=dtype))
    return layer


def _inputs(n=9, n_in=6, seed=1, dtype=torch.float64):
    return torch.randn(n, n_in, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _grads(output, layer, x):
    grad = torch.randn(output.shape, generator=torch.Generator().manual_seed(5), dtype=output.dtype)
    return torch.autograd.grad(output, (x, *layer.parameters()), grad)


def _max_error(ours, ref):
    """Max abs error, relative to the largest reference entry when that exceeds 1.

    Gradients summed over a batch reach tens; float32 then resolves them to a
    few 1e-6 whatever the summation order.
    """
    return ((ours - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


@pytest.mark.parametrize("tie_means", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eval_forward_and_gradients_match_the_formula(tie_means, dtype):
    layer = _layer(tie_means=tie_means, dtype=dtype, dropout=0.5).eval()
    x = _inputs(dtype=dtype).requires_grad_()
    ours, ref = layer(x), _formula(x, layer)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert ours.shape == (9, 4)
    assert (ours - ref).abs().max() <= tol
    for a, b in zip(_grads(ours, layer, x), _grads(ref, layer, x)):
        assert _max_error(a, b) <= tol


@pytest.mark.parametrize("tie_means", [False, True])
def test_training_with_dropout_matches_the_formula_with_the_same_mask(tie_means):
    layer = _layer(n_in=10, n_out=5, tie_means=tie_means, dropout=0.4).train()
    x = _inputs(n_in=10).requires_grad_()
    state = layer.generator.get_state()
    log_w = layer.log_weights()  # draws this call's mask
    assert torch.isinf(log_w).any() and torch.isfinite(log_w).any(dim=1).all()
    layer.generator.set_state(state)
    ours = layer(x)  # draws the same mask again
    ref = _formula(x, layer, log_w)
    assert (ours - ref).abs().max() <= 1e-12
    for a, b in zip(_grads(ours, layer, x), _grads(ref, layer, x)):
        finite = torch.isfinite(b)  # the formula's gradient is nan at dropped logits
        assert (a[finite] - b[finite]).abs().max() <= 1e-12
    # dropped components get no gradient through their logits
    layer.generator.set_state(state)
    g_logits = torch.autograd.grad(layer(x).sum(), layer.logits)[0]
    assert (g_logits[torch.isinf(log_w)] == 0).all()


@pytest.mark.parametrize("tie_means", [False, True])
def test_layer_gradcheck_through_the_parameters(tie_means):
    layer = _layer(n_in=4, n_out=3, tie_means=tie_means, dropout=0.3, seed=2).train()
    names = [name for name, _ in layer.named_parameters()]

    def f(x, *params):
        layer.generator.manual_seed(0)  # the same dropout mask at every call
        return functional_call(layer, dict(zip(names, params)), (x,))

    x = _inputs(n=5, n_in=4).requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params))


def test_dropout_drops_each_component_with_probability_p():
    layer = _layer(n_in=200, n_out=50, dropout=0.3, dtype=torch.float32).train()
    dropped = torch.stack([torch.isinf(layer.log_weights()) for _ in range(40)]).float()
    rate = dropped.mean().item()
    assert abs(rate - 0.3) < 0.01  # 400,000 draws: the standard error is 7e-4
    # independently of one another: neighbouring components are uncorrelated
    a, b = dropped[..., :-1].flatten(), dropped[..., 1:].flatten()
    corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(corr.item()) < 0.02
    # and masks change from one forward call to the next
    assert not torch.equal(dropped[0], dropped[1])


@pytest.mark.parametrize("n_in", [1, 2, 7])
def test_dropout_keeps_a_component_in_every_neuron(n_in):
    layer = _layer(n_in=n_in, n_out=30, dropout=0.99).train()
    for _ in range(20):
        log_w = layer.log_weights()
        assert torch.isfinite(log_w).any(dim=1).all()
        assert torch.allclose(log_w.exp().sum(dim=1), torch.ones(30, dtype=log_w.dtype))
        assert torch.isfinite(layer(_inputs(n=3, n_in=n_in))).all()


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_must_be_a_probability_below_one(p):
    with pytest.raises(ValueError):
        UGMMLayer(3, 2, dropout=p)


def test_dropout_has_no_effect_in_eval_mode():
    layer = _layer(dropout=0.7).eval()
    x = _inputs()
    assert torch.equal(layer.log_weights(), torch.log_softmax(layer.logits, dim=1))
    state = layer.generator.get_state()
    assert torch.equal(layer(x), layer(x))
    assert torch.equal(layer.generator.get_state(), state)  # no randomness drawn
    plain = _layer(dropout=0.0).eval()
    assert torch.allclose(layer(x), plain(x), rtol=0, atol=1e-12)


def test_dropout_is_deterministic_given_the_generator():
    a, b = _layer(dropout=0.5).train(), _layer(dropout=0.5).train()
    x = _inputs()
    a.generator.manual_seed(123)
    b.generator.manual_seed(123)
    outs_a = [a(x) for _ in range(3)]
    outs_b = [b(x) for _ in range(3)]
    assert all(torch.equal(u, v) for u, v in zip(outs_a, outs_b))
    assert not torch.equal(outs_a[0], outs_a[1])


def test_tied_means_shapes():
    layer = UGMMLayer(5, 3, tie_means=True)
    assert layer.loc.shape == (3,)
    assert layer.raw_scale.shape == layer.logits.shape == layer.scale.shape == (3, 5)
    assert layer.component_loc.shape == (3, 5)
    assert torch.equal(layer.component_loc[:, 2], layer.loc.detach())
    assert layer(torch.randn(4, 5)).shape == (4, 3)
    # the gradient reaches the (out,)-shaped loc
    layer(torch.randn(4, 5)).sum().backward()
    assert layer.loc.grad.shape == (3,)


def test_tied_means_evaluate_each_neuron_at_its_point():
    # one input, one component: out = log N(loc | x, scale^2)
    layer = UGMMLayer(1, 2, tie_means=True, dtype=torch.float64)
    with torch.no_grad():
        layer.loc.copy_(torch.tensor([0.5, -2.0]))
    layer.set_scale(torch.tensor([[0.7], [3.0]]))
    x = torch.tensor([[1.5], [-1.0]], dtype=torch.float64)
    expected = torch.distributions.Normal(x, layer.scale.T.detach()).log_prob(layer.loc.detach())
    assert torch.allclose(layer(x), expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scale_floor_bounds_every_log_density(dtype):
    layer = UGMMLayer(3, 2, min_scale=1e-2, dtype=dtype)
    with torch.no_grad():
        layer.raw_scale.fill_(-1e4)  # softplus underflows: scale is the floor
        layer.logits.copy_(torch.tensor([[0.0, -50.0, -50.0], [0.0, 0.0, 0.0]]))
    assert torch.all(layer.scale == layer.min_scale)
    x = torch.cat([layer.loc.detach()[:1], torch.randn(50, 3, dtype=dtype) * 1e3])
    bound = -math.log(layer.min_scale) - HALF_LOG_2PI
    out = layer(x)
    assert torch.isfinite(out).all()
    assert out.max() <= bound + 1e-4
    assert out[0, 0] > bound - 1e-3  # the bound is attained at the mean


def test_set_scale_round_trip():
    layer = UGMMLayer(3, 2, min_scale=1e-3, dtype=torch.float64)
    target = torch.tensor([[0.01, 1.0, 50.0], [1e-3 + 1e-8, 2.0, 1e6]], dtype=torch.float64)
    layer.set_scale(target)
    assert torch.allclose(layer.scale, target, rtol=1e-6)
    assert torch.isfinite(layer.raw_scale).all()


@pytest.mark.parametrize("tie_means", [False, True])
def test_pickle_and_state_dict_round_trip(tie_means):
    layer = _layer(tie_means=tie_means, dropout=0.2, dtype=torch.float32).eval()
    x = _inputs(dtype=torch.float32)
    clone = pickle.loads(pickle.dumps(layer))
    assert torch.equal(clone(x), layer(x))
    assert clone.tie_means == tie_means and clone.dropout == 0.2
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = UGMMLayer(6, 4, tie_means=tie_means, dropout=0.2).eval()
    assert not torch.equal(fresh(x), layer(x))
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh(x), layer(x))


def test_block_elements_does_not_change_the_result():
    big, small = _layer(), _layer(block_elements=5)
    x = _inputs(n=40).requires_grad_()
    assert torch.allclose(big(x), small(x), rtol=0, atol=1e-12)
    for a, b in zip(_grads(big(x), big, x), _grads(small(x), small, x)):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        UGMMLayer(0, 3)
    with pytest.raises(ValueError):
        UGMMLayer(3, 2, min_scale=0.0)
    with pytest.raises(ValueError):
        UGMMLayer(3, 2)(torch.randn(4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tie_means", [False, True])
def test_cuda_matches_cpu(tie_means):
    layer = _layer(tie_means=tie_means, dtype=torch.float32, dropout=0.3).eval()
    x = _inputs(n=300, dtype=torch.float32)
    cuda_layer = pickle.loads(pickle.dumps(layer)).cuda()
    cuda_layer.generator = torch.Generator(device="cuda").manual_seed(0)
    out = cuda_layer(x.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), layer(x), atol=1e-4)
    cuda_layer.train()
    out = cuda_layer(x.cuda())
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in cuda_layer.parameters())


def test_precision_penalty_is_the_mean_squared_relative_precision():
    layer = _layer()
    reference = torch.rand(layer.raw_scale.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    layer.set_scale(reference)
    torch.testing.assert_close(layer.reference_scale, layer.scale.detach())
    assert layer.precision_penalty().item() == pytest.approx(1.0, rel=1e-9)
    with torch.no_grad():
        layer.raw_scale.sub_(0.7)  # narrower components
    expected = ((layer.reference_scale / (layer.min_scale + torch.nn.functional.softplus(layer.raw_scale))) ** 2).mean()
    torch.testing.assert_close(layer.precision_penalty(), expected)
    assert layer.precision_penalty().item() > 1.0
    assert torch.autograd.gradcheck(
        lambda raw: ((layer.reference_scale / (layer.min_scale + torch.nn.functional.softplus(raw))) ** 2).mean(),
        (layer.raw_scale.detach().clone().requires_grad_(),),
    )
    (grad,) = torch.autograd.grad(layer.precision_penalty(), layer.raw_scale)
    assert bool((grad < 0).all())  # the penalty pushes every scale wider


def test_reference_scale_travels_with_the_state_dict():
    layer = _layer()
    layer.set_scale(2.5)
    clone = UGMMLayer(6, 4, dtype=torch.float64)
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone.reference_scale, layer.reference_scale)
    torch.testing.assert_close(clone.precision_penalty(), layer.precision_penalty())


@pytest.mark.parametrize("Layer", [UGMMLayer, UGMMProductLayer])
@pytest.mark.parametrize("x_dtype, layer_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_an_input_of_another_dtype_is_refused_as_nn_linear_does(Layer, x_dtype, layer_dtype):
    # a float32 input into a float64 layer ran forward at float32 and failed in backward
    layer = Layer(3, 2, dtype=layer_dtype)
    x = torch.randn(4, 3, dtype=x_dtype, requires_grad=True)
    with pytest.raises(RuntimeError, match="expected input of the layer's dtype"):
        layer(x)
    with pytest.raises(RuntimeError, match="expected input of the layer's dtype"):
        layer.forward_observed(x, torch.ones(4, 3, dtype=torch.bool))
    layer(x.detach().to(layer_dtype).requires_grad_()).sum().backward()
    with pytest.raises(RuntimeError, match="must share a dtype"):
        ugmm_log_density(x, layer.loc.detach(), torch.ones(2, 3, dtype=layer_dtype), torch.zeros(2, 3, dtype=layer_dtype))


@pytest.mark.parametrize("Layer", [UGMMLayer, UGMMProductLayer])
@pytest.mark.parametrize("kernel", ["reference", "auto"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_an_empty_batch_is_an_empty_output_in_the_graph(Layer, kernel, dropout):
    layer = Layer(5, 3, kernel=kernel, dropout=dropout)
    x = torch.zeros(0, 5, requires_grad=True)
    for out in (layer(x), layer.forward_observed(x, torch.ones(0, 5, dtype=torch.bool))):
        assert out.shape == (0, 3) and out.requires_grad
        out.sum().backward()
    assert layer.raw_scale.grad is not None and not layer.raw_scale.grad.any()


@pytest.mark.parametrize("Layer", [UGMMLayer, UGMMProductLayer])
def test_float16_layers_compute_in_float32(Layer):
    # float16 cannot hold the kernels' bounds: a far input gave -inf, and the layer could not be built
    torch.manual_seed(0)
    layer = Layer(3, 2, dtype=torch.float16)
    with torch.no_grad():
        layer.raw_scale.fill_(0.5)  # scales of about 1: gradients within float16's range
    x = torch.randn(16, 3).half().requires_grad_()
    out = layer(x)
    out.sum().backward()
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and torch.isfinite(layer.raw_scale.grad).all()
    wide = Layer(3, 2)
    wide.load_state_dict({name: value.float() for name, value in layer.state_dict().items()})
    torch.testing.assert_close(out.float(), wide(x.detach().float()), rtol=2e-3, atol=1e-3)
    far = torch.tensor([[7.0]]).half()
    parts = torch.zeros(1, 1).half(), torch.ones(1, 1).half(), torch.zeros(1, 1).half()
    torch.testing.assert_close(ugmm_log_density(far, *parts).float(), torch.tensor([[-25.4189]]), rtol=1e-3, atol=0)
