"""Missing inputs (NaN) on the fused kernel, against the plain reference formula."""

import math

import numpy as np
import pytest
import torch

from sklearn_ugmm.nn import UGMMLayer, UGMMNet, _functional, _fused

requires_fused = pytest.mark.skipif(
    _fused.load() is None, reason=f"fused kernel unavailable: {_fused.failure_reason()}"
)


def _layer(n_in, n_out, dtype, seed=0, **options):
    g = torch.Generator().manual_seed(seed)
    layer = UGMMLayer(n_in, n_out, dtype=dtype, generator=g, **options)
    with torch.no_grad():
        layer.logits.copy_(torch.randn(layer.logits.shape, generator=g, dtype=dtype))
        layer.loc.copy_(torch.randn(layer.loc.shape, generator=g, dtype=dtype))
    return layer


def _missing_inputs(n_batch, n_in, dtype, seed=0, fraction=0.4):
    """x with NaN where missing and its observed mask; some complete rows, some with a single observed input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batch, n_in, generator=g, dtype=dtype)
    observed = torch.rand(n_batch, n_in, generator=g) >= fraction
    observed[0] = True  # a complete row
    observed[1] = False
    observed[1, n_in // 2] = True  # all missing but one
    observed[2] = False
    observed[2, -1] = True  # the last (padded vector's) input only
    observed[torch.arange(n_batch), torch.randint(n_in, (n_batch,), generator=g)] = True
    return x.masked_fill(~observed, math.nan), observed


def _run(layer, x, observed, kernel, seed=3):
    """forward_observed on ``kernel``; output and gradients of x, loc, raw_scale and logits."""
    layer.kernel = kernel
    layer.generator = torch.Generator().manual_seed(seed)  # same dropout masks on both kernels
    x = x.detach().clone().requires_grad_()
    out = layer.forward_observed(x, observed)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, (x, *layer.parameters()), weight)
    return out.detach(), grads


def _as_float64(layer):
    twin = _layer(layer.in_features, layer.out_features, torch.float64, tie_means=layer.tie_means,
                  dropout=layer.dropout)
    twin.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    twin.train(layer.training)
    return twin


def _assert_close_to_reference(layer, x, observed, rtol):
    out, grads = _run(layer, x, observed, "fused")
    ref_out, ref_grads = _run(_as_float64(layer), x.double(), observed, "reference")
    assert bool(torch.isfinite(out).all())
    rel = ((out.double() - ref_out).abs() / ref_out.abs().clamp(min=1.0)).max()
    assert float(rel) <= rtol
    for name, ours, ref in zip(("x", "loc", "raw_scale", "logits"), grads, ref_grads):
        assert bool(torch.isfinite(ours).all()), name
        if name == "x":
            assert bool((ours[~observed] == 0).all())
            ours, ref = ours[observed], ref[observed]
        err = float((ours.double() - ref).abs().max())
        assert err <= rtol * max(float(ref.abs().max()), 1e-30), (name, err)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(37, 11, 7), (50, 16, 3), (300, 33, 5), (64, 200, 9)])
@pytest.mark.parametrize("tie_means", [False, True], ids=["untied", "tied"])
def test_missing_inputs_match_the_reference(dtype, shape, tie_means):
    n_batch, n_in, n_out = shape
    layer = _layer(n_in, n_out, dtype, tie_means=tie_means)
    x, observed = _missing_inputs(n_batch, n_in, dtype)
    _assert_close_to_reference(layer, x, observed, 1e-10 if dtype == torch.float64 else 1e-5)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_missing_inputs_with_dropout(dtype):
    # training mode: dropout's -inf weights and missing inputs together
    layer = _layer(40, 12, dtype, seed=2, dropout=0.5).train()
    x, observed = _missing_inputs(80, 40, dtype, seed=2)
    _assert_close_to_reference(layer, x, observed, 1e-10 if dtype == torch.float64 else 1e-5)


@requires_fused
def test_dropout_removing_every_observed_component_falls_back_for_those_rows():
    # rows with one observed input: with dropout 0.9 most neurons lose it, and
    # keep their observed components anyway (the reference's rule)
    layer = _layer(24, 10, torch.float64, seed=4, dropout=0.9).train()
    x, observed = _missing_inputs(30, 24, torch.float64, seed=4, fraction=0.95)
    layer.generator = torch.Generator().manual_seed(3)
    live = torch.isfinite(layer.log_weights())
    lost = (observed.double() @ live.double().t()) == 0
    assert bool(lost.any()) and not bool(lost.all())
    _, redo = _functional.fused_observed_log_density(
        x, observed, layer.component_loc, layer.scale, torch.where(live, 0.0, -math.inf).double()
    )
    assert bool(redo.any())
    _assert_close_to_reference(layer, x, observed, 1e-10)


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_missing_inputs_with_negligible_observed_weight(dtype):
    # the observed components carry ~e-200 of the weight: the matmul mass
    # underflows and the renormaliser is recomputed exactly
    layer = _layer(20, 6, dtype, seed=5)
    x, observed = _missing_inputs(30, 20, dtype, seed=5)
    with torch.no_grad():
        layer.logits[:, 0] = 200.0
    observed[:, 0] = False
    observed[0] = True
    x = torch.where(observed, x.nan_to_num(), torch.full_like(x, math.nan))
    # float32: the observed log-weights are near -200 (ulp 1.5e-5), and the
    # output is their difference with the renormaliser in any implementation
    _assert_close_to_reference(layer, x, observed, 1e-10 if dtype == torch.float64 else 1e-4)


@requires_fused
def test_missing_inputs_far_from_every_component():
    # log-densities near -2000: the kernel's exact-peak path, with missing inputs
    layer = _layer(21, 4, torch.float64, seed=6)
    x, observed = _missing_inputs(12, 21, torch.float64, seed=6)
    with torch.no_grad():
        x[::2] += 60.0
        layer.set_scale(1.0)
    out, _ = _run(layer, x, observed, "fused")
    assert float(out.min()) < -1500
    _assert_close_to_reference(layer, x, observed, 1e-10)


@requires_fused
def test_gradcheck_missing_inputs():
    g = torch.Generator().manual_seed(7)
    x, observed = _missing_inputs(6, 5, torch.float64, seed=7)
    x_obs = x.nan_to_num().requires_grad_()
    loc = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    logits = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x_obs, loc, scale, logits):
        xn = x_obs.masked_fill(~observed, math.nan)
        out, redo = _functional.fused_observed_log_density(xn, observed, loc, scale, torch.log_softmax(logits, 1))
        assert redo is None
        return out

    assert torch.autograd.gradcheck(fn, (x_obs, loc, scale, logits))


@requires_fused
def test_missing_inputs_never_reach_the_plain_formula(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the NaN path must run on the fused kernel")

    monkeypatch.setattr("sklearn_ugmm.nn._layer.ugmm_observed_parts", fail)
    net = UGMMNet(30, (16,), 3, kernel="fused", dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, _ = _missing_inputs(64, 30, torch.float64)
    out = net(x)
    out.sum().backward()
    assert bool(torch.isfinite(out).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters())


@requires_fused
def test_net_with_missing_inputs_agrees_across_kernels():
    x, _ = _missing_inputs(64, 30, torch.float64, seed=8)
    y = torch.arange(64) % 3
    results = {}
    for kernel in ("fused", "reference"):
        net = UGMMNet(30, (16,), 3, kernel=kernel, dropout=0.2, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0))
        net.set_generator(torch.Generator().manual_seed(1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        history = []
        for _ in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            history.append(loss.item())
        results[kernel] = history
    assert np.allclose(results["fused"], results["reference"], rtol=1e-9, atol=0)
