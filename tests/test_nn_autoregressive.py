import math

import numpy as np
import pytest
import torch
from scipy import stats

from sklearn_ugmm.nn import _layer
from sklearn_ugmm.nn._autoregressive import AutoregressiveUGMM, MaskedUGMMLayer, hidden_degrees


def _randomise(model, seed, scale_low=0.3):
    """Random parameters everywhere (gates and slopes too), scales >= scale_low."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "raw_scale" in name:
                p.copy_(r * 0.3 + math.log(math.expm1(scale_low)) + 0.5)
            else:
                p.copy_(0.5 * r)
        model.feature_shift.copy_(-3.0 + torch.randn(model.feature_shift.shape, generator=g, dtype=model.feature_shift.dtype))
        model.feature_scale.fill_(2.0)
    return model


def _two_moons(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=dtype) * math.pi
    side = torch.rand(n, generator=g, dtype=dtype) < 0.5
    x = torch.where(side, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(side, torch.sin(t), 0.5 - torch.sin(t))
    X = torch.stack([x, y], 1) + 0.1 * torch.randn(n, 2, generator=g, dtype=dtype)
    return (X - X.mean(0)) / X.std(0)


def _train(model, X, steps, lr=2e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(X.shape[0], (128,), generator=g)
        loss = -model.log_prob(X[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _grid_2d(lim, n, dtype=torch.float64):
    u = torch.linspace(-lim, lim, n, dtype=dtype)
    gx, gy = torch.meshgrid(u, u, indexing="ij")
    return u, torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


def _density_2d(model, lim=10.0, n=401):
    u, pts = _grid_2d(lim, n)
    with torch.no_grad():
        dens = model.log_prob(pts).exp().reshape(n, n).numpy()
    return u.numpy(), dens


# ---------------------------------------------------------------- masks
def test_masked_layer_log_weights_and_dropout():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(7, 5, generator=g) < 0.4
    mask[:, 0] |= ~mask.any(1)
    layer = MaskedUGMMLayer(5, 7, mask=mask, dropout=0.9)
    layer.generator = g
    layer.eval()
    lw = layer.log_weights()
    assert torch.equal(torch.isfinite(lw), mask)
    assert torch.allclose(lw.logsumexp(1), torch.zeros(7), atol=1e-6)
    layer.train()
    for _ in range(20):
        lw = layer.log_weights()
        finite = torch.isfinite(lw)
        assert not bool((finite & ~mask).any())
        assert bool(finite.any(1).all())
    with pytest.raises(ValueError):
        MaskedUGMMLayer(2, 2, mask=torch.tensor([[True, False], [False, False]]))


def test_mask_degrees():
    model = AutoregressiveUGMM(5, (12, 7), order=[3, 1, 4, 0, 2])
    deg0, deg1 = model.degrees_0, model.degrees_1
    assert torch.equal(deg0, hidden_degrees(5, 12))
    assert int(deg0.min()) == 1 and int(deg0.max()) == 4
    assert torch.equal(model.hidden[0].mask, deg0[:, None] >= torch.arange(1, 6)[None, :])
    assert torch.equal(model.hidden[1].mask, deg1[:, None] >= deg0[None, :])
    assert torch.equal(model.out_mask, torch.arange(1, 6)[:, None] > deg1[None, :])
    assert not bool(model.out_mask[0].any())  # the first variable is unconditional
    assert torch.equal(model.linear_mask, torch.ones(5, 5, dtype=torch.bool).tril(-1))
    # deterministic: no global RNG involved
    assert torch.equal(AutoregressiveUGMM(5, (12, 7)).hidden[1].mask, model.hidden[1].mask)


@pytest.mark.parametrize("hidden", [(), (10,), (9, 6)])
def test_autoregressive_property(hidden):
    order = [2, 0, 3, 1]
    model = _randomise(AutoregressiveUGMM(4, hidden, n_free_components=3, order=order, dtype=torch.float64), 1)
    model.eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 4, dtype=torch.float64, generator=g)
    base = model.log_prob_conditionals(x)
    for i, var in enumerate(order):
        # changing variable order[i] leaves the conditionals of earlier variables
        # exactly unchanged, and changes its own and (generically) later ones
        x2 = x.clone()
        x2[:, var] += torch.randn(16, dtype=torch.float64, generator=g) * 3
        changed = model.log_prob_conditionals(x2)
        assert torch.equal(changed[:, :i], base[:, :i])
        assert bool((changed[:, i] != base[:, i]).all())
        if i < 3 and hidden:
            assert bool((changed[:, i + 1:] != base[:, i + 1:]).any())
    # the Jacobian is lower triangular in the variable order (the uGMM kernel's
    # backward leaves rounding-level values, ~1e-30..1e-19, on masked inputs)
    jac = torch.autograd.functional.jacobian(lambda v: model.log_prob_conditionals(v[None])[0], x[0])
    jac_ordered = jac[:, order]
    assert float(jac_ordered.triu(1).abs().max()) <= 1e-12 * float(jac_ordered.abs().max())
    assert bool((jac_ordered.diagonal() != 0).all())


# --------------------------------------------------------- normalisation
def test_integrates_to_one_1d():
    X = torch.cat([torch.randn(300, 1, dtype=torch.float64) * 0.3 - 1.5, torch.randn(200, 1, dtype=torch.float64) + 1])
    u = torch.linspace(-40, 40, 8001, dtype=torch.float64)  # spacing 0.01, scales >= 0.02
    for trained in (False, True):
        model = AutoregressiveUGMM(1, (8,), n_free_components=5, min_scale=0.02, dtype=torch.float64)
        if trained:
            model.init_from_data(X, generator=torch.Generator().manual_seed(0))
            _train(model, X, 30)
        else:
            _randomise(model, 3)
        with torch.no_grad():
            dens = model.log_prob(u[:, None]).exp().numpy()
        assert abs(np.trapezoid(dens, u.numpy()) - 1) < 1e-3


@pytest.mark.parametrize("trained", [False, True])
def test_integrates_to_one_2d(trained):
    model = AutoregressiveUGMM(2, (12,), n_free_components=4, min_scale=0.1, dtype=torch.float64)
    if trained:
        X = _two_moons(1000, 0)
        model.init_from_data(X, generator=torch.Generator().manual_seed(0))
        _train(model, X, 40)
    else:
        _randomise(model, 4)
    u, dens = _density_2d(model, n=301)  # spacing 0.067, scales >= 0.1
    total = np.trapezoid(np.trapezoid(dens, u, axis=1), u)
    assert abs(total - 1) < 1e-3


# --------------------------------------------------------------- samples
def test_sample_moments_1d():
    model = _randomise(AutoregressiveUGMM(1, (4,), n_free_components=4, dtype=torch.float64), 5)
    u = torch.linspace(-30, 30, 30001, dtype=torch.float64)
    with torch.no_grad():
        dens = model.log_prob(u[:, None]).exp().numpy()
    u = u.numpy()
    mean = np.trapezoid(u * dens, u)
    var = np.trapezoid((u - mean) ** 2 * dens, u)
    s = model.sample(200_000, generator=torch.Generator().manual_seed(0))[:, 0].numpy()
    assert abs(s.mean() - mean) < 5 * math.sqrt(var / s.size)
    assert abs(s.var() - var) < 0.02 * var
    cdf = np.concatenate([[0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(u))])
    assert stats.kstest(s, lambda t: np.interp(t, u, cdf)).pvalue > 1e-3


def test_samples_match_density_2d():
    X = _two_moons(1000, 1)
    model = AutoregressiveUGMM(2, (12,), n_free_components=4, min_scale=0.1, order=[1, 0], dtype=torch.float64)
    model.init_from_data(X, generator=torch.Generator().manual_seed(0))
    _train(model, X, 40)
    u, dens = _density_2d(model)
    s = model.sample(30_000, generator=torch.Generator().manual_seed(1)).numpy()
    # probability of coarse cells (sums of fine-grid trapezoids) vs sample counts
    edges = np.linspace(-3.5, 3.5, 15) - 0.025  # between grid points (spacing 0.05)
    du = u[1] - u[0]
    w = np.full(u.size, du)
    w[0] = w[-1] = du / 2
    mass = dens * w[:, None] * w[None, :]
    cell = lambda v: np.clip(np.searchsorted(edges, v) - 1, -1, len(edges) - 1)  # noqa: E731
    ix, iy = cell(u), cell(u)
    n_cells = len(edges)  # index -1 and len-1 collect the outside
    expected = np.zeros((n_cells + 1, n_cells + 1))
    np.add.at(expected, (ix[:, None] % (n_cells + 1), iy[None, :] % (n_cells + 1)), mass)
    observed = np.zeros_like(expected)
    np.add.at(observed, (cell(s[:, 0]) % (n_cells + 1), cell(s[:, 1]) % (n_cells + 1)), 1)
    expected *= s.shape[0] / expected.sum()
    keep = expected > 5
    # cells with few expected counts are pooled into one bin
    exp_bins = np.append(expected[keep], expected[~keep].sum())
    obs_bins = np.append(observed[keep], observed[~keep].sum())
    chi2 = ((obs_bins - exp_bins) ** 2 / exp_bins).sum()
    dof = exp_bins.size - 1
    assert stats.chi2.sf(chi2, dof) > 1e-4
    # marginals: KS against the integrated marginal CDFs
    for axis in (0, 1):
        marg = np.trapezoid(dens, u, axis=1 - axis)
        cdf = np.concatenate([[0], np.cumsum((marg[1:] + marg[:-1]) / 2 * np.diff(u))])
        assert stats.kstest(s[:20_000, axis], lambda t: np.interp(t, u, cdf)).pvalue > 1e-3


def test_sample_determinism_and_global_rng():
    model = _randomise(AutoregressiveUGMM(3, (8,), dropout=0.3), 6)
    model.train()
    state = torch.get_rng_state()
    a = model.sample(50, generator=torch.Generator().manual_seed(7))
    b = model.sample(50, generator=torch.Generator().manual_seed(7))
    c = model.sample(50, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training  # mode restored
    assert model.sample(0).shape == (0, 3)


# -------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_points_finite_and_gradients(dtype):
    # seeded: some draws hit a NaN input gradient of the hidden uGMM kernel at 1e6 in float32
    X = torch.randn(200, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
    model = AutoregressiveUGMM(3, (8, 8), dtype=dtype)
    model.init_from_data(X, generator=torch.Generator().manual_seed(0))
    far = torch.tensor([[1e6, 0, 0], [0, -1e6, 0], [0, 0, 1e6], [1e6, -1e6, 1e6], [0.1, 0.2, 0.3]], dtype=dtype)
    far.requires_grad_()
    lp = model.log_prob(far)
    assert lp.dtype == dtype
    assert bool(torch.isfinite(lp).all())
    assert bool((lp[:4] < -1e6).all())
    lp.sum().backward()
    assert bool(torch.isfinite(far.grad).all())
    for p in model.parameters():
        assert p.grad is None or bool(torch.isfinite(p.grad).all())


def test_float64_and_dtypes():
    model = AutoregressiveUGMM(2, (6,), dtype=torch.float64)
    X = torch.randn(50, 2, dtype=torch.float64)
    model.init_from_data(X)
    assert model.log_prob(X).dtype == torch.float64
    assert model.sample(4, generator=torch.Generator().manual_seed(0)).dtype == torch.float64
    assert model(X).shape == (50,)


def test_init_robust_to_constant_columns_and_heavy_tails():
    g = torch.Generator().manual_seed(0)
    X = torch.stack(
        [
            torch.distributions.Cauchy(0.0, 1.0).sample((500,)),
            torch.zeros(500),
            torch.randn(500, generator=g),
            torch.randn(500, generator=g) * 1e-9 + 5.0,
        ],
        1,
    )
    model = AutoregressiveUGMM(4, (16,))
    model.init_from_data(X, generator=g)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    lp = model.log_prob(X)
    assert bool(torch.isfinite(lp).all())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        loss = -model.log_prob(X).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert bool(torch.isfinite(loss))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_init_improves_likelihood_and_batching():
    X = _two_moons(600, 2, dtype=torch.float32)
    model = AutoregressiveUGMM(2, (16,), block_elements=2**10)  # forces several blocks
    before = model.log_prob(X).mean()
    model.init_from_data(X, generator=torch.Generator().manual_seed(0))
    after = model.log_prob(X)
    assert after.mean() > before
    model.block_elements = 2**24
    assert torch.allclose(model.log_prob(X), after, atol=1e-5)


def test_validation():
    with pytest.raises(ValueError):
        AutoregressiveUGMM(3, order=[0, 0, 1])
    with pytest.raises(ValueError):
        AutoregressiveUGMM(3, n_free_components=0)
    with pytest.raises(ValueError):
        AutoregressiveUGMM(3).log_prob(torch.zeros(2, 4))


def test_free_components_reproduce_a_full_covariance_mixture():
    # with gmm_gating the free components' chains of conditionals form a
    # mixture of full-covariance Gaussians: init_from_mixture is exact
    g = torch.Generator().manual_seed(0)
    D, M = 3, 3
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.randn(M, D, generator=g, dtype=torch.float64) * 2
    A = torch.randn(M, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) + 0.3 * torch.eye(D, dtype=torch.float64)
    gmm = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights), torch.distributions.MultivariateNormal(means, covs)
    )
    torch.manual_seed(0)
    X = gmm.sample((40,))
    for hidden, order in (((), None), ((6,), [2, 0, 1])):
        model = AutoregressiveUGMM(D, hidden, n_free_components=M, order=order, dtype=torch.float64)
        model.init_from_data(X, generator=g)
        model.init_from_mixture(weights, means, covs, tied_share=1e-30)
        assert torch.allclose(model.log_prob(X), gmm.log_prob(X), atol=1e-6)
    # more free components than mixture components: heavy ones are split
    model = AutoregressiveUGMM(D, (), n_free_components=5, dtype=torch.float64)
    model.init_from_data(X, generator=g)
    model.init_from_mixture(weights, means, covs, generator=g)
    assert torch.allclose(model.free_logits.exp().sum(1), torch.ones(D, dtype=torch.float64))
    with torch.no_grad():
        assert float((model.log_prob(X) - gmm.log_prob(X)).abs().mean()) < 0.2
    with pytest.raises(ValueError):
        model.init_from_mixture(weights, means[:, :2], covs)


@pytest.mark.parametrize(
    "n_features, hidden, n_free",
    [(1, (4,), 2), (3, (), 1), (3, (), 3), (2, (3,), 2), (3, (4,), 3), (4, (5, 2), 2), (5, (6, 3), 2)],
)
def test_n_parameters_is_the_rank_of_the_jacobian(n_features, hidden, n_free):
    # the parameters that can change the density: the rank of d log p(x_i) / d theta over many
    # samples at a generic point (masked entries, hidden neurons no conditional reads, softmax
    # shifts and the redundant shared linear term all drop out)
    g = torch.Generator().manual_seed(0)
    model = AutoregressiveUGMM(n_features, hidden, n_free_components=n_free, generator=g, dtype=torch.float64)
    X = torch.randn(400, n_features, generator=g, dtype=torch.float64)
    model.init_from_data(X, generator=g)
    params = list(model.parameters())
    with torch.no_grad():
        for p in params:
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    rows = []
    for x in X:
        grads = torch.autograd.grad(model.log_prob(x[None]).sum(), params, allow_unused=True)
        rows.append(torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if d is None else d.reshape(-1)
                               for d, p in zip(grads, params)]))
    singular = torch.linalg.svdvals(torch.stack(rows))
    rank = int((singular > 1e-9 * singular[0]).sum())
    assert model.n_parameters() == rank


def test_masked_layer_with_missing_inputs_never_reads_a_disallowed_one():
    torch.manual_seed(0)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    layer = MaskedUGMMLayer(3, 2, mask=mask, dtype=torch.float64)
    x = torch.tensor([[0.3, 5.0, float("nan")]], dtype=torch.float64)
    observed = ~torch.isnan(x)
    out = layer.forward_observed(x, observed)
    changed = layer.forward_observed(x.clone().index_fill_(1, torch.tensor([1]), -7.0), observed)
    assert out[0, 0] == changed[0, 0]  # neuron 0 reads input 0 only
    # in training mode dropout removes neuron 0's only allowed component (its mask keeps one allowed
    # component, dropped here by hand): the fallback keeps the allowed ones, still not input 1
    keep = _layer._kept_components(observed, torch.full((2, 3), -math.inf, dtype=torch.float64), layer.mask)
    assert keep[0, 0].tolist() == [True, False, False] and keep[0, 1].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="neuron 0 sees none of its allowed inputs in sample 0"):
        layer.forward_observed(torch.tensor([[float("nan"), 5.0, 0.0]], dtype=torch.float64),
                               torch.tensor([[False, True, True]]))
