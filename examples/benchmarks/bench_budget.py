"""The small-budget check: UGMMClassifier's defaults on 10,000 MNIST images in 8 epochs.

``UGMMClassifier(hidden_layer_sizes=(128, 64), max_iter=8,
early_stopping=False, standardize=False, random_state=0)`` with every other
parameter at its default, trained on the first 10,000 MNIST training images
(pixels / 255) and scored on the first 3,000 test images; ``--mlp`` also
trains ``MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=8,
random_state=0)`` on the same data. It checks that the "auto" parameters
are right for a short fit, not only for the long ones of the tabular
benchmarks. ``--set PARAM=VALUE`` overrides a parameter (repeatable).

Usage::

    python examples/benchmarks/bench_budget.py [--mlp] [--set learning_rate_init=1e-2]
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import load_mnist  # noqa: E402
from bench_tabular import parse_overrides  # noqa: E402

from sklearn_ugmm import UGMMClassifier  # noqa: E402

N_TRAIN, N_TEST, EPOCHS = 10_000, 3_000, 8


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlp", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    X_train, y_train, X_test, y_test = load_mnist()
    X_train, y_train, X_test, y_test = X_train[:N_TRAIN], y_train[:N_TRAIN], X_test[:N_TEST], y_test[:N_TEST]
    params = dict(hidden_layer_sizes=(128, 64), max_iter=EPOCHS, early_stopping=False, standardize=False, random_state=0)
    params.update(parse_overrides(args.set))
    clf = UGMMClassifier(**params)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    print(f"ugmm {params}: test accuracy {clf.score(X_test, y_test):.4f}, {clf.n_iter_} epochs, "
          f"fit {fit_s:.0f} s; resolved {clf.resolved_params_}", flush=True)
    if args.mlp:
        mlp = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=EPOCHS, random_state=0)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mlp.fit(X_train, y_train)
        print(f"mlp: test accuracy {mlp.score(X_test, y_test):.4f}, fit {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
