"""The weighted Yeo-Johnson transform behind ``standardize="yeo-johnson"``."""

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_iris

from sklearn_ugmm import UGMMClassifier
from sklearn_ugmm._preprocessing import LAMBDA_BOUNDS, FeatureScaler, fit_yeo_johnson, transform_yeo_johnson, yeo_johnson


@pytest.fixture
def skewed():
    rng = np.random.RandomState(0)
    return np.column_stack(
        [
            rng.lognormal(size=400),  # right-skewed
            -rng.exponential(scale=1000.0, size=400) + 7.0,  # left-skewed, large units
            rng.normal(size=400),  # already Gaussian
            rng.poisson(0.3, size=400).astype(float),  # mostly zeros
        ]
    )


def _standardised(X, params):
    return (X - params["shift"]) / params["scale"]


@pytest.mark.parametrize("lam", [-2.5, -1.0, 0.0, 0.4, 1.0, 2.0, 2.9])
def test_formula_matches_scipy(lam):
    z = np.random.RandomState(1).normal(scale=3.0, size=(300, 2))
    expected = np.column_stack([stats.yeojohnson(z[:, j], lmbda=lam) for j in range(2)])
    np.testing.assert_allclose(yeo_johnson(z, lam), expected, rtol=1e-12, atol=1e-12)


def test_lambdas_are_scipy_maximum_likelihood(skewed):
    params = fit_yeo_johnson(skewed, np.ones(len(skewed)))
    Z = _standardised(skewed, params)
    for j in range(skewed.shape[1]):
        expected = stats.yeojohnson_normmax(Z[:, j])
        assert LAMBDA_BOUNDS[0] < expected < LAMBDA_BOUNDS[1]
        assert params["lambdas"][j] == pytest.approx(expected, abs=1e-3)
    # the transform makes the skewed columns (nearly) symmetric
    transformed = transform_yeo_johnson(skewed, params)
    assert np.all(np.abs(stats.skew(transformed[:, :2])) < 0.2 * np.abs(stats.skew(skewed[:, :2])))
    assert params["lambdas"][0] < 1 < params["lambdas"][1]


def test_centring_is_median_and_standard_deviation(skewed):
    params = fit_yeo_johnson(skewed, np.ones(len(skewed)))
    assert np.all(params["shift"] == np.sort(skewed, axis=0)[199])  # the lower median of 400 values
    np.testing.assert_allclose(params["scale"], skewed.std(axis=0))
    Z = _standardised(skewed, params)
    np.testing.assert_allclose(params["low"], Z.min(axis=0))
    np.testing.assert_allclose(params["high"], Z.max(axis=0))


def test_integer_weights_equal_repeated_rows(skewed):
    weights = np.random.RandomState(2).randint(0, 4, size=len(skewed))
    weighted = fit_yeo_johnson(skewed, weights.astype(float))
    repeated = fit_yeo_johnson(np.repeat(skewed, weights, axis=0), np.ones(weights.sum()))
    for key in weighted:
        np.testing.assert_allclose(weighted[key], repeated[key], rtol=1e-6, atol=1e-9, err_msg=key)


def test_does_not_depend_on_units(skewed):
    params = fit_yeo_johnson(skewed, np.ones(len(skewed)))
    a, b = np.array([3.0, 1e-4, 250.0, 7.0]), np.array([-5.0, 1e3, 0.5, 2.0])
    moved = fit_yeo_johnson(skewed * a + b, np.ones(len(skewed)))
    np.testing.assert_allclose(moved["lambdas"], params["lambdas"], atol=1e-6)
    np.testing.assert_allclose(
        transform_yeo_johnson(skewed * a + b, moved), transform_yeo_johnson(skewed, params), rtol=1e-6, atol=1e-8
    )


def test_linear_and_finite_beyond_the_training_range(skewed):
    params = fit_yeo_johnson(skewed, np.ones(len(skewed)))
    lam, high, low = params["lambdas"][0], params["high"][0], params["low"][0]
    edge = params["shift"][0] + params["scale"][0] * np.array([high, high + 1.0, high + 2.0, low, low - 1.0])
    X = np.tile(skewed[:1], (5, 1))
    X[:, 0] = edge
    out = transform_yeo_johnson(X, params)[:, 0]
    # straight line beyond `high`, with the slope of the transform at `high`
    slope = (1.0 + high) ** (lam - 1.0)
    np.testing.assert_allclose(np.diff(out[:3]), [slope, slope], rtol=1e-9)
    assert out[4] < out[3]
    huge = transform_yeo_johnson(np.array([[1e200, -1e200, 1e200, -1e200]]), params)
    assert np.all(np.isfinite(huge))
    # monotone over a wide sweep that crosses both ends of the range
    sweep = np.tile(skewed[:1], (2001, 1))
    sweep[:, 0] = np.linspace(-50, 200, 2001)
    assert np.all(np.diff(transform_yeo_johnson(sweep, params)[:, 0]) > 0)


def test_powers_are_fitted_on_an_evenly_spaced_sample_of_large_data(skewed, monkeypatch):
    import sklearn_ugmm._preprocessing as power

    monkeypatch.setattr(power, "MAX_LAMBDA_ROWS", 100)
    params = fit_yeo_johnson(skewed, np.ones(len(skewed)))
    rows = np.linspace(0, len(skewed) - 1, 100).round().astype(int)
    Z = _standardised(skewed, params)
    for j in range(skewed.shape[1]):
        assert params["lambdas"][j] == pytest.approx(stats.yeojohnson_normmax(Z[rows, j]), abs=1e-3)
    # centring, spread and range still come from every row
    np.testing.assert_allclose(params["scale"], skewed.std(axis=0))
    np.testing.assert_allclose(params["high"], Z.max(axis=0))


def test_constant_and_zero_weight_rows():
    X = np.column_stack([np.full(20, 3.0), np.arange(20.0)])
    X_bad = np.vstack([X, [[1e6, -1e6]]])
    params = fit_yeo_johnson(X_bad, np.r_[np.ones(20), 0.0])
    reference = fit_yeo_johnson(X, np.ones(20))
    for key in params:
        np.testing.assert_allclose(params[key], reference[key], err_msg=key)
    transformed = transform_yeo_johnson(X, params)
    assert params["lambdas"][0] == 1.0 and np.all(transformed[:, 0] == 0.0)
    assert np.all(np.isfinite(transformed))


def test_classifier_uses_the_transform_by_default(skewed):
    y = (skewed[:, 0] > np.median(skewed[:, 0])).astype(int)
    clf = UGMMClassifier(hidden_layer_sizes=(4,), max_iter=3, n_iter_no_change=np.inf, random_state=0).fit(skewed, y)
    assert clf.standardize == "auto"  # the power transform for the discriminative objective
    params = fit_yeo_johnson(skewed, np.ones(len(skewed)))
    for key, value in params.items():
        np.testing.assert_allclose(clf.scaler_.power_params_[key], value)
    Xs = clf.scaler_.transform(skewed)
    transformed = transform_yeo_johnson(skewed, params)
    np.testing.assert_allclose(Xs, (transformed - transformed.mean(0)) / transformed.std(0), rtol=1e-6, atol=1e-9)
    # outliers far outside the training range still get finite probabilities
    far = skewed[:3] * np.array([[1e6], [-1e6], [1e3]])
    assert np.all(np.isfinite(clf.predict_proba(far)))

    # refitting with plain standardisation drops the transform
    clf.set_params(standardize=True).fit(skewed, y)
    assert clf.scaler_.power_params_ is None
    np.testing.assert_allclose(
        clf.scaler_.transform(skewed), (skewed - skewed.mean(0)) / skewed.std(0), rtol=1e-6, atol=1e-9
    )


def test_generative_objective_keeps_plain_standardisation_under_auto():
    X, y = load_iris(return_X_y=True)
    generative = UGMMClassifier(objective="generative", hidden_layer_sizes=(4,), max_iter=2, n_iter_no_change=np.inf, random_state=0)
    generative.fit(X, y)
    assert generative.scaler_.power_params_ is None
    np.testing.assert_allclose(generative.scaling_mean_, X.mean(axis=0))
    generative.set_params(standardize="yeo-johnson").fit(X, y)
    np.testing.assert_allclose(
        generative.scaler_.power_params_["lambdas"], fit_yeo_johnson(X, np.ones(len(X)))["lambdas"]
    )


def test_classifier_transform_with_sample_weight():
    X, y = load_iris(return_X_y=True)
    weights = np.random.RandomState(0).randint(0, 3, size=len(y))
    clf = UGMMClassifier(hidden_layer_sizes=(4,), max_iter=2, n_iter_no_change=np.inf, random_state=0).fit(X, y, sample_weight=weights)
    expected = fit_yeo_johnson(np.repeat(X, weights, axis=0), np.ones(weights.sum()))
    np.testing.assert_allclose(clf.scaler_.power_params_["lambdas"], expected["lambdas"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", [True, False, "yeo-johnson"])
def test_feature_scaler_arrays_round_trip(skewed, method):
    weights = np.random.RandomState(1).rand(len(skewed))
    scaler = FeatureScaler(method).fit(skewed, weights)
    arrays = scaler.to_arrays()
    assert all(value.shape == (skewed.shape[1],) and value.dtype == np.float64 for value in arrays.values())
    restored = FeatureScaler.from_arrays(arrays, method=method)
    np.testing.assert_array_equal(restored.transform(skewed * 3), scaler.transform(skewed * 3))
    # the standardisation is the weighted mean and standard deviation of what it standardises
    inner = transform_yeo_johnson(skewed, scaler.power_params_) if method == "yeo-johnson" else skewed
    if method:
        w = weights / weights.sum()
        np.testing.assert_allclose(scaler.mean_, w @ inner)
        np.testing.assert_allclose(scaler.scale_, np.sqrt(w @ (inner - w @ inner) ** 2))
    else:
        np.testing.assert_array_equal(scaler.transform(skewed), skewed)


def test_feature_scaler_rejects_inconsistent_arrays(skewed):
    arrays = FeatureScaler("yeo-johnson").fit(skewed).to_arrays()
    with pytest.raises(ValueError, match="must be"):
        FeatureScaler.from_arrays(arrays, method=True)
    arrays["mean"] = arrays["mean"][:2]
    with pytest.raises(ValueError, match="one length"):
        FeatureScaler.from_arrays(arrays, method="yeo-johnson")


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("scale", 0.0, "scale must be positive"),
        ("power_scale", -1.0, "power_scale must be positive"),
        ("mean", np.inf, "must be finite"),
        ("power_lambdas", 10.0, "power_lambdas must lie in"),
        ("power_low", 1e9, "power_low must not exceed power_high"),
    ],
)
def test_feature_scaler_rejects_values_no_fit_gives(skewed, name, value, match):
    # (a forged model file: its checksum does not stop a forger)
    arrays = FeatureScaler("yeo-johnson").fit(skewed).to_arrays()
    FeatureScaler.from_arrays(arrays, method="yeo-johnson")
    arrays[name] = arrays[name].copy()
    arrays[name][0] = value
    with pytest.raises(ValueError, match=match):
        FeatureScaler.from_arrays(arrays, method="yeo-johnson")
