"""UGMMClassifier in real scikit-learn workflows, and its handling of bad input."""

import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import Callback

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator
from sklearn_ugmm._objectives import GenerativeObjective, label_values

FAST = dict(hidden_layer_sizes=(8,), max_iter=15, n_iter_no_change=np.inf, random_state=0)


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


def test_fit_predict_iris(iris):
    X, y = iris
    clf = UGMMClassifier(random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.95
    proba = clf.predict_proba(X)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(np.log(proba), clf.predict_log_proba(X), atol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    assert clf.n_features_in_ == 4
    assert clf.n_iter_ == len(clf.loss_curve_)
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert len(clf.validation_scores_) == clf.n_iter_  # early stopping is on by default
    no_es = UGMMClassifier(early_stopping=False, **FAST).fit(X, y)
    assert no_es.validation_scores_ is None


def test_generative_objective_with_defaults_cross_validates_on_iris(iris):
    # the honest version of the paper's Iris result: 5-fold CV, not training accuracy,
    # averaged over three seeds (seeds 0-9 give 0.947-0.973, see the README)
    X, y = iris
    clf = UGMMClassifier(objective="generative", random_state=0)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    # its joint score keeps improving slowly: the default 200 epochs end it (documented in the user guide)
    with pytest.warns(ConvergenceWarning, match=r"maximum iterations \(200\)"):
        means = [cross_val_score(clone(clf).set_params(random_state=seed), X, y, cv=cv).mean() for seed in range(3)]
    assert np.mean(means) >= 0.95
    assert min(means) >= 0.94
    # precision_penalty="auto" is off for the generative objective, 150 / n_train otherwise
    assert clone(clf).set_params(max_iter=1, n_iter_no_change=np.inf).fit(X, y).net_.penalty is None
    discriminative = UGMMClassifier(max_iter=1, n_iter_no_change=np.inf, early_stopping=False, random_state=0).fit(X, y)
    assert discriminative.net_.penalty.keywords["strength"] == pytest.approx(150 / len(X))


def test_generative_root_starts_at_the_high_end_of_each_hidden_output(iris):
    X, y = iris
    clf = UGMMClassifier(objective="generative", max_iter=1, n_iter_no_change=np.inf, early_stopping=False, random_state=0).fit(X, y)
    objective = GenerativeObjective(4, (64,), 3, dropout=0.0, tie_means=False)
    X_train = objective.network_inputs(clf.scaler_.transform(X).astype(np.float32), y)
    module = objective.new_module(torch.Generator().manual_seed(0))
    objective.initialise(module, torch.as_tensor(X_train), y, torch.Generator().manual_seed(0), None)
    module.eval()
    with torch.no_grad():
        h = module.layers[0](torch.as_tensor(X_train)).double().numpy()
    np.testing.assert_allclose(module.layers[-1].loc.detach().numpy()[0], np.quantile(h, 0.95, axis=0), atol=1e-5)


def test_class_initialisation_samples_rows_across_class_sorted_data(iris):
    # more rows than the initialisation reads: the rows it reads must still cover every class
    X, y = iris  # sorted by class
    clf = UGMMClassifier(hidden_layer_sizes=(4,), max_iter=1, n_iter_no_change=np.inf, early_stopping=False, random_state=0).fit(X, y)
    X_train = torch.as_tensor(clf.scaler_.transform(X).astype(np.float32))
    module = clf.module_.__class__(4, (4,), 3, generator=torch.Generator().manual_seed(0))
    module.init_from_data(X_train, generator=torch.Generator().manual_seed(0))
    module.init_output_from_classes(X_train, y, 3, max_samples=30)
    rows = np.linspace(0, len(X) - 1, 30).round().astype(int)
    with torch.no_grad():
        h = module.eval().layers[0](X_train[rows]).double().numpy()
    for c in range(3):
        expected = np.median(h[y[rows] == c], axis=0)
        np.testing.assert_allclose(module.layers[-1].loc.detach().numpy()[c], expected, rtol=1e-5, atol=1e-5)


def test_generative_objective_predicts_by_mpe(iris):
    X, y = iris
    clf = UGMMClassifier(objective="generative", **FAST).fit(X, y)
    scores = clf.module_.score_states(
        torch.cat([torch.as_tensor(clf.scaler_.transform(X).astype(np.float32)), torch.zeros(150, 1)], 1),
        index=4,
        states=torch.as_tensor(label_values(3)),
    )
    expected = torch.softmax(scores.detach(), dim=1).numpy()
    np.testing.assert_allclose(clf.predict_proba(X), expected, atol=1e-6)
    assert clf.module_.n_outputs == 1 and clf.module_.n_inputs == 5


def test_random_state_gives_identical_fits(iris):
    X, y = iris
    params = dict(FAST, dropout=0.2)
    a = UGMMClassifier(**params).fit(X, y).predict_proba(X)
    b = UGMMClassifier(**params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = UGMMClassifier(**dict(params, random_state=1)).fit(X, y).predict_proba(X)
    assert not np.array_equal(a, c)


def test_global_rng_untouched(iris):
    X, y = iris
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch = torch.rand(3)
    expected_np = np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    UGMMClassifier(**dict(FAST, dropout=0.1)).fit(X, y)
    np.testing.assert_array_equal(torch.rand(3), expected_torch)
    np.testing.assert_array_equal(np.random.rand(3), expected_np)


def test_early_stopping_records_validation_scores(iris):
    X, y = iris
    clf = UGMMClassifier(early_stopping=True, max_iter=300, n_iter_no_change=5, random_state=0).fit(X, y)
    assert len(clf.validation_scores_) == clf.n_iter_
    assert all(0.0 <= s <= 1.0 for s in clf.validation_scores_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.n_iter_ < 300


def test_sample_weight_enters_the_loss(iris):
    X, y = iris
    # zero weight on class 2 is the same as training without it, up to the unseen class
    w = np.where(y == 2, 0.0, 1.0)
    clf = UGMMClassifier(**FAST).fit(X, y, sample_weight=w)
    assert np.mean(clf.predict(X[y == 2]) == 2) < 0.5
    # integer weights scale the loss like repetitions within a batch
    with pytest.raises(ValueError, match="at least one"):
        UGMMClassifier(**FAST).fit(X, y, sample_weight=np.zeros(150))
    with pytest.raises(ValueError, match="(?i)negative"):
        UGMMClassifier(**FAST).fit(X, y, sample_weight=-np.ones(150))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("Estimator", [UGMMClassifier, UGMMDensityEstimator])
def test_validation_rows_are_drawn_among_the_weighted_ones(iris, Estimator):
    # twelve rows of weight 1, the rest 0: a validation split of zero-weight rows measured a loss
    # of 0 every epoch, and the stopping rule kept the first epoch's weights
    X, y = iris
    w = np.zeros(len(X))
    w[[0, 1, 2, 3, 50, 51, 52, 53, 100, 101, 102, 103]] = 1.0
    for seed in range(4):
        est = Estimator(hidden_layer_sizes=(8,), max_iter=30, random_state=seed).fit(X, y, sample_weight=w)
        assert np.all(np.isfinite(est.validation_scores_))
        _, valid = est._validation_split(w, y if Estimator is UGMMClassifier else None, np.random.RandomState(seed))
        assert len(valid) > 0 and np.all(w[valid] > 0)
    # every weight positive: the split of all the rows, as before
    full = UGMMClassifier()._validation_split(np.ones(len(X)), y, np.random.RandomState(0))
    plain = UGMMClassifier()._split(len(X), y, np.random.RandomState(0))
    for a, b in zip(full, plain):
        np.testing.assert_array_equal(a, b)
    # a single weighted row: nothing to hold out
    one = np.zeros(len(X))
    one[7] = 1.0
    assert UGMMClassifier(max_iter=2, random_state=0).fit(X, y, sample_weight=one).n_iter_ == 2


@pytest.mark.parametrize("objective", ["discriminative", "generative"])
def test_astronomically_far_rows_get_a_prediction(iris, objective):
    # inference runs in float64: a row at 1e300 is clipped (at 1e30 standard deviations), not refused
    # for overflowing float32, and never gives NaN
    X, y = iris
    clf = UGMMClassifier(objective=objective, **FAST).fit(X, y)
    far = np.vstack([X[:2] * 1e300, -X[:2] * 1e300, X[:1] + [1e300, 0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proba = clf.predict_proba(far)
        scores = clf.score_samples(far)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1) and not np.isnan(scores).any()
    np.testing.assert_array_equal(proba, clf.predict_proba(np.vstack([X[:2] * 1e200, -X[:2] * 1e200, X[:1] + [1e200, 0, 0, 0]])))
    np.testing.assert_array_equal(clf.predict(far), proba.argmax(axis=1))


def test_weighted_loss_formula():
    from sklearn_ugmm._engine import WeightedLoss

    out = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    w = torch.tensor([1.0, 0.0, 2.0, 0.5, 3.0])
    packed = torch.stack([y.float(), w], 1)
    loss = WeightedLoss(lambda o, t: torch.nn.functional.cross_entropy(o, t[:, 0].long(), reduction="none"))
    per = torch.nn.functional.cross_entropy(out, y, reduction="none")
    torch.testing.assert_close(loss(out, packed), (w * per).sum() / w.sum())


def test_pipeline_gridsearch_and_cross_validation(iris):
    X, y = iris
    pipe = make_pipeline(StandardScaler(), UGMMClassifier(**FAST))
    grid = {"ugmmclassifier__hidden_layer_sizes": [(4,), (8,)], "ugmmclassifier__alpha": [1e-4, 1e-2]}
    search1 = GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(X, y)
    search2 = GridSearchCV(pipe, grid, cv=3, n_jobs=2).fit(X, y)
    assert search1.best_params_ == search2.best_params_
    np.testing.assert_allclose(search1.cv_results_["mean_test_score"], search2.cv_results_["mean_test_score"])
    assert search1.best_score_ > 0.8
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(UGMMClassifier(**FAST), X, y, cv=cv)
    assert scores.mean() > 0.8
    proba = cross_val_predict(UGMMClassifier(**FAST), X, y, cv=cv, method="predict_proba")
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-10)


def test_calibrated_classifier_cv(iris):
    X, y = iris
    cal = CalibratedClassifierCV(UGMMClassifier(**FAST), cv=3).fit(X, y)
    assert cal.predict_proba(X).shape == (150, 3)
    assert cal.score(X, y) > 0.8


def test_clone_keeps_params_and_drops_fit(iris):
    X, y = iris
    clf = UGMMClassifier(**FAST).fit(X, y)
    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        fresh.predict(X)


def test_dataframe_and_string_labels(iris):
    X, y = iris
    df = pd.DataFrame(X, columns=["sl", "sw", "pl", "pw"])
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    clf = UGMMClassifier(**FAST).fit(df, labels)
    np.testing.assert_array_equal(clf.feature_names_in_, ["sl", "sw", "pl", "pw"])
    assert set(clf.predict(df)) <= set(labels)
    assert clf.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)


def test_pickle_and_joblib_round_trip(iris, tmp_path):
    X, y = iris
    clf = UGMMClassifier(**FAST).fit(X, y)
    expected = clf.predict_proba(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), expected)
    joblib.dump(clf, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict_proba(X), expected)


def test_warm_start_continues_training(iris):
    X, y = iris
    clf = UGMMClassifier(**dict(FAST, warm_start=True)).fit(X, y)
    first = clf.n_iter_
    state = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    clf.fit(X, y)
    assert clf.n_iter_ > first
    assert len(clf.loss_curve_) == clf.n_iter_
    assert any(not torch.equal(state[k], v) for k, v in clf.module_.state_dict().items())


def test_user_callbacks_run(iris):
    X, y = iris

    class Count(Callback):
        def initialize(self):
            self.epochs = 0
            return self

        def on_epoch_end(self, net, **kwargs):
            self.epochs += 1

    counter = Count()
    clf = UGMMClassifier(**dict(FAST, callbacks=[counter])).fit(X, y)
    assert dict(clf.net_.callbacks_)["user_0_Count"].epochs == clf.n_iter_
    # the epoch at which early stopping ends training ends for them too
    stopped = UGMMClassifier(hidden_layer_sizes=(8,), n_iter_no_change=2, tol=10.0, random_state=0,
                             callbacks=[Count()]).fit(X, y)
    assert stopped.n_iter_ == 3 and dict(stopped.net_.callbacks_)["user_0_Count"].epochs == 3
    named = UGMMClassifier(**dict(FAST, callbacks=[("counter", Count())])).fit(X, y)
    assert dict(named.net_.callbacks_)["counter"].epochs == named.n_iter_
    for bad in (["x"], [("counter", "x")], [(Count(), "counter")], [Count]):
        with pytest.raises(InvalidParameterError, match="'callbacks' parameter must hold skorch callbacks"):
            UGMMClassifier(**dict(FAST, callbacks=bad)).fit(X, y)


def test_verbose_prints_progress(iris, capsys):
    X, y = iris
    UGMMClassifier(**dict(FAST, max_iter=3, n_iter_no_change=np.inf)).fit(X, y)
    assert capsys.readouterr().out == ""
    UGMMClassifier(**dict(FAST, max_iter=3, n_iter_no_change=np.inf, verbose=1, early_stopping=True)).fit(X, y)
    out = capsys.readouterr().out.split("\n", 1)[1]  # after the line of resolved parameters
    assert out.startswith("epoch 1/3 ") and "\nepoch 3/3 " in out and "valid loss" in out
    assert out.splitlines()[-1].startswith("trained 3 epoch(s)") and "\x1b" not in out


def test_convergence_warning_when_max_iter_reached(iris):
    X, y = iris
    with pytest.warns(ConvergenceWarning, match=r"maximum iterations \(2\) reached.*raise max_iter"):
        UGMMClassifier(**dict(FAST, max_iter=2, n_iter_no_change=20)).fit(X, y)
    # without a stopping rule, max_iter epochs is what was asked for
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert UGMMClassifier(**dict(FAST, max_iter=2, n_iter_no_change=np.inf)).fit(X, y).n_iter_ == 2


@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.array([[np.nan, np.nan], [1.0, 2.0], [0.0, 1.0]]), ValueError, "only missing values"),
        (np.array([[np.inf, 1.0], [1.0, 2.0], [0.0, 1.0]]), ValueError, "infinity"),
        (np.empty((0, 2)), ValueError, "0 sample"),
        (np.array([1.0, 2.0, 3.0]), ValueError, "Expected 2D array"),
        (sp.csr_matrix(np.eye(3)), TypeError, "Sparse data"),
        (np.array([[1 + 1j, 2.0], [1.0, 2.0], [0.0, 1.0]]), ValueError, "Complex"),
    ],
)
def test_bad_training_input(X, error, match):
    y = np.array([0, 1, 0])[: X.shape[0]]
    with pytest.raises(error, match=match):
        UGMMClassifier(**FAST).fit(X, y)


def test_bad_labels_and_devices(iris):
    X, y = iris
    with pytest.raises(ValueError, match="greater than one"):
        UGMMClassifier(**FAST).fit(X, np.zeros(150))
    with pytest.raises(ValueError, match="Unknown label type"):
        UGMMClassifier(**FAST).fit(X, np.linspace(0, 1, 150))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            UGMMClassifier(**dict(FAST, device="cuda")).fit(X, y)
    with pytest.raises(ValueError, match="not a valid device"):
        UGMMClassifier(**dict(FAST, device="gpu0")).fit(X, y)


def test_wrong_feature_count_at_predict(iris):
    X, y = iris
    clf = UGMMClassifier(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :3])


def test_divergence_raises_with_epoch_and_remedy(iris):
    X, y = iris

    class Poison(Callback):
        def on_batch_begin(self, net, **kwargs):
            if len(net.history) == 2:
                with torch.no_grad():
                    net.module_.layers[0].loc.fill_(float("nan"))

    clf = UGMMClassifier(**dict(FAST, callbacks=[Poison()]))
    with pytest.raises(FloatingPointError, match="epoch 2.*learning_rate_init"):
        clf.fit(X, y)
    assert not hasattr(clf, "net_")


def test_large_prediction_is_batched(iris):
    X, y = iris
    clf = UGMMClassifier(**FAST).fit(X, y)
    big = np.repeat(X, 70, axis=0)  # 10500 rows, several inference batches
    np.testing.assert_allclose(clf.predict_proba(big)[::70], clf.predict_proba(X), atol=1e-6)


def test_tie_means_and_dropout_train(iris):
    X, y = iris
    # no early stopping: with tied means the validation loss of Iris's 15 held-out
    # rows can stall for 20 epochs early on and stop some seeds near chance level
    clf = UGMMClassifier(
        hidden_layer_sizes=(16,), tie_means=True, dropout=0.1, early_stopping=False, max_iter=100, n_iter_no_change=np.inf,
        random_state=0,
    ).fit(X, y)
    assert clf.module_.layers[0].loc.shape == (16,)
    assert clf.score(X, y) > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_then_cpu_predict(iris):
    X, y = iris
    clf = UGMMClassifier(**dict(FAST, device="cuda")).fit(X, y)
    expected = clf.predict_proba(X)
    restored = pickle.loads(pickle.dumps(clf))
    restored.module_.cpu()
    np.testing.assert_allclose(restored.predict_proba(X), expected, atol=1e-5)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_keyboard_interrupt_keeps_last_completed_epoch(iris, early_stopping):
    X, y = iris
    snapshots = []

    class Interrupt(Callback):
        def on_epoch_end(self, net, **kwargs):
            snapshots.append({k: v.clone() for k, v in net.module_.state_dict().items()})

        def on_batch_end(self, net, training=False, **kwargs):
            if training and len(net.history) == 3:
                raise KeyboardInterrupt

    clf = UGMMClassifier(
        # no weight averaging and mixture outputs: then the best validation epoch is the first,
        # which tells the two rules apart
        **dict(FAST, batch_size=50, early_stopping=early_stopping, standardize=True, averaging_epochs=1,
               output_layer="mixture", callbacks=[Interrupt()])
    )
    with pytest.warns(UserWarning, match="interrupted.*epoch 3.*last completed epoch \\(2\\)"):
        clf.fit(X, y)
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2
    kept = 1
    if early_stopping:
        # the stopping rule restores the completed epoch with the best validation loss
        kept = int(np.argmin([row["valid_loss"] for row in clf.net_.history[:2]]))
        assert kept == 0  # here the first, so the two rules are told apart
    for key, value in clf.module_.state_dict().items():
        torch.testing.assert_close(value, snapshots[kept][key], rtol=0, atol=0)
    assert clf.predict_proba(X).shape == (150, 3)


def test_partial_fit_streams_batches(iris):
    X, y = iris
    rng = np.random.RandomState(0)
    order = rng.permutation(150)
    X, y = X[order], y[order]

    def stream(seed):
        clf = UGMMClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05, random_state=seed)
        with pytest.raises(ValueError, match="classes must be passed"):
            clone(clf).partial_fit(X[:50], y[:50])
        for epoch in range(20):
            for start in range(0, 150, 50):
                clf.partial_fit(X[start : start + 50], y[start : start + 50], classes=[0, 1, 2])
        return clf

    clf = stream(0)
    assert clf.n_iter_ == 60 and len(clf.loss_curve_) == 60
    assert clf.score(X, y) > 0.9
    np.testing.assert_array_equal(stream(0).predict_proba(X), clf.predict_proba(X))
    with pytest.raises(ValueError, match="not the same"):
        clf.partial_fit(X[:10], y[:10], classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="not in classes"):
        clf.partial_fit(X[:3], np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:10, :3], y[:10])


class _ThreadProbe(Callback):
    def on_epoch_end(self, net, **kwargs):
        net.history.record("torch_threads", torch.get_num_threads())


def test_parallel_fits_do_not_oversubscribe_threads(iris):
    import os

    from sklearn.model_selection import cross_validate

    X, y = iris
    before = torch.get_num_threads()
    result = cross_validate(
        UGMMClassifier(**dict(FAST, callbacks=[_ThreadProbe()])), X, y, cv=2, n_jobs=2, return_estimator=True
    )
    for est in result["estimator"]:
        threads = est.net_.history[-1, "torch_threads"]
        assert threads * 2 <= max(2, os.cpu_count())
    assert torch.get_num_threads() == before
