"""save_model / load_model: JSON hyperparameters, weights-only tensors, tamper detection."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_iris

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator, load_model, save_model


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_classifier_round_trip_predicts_identically(iris, tmp_path, objective):
    X, y = iris
    labels = np.array(["a", "b", "c"], dtype=object)[y]
    df = pd.DataFrame(X, columns=list("pqrs"))
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=5, n_iter_no_change=np.inf, objective=objective, random_state=0).fit(df, labels)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm")
    assert type(loaded) is UGMMClassifier
    assert loaded.get_params() == clf.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(df), clf.predict_proba(df))
    np.testing.assert_array_equal(loaded.predict(df), clf.predict(df))
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    np.testing.assert_array_equal(loaded.feature_names_in_, clf.feature_names_in_)
    assert loaded.loss_curve_ == clf.loss_curve_ and loaded.n_iter_ == clf.n_iter_


def test_density_round_trip(tmp_path):
    X = np.random.RandomState(0).normal(size=(120, 3)) * [1.0, 5.0, 0.1] + [0.0, 10.0, -3.0]
    est = UGMMDensityEstimator(hidden_layer_sizes=(6,), max_iter=5, n_iter_no_change=np.inf, random_state=0).fit(X)
    save_model(est, tmp_path / "d.ugmm")
    loaded = load_model(tmp_path / "d.ugmm")
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    np.testing.assert_array_equal(loaded.sample(5, random_state=1), est.sample(5, random_state=1))


def test_loaded_model_can_continue_training(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=5, n_iter_no_change=np.inf, warm_start=True, random_state=0).fit(X, y)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm").fit(X, y)
    assert loaded.n_iter_ > clf.n_iter_


def test_tampered_file_is_refused(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=3, n_iter_no_change=np.inf, random_state=0).fit(X, y)
    path = tmp_path / "clf.ugmm"
    save_model(clf, path)
    content = torch.load(path, weights_only=True)
    content["tensors"]["module.layers.0.loc"] += 1.0
    torch.save(content, tmp_path / "weights.ugmm")
    with pytest.raises(ValueError, match="modified or corrupted"):
        load_model(tmp_path / "weights.ugmm")
    content = torch.load(path, weights_only=True)
    content["meta"] = content["meta"].replace('"max_iter": 3', '"max_iter": 4')
    torch.save(content, tmp_path / "meta.ugmm")
    with pytest.raises(ValueError, match="modified or corrupted"):
        load_model(tmp_path / "meta.ugmm")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bytes.ugmm").write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        load_model(tmp_path / "bytes.ugmm")


def test_pickle_payload_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    path = tmp_path / "evil.ugmm"
    path.write_bytes(pickle.dumps({"meta": "{}", "tensors": {}, "sha256": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="not a readable"):
        load_model(path)


def test_mismatched_file_is_refused(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=3, n_iter_no_change=np.inf, random_state=0).fit(X, y)
    path = tmp_path / "clf.ugmm"
    save_model(clf, path)
    content = torch.load(path, weights_only=True)
    # hyperparameters that disagree with the weights, with a recomputed checksum
    from sklearn_ugmm._persistence import _digest

    content["meta"] = content["meta"].replace('"hidden_layer_sizes": {"__tuple__": [6]}', '"hidden_layer_sizes": {"__tuple__": [7]}')
    content["sha256"] = _digest(content["meta"], content["tensors"])
    torch.save(content, tmp_path / "mismatch.ugmm")
    with pytest.raises(ValueError, match="do not match"):
        load_model(tmp_path / "mismatch.ugmm")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sklearn-ugmm model"):
        load_model(tmp_path / "other.pt")


def test_unsaveable_parameters_and_unfitted(iris, tmp_path):
    X, y = iris
    from sklearn.exceptions import NotFittedError
    from skorch.callbacks import Callback

    with pytest.raises(NotFittedError):
        save_model(UGMMClassifier(), tmp_path / "x.ugmm")
    clf = UGMMClassifier(hidden_layer_sizes=(6,), max_iter=2, n_iter_no_change=np.inf, callbacks=[Callback()], random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="cannot be stored safely"):
        save_model(clf, tmp_path / "x.ugmm")
