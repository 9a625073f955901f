"""The skorch glue: batch loading, the adaptive learning rate, the penalty and weight averaging."""

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from skorch.callbacks import Callback
from skorch.dataset import Dataset
from torch.utils.data import DataLoader

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator
from sklearn_ugmm._engine import ADAPTIVE_LR_FACTOR, BatchLoader, build_net
from sklearn_ugmm.nn import UGMMNet


@pytest.mark.parametrize("shuffle", [True, False])
def test_batch_loader_yields_the_plain_dataloaders_batches(shuffle):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(103, 4)).astype(np.float32)
    y = rng.normal(size=(103, 2)).astype(np.float32)
    dataset = Dataset(X, y)
    plain = DataLoader(dataset, batch_size=10, shuffle=shuffle, generator=torch.Generator().manual_seed(3))
    ours = BatchLoader(dataset, batch_size=10, shuffle=shuffle, generator=torch.Generator().manual_seed(3))
    assert len(ours) == len(plain) == 11
    for _ in range(2):  # two epochs: the generators advance alike
        batches = list(ours)
        expected = list(plain)
        assert len(batches) == len(expected)
        for (Xb, yb), (Xe, ye) in zip(batches, expected):
            assert Xb.dtype == Xe.dtype == torch.float32
            torch.testing.assert_close(Xb, Xe, rtol=0, atol=0)
            torch.testing.assert_close(yb, ye, rtol=0, atol=0)


def _lr_history(est):
    return np.array(est.net_.history[:, "event_lr"] if "event_lr" in est.net_.history[-1] else [])


def test_adaptive_learning_rate_cuts_on_plateaus_and_constant_does_not():
    X = np.random.default_rng(0).normal(size=(200, 2))
    common = dict(hidden_layer_sizes=(4,), max_iter=60, n_iter_no_change=8, tol=0.5, random_state=0)
    adaptive = UGMMDensityEstimator(learning_rate="adaptive", learning_rate_init=1e-2, **common).fit(X)
    lrs = _lr_history(adaptive)
    # tol=0.5 makes every epoch after the first a plateau: a cut after each
    # 3 epochs without progress (8 // 4 + 1), the stop after 8
    assert adaptive.n_iter_ == 9
    assert lrs[0] == pytest.approx(1e-2)
    assert lrs[-1] == pytest.approx(1e-2 * ADAPTIVE_LR_FACTOR**2)
    assert np.sum(np.diff(lrs) < 0) == 2
    assert np.all(np.diff(lrs) <= 0)
    constant = UGMMDensityEstimator(learning_rate="constant", learning_rate_init=1e-2, **common).fit(X)
    assert "event_lr" not in constant.net_.history[-1]
    assert constant.net_.optimizer_.param_groups[0]["lr"] == pytest.approx(1e-2)


class _EpochRates(Callback):
    """Records the learning rate each training epoch starts with."""

    def initialize(self):
        self.rates = []
        return self

    def on_epoch_begin(self, net, **kwargs):
        self.rates.append(net.optimizer_.param_groups[0]["lr"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("estimator", [UGMMClassifier, UGMMDensityEstimator])
def test_cosine_learning_rate_falls_as_a_half_cosine_over_max_iter(estimator):
    X, y = load_breast_cancer(return_X_y=True)
    rates = _EpochRates()
    common = dict(hidden_layer_sizes=(4,), max_iter=6, n_iter_no_change=np.inf, random_state=0, callbacks=[rates])
    est = estimator(learning_rate="cosine", learning_rate_init=1e-2, **common).fit(X[:200], y[:200])
    expected = [1e-2 * (1 + np.cos(np.pi * e / 6)) / 2 for e in range(6)]
    np.testing.assert_allclose(rates.rates, expected, rtol=1e-12)
    # partial_fit's single epochs keep the rate
    rates.rates.clear()
    est.partial_fit(X[:200], y[:200])
    assert rates.rates == [1e-2]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_cosine_fit_ends_at_a_zero_rate_and_trains_differently_from_constant():
    X, y = load_breast_cancer(return_X_y=True)
    common = dict(hidden_layer_sizes=(4,), max_iter=4, n_iter_no_change=np.inf, early_stopping=False, random_state=0)
    cosine = UGMMClassifier(learning_rate="cosine", **common).fit(X, y)
    assert cosine.net_.optimizer_.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    constant = UGMMClassifier(**common).fit(X, y)
    assert constant.learning_rate == "constant"
    assert constant.net_.optimizer_.param_groups[0]["lr"] == pytest.approx(3e-2)
    assert not np.allclose(cosine.predict_proba(X), constant.predict_proba(X))


def test_learning_rate_is_validated():
    X, y = np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2
    with pytest.raises(ValueError, match="learning_rate"):
        UGMMClassifier(learning_rate="invscaling").fit(X, y)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_density_auto_learning_rate_depends_on_the_training_size():
    X = np.random.default_rng(0).normal(size=(300, 2))
    params = dict(hidden_layer_sizes=(2,), max_iter=1, early_stopping=False, random_state=0)

    def fitted_rate(n, **extra):
        est = UGMMDensityEstimator(**params, **extra).fit(X[:n])
        assert est.net_.optimizer_.param_groups[0]["lr"] == est.resolved_params_["learning_rate_init"]
        return est.resolved_params_["learning_rate_init"]

    assert fitted_rate(100) == pytest.approx(3e-3)
    assert fitted_rate(300) == pytest.approx(1e-2)
    assert fitted_rate(100, learning_rate_init=0.5) == 0.5


def test_penalised_net_adds_the_penalty_to_training_losses_only():
    module = UGMMNet(3, (4,), 2)
    penalty = 0.25 * module.precision_penalty().detach() + 5.0
    net = build_net(
        module, lambda output, target: -output[:, 0], learning_rate_init=1e-2, alpha=0.0, batch_size=8,
        max_iter=1, tol=0.0, n_iter_no_change=5, generator=torch.Generator().manual_seed(0), device="cpu",
        verbose=0, penalty=lambda m: 0.25 * m.precision_penalty() + 5.0,
    ).initialize()
    X = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    y = torch.ones(8, 1)
    y_pred = net.infer(X)
    plain = net.get_loss(y_pred, y, X=X, training=False)
    torch.testing.assert_close(net.get_loss(y_pred, y, X=X, training=True), plain + penalty)


def _relative_precision(clf):
    return clf.module_.precision_penalty().item() / len(clf.module_.layers)


def test_precision_penalty_keeps_components_wide_and_scales_as_one_over_n():
    X, y = load_breast_cancer(return_X_y=True)
    common = dict(max_iter=40, early_stopping=False, n_iter_no_change=np.inf, random_state=0)
    free = UGMMClassifier(precision_penalty=0, **common).fit(X, y)
    held = UGMMClassifier(precision_penalty=3e3, **common).fit(X, y)
    assert free.net_.penalty is None
    assert _relative_precision(held) < 0.5 * _relative_precision(free)
    # a prior worth `precision_penalty` samples: its weight per sample is c / n_train
    assert held.net_.penalty(held.module_).item() == pytest.approx(3e3 / len(X) * held.module_.precision_penalty().item())
    assert held.score(X, y) > 0.9


class _StepRecorder(Callback):
    """Parameters after every training step."""

    def on_train_begin(self, net, **kwargs):
        self.steps = [[p.detach().clone() for p in net.module_.parameters()]]

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.steps.append([p.detach().clone() for p in net.module_.parameters()])


def _averaging_net(module, averaging_epochs=None, validation_data=None, max_iter=3):
    return build_net(
        module, lambda output, target: -output[:, 0], learning_rate_init=3e-2, alpha=0.0, batch_size=8,
        max_iter=max_iter, tol=0.0, n_iter_no_change=np.inf, generator=torch.Generator().manual_seed(0),
        device="cpu", verbose=0, validation_data=validation_data, averaging_epochs=averaging_epochs,
        steps_per_epoch=7, extra_callbacks=[("recorder", _StepRecorder())],
    )


def test_weight_averaging_ends_with_the_moving_average_of_the_training_steps():
    X = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    y = torch.ones(50, 1)
    module = UGMMNet(3, (4,), 2, generator=torch.Generator().manual_seed(2))
    plain = _averaging_net(copy.deepcopy(module)).fit(X, y)
    averaged = _averaging_net(copy.deepcopy(module), averaging_epochs=4).fit(X, y)
    steps = dict(plain.callbacks_)["recorder"].steps
    assert len(steps) == 1 + 3 * 7
    # the average does not disturb training: the same steps, the same losses
    for ours, theirs in zip(dict(averaged.callbacks_)["recorder"].steps, steps):
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(averaged.history[:, "train_loss"], plain.history[:, "train_loss"])
    # epoch e of 7 steps moves the average 1/h of the way to the weights, with the
    # horizon h = min(4, max(1, e / 2)) growing with the epochs run: 1, 1, 1.5
    horizons = [dict(averaged.callbacks_)["weight_averaging"].epoch_horizon(e) for e in (1, 2, 3)]
    assert horizons == [1.0, 1.0, 1.5]
    assert dict(averaged.callbacks_)["weight_averaging"].epoch_horizon(20) == 4
    expected = [p.double() for p in steps[0]]
    for index, step in enumerate(steps[1:]):
        weight = 1 - (1 - 1 / horizons[index // 7]) ** (1 / 7)
        expected = [e + weight * (p.double() - e) for e, p in zip(expected, step)]
    for param, e in zip(averaged.module_.parameters(), expected):
        torch.testing.assert_close(param.detach().double(), e, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(p.detach(), last) for p, last in zip(averaged.module_.parameters(), steps[-1]))
    assert dict(averaged.callbacks_)["weight_averaging"]._average is None
    assert "weight_averaging" not in dict(plain.callbacks_)


def test_weight_averaging_is_what_validation_scores_and_early_stopping_restores():
    gen = torch.Generator().manual_seed(1)
    X, X_valid = torch.randn(50, 3, generator=gen), torch.randn(20, 3, generator=gen)
    y, y_valid = torch.ones(50, 1), torch.ones(20, 1)
    module = UGMMNet(3, (4,), 2, generator=torch.Generator().manual_seed(2))
    net = _averaging_net(module, averaging_epochs=4, validation_data=(X_valid, y_valid), max_iter=6).fit(X, y)
    valid_losses = np.array(net.history[:, "valid_loss"])
    best = int(np.argmin(valid_losses))
    # the restored model scores exactly the best recorded validation loss
    with torch.no_grad():
        restored = float(-net.module_(X_valid)[:, 0].mean())
    assert restored == pytest.approx(valid_losses[best], rel=1e-6)
    # and that loss is the average's, not the raw weights' at the end of that epoch
    raw = copy.deepcopy(net.module_)
    for param, step in zip(raw.parameters(), dict(net.callbacks_)["recorder"].steps[7 * (best + 1)]):
        param.data.copy_(step)
    with torch.no_grad():
        assert float(-raw(X_valid)[:, 0].mean()) != pytest.approx(valid_losses[best], rel=1e-4)


def test_classifier_averages_weights_in_fit_only():
    X, y = load_breast_cancer(return_X_y=True)
    clf = UGMMClassifier(max_iter=5, n_iter_no_change=np.inf, random_state=0).fit(X, y)
    callbacks = dict(clf.net_.callbacks_)
    # "auto": a horizon of 10 epochs for the discriminative objective
    assert callbacks["weight_averaging"].horizon == 10.0
    # 512 training rows after the validation split: batch_size="auto" is 512 // 10 = 51, 11 steps per epoch
    assert clf.resolved_params_["n_train"] == 512 and clf.resolved_params_["batch_size"] == 51
    assert callbacks["weight_averaging"].steps_per_epoch == 11
    explicit = UGMMClassifier(max_iter=2, n_iter_no_change=np.inf, averaging_epochs=3.5, batch_size=100, random_state=0).fit(X, y)
    assert dict(explicit.net_.callbacks_)["weight_averaging"].horizon == 3.5
    assert dict(explicit.net_.callbacks_)["weight_averaging"].steps_per_epoch == int(np.ceil(0.9 * len(X) / 100))
    off = UGMMClassifier(max_iter=5, n_iter_no_change=np.inf, averaging_epochs=1, random_state=0).fit(X, y)
    assert "weight_averaging" not in dict(off.net_.callbacks_)
    # "auto" is 10 for the generative objective too; 1 turns it off there
    generative = UGMMClassifier(objective="generative", max_iter=2, n_iter_no_change=np.inf, random_state=0).fit(X, y)
    assert dict(generative.net_.callbacks_)["weight_averaging"].horizon == 10
    generative.set_params(averaging_epochs=1).fit(X, y)
    assert "weight_averaging" not in dict(generative.net_.callbacks_)
    streamed = UGMMClassifier(random_state=0).partial_fit(X, y, classes=[0, 1])
    assert "weight_averaging" not in dict(streamed.net_.callbacks_)
    with pytest.raises(ValueError, match="averaging_epochs"):
        UGMMClassifier(averaging_epochs="sometimes").fit(X, y)
    with pytest.raises(ValueError, match="averaging_epochs"):
        UGMMClassifier(averaging_epochs=0.5).fit(X, y)


class _StubNet:
    """What a stopping rule reads of a skorch net: its history and module."""

    def __init__(self):
        from skorch.history import History

        self.history, self.module_, self.verbose = History(), torch.nn.Linear(1, 1), 0


@pytest.mark.parametrize("rule", ["ours", "skorch"])
def test_stopping_restores_the_epoch_of_the_lowest_loss(rule):
    # patience counts epochs without an improvement by tol; the weights kept are those of the
    # lowest loss (epoch 4), as MLPClassifier's best_coefs_, not of the last improvement by tol (epoch 2)
    from skorch.callbacks import EarlyStopping
    from skorch.utils import noop

    from sklearn_ugmm._engine import BestEpochStopping

    Rule = BestEpochStopping if rule == "ours" else EarlyStopping
    stopping = Rule(monitor="valid_loss", patience=3, threshold=1e-2, threshold_mode="abs", load_best=True, sink=noop)
    net = _StubNet()
    stopping.on_train_begin(net)
    for epoch, loss in enumerate([1.0, 0.5, 0.499, 0.4985, 0.4995], start=1):
        net.history.new_epoch()
        net.history.record("epoch", epoch)
        net.history.record("valid_loss", loss)
        with torch.no_grad():
            net.module_.weight.fill_(epoch)
        try:
            stopping.on_epoch_end(net)
        except KeyboardInterrupt:
            break
    assert epoch == 5  # three epochs without an improvement by 1e-2
    stopping.on_train_end(net)
    assert net.module_.weight.item() == (4 if rule == "ours" else 2)
