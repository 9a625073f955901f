"""UGMMClassifier(label_smoothing=...): the smoothed cross-entropy and the temperature fitted after it."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_wine, make_classification
from skorch.callbacks import Callback

from sklearn_ugmm import UGMMClassifier, load_model, save_model
from sklearn_ugmm._objectives import (
    AUTO_LABEL_SMOOTHING,
    TEMPERATURE_BOUND,
    DiscriminativeObjective,
    fitted_temperature,
)

from _model_files import resave_with_meta

FAST = dict(hidden_layer_sizes=(8,), max_iter=15, n_iter_no_change=np.inf, random_state=0)


@pytest.fixture(scope="module")
def wine():
    return load_wine(return_X_y=True)


def _plain_smoothed_cross_entropy(logits, y, eps):
    """``(1 - eps) * CE(y) + eps * mean_c CE(c)``: the smoothed targets' cross-entropy, written out."""
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -(1 - eps) * log_p[np.arange(len(y)), y] - eps * log_p.mean(axis=1)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_training_loss_is_the_smoothed_cross_entropy(eps):
    objective = DiscriminativeObjective(3, (4,), 5, dropout=0.0, tie_means=False)
    forward, loss = objective.training_loss({"label_smoothing": eps})
    assert forward is None
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(7, 5)) * 3
    y = rng.randint(5, size=7)
    target = torch.as_tensor(np.c_[y, np.ones(7)])
    got = loss(torch.as_tensor(logits), target).numpy()
    np.testing.assert_allclose(got, _plain_smoothed_cross_entropy(logits, y, eps), rtol=1e-12)


def test_files_without_the_option_train_unsmoothed():
    objective = DiscriminativeObjective(3, (4,), 5, dropout=0.0, tie_means=False)
    assert objective.training_loss({})[1] is DiscriminativeObjective.per_sample_loss


def _weighted_log_loss(scores, y, w, t):
    log_p = t * scores - np.log(np.exp(t * scores).sum(axis=1, keepdims=True))
    return -(w * log_p[np.arange(len(y)), y]).sum() / w.sum()


def test_fitted_temperature_minimises_the_weighted_log_loss_within_the_bound():
    rng = np.random.RandomState(0)
    y = rng.randint(3, size=40)
    # informative scores with errors, whose best temperature lies inside the bounds
    scores = rng.normal(size=(40, 3))
    scores[np.arange(40), y] += 1.0
    w = rng.uniform(0.1, 2.0, size=40)
    t = fitted_temperature(torch.as_tensor(scores), torch.as_tensor(y), torch.as_tensor(w))
    grid = np.exp(np.linspace(-np.log(TEMPERATURE_BOUND), np.log(TEMPERATURE_BOUND), 20001))
    best = grid[np.argmin([_weighted_log_loss(scores, y, w, g) for g in grid])]
    assert 1 / TEMPERATURE_BOUND * 1.1 < t < TEMPERATURE_BOUND / 1.1  # an inner minimum (0.96)
    assert t == pytest.approx(best, rel=1e-3)
    # the weights matter: without them the minimum is elsewhere (1.10)
    t_uniform = fitted_temperature(torch.as_tensor(scores), torch.as_tensor(y), torch.ones(40, dtype=torch.float64))
    assert t_uniform == pytest.approx(grid[np.argmin([_weighted_log_loss(scores, y, np.ones(40), g) for g in grid])], rel=1e-3)
    assert abs(t_uniform - t) > 0.1


def test_fitted_temperature_stops_at_the_bounds():
    y = torch.tensor([0, 1, 0, 1])
    separated = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    w = torch.ones(4, dtype=torch.float64)
    # separated rows: the log-loss falls without end as t grows
    assert fitted_temperature(separated, y, w) == pytest.approx(TEMPERATURE_BOUND, rel=1e-6)
    # every row wrong: the flattest scores allowed
    assert fitted_temperature(-separated, y, w) == pytest.approx(1 / TEMPERATURE_BOUND, rel=1e-6)
    assert fitted_temperature(separated, y, w, bound=5.0) == pytest.approx(5.0, rel=1e-6)


def test_auto_resolves_to_smoothing_only_with_a_validation_split(wine):
    X, y = wine
    clf = UGMMClassifier(**FAST).fit(X, y)
    assert clf.label_smoothing == "auto"  # the parameter is left as given
    assert clf.resolved_params_["label_smoothing"] == AUTO_LABEL_SMOOTHING
    assert 1 / TEMPERATURE_BOUND <= clf.temperature_ <= TEMPERATURE_BOUND
    plain = UGMMClassifier(early_stopping=False, **FAST).fit(X, y)
    assert plain.resolved_params_["label_smoothing"] == 0.0 and plain.temperature_ == 1.0
    streamed = UGMMClassifier(**FAST).partial_fit(X, y, classes=np.unique(y))
    assert streamed.resolved_params_["label_smoothing"] == 0.0 and streamed.temperature_ == 1.0
    explicit = UGMMClassifier(label_smoothing=0.0, **FAST).fit(X, y)
    assert explicit.resolved_params_["label_smoothing"] == 0.0 and explicit.temperature_ == 1.0
    generative = UGMMClassifier(objective="generative", **FAST).fit(X, y)
    assert generative.resolved_params_["label_smoothing"] == 0.0 and generative.temperature_ == 1.0


def test_smoothing_changes_training_and_the_temperature_only_the_probabilities(wine):
    X, y = wine
    smoothed = UGMMClassifier(label_smoothing=0.2, **FAST).fit(X, y)
    plain = UGMMClassifier(label_smoothing=0.0, **FAST).fit(X, y)
    assert smoothed.loss_curve_ != plain.loss_curve_
    proba = smoothed.predict_proba(X)
    labels = smoothed.predict(X)
    t = smoothed.temperature_
    assert t != 1.0
    smoothed.temperature_ = 1.0
    untempered = smoothed.predict_proba(X)
    np.testing.assert_array_equal(smoothed.predict(X), labels)
    smoothed.temperature_ = t
    # softmax(t * s) = p ** t / sum p ** t, where p = softmax(s)
    expected = untempered**t / (untempered**t).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, expected, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(np.exp(smoothed.predict_log_proba(X)), proba, rtol=1e-9)


class _HeldOut(Callback):
    """Keeps the validation rows (network inputs and packed targets) that the fit holds out."""

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        self.rows_ = (np.asarray(dataset_valid.X), np.asarray(dataset_valid.y))


def test_temperature_minimises_the_weighted_log_loss_of_the_validation_split():
    # noisy labels: the best temperature lies inside its bounds (about 1.73; wine's split is separated)
    X, y = make_classification(
        n_samples=400, n_features=6, n_informative=4, n_classes=3, flip_y=0.1, class_sep=0.8, random_state=0
    )
    weights = np.random.RandomState(1).uniform(0.2, 3.0, size=len(y))
    held_out = _HeldOut()
    clf = UGMMClassifier(label_smoothing=0.3, validation_fraction=0.3, callbacks=[held_out], **FAST)
    clf.fit(X, y, sample_weight=weights)
    inputs, packed = held_out.rows_
    with torch.no_grad():
        scores = clf._evaluation_module(torch.as_tensor(inputs, dtype=torch.float64))
    expected = fitted_temperature(
        scores, torch.as_tensor(packed[:, 0]).long(), torch.as_tensor(packed[:, -1], dtype=torch.float64)
    )
    assert clf.temperature_ == pytest.approx(expected, rel=1e-12)
    assert 1.1 < clf.temperature_ < TEMPERATURE_BOUND / 1.05
    # the split's rows carry their (unequal) sample weights into the fit
    assert len(np.unique(packed[:, -1])) > 1


def test_continued_partial_fit_keeps_the_temperature(wine):
    X, y = wine
    clf = UGMMClassifier(label_smoothing=0.2, **FAST).fit(X, y)
    t = clf.temperature_
    clf.partial_fit(X, y)
    assert clf.temperature_ == t
    assert clf.resolved_params_["label_smoothing"] == 0.2  # the fit's values go on


def test_generative_objective_refuses_smoothing(wine):
    X, y = wine
    clf = UGMMClassifier(objective="generative", label_smoothing=0.1, **FAST)
    with pytest.raises(ValueError, match="label_smoothing"):
        clf.fit(X, y)
    assert not hasattr(clf, "classes_")
    with pytest.raises(ValueError, match="label_smoothing"):
        clf.partial_fit(X, y, classes=np.unique(y))
    assert not hasattr(clf, "classes_")
    # a fitted generative model refuses to train on with it, but still predicts (training only)
    fitted = UGMMClassifier(objective="generative", **FAST).fit(X, y)
    proba = fitted.predict_proba(X)
    fitted.set_params(label_smoothing=0.2, warm_start=True)
    np.testing.assert_array_equal(fitted.predict_proba(X), proba)
    with pytest.raises(ValueError, match="label_smoothing"):
        fitted.fit(X, y)
    np.testing.assert_array_equal(fitted.predict_proba(X), proba)
    with pytest.raises(ValueError):
        UGMMClassifier(label_smoothing=1.0).fit(X, y)


def test_round_trip_keeps_the_temperature(wine, tmp_path):
    X, y = wine
    clf = UGMMClassifier(label_smoothing=0.2, **FAST).fit(X, y)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm")
    assert loaded.temperature_ == clf.temperature_
    assert loaded.resolved_params_ == clf.resolved_params_
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_files_saved_before_the_option_load_unsmoothed_and_untempered(wine, tmp_path):
    X, y = wine
    clf = UGMMClassifier(label_smoothing=0.0, **FAST).fit(X, y)
    save_model(clf, tmp_path / "new.ugmm")

    def drop(meta):
        del meta["params"]["label_smoothing"]
        del meta["fitted"]["resolved_params_"]["label_smoothing"]
        del meta["fitted"]["temperature_"]

    loaded = load_model(resave_with_meta(tmp_path / "new.ugmm", tmp_path / "old.ugmm", drop))
    assert loaded.label_smoothing == 0.0
    assert loaded.resolved_params_["label_smoothing"] == 0.0
    assert loaded.temperature_ == 1.0
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


@pytest.mark.parametrize(
    "where, value",
    [("temperature_", 0.0), ("temperature_", -1.0), ("temperature_", "2"), ("temperature_", float("inf")),
     ("label_smoothing", 1.0), ("label_smoothing", -0.1), ("label_smoothing", None)],
)
def test_invalid_saved_values_are_refused(wine, tmp_path, where, value):
    X, y = wine
    clf = UGMMClassifier(**FAST).fit(X, y)
    save_model(clf, tmp_path / "new.ugmm")

    def edit(meta):
        if where == "temperature_":
            meta["fitted"]["temperature_"] = value
        else:
            meta["fitted"]["resolved_params_"]["label_smoothing"] = value

    path = resave_with_meta(tmp_path / "new.ugmm", tmp_path / "bad.ugmm", edit)
    with pytest.raises(ValueError):
        load_model(path)
