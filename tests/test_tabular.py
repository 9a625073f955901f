"""Tabular data as it comes: class weights (issue 20)."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_iris, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_sample_weight

from sklearn_ugmm import UGMMClassifier, load_model, save_model

FAST = dict(hidden_layer_sizes=(8,), max_iter=15, random_state=0)


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


# ---------------------------------------------------------------------- class_weight
@pytest.mark.parametrize("class_weight", ["balanced", {0: 3.0, 1: 0.5, 2: 1.5}, {2: 4.0}])
@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_class_weight_is_the_equivalent_sample_weight(iris, class_weight, objective):
    X, y = iris
    keep = np.r_[0:50, 50:80, 100:115]  # unequal classes, so "balanced" is not uniform
    X, y = X[keep], y[keep]
    weighted = UGMMClassifier(class_weight=class_weight, objective=objective, **FAST).fit(X, y)
    equivalent = UGMMClassifier(objective=objective, **FAST).fit(X, y, sample_weight=compute_sample_weight(class_weight, y))
    assert weighted.loss_curve_ == equivalent.loss_curve_
    np.testing.assert_array_equal(weighted.predict_proba(X), equivalent.predict_proba(X))
    unweighted = UGMMClassifier(objective=objective, **FAST).fit(X, y)
    assert weighted.loss_curve_ != unweighted.loss_curve_


def test_class_weight_multiplies_sample_weight(iris):
    X, y = iris
    sample_weight = np.random.RandomState(0).uniform(0.5, 2.0, size=len(y))
    class_weight = {0: 2.0, 1: 1.0, 2: 0.25}
    weighted = UGMMClassifier(class_weight=class_weight, **FAST).fit(X, y, sample_weight=sample_weight)
    product = sample_weight * compute_sample_weight(class_weight, y)
    equivalent = UGMMClassifier(**FAST).fit(X, y, sample_weight=product)
    np.testing.assert_array_equal(weighted.predict_proba(X), equivalent.predict_proba(X))


def test_class_weight_with_string_labels(iris):
    X, y = iris
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    weighted = UGMMClassifier(class_weight={"setosa": 0.1}, **FAST).fit(X, labels)
    equivalent = UGMMClassifier(**FAST).fit(X, labels, sample_weight=np.where(y == 0, 0.1, 1.0))
    np.testing.assert_array_equal(weighted.predict_proba(X), equivalent.predict_proba(X))


def test_balanced_class_weight_improves_balanced_accuracy():
    X, y = make_classification(
        n_samples=1200, n_features=6, n_informative=3, weights=[0.93, 0.07], class_sep=0.6,
        flip_y=0.02, random_state=0,
    )
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    params = dict(hidden_layer_sizes=(16,), max_iter=60, random_state=0)
    plain = UGMMClassifier(**params).fit(X_train, y_train)
    balanced = UGMMClassifier(class_weight="balanced", **params).fit(X_train, y_train)
    plain_score = balanced_accuracy_score(y_test, plain.predict(X_test))
    balanced_score = balanced_accuracy_score(y_test, balanced.predict(X_test))
    assert balanced_score > plain_score + 0.05, (plain_score, balanced_score)
    # the minority class is predicted more often, as the weights ask
    assert np.mean(balanced.predict(X_test) == 1) > np.mean(plain.predict(X_test) == 1)


def test_partial_fit_with_class_weight(iris):
    X, y = iris
    class_weight = {0: 2.0, 1: 1.0, 2: 0.5}
    params = dict(hidden_layer_sizes=(8,), random_state=0)
    weighted = UGMMClassifier(class_weight=class_weight, **params)
    equivalent = UGMMClassifier(**params)
    for batch in np.array_split(np.random.RandomState(0).permutation(len(y)), 3):
        # a batch may lack a class: the dict still applies to the classes it holds
        batch = batch[y[batch] != 2] if len(batch) < 50 else batch
        weighted.partial_fit(X[batch], y[batch], classes=[0, 1, 2])
        equivalent.partial_fit(
            X[batch], y[batch], classes=[0, 1, 2], sample_weight=np.array([class_weight[c] for c in y[batch]])
        )
    np.testing.assert_array_equal(weighted.predict_proba(X), equivalent.predict_proba(X))
    with pytest.raises(ValueError, match="not supported for partial_fit.*compute_class_weight"):
        UGMMClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])


@pytest.mark.parametrize(
    "class_weight, match",
    [
        ("uniform", "The 'class_weight' parameter"),
        ([1.0, 2.0, 3.0], "The 'class_weight' parameter"),
        ({0: -1.0}, "non-negative finite numbers; got -1.0 for class 0"),
        ({0: np.inf}, "non-negative finite numbers"),
        ({0: "heavy"}, "non-negative finite numbers"),
        ({0: 1.0, 7: 2.0}, r"The classes, \[1, 2\], are not in class_weight"),
        ({0: 0.0, 1: 0.0, 2: 0.0}, "at least one positive entry"),
    ],
)
def test_bad_class_weight_is_refused(iris, class_weight, match):
    X, y = iris
    with pytest.raises(ValueError, match=match):
        UGMMClassifier(class_weight=class_weight, **FAST).fit(X, y)


@pytest.mark.parametrize("class_weight", ["balanced", {0: 2.0, 2: 0.5}, {"a": 2.0, "c": 0.5}])
def test_class_weight_round_trips_through_save_model(iris, tmp_path, class_weight):
    X, y = iris
    if "a" in class_weight:
        y = np.array(["a", "b", "c"])[y]
    clf = UGMMClassifier(class_weight=class_weight, **FAST).fit(X, y)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm")
    assert loaded.get_params() == clf.get_params()
    assert type(loaded.class_weight) is type(class_weight)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
