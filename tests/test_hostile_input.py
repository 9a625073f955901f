"""Property-based: random shapes, dtypes and values never crash inside torch or return NaN.

Every call either raises a ValueError or TypeError with a message, or returns
finite values of the right shape.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator

SPECIAL = [np.nan, np.inf, -np.inf, 1e300, -1e300, -0.0, 0.0, 1e-300, 3.0]


@st.composite
def matrices(draw):
    n = draw(st.integers(0, 12))
    d = draw(st.integers(0, 5))
    kind = draw(st.sampled_from(["normal", "special", "constant", "duplicated", "int", "object", "sparse", "strings"]))
    rng = np.random.RandomState(draw(st.integers(0, 2**16)))
    X = rng.normal(size=(n, d)) * draw(st.sampled_from([1e-6, 1.0, 1e6]))
    if kind == "special" and X.size:
        mask = rng.rand(n, d) < 0.3
        X[mask] = rng.choice(SPECIAL, size=mask.sum())
    elif kind == "constant" and d:
        X[:, 0] = 7.0
    elif kind == "duplicated" and n:
        X[:] = X[0]
    elif kind == "int":
        X = X.astype(np.int64)
    elif kind == "object":
        X = X.astype(object)
    elif kind == "sparse":
        X = sp.csr_matrix(X)
    elif kind == "strings":
        X = X.astype(str)
    return X


def _labels(n, seed):
    return np.random.RandomState(seed).randint(0, 2, size=n)


def _check_finite(value, shape):
    value = np.asarray(value)
    assert value.shape == shape
    assert np.all(np.isfinite(value))


def _call(fn, *args, **kwargs):
    """Run fn; a ValueError/TypeError with a message is an acceptable answer."""
    try:
        return True, fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return False, None


FIT_PARAMS = dict(hidden_layer_sizes=(3,), max_iter=2, n_iter_no_change=np.inf, early_stopping=False, random_state=0)
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@HYPOTHESIS
@given(X=matrices(), X_new=matrices(), seed=st.integers(0, 100))
def test_classifier_survives_hostile_input(X, X_new, seed):
    y = _labels(X.shape[0], seed)
    clf = UGMMClassifier(**FIT_PARAMS)
    fitted, _ = _call(clf.fit, X, y)
    if not fitted:
        assert not hasattr(clf, "net_")
        return
    for data in (X, X_new):
        ok, proba = _call(clf.predict_proba, data)
        if ok:
            _check_finite(proba, (data.shape[0], len(clf.classes_)))
            np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
            ok, pred = _call(clf.predict, data)
            assert ok and set(np.unique(pred)) <= set(clf.classes_)


@HYPOTHESIS
@given(X=matrices(), X_new=matrices())
def test_density_survives_hostile_input(X, X_new):
    est = UGMMDensityEstimator(**FIT_PARAMS)
    fitted, _ = _call(est.fit, X)
    if not fitted:
        assert not hasattr(est, "net_")
        return
    for data in (X, X_new):
        ok, scores = _call(est.score_samples, data)
        if ok:
            _check_finite(scores, (data.shape[0],))
    _check_finite(est.sample(3, random_state=0), (3, est.n_features_in_))
