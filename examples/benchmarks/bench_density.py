"""Density benchmark: UGMMDensityEstimator against tuned GaussianMixture and KernelDensity.

For each data set, 5-fold ``KFold(shuffle=True, random_state=0)``; every
model sees the data standardised by the training fold's mean and standard
deviation, and is scored by the held-out mean log-likelihood per sample
(higher is better):

* ``ugmm``: ``UGMMDensityEstimator(random_state=0)`` with its defaults;
* ``gmm``: ``GaussianMixture`` tuned over ``n_components`` 1..10 x
  ``covariance_type`` (full, tied, diag, spherical) by ``GridSearchCV`` on
  the training fold (``GaussianMixture.score`` is the mean log-likelihood);
  the configuration chosen most often is printed;
* ``kde``: ``KernelDensity`` (Gaussian kernel) with its bandwidth tuned by
  ``GridSearchCV`` on the training fold.

The inner searches use 5 folds below 2000 training rows and 3 above.
Data sets: ``iris``, ``wine``, ``breast_cancer`` (scikit-learn loaders) and
``faithful``, ``phoneme``, ``magic`` read from ``<data-dir>/<name>.npz``
(key ``X``; default ``../shared/data/tabular`` relative to the repository);
missing ones are skipped with a message. Finally it times one full-data fit
of the default estimator on ``magic`` (``--time-magic``).

Examples::

    python examples/benchmarks/bench_density.py                  # everything (slow)
    python examples/benchmarks/bench_density.py iris faithful --quick
    python examples/benchmarks/bench_density.py iris --models ugmm --set n_free_components=4
"""

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn import datasets
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity

from sklearn_ugmm import UGMMDensityEstimator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tabular import parse_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "tabular"
SKLEARN_SETS = ("iris", "wine", "breast_cancer")
FILE_SETS = ("faithful", "phoneme", "magic")
ALL_SETS = SKLEARN_SETS + FILE_SETS
MODELS = ("ugmm", "gmm", "kde")
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def load(name, data_dir):
    if name in SKLEARN_SETS:
        return getattr(datasets, f"load_{name}")(return_X_y=True)[0].astype(np.float64)
    path = Path(data_dir) / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["X"], dtype=np.float64)


def inner_cv(n):
    return KFold(5 if n < 2000 else 3, shuffle=True, random_state=0)


def fit_ugmm(X, params):
    return UGMMDensityEstimator(random_state=0, **params).fit(X), None


def fit_gmm(X, params):
    grid = {"n_components": list(range(1, 11)), "covariance_type": list(COVARIANCE_TYPES)}
    search = GridSearchCV(GaussianMixture(random_state=0, reg_covar=1e-6), grid, cv=inner_cv(len(X)))
    search.fit(X)
    p = search.best_params_
    return search.best_estimator_, f"{p['covariance_type']},{p['n_components']}"


def fit_kde(X, params):
    grid = {"bandwidth": np.logspace(-1.3, 0.2, 16)}
    search = GridSearchCV(KernelDensity(kernel="gaussian", rtol=1e-4), grid, cv=inner_cv(len(X)))
    search.fit(X)
    return search.best_estimator_, f"h={search.best_params_['bandwidth']:.3g}"


FITTERS = {"ugmm": fit_ugmm, "gmm": fit_gmm, "kde": fit_kde}


def evaluate(X, models, params, n_folds=5, max_folds=None):
    """Per model: held-out mean log-likelihood per fold, fit seconds, chosen configs."""
    results = {m: {"scores": [], "times": [], "configs": []} for m in models}
    folds = KFold(n_folds, shuffle=True, random_state=0).split(X)
    for k, (train, test) in enumerate(folds):
        if max_folds is not None and k >= max_folds:
            break
        mean, sd = X[train].mean(0), X[train].std(0)
        sd[sd == 0] = 1.0
        X_train, X_test = (X[train] - mean) / sd, (X[test] - mean) / sd
        for m in models:
            start = time.perf_counter()
            est, config = FITTERS[m](X_train, params if m == "ugmm" else None)
            results[m]["times"].append(time.perf_counter() - start)
            results[m]["scores"].append(float(np.mean(est.score_samples(X_test))))
            results[m]["configs"].append(config)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=list(ALL_SETS), help=f"any of {', '.join(ALL_SETS)}")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--quick", action="store_true", help="subsample each set to at most 2000 rows")
    parser.add_argument("--max-rows", type=int, default=None, help="subsample each set to at most this many rows")
    parser.add_argument("--folds", type=int, default=None, help="run only the first FOLDS of the 5 folds")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="UGMMDensityEstimator parameter")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--time-magic", action="store_true", help="time one full-data default fit on magic")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ConvergenceWarning)
    params = parse_overrides(args.set)
    max_rows = args.max_rows if args.max_rows is not None else (2000 if args.quick else None)

    rows = []
    for name in args.datasets:
        if name not in ALL_SETS:
            print(f"skipping {name}: unknown data set (choose from {', '.join(ALL_SETS)})")
            continue
        try:
            X = load(name, args.data_dir)
        except FileNotFoundError as exc:
            print(f"skipping {name}: {exc}")
            continue
        if max_rows is not None and len(X) > max_rows:
            X = X[np.random.RandomState(0).permutation(len(X))[:max_rows]]
        res = evaluate(X, args.models, params, max_folds=args.folds)
        row = {"name": name, "shape": X.shape, "res": res}
        rows.append(row)
        parts = [f"{m} {np.mean(res[m]['scores']):.3f}" for m in args.models]
        print(f"{name:14s} {X.shape[0]:6d}x{X.shape[1]:<3d} " + "  ".join(parts), flush=True)

    if rows:
        print()
        header = f"{'data set':14s} {'n x d':>10s}"
        for m in args.models:
            header += f" {m:>9s}" + (f" {'config':>12s}" if m != "ugmm" else "") + f" {'fit s':>7s}"
        print(header + "  best")
        for row in rows:
            res = row["res"]
            line = f"{row['name']:14s} {row['shape'][0]:>6d}x{row['shape'][1]:<3d}"
            means = {m: float(np.mean(res[m]["scores"])) for m in args.models}
            for m in args.models:
                line += f" {means[m]:9.3f}"
                if m != "ugmm":
                    line += f" {Counter(res[m]['configs']).most_common(1)[0][0]:>12s}"
                line += f" {np.mean(res[m]['times']):7.2f}"
            print(line + "  " + max(means, key=means.get))
        print("\nscores: held-out mean log-likelihood per sample (standardised data); fit s: seconds per fold")

    if args.time_magic:
        try:
            X = load("magic", args.data_dir)
        except FileNotFoundError as exc:
            print(f"magic timing skipped: {exc}")
            return
        start = time.perf_counter()
        est = UGMMDensityEstimator(random_state=0, **params).fit(X)
        elapsed = time.perf_counter() - start
        print(
            f"magic full-data fit ({X.shape[0]}x{X.shape[1]}, torch threads={torch.get_num_threads()}): "
            f"{elapsed:.1f} s, {est.n_iter_} epochs"
        )


if __name__ == "__main__":
    main()
