"""How many torch threads should a fit use? Time typical workloads at each setting.

Every workload runs with ``n_threads=1``, with ``n_threads=-1`` (torch's own
setting, all cores by default) and with the default ``n_threads=None``, in
alternation within one process, ``--repeats`` times each; the table gives the
fastest time per epoch (or per call) and the ratio to one thread. ``--load N``
starts N busy-looping processes for the duration, to measure a loaded machine
explicitly.

    python examples/benchmarks/bench_threads.py            # this machine as it is
    python examples/benchmarks/bench_threads.py --load 2   # plus two busy cores
"""

import argparse
import multiprocessing
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits, load_iris
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import load_dataset, load_mnist  # noqa: E402

from sklearn_ugmm import UGMMClassifier, UGMMDensityEstimator  # noqa: E402

SETTINGS = {"1": 1, "all": -1, "auto (None)": None}


def _fixed_epochs(estimator, epochs):
    # a fixed number of epochs, so that every setting does the same work
    return estimator.set_params(max_iter=epochs, n_iter_no_change=np.inf)


def workloads(data_dir=None):
    """``name -> (unit, run(n_threads) -> seconds per unit)``."""
    X_iris, y_iris = load_iris(return_X_y=True)
    X_digits, y_digits = load_digits(return_X_y=True)
    found = {}

    def fit(make, X, y, epochs):
        def run(n_threads):
            est = _fixed_epochs(make(), epochs).set_params(n_threads=n_threads, random_state=0)
            start = time.perf_counter()
            est.fit(X, y) if y is not None else est.fit(X)
            return (time.perf_counter() - start) / est.n_iter_

        return run

    found["iris, classifier fit"] = ("s/epoch", fit(UGMMClassifier, X_iris, y_iris, 30))
    found["digits, classifier fit"] = ("s/epoch", fit(UGMMClassifier, X_digits, y_digits, 10))
    try:
        X_magic, y_magic = load_dataset("magic", data_dir)
    except FileNotFoundError:
        X_magic = None
    if X_magic is not None:
        found["magic, classifier fit"] = ("s/epoch", fit(UGMMClassifier, X_magic, y_magic, 4))
        found["magic, density fit"] = ("s/epoch", fit(UGMMDensityEstimator, X_magic, None, 3))
        model = UGMMClassifier(max_iter=2, random_state=0).fit(X_magic, y_magic)
        X_big = np.tile(X_magic, (11, 1))[:200_000]

        def predict(n_threads):
            model.set_params(n_threads=n_threads)
            start = time.perf_counter()
            model.predict_proba(X_big)
            return time.perf_counter() - start

        found["magic, predict_proba 200k rows"] = ("s/call", predict)
    try:
        X_mnist, y_mnist, _, _ = load_mnist(None if data_dir is None else Path(data_dir).parent / "mnist.npz")
    except FileNotFoundError:
        X_mnist = None
    if X_mnist is not None:
        mnist = lambda: UGMMClassifier(  # noqa: E731
            hidden_layer_sizes=(128, 64), batch_size=128, learning_rate_init=1e-2, standardize=False
        )
        found["MNIST 10k x 784, classifier fit"] = ("s/epoch", fit(mnist, X_mnist[:10_000], y_mnist[:10_000], 2))
    return found


def _busy():
    while True:
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes to start (default 0)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default=None, help="run only the workloads whose name contains this")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", ConvergenceWarning)

    # a terminated run still stops its busy loops (the finally clause below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    try:
        print(
            f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
            f"{os.cpu_count()} CPUs, {args.load} busy-loop processes, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        header = "| workload | unit | " + " | ".join(f"{s} thread(s)" for s in SETTINGS) + " | all / 1 | auto / 1 |"
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for name, (unit, run) in workloads(args.data_dir).items():
            if args.only and args.only not in name:
                continue
            run(1)  # warm-up: first-call costs (allocations, lazy imports) are not the question
            times = {s: [] for s in SETTINGS}
            for _ in range(args.repeats):
                for label, n_threads in SETTINGS.items():
                    times[label].append(run(n_threads))
            best = {label: min(values) for label, values in times.items()}
            cells = " | ".join(f"{best[s]:.3f}" for s in SETTINGS)
            print(
                f"| {name} | {unit} | {cells} | {best['all'] / best['1']:.2f} | "
                f"{best['auto (None)'] / best['1']:.2f} |",
                flush=True,
            )
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()


if __name__ == "__main__":
    main()
