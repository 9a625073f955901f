"""Inference on large arrays runs in bounded-memory batches.

Peak memory during ``predict_proba`` / ``score_samples`` may grow with
``n_samples`` only by the output arrays, never by copies of ``X``. NumPy
reports its allocations to :mod:`tracemalloc`; torch tensors in the batched
loop are views of (or as large as) one batch of rows.
"""

import tracemalloc

import numpy as np
import pytest

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator

N_FEATURES = 16
SMALL, LARGE = 10_000, 100_000


def _peak_bytes(fn, X):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        out = fn(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, out


def _data(n, dtype, seed=0):
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(dtype)


@pytest.fixture(scope="module")
def classifier():
    X = _data(300, np.float64)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    return UGMMClassifier(hidden_layer_sizes=(8,), max_iter=2, n_iter_no_change=np.inf, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def density():
    return UGMMDensityEstimator(hidden_layer_sizes=(8,), max_iter=2, n_iter_no_change=np.inf, random_state=0).fit(_data(300, np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "estimator, method, n_outputs",
    [("classifier", "predict_proba", 3), ("classifier", "predict", 3), ("density", "score_samples", 1)],
)
def test_inference_memory_does_not_grow_with_copies_of_X(request, estimator, method, n_outputs, dtype):
    fn = getattr(request.getfixturevalue(estimator), method)
    X_small, X_large = _data(SMALL, dtype), _data(LARGE, dtype)
    fn(X_small[:10])  # warm up lazy allocations
    peak_small, out_small = _peak_bytes(fn, X_small)
    peak_large, out_large = _peak_bytes(fn, X_large)
    assert out_large.shape[0] == LARGE and np.all(np.isfinite(out_large.astype(np.float64)))
    # Growth allowed: the batch outputs collected plus their concatenation,
    # and the final output (float64): 3 copies of the per-class output (predict
    # computes class probabilities too), plus slack.
    output_bytes = (LARGE - SMALL) * n_outputs * 8
    growth = peak_large - peak_small
    input_bytes = (LARGE - SMALL) * N_FEATURES * np.dtype(dtype).itemsize
    assert growth <= 3 * output_bytes + 1_000_000, (
        f"peak grew by {growth / 2**20:.1f} MiB for {LARGE - SMALL} more rows "
        f"(outputs {output_bytes / 2**20:.1f} MiB, input {input_bytes / 2**20:.1f} MiB)"
    )
