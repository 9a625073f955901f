"""Numbers at any scale: sample weights and feature units (issue 17, items 4 and 5)."""

import numpy as np
import pytest
from sklearn.datasets import load_iris

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator

FAST_CLF = dict(hidden_layer_sizes=(6,), max_iter=6, random_state=0, n_iter_no_change=np.inf)
FAST_DENSITY = dict(hidden_layer_sizes=(4,), n_free_components=2, max_iter=6, random_state=0, n_iter_no_change=np.inf)



@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def weights(iris):
    return np.random.RandomState(0).uniform(0.5, 2.0, size=len(iris[1]))


def _fit_summary(est, X):
    outputs = est.predict_proba(X) if hasattr(est, "predict_proba") else est.score_samples(X)
    return est.loss_curve_, outputs


# Six epochs from the density's GaussianMixture start end slightly above it on these weights; the
# divergence check then keeps the start, for every factor alike, which is what this test compares.
@pytest.mark.parametrize("factor", [1e-300, 1e-46, 1e37, 1e300])
@pytest.mark.parametrize(
    "make",
    [lambda: UGMMClassifier(**FAST_CLF), lambda: UGMMDensityEstimator(**FAST_DENSITY)],
    ids=["classifier", "density"],
)
def test_a_common_factor_of_the_weights_gives_the_same_fit(iris, weights, make, factor):
    """Uniform weights of any positive size fit like no weights; scaled weights like the originals."""
    X, y = iris
    reference = _fit_summary(make().fit(X, y), X)
    uniform = _fit_summary(make().fit(X, y, sample_weight=np.full(len(y), factor)), X)
    assert uniform[0] == reference[0]
    np.testing.assert_array_equal(uniform[1], reference[1])
    weighted = _fit_summary(make().fit(X, y, sample_weight=weights), X)
    scaled = _fit_summary(make().fit(X, y, sample_weight=weights * factor), X)
    np.testing.assert_allclose(scaled[0], weighted[0], rtol=1e-6)
    np.testing.assert_allclose(scaled[1], weighted[1], rtol=1e-6, atol=1e-9)


def test_one_huge_weight_trains_on_that_sample(iris):
    """A weight of 1e300 among ones dominates the loss without overflowing it."""
    X, y = iris
    w = np.ones(len(y))
    w[0] = 1e300
    clf = UGMMClassifier(**FAST_CLF).fit(X, y, sample_weight=w)
    assert np.all(np.isfinite(clf.loss_curve_))
    assert clf.predict(X[:1])[0] == y[0]
    density = UGMMDensityEstimator(**FAST_DENSITY).fit(X, sample_weight=w)
    assert np.all(np.isfinite(density.score_samples(X)))


FACTORS = [1e-15, 1e-12, 1e-6, 1e6, 1e15]


def test_density_is_equivariant_to_units(iris):
    """score_samples(c X) = score_samples(X) - d log c, and samples scale with c."""
    X = iris[0][:, :2]
    reference = UGMMDensityEstimator(**FAST_DENSITY).fit(X)
    scores = reference.score_samples(X)
    for c in FACTORS:
        scaled = UGMMDensityEstimator(**FAST_DENSITY).fit(c * X)
        np.testing.assert_allclose(scaled.score_samples(c * X), scores - X.shape[1] * np.log(c), rtol=1e-6)
        np.testing.assert_allclose(scaled.scaling_scale_, c * reference.scaling_scale_, rtol=1e-9)
        draws = scaled.sample(50, random_state=1)
        np.testing.assert_allclose(draws, c * reference.sample(50, random_state=1), rtol=1e-5)


@pytest.mark.parametrize("standardize", [True, "yeo-johnson"])
def test_classifier_is_invariant_to_units(iris, standardize):
    X, y = iris
    reference = UGMMClassifier(**FAST_CLF, standardize=standardize).fit(X, y)
    for c in FACTORS:
        scaled = UGMMClassifier(**FAST_CLF, standardize=standardize).fit(c * X, y)
        np.testing.assert_array_equal(scaled.predict(c * X), reference.predict(X))
        np.testing.assert_allclose(scaled.predict_proba(c * X), reference.predict_proba(X), rtol=1e-6, atol=1e-9)


def test_only_truly_constant_features_keep_unit_scale():
    from sklearn_ugmm._preprocessing import weighted_mean_and_scale

    rng = np.random.RandomState(0)
    w = np.full(100, 0.01)
    X = np.column_stack([1e-13 * rng.normal(size=100), np.full(100, 7.0), 1e6 + 1e-4 * rng.normal(size=100)])
    mean, scale = weighted_mean_and_scale(X, w)
    np.testing.assert_allclose(scale[[0, 2]], [np.std(X[:, 0]), np.std(X[:, 2])], rtol=1e-6)
    assert scale[1] == 1.0 and mean[1] == pytest.approx(7.0, rel=1e-15)
    # rows of negligible weight do not make a spread either
    dominated = np.full(100, 1e-300)
    dominated[0] = 1.0
    assert weighted_mean_and_scale(X, dominated / dominated.sum())[1].tolist() == [1.0, 1.0, 1.0]
    # values that differ only in their last bit are rounding noise, not spread
    noise = np.full(100, 3.0)
    noise[::2] = np.nextafter(3.0, 4.0)
    assert weighted_mean_and_scale(noise[:, None], w)[1][0] == 1.0
