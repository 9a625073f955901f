"""Fitting is a transaction; the global generators are never touched; restored models train on.

Regression tests of issue 16's defects: a failed (re)fit leaves the estimator
exactly as it was, inference and persistence leave torch's and numpy's global
generators alone, a restored model continues ``partial_fit`` exactly as the
original, the fitted net holds no validation rows, and the density estimator
fits two samples.
"""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture
from skorch.callbacks import Callback

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator, load_model, save_model
from sklearn_ugmm._objectives import DiscriminativeObjective
from sklearn_ugmm.nn import AutoregressiveUGMM, UGMMNet

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

CLF = dict(hidden_layer_sizes=(6,), max_iter=4, random_state=0)
DENSITY = dict(hidden_layer_sizes=(6,), max_iter=4, random_state=0)


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


class _InterruptFirstBatch(Callback):
    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            raise KeyboardInterrupt


def _fingerprint(est, X):
    """Everything a user can observe of a fitted estimator on X."""
    out = est.predict_proba(X) if hasattr(est, "predict_proba") else est.score_samples(X)
    state = {k: v.clone() for k, v in est.module_.state_dict().items()}
    attrs = {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_")}
    history = [dict(row, batches=len(row["batches"])) for row in est.net_.history]
    return out, state, attrs, history


def _assert_unchanged(est, X, before):
    out, state, attrs, history = before
    now_out, now_state, now_attrs, now_history = _fingerprint(est, X)
    assert now_history == history
    np.testing.assert_array_equal(now_out, out)
    assert now_state.keys() == state.keys()
    for key in state:
        torch.testing.assert_close(now_state[key], state[key], rtol=0, atol=0)
    assert now_attrs.keys() == attrs.keys()
    for key, value in attrs.items():
        assert now_attrs[key] is value, key


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _nan_loss(output, target, **options):
    return torch.full((len(output),), float("nan"), dtype=output.dtype)


def _fail(action, est):
    """Run ``action(est)``, which must fail."""
    with pytest.raises((ValueError, RuntimeError, FloatingPointError, KeyboardInterrupt)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action(est)


def _classifier_failures(X, y, monkeypatch):
    """Name -> action: each starts a (re)fit that fails at one stage."""
    n = len(X)
    labels = np.where(y == 0, "neg", "pos")
    return dict([
        # validation: one class only, with another number of features
        ("validation", lambda est: est.fit(X[:, :3], np.zeros(n))),
        # preprocessing: values beyond float32 once scaled (no scaling asked for)
        ("preprocessing", lambda est: est.set_params(standardize=False).fit(X * 1e39, y)),
        ("initialisation", lambda est: (
            monkeypatch.setattr(UGMMNet, "init_from_data", _raise(RuntimeError("boom"))), est.fit(X, labels))),
        ("initialisation-interrupt", lambda est: (
            monkeypatch.setattr(UGMMNet, "init_from_data", _raise(KeyboardInterrupt())), est.fit(X, labels))),
        # the example: new labels and scaling, then a training loss that is no longer finite
        # (its weights of 1e38 no longer do that: weights are normalised before training)
        ("divergence", lambda est: est.set_params(learning_rate_init=1e30).fit(X * 1000 + 50, labels)),
        ("interrupt-before-first-epoch", lambda est: est.set_params(callbacks=[_InterruptFirstBatch()]).fit(X, labels)),
        # partial_fit keeps the resolved learning rate: its loss is made non-finite instead
        ("partial_fit-divergence", lambda est: (
            monkeypatch.setattr(DiscriminativeObjective, "per_sample_loss", staticmethod(_nan_loss)),
            est.partial_fit(X * 1000 + 50, y))),
        ("warm-start-divergence", lambda est: est.set_params(warm_start=True, learning_rate_init=1e30).fit(
            X * 1000 + 50, y)),
    ])


CLASSIFIER_STAGES = [
    "validation", "preprocessing", "initialisation", "initialisation-interrupt", "divergence",
    "interrupt-before-first-epoch", "partial_fit-divergence", "warm-start-divergence",
]


@pytest.mark.parametrize("stage", CLASSIFIER_STAGES)
def test_failed_classifier_refit_leaves_the_estimator_bit_identical(iris, stage, monkeypatch):
    X, y = iris
    est = UGMMClassifier(**CLF).fit(X, y)
    before = _fingerprint(est, X)
    _fail(_classifier_failures(X, y, monkeypatch)[stage], est)
    monkeypatch.undo()
    est.set_params(**CLF, standardize="auto", callbacks=None, warm_start=False, learning_rate_init="auto")
    _assert_unchanged(est, X, before)
    # and it can still be refitted, with another number of features too
    est.fit(X[:, :3], y)
    assert est.predict_proba(X[:, :3]).shape == (len(X), 3)


@pytest.mark.parametrize("stage", CLASSIFIER_STAGES[:6])
def test_failed_first_fit_leaves_the_classifier_unfitted(iris, stage, monkeypatch):
    X, y = iris
    est = UGMMClassifier(**CLF)
    _fail(_classifier_failures(X, y, monkeypatch)[stage], est)
    monkeypatch.undo()
    assert not [k for k in vars(est) if k.endswith("_") and not k.startswith("_")]
    with pytest.raises(NotFittedError):
        est.predict(X)


def _density_failures(X, monkeypatch):
    n = len(X)
    return dict([
        ("validation", lambda est: est.fit(X[:, :1], sample_weight=np.zeros(n))),
        ("preprocessing", lambda est: est.set_params(standardize=False).fit(X * 1e39)),
        ("mixture-start-interrupt", lambda est: (
            monkeypatch.setattr(GaussianMixture, "fit", _raise(KeyboardInterrupt())), est.fit(X * 3 + 1))),
        ("initialisation", lambda est: (
            monkeypatch.setattr(AutoregressiveUGMM, "init_from_data", _raise(RuntimeError("boom"))), est.fit(X))),
        ("divergence", lambda est: est.set_params(learning_rate_init=1e30).fit(X * 1000 + 50)),
        ("interrupt-before-first-epoch", lambda est: est.set_params(callbacks=[_InterruptFirstBatch()]).fit(X + 1)),
    ])


@pytest.mark.parametrize(
    "stage",
    ["validation", "preprocessing", "mixture-start-interrupt", "initialisation", "divergence",
     "interrupt-before-first-epoch"],
)
def test_failed_density_refit_leaves_the_estimator_bit_identical(iris, stage, monkeypatch):
    X = iris[0][:, :2]
    est = UGMMDensityEstimator(**DENSITY).fit(X)
    before = _fingerprint(est, X)
    _fail(_density_failures(X, monkeypatch)[stage], est)
    monkeypatch.undo()
    est.set_params(**DENSITY, standardize=True, callbacks=None, learning_rate_init="auto")
    _assert_unchanged(est, X, before)
    assert UGMMDensityEstimator(**DENSITY).fit(X).n_features_in_ == 2


def test_a_diverged_refit_that_keeps_its_start_is_a_completed_fit(iris):
    """Divergence without a NaN (issue 17) undoes the training, not the fit: it is committed."""
    X, y = iris
    labels = np.where(y == 0, "a", np.where(y == 1, "b", "c"))
    est = UGMMClassifier(**CLF).fit(X, y)
    old_scaler = est.scaler_
    with pytest.warns(ConvergenceWarning, match="diverged.*learning_rate_init"):
        est.set_params(learning_rate_init=1e6).fit(X * 1000 + 50, labels)
    assert list(est.classes_) == ["a", "b", "c"]
    assert est.n_iter_ == len(est.loss_curve_) > 0
    assert est.resolved_params_["learning_rate_init"] == 1e6
    assert est.scaler_ is not old_scaler
    np.testing.assert_allclose(est.scaler_.transform(X * 1000 + 50).mean(axis=0), 0, atol=1e-9)
    # the committed network is the fit's data-driven start: it still separates the classes
    assert est.score(X * 1000 + 50, labels) > 0.6


def test_ctrl_c_after_a_completed_epoch_still_keeps_that_epoch(iris):
    X, y = iris

    class Interrupt(Callback):
        def on_batch_end(self, net, training=False, **kwargs):
            if training and len(net.history) == 2:
                raise KeyboardInterrupt

    est = UGMMClassifier(**dict(CLF, batch_size=50, callbacks=[Interrupt()]))
    with pytest.warns(UserWarning, match="interrupted"):
        est.fit(X, y)
    assert est.n_iter_ == 1


def _global_states():
    return torch.random.get_rng_state().clone(), np.random.get_state()


def _assert_same_global_states(before):
    torch_state, np_state = before
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    now = np.random.get_state()
    assert now[0] == np_state[0] and np.array_equal(now[1], np_state[1]) and now[2:] == np_state[2:]


def test_global_generators_are_never_touched(iris, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sklearn_ugmm.inspection import LayerDisplay, NeuronDisplay, TrainingCurveDisplay

    X, y = iris
    torch.manual_seed(5)
    np.random.seed(5)
    before = _global_states()
    for objective in ("discriminative", "generative"):
        clf = UGMMClassifier(**dict(CLF, objective=objective, dropout=0.1)).fit(X, y)
        clf.partial_fit(X, y)
        clf.predict(X)
        clf.predict_proba(X)
        clf.predict_log_proba(X)
        save_model(clf, tmp_path / "clf.ugmm")
        loaded = load_model(tmp_path / "clf.ugmm")
        loaded.predict_proba(X[:3])
        pickle.loads(pickle.dumps(clf)).predict_proba(X[:3])
        NeuronDisplay.from_estimator(clf, X=X, y=y)
        LayerDisplay.from_estimator(clf)
        TrainingCurveDisplay.from_estimator(clf)
        plt.close("all")
    fresh = UGMMClassifier(**CLF)
    fresh.partial_fit(X, y, classes=[0, 1, 2])
    est = UGMMDensityEstimator(**DENSITY).fit(X[:, :2])
    est.partial_fit(X[:, :2])
    est.score_samples(X[:, :2])
    est.sample(5)
    save_model(est, tmp_path / "est.ugmm")
    load_model(tmp_path / "est.ugmm").score_samples(X[:, :2])
    NeuronDisplay.from_estimator(est, X=X[:, :2])
    plt.close("all")
    _assert_same_global_states(before)


def _weights(est):
    return {k: v.clone() for k, v in est.module_.state_dict().items()}


def _assert_same_training(a, b, X, y):
    fit_args = (X,) if y is None else (X, y)
    a.partial_fit(*fit_args)
    b.partial_fit(*fit_args)
    wa, wb = _weights(a), _weights(b)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=0)
    assert a.n_iter_ == b.n_iter_
    assert a.loss_curve_ == b.loss_curve_


@pytest.mark.parametrize("first", ["fit", "partial_fit"])
@pytest.mark.parametrize("restore", ["load_model", "pickle"])
def test_restored_classifier_trains_on_exactly_as_before(iris, tmp_path, first, restore):
    X, y = iris
    rng = np.random.RandomState(0)
    order = rng.permutation(len(X))
    X, y = X[order], y[order]
    clf = UGMMClassifier(**dict(CLF, dropout=0.1))
    if first == "fit":
        clf.fit(X, y)
    else:
        clf.partial_fit(X[:100], y[:100], classes=[0, 1, 2])
        clf.partial_fit(X[100:], y[100:])
    if restore == "load_model":
        save_model(clf, tmp_path / "clf.ugmm")
        restored = load_model(tmp_path / "clf.ugmm")
    else:
        restored = pickle.loads(pickle.dumps(clf))
    assert restored.n_iter_ == clf.n_iter_
    _assert_same_training(clf, restored, X, y)
    _assert_same_training(clf, restored, X[:50], y[:50])


@pytest.mark.parametrize("restore", ["load_model", "pickle"])
def test_restored_density_trains_on_exactly_as_before(iris, tmp_path, restore):
    X = iris[0][:, :2]
    est = UGMMDensityEstimator(**dict(DENSITY, dropout=0.1))
    est.partial_fit(X[:100])
    est.partial_fit(X[100:])
    if restore == "load_model":
        save_model(est, tmp_path / "est.ugmm")
        restored = load_model(tmp_path / "est.ugmm")
    else:
        restored = pickle.loads(pickle.dumps(est))
    _assert_same_training(est, restored, X, None)


def test_restored_model_trains_with_the_original_batch_size_and_penalty(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(**CLF).fit(X, y)
    save_model(clf, tmp_path / "clf.ugmm")
    loaded = load_model(tmp_path / "clf.ugmm")
    loaded.partial_fit(X, y)
    # the training rows of the fit (135 after the validation split) set both, as in memory:
    # batch_size="auto" is min(135, clip(135 // 10, 32, 200)) = 32
    assert loaded.net_.batch_size == clf.net_.batch_size == 32
    assert loaded.net_.penalty(loaded.module_).item() == pytest.approx(
        150.0 / 135 * loaded.module_.precision_penalty().item()
    )
    assert loaded.resolved_params_ == clf.resolved_params_


@pytest.mark.parametrize("Estimator", [UGMMClassifier, UGMMDensityEstimator])
def test_the_fitted_net_keeps_no_validation_rows(iris, Estimator):
    X, y = iris
    est = Estimator(**CLF).fit(X, y)
    assert est.net_.train_split is None
    assert len(est.validation_scores_) == est.n_iter_
    # pickles do not carry the held-out rows either
    assert b"valid" not in pickle.dumps(est.net_.train_split)


def test_density_fits_two_samples():
    X = np.array([[0.0, 1.0], [1.0, 3.0]])
    est = UGMMDensityEstimator(hidden_layer_sizes=(2,), max_iter=3, random_state=0).fit(X)
    assert np.all(np.isfinite(est.score_samples(X)))
    assert est.sample(3, random_state=0).shape == (3, 2)


def test_resolved_auto_parameters_are_visible_after_fit(iris, capsys):
    X, y = iris
    discriminative = UGMMClassifier(**CLF).fit(X, y)
    assert discriminative.resolved_params_ == {
        "hidden_layer_sizes": (6,),
        "output_layer": "product",
        "learning_rate_init": 3e-2,
        "batch_size": 32,
        "precision_penalty": 150.0,
        "averaging_epochs": 10.0,
        "standardize": "yeo-johnson",
        "input_dropout": 0.0,
        "conditional_weight": 0.0,
        "label_smoothing": 0.1,
        "n_train": 135,
    }
    generative = UGMMClassifier(**dict(CLF, objective="generative", batch_size=20, verbose=1)).fit(X, y)
    resolved = generative.resolved_params_
    assert (resolved["learning_rate_init"], resolved["batch_size"], resolved["precision_penalty"]) == (1e-2, 20, 0.0)
    assert resolved["averaging_epochs"] == 10.0 and resolved["standardize"] is True
    assert resolved["output_layer"] == "mixture" and resolved["conditional_weight"] == 0.2
    assert resolved["label_smoothing"] == 0.0  # (no labels to smooth)
    # the resolved values are valid parameters: they set the same fit
    explicit = UGMMClassifier(**dict(CLF, objective="generative"))
    explicit.set_params(**{k: v for k, v in resolved.items() if k != "n_train"})
    np.testing.assert_array_equal(explicit.fit(X, y).predict_proba(X), generative.predict_proba(X))
    assert "learning_rate_init=0.01" in capsys.readouterr().out
    density = UGMMDensityEstimator(**DENSITY).fit(X)
    assert density.resolved_params_["learning_rate_init"] == 3e-3
    assert density.resolved_params_["batch_size"] == 32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        big = UGMMDensityEstimator(**DENSITY).fit(np.random.RandomState(0).normal(size=(400, 2)))
    assert big.resolved_params_["learning_rate_init"] == 1e-2


def test_evaluation_network_is_built_once_per_fitted_state(iris):
    X, y = iris
    clf = UGMMClassifier(**CLF).fit(X, y)
    evaluation = clf._evaluation()
    assert all(p.dtype == torch.float64 for p in evaluation.parameters())
    for key, value in clf.module_.state_dict().items():
        torch.testing.assert_close(evaluation.state_dict()[key], value.double(), rtol=0, atol=0)
    clf.predict_proba(X)
    assert clf._evaluation() is evaluation
    clf.partial_fit(X, y)
    assert clf._evaluation() is not evaluation
    np.testing.assert_array_equal(clf.predict_proba(X), pickle.loads(pickle.dumps(clf)).predict_proba(X))


def test_concurrent_predictions_share_the_evaluation_network_safely(iris):
    from concurrent.futures import ThreadPoolExecutor

    X, y = iris
    clf = UGMMClassifier(**CLF).fit(X, y)
    expected = clf.predict_proba(X)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda rows: clf.predict_proba(X[rows]), [slice(None)] * 8))
    for result in results:
        np.testing.assert_array_equal(result, expected)


STRUCTURE_CHANGES = [
    (UGMMClassifier, {"hidden_layer_sizes": (7,)}, "layers.0.loc has shape (6, 4), the parameters give (7, 4)"),
    (UGMMClassifier, {"tie_means": True}, "layers.0.loc has shape (6, 4), the parameters give (6,)"),
    (UGMMClassifier, {"output_layer": "mixture"}, "'layers.1' is a UGMMProductLayer, the parameters give a UGMMLayer"),
    (UGMMClassifier, {"objective": "generative"}, "is a UGMMProductLayer"),
    (UGMMDensityEstimator, {"n_free_components": 3}, "free_loc has shape (4, 8), the parameters give (4, 3)"),
    (UGMMDensityEstimator, {"order": [3, 2, 1, 0]}, "order is [0, 1, 2, 3], the parameters give [3, 2, 1, 0]"),
]


@pytest.mark.parametrize("Estimator, change, difference", STRUCTURE_CHANGES)
@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_continued_training_refuses_a_network_the_parameters_no_longer_give(
    iris, tmp_path, Estimator, change, difference, how
):
    # a warm start or partial_fit trains the fitted network: one of another shape must not be trained
    # silently as if nothing changed (nor recorded with the new output layer and saved so)
    X, y = iris
    params = CLF if Estimator is UGMMClassifier else DENSITY
    est = Estimator(**params, warm_start=how == "warm_start").fit(X, y)
    before = _fingerprint(est, X)
    est.set_params(**change)
    with pytest.raises(ValueError, match="continues the fitted network") as error:
        est.fit(X, y) if how == "warm_start" else est.partial_fit(X, y)
    assert difference in str(error.value)
    # save_model would rebuild the network from the parameters: it refuses too, and writes nothing
    path = tmp_path / "model.ugmm"
    with pytest.raises(ValueError, match="no longer give the fitted network"):
        save_model(est, path)
    assert not path.exists()
    est.set_params(**{k: params.get(k, Estimator().get_params()[k]) for k in change})
    _assert_unchanged(est, X, before)
    est.fit(X, y) if how == "warm_start" else est.partial_fit(X, y)
    save_model(est, path)


@pytest.mark.parametrize("Estimator", [UGMMClassifier, UGMMDensityEstimator])
def test_continued_training_takes_the_new_dropout_and_kernel(iris, Estimator):
    X, y = iris
    est = Estimator(**(CLF if Estimator is UGMMClassifier else DENSITY), warm_start=True).fit(X, y)
    est.set_params(dropout=0.25, **({"kernel": "reference"} if Estimator is UGMMClassifier else {})).fit(X, y)
    rates = {m.dropout for m in est.module_.modules() if hasattr(m, "dropout")}
    assert rates == {0.25}
    if Estimator is UGMMClassifier:
        assert {m.kernel for m in est.module_.modules() if hasattr(m, "kernel")} == {"reference"}


@pytest.mark.filterwarnings("ignore:Got batch_size")
@pytest.mark.parametrize("Estimator", [UGMMClassifier, UGMMDensityEstimator])
@pytest.mark.parametrize("batch_size", ["auto", 64])
def test_partial_fit_batches_follow_each_calls_rows(iris, Estimator, batch_size):
    # a first chunk of 4 rows capped every later call's batches at 4 (a 3000-row call took 40 times longer)
    X, y = iris
    est = Estimator(hidden_layer_sizes=(4,), batch_size=batch_size, random_state=0)
    first = np.r_[0, 50, 100, 1]
    est.partial_fit(X[first], y[first], classes=[0, 1, 2]) if Estimator is UGMMClassifier else est.partial_fit(X[first])
    assert est.resolved_params_["batch_size"] == 4
    est.partial_fit(X, y) if Estimator is UGMMClassifier else est.partial_fit(X)
    expected = 64 if batch_size == 64 else (
        est._objective(X.shape[1], np.array([0, 1, 2]) if Estimator is UGMMClassifier else None).auto_values(150)["batch_size"]
    )
    assert est.net_.batch_size == est.resolved_params_["batch_size"] == expected > 4
    assert len(est.net_.history[-1]["batches"]) == math.ceil(150 / expected)
