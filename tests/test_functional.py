import pytest
import torch

from sklearn_ugmm.nn import ugmm_log_density, ugmm_log_density_reference


def _params(n_batch, n_in, n_out, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batch, n_in, generator=g, dtype=dtype)
    loc = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    scale = torch.rand(n_out, n_in, generator=g, dtype=dtype) + 0.2
    log_w = torch.log_softmax(torch.randn(n_out, n_in, generator=g, dtype=dtype), dim=1)
    return [t.requires_grad_() for t in (x, loc, scale, log_w)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block_elements", [1, 97, 2**20])
def test_matches_reference_forward_and_backward(dtype, block_elements):
    args = _params(37, 11, 7, dtype)
    ours = ugmm_log_density(*args, block_elements=block_elements)
    ref = ugmm_log_density_reference(*args)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert (ours - ref).abs().max() <= tol
    grad = torch.randn_like(ref)
    g_ours = torch.autograd.grad(ours, args, grad)
    g_ref = torch.autograd.grad(ref, args, grad)
    for a, b in zip(g_ours, g_ref):
        assert (a - b).abs().max() <= tol


def test_gradcheck_float64():
    args = _params(6, 4, 3, torch.float64, seed=1)
    assert torch.autograd.gradcheck(lambda *a: ugmm_log_density(*a, block_elements=20), args)
