"""UGMMDensityEstimator: a normalised density in the user's feature space."""

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_ugmm import UGMMDensityEstimator

FAST = dict(hidden_layer_sizes=(8,), max_iter=30, n_iter_no_change=np.inf, random_state=0)


def _bimodal_1d(n=300, seed=0):
    rng = np.random.RandomState(seed)
    x = np.where(rng.rand(n) < 0.3, rng.normal(-2, 0.5, n), rng.normal(1.5, 1.0, n))
    return (50.0 + 20.0 * x)[:, None]  # offset 50, scale 20


def _correlated_2d(n=300, seed=0):
    rng = np.random.RandomState(seed)
    a = rng.normal(size=n)
    b = 0.8 * a + 0.6 * np.abs(rng.normal(size=n))
    return np.column_stack([1000.0 + 200.0 * a, -5.0 + 0.01 * b])


def test_integrates_to_one_in_1d():
    X = _bimodal_1d()
    est = UGMMDensityEstimator(**FAST).fit(X)
    grid = np.linspace(50 - 20 * 12, 50 + 20 * 12, 20001)
    integral = np.trapezoid(np.exp(est.score_samples(grid[:, None])), grid)
    assert abs(integral - 1.0) < 1e-3


def test_integrates_to_one_in_2d():
    X = _correlated_2d()
    est = UGMMDensityEstimator(**FAST).fit(X)
    mean, sd = X.mean(0), X.std(0)
    g0 = np.linspace(mean[0] - 10 * sd[0], mean[0] + 10 * sd[0], 401)
    g1 = np.linspace(mean[1] - 10 * sd[1], mean[1] + 10 * sd[1], 401)
    G0, G1 = np.meshgrid(g0, g1, indexing="ij")
    dens = np.exp(est.score_samples(np.column_stack([G0.ravel(), G1.ravel()]))).reshape(G0.shape)
    integral = np.trapezoid(np.trapezoid(dens, g1, axis=1), g0)
    assert abs(integral - 1.0) < 1e-3


def test_score_is_mean_log_likelihood_and_jacobian_is_applied():
    X = _bimodal_1d()
    est = UGMMDensityEstimator(**FAST).fit(X)
    assert est.score(X) == pytest.approx(est.score_samples(X).mean())
    # the same data in units 20x smaller has a density 20x larger
    est_small = UGMMDensityEstimator(**FAST).fit(X / 20.0)
    np.testing.assert_allclose(est_small.score_samples(X / 20.0), est.score_samples(X) + np.log(20.0), atol=1e-4)


def test_samples_match_the_model():
    X = _bimodal_1d(600)
    est = UGMMDensityEstimator(**FAST).fit(X)
    samples = est.sample(4000, random_state=0)
    assert samples.shape == (4000, 1)
    grid = np.linspace(50 - 20 * 12, 50 + 20 * 12, 20001)
    dens = np.exp(est.score_samples(grid[:, None]))
    cdf = np.cumsum(dens) * (grid[1] - grid[0])
    mean = np.trapezoid(grid * dens, grid)
    var = np.trapezoid((grid - mean) ** 2 * dens, grid)
    assert abs(samples.mean() - mean) < 4 * np.sqrt(var / 4000)
    assert abs(samples.var() / var - 1) < 0.1
    assert stats.kstest(samples[:, 0], lambda v: np.interp(v, grid, cdf)).pvalue > 1e-3


def test_two_sample_test_on_2d_samples():
    X = _correlated_2d(400)
    est = UGMMDensityEstimator(**FAST).fit(X)
    a = est.sample(600, random_state=1)
    b = est.sample(600, random_state=2)
    # two independent draws of the model agree; a shifted draw does not
    assert stats.ks_2samp(a[:, 0], b[:, 0]).pvalue > 1e-3
    assert stats.ks_2samp(a[:, 1], b[:, 1]).pvalue > 1e-3
    assert stats.ks_2samp(a[:, 0], b[:, 0] + 0.5 * X[:, 0].std()).pvalue < 1e-3
    # and the samples resemble the data they were fitted to
    assert abs(np.corrcoef(a.T)[0, 1] - np.corrcoef(X.T)[0, 1]) < 0.15
    assert np.all(np.abs(a.mean(0) - X.mean(0)) < 0.3 * X.std(0))


def test_sample_is_deterministic_and_global_rng_untouched():
    X = _correlated_2d()
    torch.manual_seed(0)
    np.random.seed(0)
    expected = (torch.rand(2), np.random.rand(2))
    torch.manual_seed(0)
    np.random.seed(0)
    est = UGMMDensityEstimator(**FAST).fit(X)
    np.testing.assert_array_equal(est.sample(10, random_state=3), est.sample(10, random_state=3))
    assert not np.array_equal(est.sample(10, random_state=3), est.sample(10, random_state=4))
    np.testing.assert_array_equal(torch.rand(2), expected[0])
    np.testing.assert_array_equal(np.random.rand(2), expected[1])
    again = UGMMDensityEstimator(**FAST).fit(X)
    np.testing.assert_array_equal(again.score_samples(X), est.score_samples(X))


def test_far_points_are_finite_and_very_negative():
    X = _correlated_2d()
    est = UGMMDensityEstimator(**FAST).fit(X)
    far = np.array([[1e6, 0.0], [-1e6, 1e6], [1e12, -1e12], [1000.0, 1e30]])
    scores = est.score_samples(far)
    assert np.all(np.isfinite(scores))
    assert np.all(scores < est.score_samples(X).min() - 100)


def test_bic_aic_and_parameter_count():
    X = _correlated_2d()
    est = UGMMDensityEstimator(**FAST).fit(X)
    n = len(X)
    k = est.module_.n_parameters()
    n_raw = sum(p.numel() for p in est.module_.parameters())
    assert 0 < k < n_raw
    assert est.bic(X) == pytest.approx(-2 * est.score(X) * n + k * np.log(n))
    assert est.aic(X) == pytest.approx(-2 * est.score(X) * n + 2 * k)


def test_order_parameter():
    X = _correlated_2d()
    est = UGMMDensityEstimator(**dict(FAST, order=[1, 0])).fit(X)
    assert est.module_.order.tolist() == [1, 0]
    with pytest.raises(ValueError, match="permutation"):
        UGMMDensityEstimator(**dict(FAST, order=[0, 0])).fit(X)


def test_in_pipeline_and_grid_search():
    X = _correlated_2d(200)
    search = GridSearchCV(UGMMDensityEstimator(max_iter=10, n_iter_no_change=np.inf, random_state=0), {"hidden_layer_sizes": [(4,), (8,)]}, cv=3)
    search.fit(X)
    assert np.isfinite(search.best_score_)
    scores = cross_val_score(make_pipeline(StandardScaler(), UGMMDensityEstimator(**FAST)), X, cv=3)
    assert np.all(np.isfinite(scores))


def test_errors():
    X = _correlated_2d()
    with pytest.raises(NotFittedError):
        UGMMDensityEstimator().score_samples(X)
    with pytest.raises(ValueError, match="NaN"):
        UGMMDensityEstimator(**FAST).fit(np.array([[np.nan, 1.0], [1.0, 2.0]]))
    est = UGMMDensityEstimator(**FAST).fit(X)
    with pytest.raises(ValueError, match="features"):
        est.score_samples(X[:, :1])
    with pytest.raises(ValueError, match="n_samples"):
        est.sample(0)


def test_partial_fit_takes_further_likelihood_steps():
    X = _correlated_2d(400)
    est = UGMMDensityEstimator(hidden_layer_sizes=(8,), random_state=0)
    scores = []
    for epoch in range(8):
        for start in range(0, 400, 100):
            est.partial_fit(X[start : start + 100])
        scores.append(est.score(X))
    assert est.n_iter_ == 32 and len(est.loss_curve_) == 32
    assert scores[-1] > scores[0]
    again = UGMMDensityEstimator(hidden_layer_sizes=(8,), random_state=0)
    for epoch in range(8):
        for start in range(0, 400, 100):
            again.partial_fit(X[start : start + 100])
    np.testing.assert_array_equal(again.score_samples(X), est.score_samples(X))
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(X[:10, :1])
