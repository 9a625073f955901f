"""The skorch glue: batch loading and the adaptive learning rate."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
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


def test_learning_rate_is_validated():
    X, y = np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2
    with pytest.raises(ValueError, match="learning_rate"):
        UGMMClassifier(learning_rate="invscaling").fit(X, y)


def test_density_auto_learning_rate_depends_on_the_training_size():
    est = UGMMDensityEstimator()
    assert est._learning_rate(100) == pytest.approx(3e-3)
    assert est._learning_rate(5000) == pytest.approx(1e-2)
    assert UGMMDensityEstimator(learning_rate_init=0.5)._learning_rate(100) == 0.5


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


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
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
