"""Probabilistic queries (issue 18): the classifier's score_samples, marginal densities with NaN."""

import copy
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from sklearn_ugmm import UGMMClassifier
from sklearn_ugmm._objectives import label_values

FAST = dict(hidden_layer_sizes=(8,), max_iter=15, random_state=0)


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _reference_classifier_scores(clf, X):
    """log sum over the classes of exp(score), straight through a float64 copy of the module."""
    module = copy.deepcopy(clf.module_).double().eval()
    Xs = torch.as_tensor(clf.scaler_.transform(X), dtype=torch.float64)
    with torch.no_grad():
        if clf.objective == "discriminative":
            scores = module(Xs)
        else:
            labels = label_values(len(clf.classes_))
            columns = [module(torch.cat([Xs, torch.full((len(Xs), 1), float(v), dtype=Xs.dtype)], dim=1))[:, 0]
                       for v in labels]
            scores = torch.stack(columns, dim=1)
    return torch.logsumexp(scores, dim=1).numpy()


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_classifier_score_samples_matches_the_module(iris, objective):
    X, y = iris
    clf = UGMMClassifier(objective=objective, **FAST).fit(X, y)
    scores = clf.score_samples(X)
    assert scores.shape == (len(X),) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, _reference_classifier_scores(clf, X), rtol=1e-10, atol=1e-10)
    # the class probabilities are the scores' softmax: log p(c | x) = score_c - score_samples
    log_proba = clf.predict_log_proba(X)
    np.testing.assert_allclose(np.exp(log_proba).sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_classifier_score_samples_is_batched_and_row_independent(iris, objective):
    X, y = iris
    clf = UGMMClassifier(objective=objective, **FAST).fit(X, y)
    full = clf.score_samples(X)
    big = np.repeat(X, 30, axis=0)  # 4500 rows: two inference batches
    np.testing.assert_allclose(clf.score_samples(big)[::30], full, rtol=1e-12, atol=1e-12)
    order = np.random.RandomState(0).permutation(len(X))
    np.testing.assert_allclose(clf.score_samples(X[order]), full[order], rtol=1e-12, atol=1e-12)


def test_classifier_score_samples_ranks_far_inputs_below_training_inputs(iris):
    X, y = iris
    clf = UGMMClassifier(**FAST).fit(X, y)
    far = X[:20] + 20 * X.std(axis=0)
    assert clf.score_samples(far).max() < np.quantile(clf.score_samples(X), 0.01)


def test_classifier_score_samples_checks_fitted_and_input(iris):
    X, y = iris
    with pytest.raises(NotFittedError):
        UGMMClassifier().score_samples(X)
    clf = UGMMClassifier(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        clf.score_samples(X[:, :3])
