"""Tabular data as it comes: class weights and categorical columns (issue 20)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_iris, make_classification
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_sample_weight

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator, load_model, save_model

FAST = dict(hidden_layer_sizes=(8,), max_iter=15, random_state=0, n_iter_no_change=np.inf)



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
    params = dict(hidden_layer_sizes=(16,), max_iter=60, n_iter_no_change=np.inf, random_state=0)
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


# ---------------------------------------------------------------------- categorical columns
def _table(n=240, seed=0):
    """A raw DataFrame with numeric, category, object and integer-category columns, and its labels."""
    rng = np.random.RandomState(seed)
    frame = pd.DataFrame(
        {
            "size": rng.lognormal(size=n),
            "colour": pd.Categorical(rng.choice(["red", "green", "blue"], n)),
            "shape": rng.choice(["round", "square"], n).astype(object),
            "grade": pd.Categorical(rng.choice([1, 2, 3, 5], n)),
        }
    )
    y = np.where((frame["colour"] == "red") ^ (frame["size"] > 1.0), "yes", "no")
    return frame, y


def _one_hot(frame):
    """The in-place one-hot encoding the classifier should build (categories sorted)."""
    blocks = []
    for name in frame.columns:
        column = frame[name]
        if name == "size":
            blocks.append(column.to_numpy(dtype=float)[:, None])
        else:
            values = np.asarray(column, dtype=object)
            categories = sorted(set(values))
            blocks.append((values[:, None] == np.asarray(categories, dtype=object)[None, :]).astype(float))
    return np.hstack(blocks)


def test_raw_dataframe_equals_the_one_hot_encoding():
    frame, y = _table()
    clf = UGMMClassifier(**FAST).fit(frame, y)
    encoder = clf.scaler_.encoder
    assert encoder.is_categorical.tolist() == [False, True, True, True]
    assert [c.tolist() for c in encoder.categories_] == [["blue", "green", "red"], ["round", "square"], [1, 2, 3, 5]]
    assert clf.n_features_in_ == 4 and list(clf.feature_names_in_) == list(frame.columns)
    assert clf.module_.layers[0].in_features == 1 + 3 + 2 + 4
    reference = UGMMClassifier(**FAST).fit(_one_hot(frame), y)
    assert clf.loss_curve_ == reference.loss_curve_
    np.testing.assert_array_equal(clf.predict_proba(frame), reference.predict_proba(_one_hot(frame)))
    # it learns the interaction of a category with a numeric column
    assert UGMMClassifier(hidden_layer_sizes=(8,), max_iter=60, n_iter_no_change=np.inf, random_state=0).fit(frame, y).score(frame, y) > 0.9


@pytest.mark.parametrize(
    "categorical_features",
    [["colour", "shape", "grade"], [1, 2, 3], [False, True, True, True]],
    ids=["names", "indices", "mask"],
)
def test_categorical_features_by_name_index_or_mask(categorical_features):
    frame, y = _table()
    by_dtype = UGMMClassifier(**FAST).fit(frame, y)
    chosen = UGMMClassifier(categorical_features=categorical_features, **FAST).fit(frame, y)
    np.testing.assert_array_equal(chosen.predict_proba(frame), by_dtype.predict_proba(frame))


def test_integer_columns_of_an_array_as_categories():
    frame, y = _table()
    X = np.column_stack([frame["size"], frame["grade"].astype(int)])
    clf = UGMMClassifier(categorical_features=[1], **FAST).fit(X, y)
    assert clf.scaler_.encoder.categories_[0].tolist() == [1, 2, 3, 5]
    assert clf.module_.layers[0].in_features == 5
    assert UGMMClassifier(categorical_features=None, **FAST).fit(X, y).module_.layers[0].in_features == 2


def test_categorical_errors():
    frame, y = _table()
    clf = UGMMClassifier(**FAST).fit(frame, y)
    many = frame.assign(shape=[f"id{i}" for i in range(len(frame))])
    with pytest.raises(ValueError, match="'shape' has 480 categories; at most 255.*TargetEncoder"):
        UGMMClassifier(**FAST).fit(pd.concat([many, many.assign(shape=many["shape"] + "x")]), np.r_[y, y])
    mixed = frame.assign(shape=frame["shape"].where(frame.index != 3, 7))
    with pytest.raises(ValueError, match="mixes values of different types"):
        UGMMClassifier(**FAST).fit(mixed, y)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        clf.predict(frame.assign(size=np.where(frame.index == 3, np.inf, frame["size"])))
    with pytest.raises(ValueError, match="not a valid feature name"):
        UGMMClassifier(categorical_features=["color"], **FAST).fit(frame, y)
    with pytest.raises(ValueError, match="'size' is not categorical but holds values that are not numbers"):
        UGMMClassifier(categorical_features=["colour"], **FAST).fit(frame.assign(size=frame["shape"]), y)


def test_missing_and_unseen_categories_are_missing_inputs():
    frame, y = _table()
    clf = UGMMClassifier(**FAST).fit(frame, y)
    unseen = frame.assign(shape=frame["shape"].where(frame.index != 3, "triangle"))
    missing = frame.assign(shape=frame["shape"].where(frame.index != 3, None))
    encoded = clf.scaler_.encoder.transform(missing.to_numpy())
    shape_inputs = np.isnan(encoded[3])
    assert shape_inputs.sum() == len(clf.scaler_.encoder.categories_[1]) and not np.isnan(encoded[2]).any()
    # an unseen category is a missing one; the other rows do not change
    np.testing.assert_array_equal(clf.predict_proba(unseen), clf.predict_proba(missing))
    # (to rounding: a batch with a missing entry takes the masked route, a complete one the prepared one)
    np.testing.assert_allclose(clf.predict_proba(missing)[:3], clf.predict_proba(frame)[:3], rtol=1e-12, atol=1e-15)
    # the network sees the column's inputs as missing: the same as NaN in its one-hot encoding
    one_hot = UGMMClassifier(categorical_features=None, **FAST).fit(clf.scaler_.encoder.transform(frame.to_numpy()), y)
    np.testing.assert_allclose(
        one_hot.predict_proba(encoded), clf.predict_proba(missing), rtol=1e-12, atol=1e-12
    )
    numeric_nan = frame.assign(size=np.where(frame.index == 3, np.nan, frame["size"]))
    assert np.all(np.isfinite(clf.predict_proba(numeric_nan)))
    # training with missing categories and missing numbers
    fitted = UGMMClassifier(**FAST).fit(missing.assign(size=numeric_nan["size"]), y)
    assert np.all(np.isfinite(fitted.predict_proba(missing)))


@pytest.mark.parametrize("dtype", ["Int64", "Float64", "boolean"])
def test_nullable_numeric_columns_beside_categories_take_pd_na_as_missing(dtype):
    # with a categorical column the frame reaches the encoder as objects, where pd.NA is no float
    frame, y = _table()
    values = (frame["size"] > 1.0) if dtype == "boolean" else (frame["size"] * 10).round()
    nullable = pd.array(values.astype(float if dtype == "Float64" else values.dtype), dtype=dtype)
    nullable[[3, 7]] = pd.NA
    with_na = frame.assign(size=nullable)
    with_nan = frame.assign(size=np.where(pd.isna(nullable), np.nan, values.astype(float)))
    clf = UGMMClassifier(**FAST).fit(with_na, y)
    reference = UGMMClassifier(**FAST).fit(with_nan, y)
    np.testing.assert_array_equal(clf.predict_proba(with_na), reference.predict_proba(with_nan))
    assert np.isnan(clf.scaler_.encoder.transform(with_na.to_numpy())[[3, 7], 0]).all()


@pytest.mark.parametrize("with_categories", [False, True])
@pytest.mark.parametrize(
    "column",
    [pd.date_range("2020-01-01", periods=5), pd.date_range("2020-01-01", periods=5, tz="UTC"),
     pd.to_timedelta(range(5), unit="h"), pd.period_range("2020-01", periods=5, freq="M")],
    ids=["datetime", "datetime-tz", "timedelta", "period"],
)
def test_date_and_duration_columns_are_refused_by_name(column, with_categories):
    X = pd.DataFrame({"size": np.arange(5.0), "when": column})
    if with_categories:
        X["colour"] = pd.Categorical(list("abcab"))
    with pytest.raises(ValueError, match=r"Column\(s\) 'when' \(.*\) hold dates or durations"):
        UGMMClassifier(**FAST).fit(X, [0, 1, 0, 1, 0])
    fitted = UGMMClassifier(**FAST).fit(X.drop(columns="when"), [0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="hold dates or durations"):
        fitted.predict(X)
    with pytest.raises(ValueError, match="hold dates or durations"):
        UGMMDensityEstimator(max_iter=2).fit(X[["size", "when"]])


def test_exactly_255_categories_are_accepted():
    rng = np.random.RandomState(0)
    frame = pd.DataFrame({"x": rng.normal(size=510), "code": [f"c{i % 255}" for i in range(510)]})
    y = rng.randint(0, 2, size=510)
    clf = UGMMClassifier(hidden_layer_sizes=(4,), max_iter=2, n_iter_no_change=np.inf, random_state=0).fit(frame, y)
    assert len(clf.scaler_.encoder.categories_[0]) == 255


def test_density_estimator_refuses_categorical_columns():
    frame, _ = _table()
    with pytest.raises(ValueError, match=r"UGMMDensityEstimator does not support categorical columns; got \['colour', 'shape', 'grade'\].*OneHotEncoder"):
        UGMMDensityEstimator(hidden_layer_sizes=(4,), max_iter=2).fit(frame)


def test_categorical_model_round_trips_through_save_model(tmp_path):
    frame, y = _table()
    clf = UGMMClassifier(**FAST).fit(frame, y)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm")
    assert [c.tolist() for c in loaded.scaler_.encoder.categories_] == [c.tolist() for c in clf.scaler_.encoder.categories_]
    np.testing.assert_array_equal(loaded.predict_proba(frame), clf.predict_proba(frame))
    loaded.partial_fit(frame, y)  # continues training on the raw table
    # categories the format cannot store (pd.cut's intervals) fit and predict, and refuse to be saved
    binned = frame.assign(size=pd.cut(frame["size"], bins=[-10, 0, 1, 10]))
    with pytest.raises(ValueError, match=r"Column 'size' has a category of type Interval .*astype\(str\)"):
        save_model(UGMMClassifier(**FAST).fit(binned, y), tmp_path / "binned.ugmm")
    assert not (tmp_path / "binned.ugmm").exists()

    from sklearn_ugmm._persistence import _digest

    def resaved(edit, name):
        content = torch.load(tmp_path / "clf.ugmm", weights_only=True)
        meta = json.loads(content["meta"])
        edit(meta["fitted"]["categorical"])
        content["meta"] = json.dumps(meta, sort_keys=True)
        content["sha256"] = _digest(content["meta"], content["tensors"])
        torch.save(content, tmp_path / name)
        return tmp_path / name

    def extra_category(categorical):
        categorical["categories"][0].append("purple")

    def repeated_category(categorical):
        categorical["categories"][1] = ["round", "round"]

    def object_category(categorical):
        categorical["categories"][1] = [{"a": 1}, "round"]

    def wrong_mask(categorical):
        categorical["is_categorical"] = [True, True, True, True]

    with pytest.raises(ValueError, match="do not match"):
        load_model(resaved(extra_category, "extra.ugmm"))  # one more input than the weights have
    with pytest.raises(ValueError, match="categories must be distinct"):
        load_model(resaved(repeated_category, "repeated.ugmm"))
    with pytest.raises(ValueError, match="strings or numbers"):
        load_model(resaved(object_category, "object.ugmm"))
    with pytest.raises(ValueError, match="category lists do not match"):
        load_model(resaved(wrong_mask, "mask.ugmm"))


def test_inspection_of_a_categorical_model():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from sklearn_ugmm.inspection import LayerDisplay, NeuronDisplay

    frame, y = _table()
    clf = UGMMClassifier(**FAST).fit(frame, y)
    layer = LayerDisplay.from_estimator(clf, layer=0)
    assert layer.input_names == [
        "size", "colour=blue", "colour=green", "colour=red", "shape=round", "shape=square",
        "grade=1", "grade=2", "grade=3", "grade=5",
    ]
    neuron = NeuronDisplay.from_estimator(clf, frame, layer=0, neuron=0)
    # the activations reaching the first layer are the encoded, scaled inputs
    from sklearn_ugmm.inspection._utils import layer_inputs

    np.testing.assert_allclose(layer_inputs(clf, frame, 0), clf.scaler_.transform(frame), rtol=1e-6, atol=1e-6)
    assert set(neuron.input_names) <= set(layer.input_names)
