"""Prediction latency of a fitted UGMMClassifier against an MLP pipeline, for small batches.

A serving-style check: ``predict_proba`` on 1, 10, 100 and all 569 rows of
scikit-learn's breast-cancer set, after ``UGMMClassifier(random_state=0)``
(defaults, which standardise internally) and
``make_pipeline(StandardScaler(), MLPClassifier(random_state=0))`` were
fitted on it, in one process, one torch thread. Each time is the best of
five rounds of repeated calls (microseconds per call), so it measures the
fixed cost of a call more than the machine's load.

Three columns, measured side by side: the uGMM classifier as it is (its
prediction routes take the fused kernel library at any batch size once the
library is loaded), the same model with calls of fewer than
``AUTO_FUSED_MIN_COMPONENTS`` components on PyTorch (the behaviour before
that change, and what a process whose fits never loaded the library gets),
and the MLP pipeline.

Run ``python examples/benchmarks/bench_latency.py``; about 30 seconds.
"""

import argparse
import time
import warnings

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_ugmm import UGMMClassifier
from sklearn_ugmm.nn import _fused

ROWS = (1, 10, 100, 569)


def best_call_time(fn, calls=200, rounds=5):
    """Microseconds per call of ``fn``: the best of ``rounds`` rounds of ``calls`` calls."""
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    X, y = load_breast_cancer(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ugmm = UGMMClassifier(random_state=0).fit(X, y)
        mlp = make_pipeline(StandardScaler(), MLPClassifier(random_state=0)).fit(X, y)
    print(f"fused kernel library loaded: {_fused.loaded()}")
    print(f"{'rows':>5} {'uGMM us':>9} {'small on PyTorch us':>20} {'MLP us':>8} {'uGMM / MLP':>11}")
    results = {}
    for n in ROWS:
        rows = X[:n]
        u = best_call_time(lambda: ugmm.predict_proba(rows), args.calls)
        loaded = _fused.loaded
        _fused.loaded = lambda: False  # what the prediction routes ask before taking a small call
        try:
            small_on_torch = best_call_time(lambda: ugmm.predict_proba(rows), args.calls)
        finally:
            _fused.loaded = loaded
        m = best_call_time(lambda: mlp.predict_proba(rows), args.calls)
        results[n] = (u, small_on_torch, m)
        print(f"{n:>5} {u:>9.0f} {small_on_torch:>20.0f} {m:>8.0f} {u / m:>11.2f}")
    return results


if __name__ == "__main__":
    main()
