"""Fits that diverge without a NaN are detected and undone (issue 17, item 6)."""

import warnings

import numpy as np
from sklearn.datasets import load_iris, make_classification
from sklearn.exceptions import ConvergenceWarning

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator
from sklearn_ugmm._base import divergence


def _divergence_warnings(record):
    return [w for w in record if issubclass(w.category, ConvergenceWarning) and "diverged" in str(w.message)]


def _fit(est, *args):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        est.fit(*args)
    return _divergence_warnings(record)


def test_classifier_with_a_huge_learning_rate_warns_and_keeps_its_start():
    X, y = make_classification(n_samples=400, n_features=6, random_state=0)
    clf = UGMMClassifier(hidden_layer_sizes=(8,), learning_rate_init=1e6, random_state=0)
    caught = _fit(clf, X, y)
    assert len(caught) == 1 and "learning_rate_init" in str(caught[0].message)
    proba = clf.predict_proba(X)
    # the collapsed network predicted 0.5 everywhere (accuracy 0.51); the data-driven start does not
    assert np.ptp(proba[:, 0]) > 0.1
    assert clf.score(X, y) > 0.7


def test_density_with_a_huge_learning_rate_warns_and_samples_plausibly():
    X = np.random.RandomState(0).normal(size=(300, 3))
    density = UGMMDensityEstimator(hidden_layer_sizes=(8,), learning_rate_init=1e6, random_state=0)
    caught = _fit(density, X)
    assert len(caught) == 1 and "learning_rate_init" in str(caught[0].message)
    train_scores = density.score_samples(X)
    assert density.score(X) > -6  # a standard normal in 3-D scores -4.26; the diverged fit -52
    samples = density.sample(500, random_state=0)
    # samples lie where the model's own density is as high as on its training data
    assert np.all(np.abs(samples) < 10 * np.abs(X).max())
    assert np.quantile(density.score_samples(samples), 0.01) > train_scores.min() - 3


def test_ordinary_fits_do_not_warn_of_divergence():
    X, y = load_iris(return_X_y=True)
    for objective in ("discriminative", "generative"):
        for max_iter in (1, 30):
            clf = UGMMClassifier(hidden_layer_sizes=(6,), objective=objective, max_iter=max_iter, random_state=0)
            assert _fit(clf, X, y) == []
    assert _fit(UGMMDensityEstimator(hidden_layer_sizes=(6,), max_iter=30, random_state=0), X) == []


def test_divergence_rule():
    X = np.arange(8.0).reshape(4, 2)
    varied = np.array([[0.1], [0.5], [0.2], [0.9]])
    assert divergence(1.0, 0.5, varied, X) == ""
    assert "higher" in divergence(0.5, 0.6, varied, X)
    assert divergence(0.5, 0.6, varied, X, tol=0.2) == ""
    assert "higher" in divergence(0.5, np.nan, varied, X)
    # the noise of a short fit's last epochs is not divergence: 1% of the start, at least 0.01
    assert divergence(0.691898, 0.694331, varied, X) == ""
    assert divergence(2.0975, 2.1067, varied, X) == ""
    assert "higher" in divergence(2.0975, 2.13, varied, X)
    assert "higher" in divergence(-0.001, 0.0095, varied, X)
    assert divergence(-0.001, 0.0085, varied, X) == ""
    assert "same for every" in divergence(1.0, 0.69, np.full((4, 2), 0.5), X)
    # identical rows may well give identical outputs
    assert divergence(1.0, 0.69, np.full((4, 2), 0.5), np.ones((4, 2))) == ""
    assert divergence(1.0, 0.69, np.full((1, 2), 0.5), X[:1]) == ""


def test_continued_training_that_diverges_keeps_the_previous_model():
    X, y = make_classification(n_samples=300, n_features=5, random_state=1)
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=30, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    before = clf.predict_proba(X)
    clf.set_params(learning_rate_init=1e3)
    caught = _fit(clf, X, y)
    assert len(caught) == 1
    np.testing.assert_allclose(clf.predict_proba(X), before, rtol=1e-6, atol=1e-9)


def test_with_early_stopping_a_better_validation_loss_vetoes_the_revert():
    # 50 rows of 100 features: the data-driven start overfits the training split, so the best
    # validation epoch has a higher training loss than the start; judged on the training loss alone
    # the fit counted as diverged and went back to a start that scores worse on held-out data
    rng = np.random.RandomState(0)
    X, X_test = rng.normal(size=(50, 100)), rng.normal(size=(500, 100))
    density = UGMMDensityEstimator(hidden_layer_sizes=(8,), max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        caught = _fit(density, X)
    assert caught == []
    assert density.best_validation_score_ > density.validation_scores_[0]
    start = UGMMDensityEstimator(hidden_layer_sizes=(8,), max_iter=20, random_state=0, learning_rate_init=1e-12).fit(X)
    assert density.score(X_test) > start.score(X_test)
