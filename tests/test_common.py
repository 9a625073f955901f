"""scikit-learn's estimator checks, with xfail_strict=True."""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator

# Each expected failure carries the reason it cannot pass.
_MINIBATCH_REASON = (
    "training uses shuffled minibatches: weighting a row by 2 is equivalent to duplicating it "
    "in expectation, not bit for bit (the batches differ), as for MLPClassifier and SGDClassifier"
)
EXPECTED_FAILED_CHECKS = {
    "UGMMClassifier": {
        "check_sample_weight_equivalence_on_dense_data": _MINIBATCH_REASON,
    },
}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {})


@parametrize_with_checks(
    [
        UGMMClassifier(hidden_layer_sizes=(8,), max_iter=10, n_iter_no_change=np.inf, random_state=0),
        UGMMDensityEstimator(hidden_layer_sizes=(8,), max_iter=10, n_iter_no_change=np.inf, random_state=0),
    ],
    expected_failed_checks=_expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_compatible_estimator(estimator, check):
    if isinstance(estimator, UGMMDensityEstimator):
        # On the checks' few random rows the GaussianMixture start can already fit the training
        # data better than ten epochs of penalised training leave it; the fit then says so (the
        # divergence check) and keeps the start, which is what the checks go on to compare.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Training diverged", category=ConvergenceWarning)
            check(estimator)
        return
    check(estimator)
