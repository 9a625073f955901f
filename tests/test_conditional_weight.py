"""UGMMClassifier(conditional_weight=...): the generative objective's hybrid joint + conditional loss."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris

from sklearn_ugmm import UGMMClassifier, load_model, save_model
from sklearn_ugmm._objectives import GenerativeObjective, hybrid_loss, label_values

from _model_files import resave_with_meta

FAST = dict(hidden_layer_sizes=(4,), max_iter=3, n_iter_no_change=np.inf, random_state=0)


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


def test_resolved_value(iris):
    X, y = iris
    auto = GenerativeObjective.auto["conditional_weight"]
    clf = UGMMClassifier(objective="generative", **FAST).fit(X, y)
    assert clf.conditional_weight == "auto"  # the parameter is left as given
    assert clf.resolved_params_["conditional_weight"] == auto
    assert UGMMClassifier(**FAST).fit(X, y).resolved_params_["conditional_weight"] == 0.0
    clf = UGMMClassifier(objective="generative", conditional_weight=0.5, **FAST).fit(X, y)
    assert clf.resolved_params_["conditional_weight"] == 0.5
    with pytest.raises(ValueError):
        UGMMClassifier(objective="generative", conditional_weight=-1.0).fit(X, y)


def test_loss_is_joint_score_plus_weighted_cross_entropy_of_the_class_scores():
    n_features, n_classes, weight = 3, 4, 0.7
    objective = GenerativeObjective(n_features, (5,), n_classes, dropout=0.0, tie_means=False)
    module = objective.new_module(torch.Generator().manual_seed(0)).eval()
    Xs = np.random.RandomState(0).normal(size=(6, n_features)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 1, 0])
    X = torch.as_tensor(objective.network_inputs(Xs, y))
    target = torch.as_tensor(y, dtype=torch.float32)[:, None]
    forward, per_sample_loss = objective.training_loss({"conditional_weight": weight})
    output = forward(module, X)
    losses = per_sample_loss(output, target)
    # by hand: the root with the label input set to each class, softmax over the classes
    values = label_values(n_classes)
    with torch.no_grad():
        scores = torch.stack(
            [module(torch.cat([X[:, :n_features], torch.full((6, 1), float(v))], dim=1))[:, 0] for v in values], dim=1
        )
    joint = scores[torch.arange(6), torch.as_tensor(y)]
    expected = -joint - weight * torch.log_softmax(scores, dim=1)[torch.arange(6), torch.as_tensor(y)]
    torch.testing.assert_close(output[:, 0], joint, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses.detach(), expected, rtol=1e-5, atol=1e-5)
    # weight 0: the paper's loss, through the module's own output
    forward, per_sample_loss = objective.training_loss({"conditional_weight": 0.0})
    assert forward is None and per_sample_loss is GenerativeObjective.per_sample_loss
    assert objective.training_loss({})[0] is None  # resolved parameters saved before the option


def test_weight_zero_trains_exactly_as_the_joint_objective(iris, monkeypatch):
    X, y = iris
    params = dict(objective="generative", hidden_layer_sizes=(6,), max_iter=5, n_iter_no_change=np.inf, random_state=0)
    plain = UGMMClassifier(conditional_weight=0.0, **params).fit(X, y)
    assert plain.net_.output_fn is None
    assert plain.net_.criterion__per_sample_loss is GenerativeObjective.per_sample_loss
    # the hybrid route with weight 0 computes the same loss (up to rounding)
    monkeypatch.setattr(
        GenerativeObjective, "training_loss",
        lambda self, resolved: (self.joint_and_class_scores, lambda out, t: hybrid_loss(out, t, weight=0.0)),
    )
    routed = UGMMClassifier(conditional_weight=0.0, **params).fit(X, y)
    np.testing.assert_allclose(routed.loss_curve_, plain.loss_curve_, rtol=1e-4)
    np.testing.assert_allclose(routed.predict_proba(X), plain.predict_proba(X), rtol=1e-3, atol=1e-5)


def test_positive_weight_changes_training_and_the_validation_loss(iris):
    X, y = iris
    params = dict(objective="generative", hidden_layer_sizes=(6,), max_iter=5, n_iter_no_change=np.inf, random_state=0)
    plain = UGMMClassifier(conditional_weight=0.0, **params).fit(X, y)
    hybrid = UGMMClassifier(conditional_weight=1.0, **params).fit(X, y)
    assert hybrid.net_.output_fn is not None
    assert hybrid.loss_curve_ != plain.loss_curve_
    # the validation loss (early stopping's monitor) goes through the same hybrid output
    assert all(np.isfinite(row["valid_loss"]) for row in hybrid.net_.history)
    assert hybrid.predict_proba(X).shape == (150, 3)


def test_round_trip_keeps_the_weight(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(objective="generative", conditional_weight=0.5, warm_start=True, **FAST).fit(X, y)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm")
    assert loaded.get_params() == clf.get_params()
    assert loaded.resolved_params_ == clf.resolved_params_
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.fit(X, y).resolved_params_["conditional_weight"] == 0.5


def test_files_saved_before_the_option_load_with_weight_zero(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(objective="generative", **FAST).fit(X, y)
    save_model(clf, tmp_path / "new.ugmm")

    def drop(meta):
        del meta["params"]["conditional_weight"]
        del meta["fitted"]["resolved_params_"]["conditional_weight"]

    loaded = load_model(resave_with_meta(tmp_path / "new.ugmm", tmp_path / "old.ugmm", drop))
    assert loaded.conditional_weight == 0.0
    assert loaded.resolved_params_["conditional_weight"] == 0.0
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


@pytest.mark.parametrize("value", [-1.0, "1", None, float("inf")])
def test_invalid_saved_weights_are_refused(iris, tmp_path, value):
    X, y = iris
    clf = UGMMClassifier(objective="generative", **FAST).fit(X, y)
    save_model(clf, tmp_path / "new.ugmm")

    def edit(meta):
        meta["fitted"]["resolved_params_"]["conditional_weight"] = value

    path = resave_with_meta(tmp_path / "new.ugmm", tmp_path / "bad.ugmm", edit)
    with pytest.raises(ValueError):
        load_model(path)
