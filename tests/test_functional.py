import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sklearn_ugmm.nn import _functional, _fused, ugmm_log_density, ugmm_log_density_reference


def _params(n_batch, n_in, n_out, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batch, n_in, generator=g, dtype=dtype)
    loc = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    scale = torch.rand(n_out, n_in, generator=g, dtype=dtype) + 0.2
    log_w = torch.log_softmax(torch.randn(n_out, n_in, generator=g, dtype=dtype), dim=1)
    return [t.requires_grad_() for t in (x, loc, scale, log_w)]


def _assert_matches_reference(args, tol, block_elements=_functional.DEFAULT_BLOCK_ELEMENTS, seed=0):
    ours = ugmm_log_density(*args, block_elements=block_elements)
    ref = ugmm_log_density_reference(*args)
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max() <= tol
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=ref.dtype)
    needs = [a for a in args if a.requires_grad]
    g_ours = torch.autograd.grad(ours, needs, grad)
    g_ref = torch.autograd.grad(ref, needs, grad)
    for a, b in zip(g_ours, g_ref):
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= tol


@pytest.fixture
def clipped_mode(monkeypatch):
    """Force the clipped (standardised distance) code path on ordinary inputs."""
    monkeypatch.setattr(_functional, "_needs_clip", lambda *args: True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block_elements", [1, 97, 2**20])
def test_matches_reference_forward_and_backward(dtype, block_elements):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    _assert_matches_reference(_params(37, 11, 7, dtype), tol, block_elements)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_in_clipped_mode(clipped_mode, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    _assert_matches_reference(_params(23, 9, 5, dtype), tol, block_elements=50)


def test_matches_reference_on_a_wide_layer():
    # the shapes of a first MNIST layer, inputs in [0, 1], a few narrow components
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 784, generator=g)
    loc = torch.rand(32, 784, generator=g)
    scale = torch.rand(32, 784, generator=g) * 0.5 + 0.05
    log_w = torch.log_softmax(torch.randn(32, 784, generator=g), dim=1)
    args = [t.requires_grad_() for t in (x, loc, scale, log_w)]
    _assert_matches_reference(args, 1e-5)


@pytest.mark.parametrize("clip", [False, True])
def test_masked_components_match_reference(monkeypatch, clip):
    if clip:
        monkeypatch.setattr(_functional, "_needs_clip", lambda *args: True)
    x, loc, scale, _ = _params(19, 8, 6, torch.float64, seed=2)
    logits = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.rand(6, 8, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:, 0] = False  # at least one live component per neuron
    mask[0, 1:] = True  # and a neuron with a single one
    log_w = torch.log_softmax(logits.masked_fill(mask, -math.inf), dim=1).requires_grad_()
    ours = ugmm_log_density(x, loc, scale, log_w, block_elements=30)
    ref = ugmm_log_density_reference(x, loc, scale, log_w)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    g_ours = torch.autograd.grad(ours, (x, loc, scale, log_w), grad)
    g_ref = torch.autograd.grad(ref, (x, loc, scale, log_w), grad)
    for a, b in zip(g_ours, g_ref):
        # the reference's gradient is nan at -inf weights; ours is 0 there
        finite = torch.isfinite(b)
        assert torch.allclose(a[finite], b[finite], rtol=0, atol=1e-12)
        assert (a[~finite] == 0).all()


def test_expanded_loc_like_tied_means():
    x, _, scale, log_w = _params(17, 6, 4, torch.float64, seed=4)
    point = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loc = point[:, None].expand(4, 6)
    _assert_matches_reference([x, loc, scale, log_w], 1e-12, block_elements=40)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_from_every_component_uses_exact_peak(dtype):
    # log-densities around -2000: the per-neuron bound underflows, so the
    # block fallback with an exact per-sample maximum must take over
    x, loc, scale, log_w = _params(12, 5, 3, dtype, seed=5)
    with torch.no_grad():
        x[::2] += 60.0
        scale.fill_(1.0)
    ours = ugmm_log_density(x, loc, scale, log_w, block_elements=20)
    ref = ugmm_log_density_reference(x, loc, scale, log_w)
    assert ref.min() < -1500
    rel = 1e-6 if dtype == torch.float32 else 1e-13
    assert ((ours - ref).abs() / ref.abs().clamp(min=1.0)).max() <= rel
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    g_ours = torch.autograd.grad(ours, (x, loc, scale, log_w), grad)
    g_ref = torch.autograd.grad(ref, (x, loc, scale, log_w), grad)
    # softmax weights come from differences of log-densities near -2000, whose
    # float32 ulp is 1.2e-4: both implementations carry that much rounding
    grad_rel = 2e-3 if dtype == torch.float32 else 1e-11
    for a, b in zip(g_ours, g_ref):
        assert ((a - b).abs() / b.abs().clamp(min=1.0)).max() <= grad_rel


def test_gradcheck_float64():
    args = _params(6, 4, 3, torch.float64, seed=1)
    assert torch.autograd.gradcheck(lambda *a: ugmm_log_density(*a, block_elements=20), args)


def test_gradcheck_float64_clipped_mode(clipped_mode):
    args = _params(5, 3, 4, torch.float64, seed=6)
    assert torch.autograd.gradcheck(lambda *a: ugmm_log_density(*a, block_elements=7), args)


def test_gradcheck_float64_far_path():
    x, loc, scale, log_w = _params(4, 3, 2, torch.float64, seed=7)
    with torch.no_grad():
        x[0] += 40.0
        scale.fill_(0.9)
    args = [x, loc, scale, log_w]
    assert torch.autograd.gradcheck(lambda *a: ugmm_log_density(*a, block_elements=6), args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_inputs_give_finite_outputs_and_gradients(dtype):
    x, loc, scale, log_w = _params(10, 6, 4, dtype, seed=8)
    with torch.no_grad():
        x.mul_(1e6)
        scale.mul_(1e-4)  # |z| up to ~1e11: beyond the clipping limit in float32
    out = ugmm_log_density(x, loc, scale, log_w)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), (x, loc, scale, log_w))
    assert all(torch.isfinite(g).all() for g in grads)
    # the output of such a layer fed to another one stays finite too
    out2 = ugmm_log_density(out, loc[:, :4] * 0, scale[:, :4] * 0 + 1, log_w[:, :4])
    assert torch.isfinite(out2).all()


def test_rejects_bad_shapes():
    x, loc, scale, log_w = _params(3, 4, 2, torch.float32)
    with pytest.raises(ValueError):
        ugmm_log_density(x[0], loc, scale, log_w)
    with pytest.raises(ValueError):
        ugmm_log_density(x[:, :3], loc, scale, log_w)
    with pytest.raises(ValueError):
        ugmm_log_density(x, loc[:, :3], scale, log_w)


@pytest.mark.parametrize("n_in, n_out, block_elements", [(7, 5, 1000), (7, 5, 35), (7, 5, 1), (100, 100, 2**20)])
def test_block_rows_respect_the_budget(n_in, n_out, block_elements):
    rows = _functional._block_rows(n_in, n_out, block_elements)
    assert rows >= 1
    # a block never exceeds the budget unless a single row already does
    assert rows * n_in * n_out <= max(block_elements, n_in * n_out)
    assert (rows + 1) * n_in * n_out > block_elements


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten operation returns or writes."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for t in outputs:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return result


def test_never_materialises_more_than_a_block():
    n_batch, n_in, n_out, budget = 3000, 40, 30, 2**13
    x, loc, scale, log_w = _params(n_batch, n_in, n_out, torch.float32, seed=9)
    probe = _LargestTensor()
    with probe:
        out = ugmm_log_density(x, loc, scale, log_w, block_elements=budget, kernel="reference")
        grads = torch.autograd.grad(out, (x, loc, scale, log_w), torch.ones_like(out))
    # inputs, outputs and their transposed copies are (batch, in) or (batch, out)
    allowed = max(budget, n_batch * n_in, n_batch * n_out, n_in * n_out)
    assert probe.largest <= allowed
    assert probe.largest * 10 < n_batch * n_in * n_out
    assert all(torch.isfinite(g).all() for g in grads)
    # the probe is not blind: the reference does hold the whole tensor
    probe = _LargestTensor()
    with probe:
        ugmm_log_density_reference(x[:200], loc, scale, log_w)
    assert probe.largest >= 200 * n_in * n_out


def test_buffers_reuse_memory_for_the_last_block():
    like = torch.empty(0)
    buffers = _functional._Buffers(like, 4 * 3 * 5, 2)
    full = buffers.get(4, 3, 5)
    short = buffers.get(4, 2, 5)
    assert [t.shape for t in full] == [(4, 3, 5)] * 2
    assert [t.shape for t in short] == [(4, 2, 5)] * 2
    assert all(t.is_contiguous() for t in short)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(full, short))


def test_huge_inputs_never_give_nan_gradients_in_float32():
    # |log-densities| ~ 1e12 have float32 ulps of 2**16: recomputed components
    # may round above the saved output, which must not overflow exp2 in backward
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        x = (torch.randn(16, 6, generator=g) * 1e6).requires_grad_()
        loc = torch.randn(5, 6, generator=g).requires_grad_()
        scale = (torch.rand(5, 6, generator=g) + 0.5).requires_grad_()
        log_w = torch.log_softmax(torch.randn(5, 6, generator=g), dim=1).requires_grad_()
        out = ugmm_log_density(x, loc, scale, log_w)
        grad = torch.randn(16, 5, generator=g)
        grad[::2] = 0.0
        grads = torch.autograd.grad(out, (x, loc, scale, log_w), grad)
        assert bool(torch.isfinite(out).all())
        assert all(bool(torch.isfinite(t).all()) for t in grads)


@pytest.mark.parametrize("kernel", ["reference", "fused"])
@pytest.mark.parametrize("layer", ["mixture", "product"])
def test_second_derivatives_are_refused_not_wrong(kernel, layer):
    # a Hessian or a gradient penalty needs the graph of the backward pass: the kernels' backward
    # passes are first order, so that graph would miss their terms without an error
    from sklearn_ugmm.nn import UGMMLayer, UGMMProductLayer

    if kernel == "fused" and _fused.load() is None:
        pytest.skip(f"fused kernel unavailable: {_fused.failure_reason()}")
    torch.manual_seed(0)
    Layer = UGMMLayer if layer == "mixture" else UGMMProductLayer
    module = Layer(3, 2, kernel=kernel, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    module(x).sum().backward()  # first derivatives as before
    assert torch.isfinite(module.raw_scale.grad).all()
    if layer == "product" and kernel == "reference":
        # plain autograd: its second derivatives are right
        gradient, = torch.autograd.grad(module(x).sum(), x, create_graph=True)
        hessian = torch.autograd.functional.hessian(lambda r: torch.func.functional_call(module, {"raw_scale": r}, (x,)).sum(),
                                                    module.raw_scale.detach())
        assert gradient.requires_grad and torch.isfinite(hessian).all()
        return
    with pytest.raises(RuntimeError, match="first derivatives only.*ugmm_log_density_reference"):
        torch.autograd.grad(module(x).sum(), x, create_graph=True)[0].sum().backward()
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.functional.hessian(
            lambda r: torch.func.functional_call(module, {"raw_scale": r}, (x,)).sum(), module.raw_scale.detach()
        )
    # the plain formula is differentiable twice
    loc, scale, log_w = module.loc, torch.nn.functional.softplus(module.raw_scale), torch.log_softmax(module.logits, 1)
    gradient, = torch.autograd.grad(ugmm_log_density_reference(x, loc, scale, log_w).sum(), x, create_graph=True)
    gradient.sum().backward()
