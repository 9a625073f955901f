"""Tabular classification benchmark: UGMMClassifier against scikit-learn baselines.

For each data set, 5-fold ``StratifiedKFold(shuffle=True, random_state=0)``
cross-validation of

* ``ugmm``: ``UGMMClassifier(random_state=0)`` with its default parameters;
* ``mlp``: ``make_pipeline(StandardScaler(), MLPClassifier(max_iter=500, random_state=0))``;
* ``logreg``: ``make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))``;
* ``hgb``: ``HistGradientBoostingClassifier(random_state=0)``;

reporting mean test accuracy, mean test log-loss and mean fit time (seconds
per fold), then the mean over data sets of each column.

Data sets: ``iris``, ``wine``, ``breast_cancer``, ``digits`` (scikit-learn)
and the KEEL sets ``magic``, ``phoneme``, ``spambase``, ``segment``,
``satimage``, ``page-blocks0``, ``contraceptive`` read from
``<data-dir>/<name>.npz`` (default ``../shared/data/tabular`` relative to the
repository); missing ones are skipped with a message.

Examples::

    python examples/benchmarks/bench_tabular.py                  # everything (slow)
    python examples/benchmarks/bench_tabular.py iris wine --quick
    python examples/benchmarks/bench_tabular.py --models ugmm --set learning_rate_init=3e-3
"""

import argparse
import ast
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import ALL_SETS, DEFAULT_DATA_DIR, load_dataset  # noqa: E402

from sklearn_ugmm import UGMMClassifier  # noqa: E402

MODELS = ("ugmm", "mlp", "logreg", "hgb")


def make_model(name, ugmm_params=None):
    if name == "ugmm":
        return UGMMClassifier(random_state=0, **(ugmm_params or {}))
    if name == "mlp":
        return make_pipeline(StandardScaler(), MLPClassifier(max_iter=500, random_state=0))
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    if name == "hgb":
        return HistGradientBoostingClassifier(random_state=0)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def subsample(X, y, n, seed=0):
    """Stratified subsample of at most ``n`` rows (classes of 1 row kept as they are)."""
    if len(y) <= n:
        return X, y
    try:
        X, _, y, _ = train_test_split(X, y, train_size=n, stratify=y, random_state=seed)
    except ValueError:
        X, _, y, _ = train_test_split(X, y, train_size=n, random_state=seed)
    return X, y


def evaluate(model, X, y, n_splits=5):
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = cross_validate(model, X, y, cv=cv, scoring=("accuracy", "neg_log_loss"), n_jobs=1)
    return {
        "acc": float(np.mean(res["test_accuracy"])),
        "logloss": float(-np.mean(res["test_neg_log_loss"])),
        "fit_s": float(np.mean(res["fit_time"])),
    }


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(items):
    """``{param: value}`` of ``--set PARAM=VALUE`` items; a value is a Python literal, else a string."""
    params = {}
    for item in items or ():
        key, _, value = item.partition("=")
        params[key] = parse_value(value)
    return params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", default=list(ALL_SETS), help=f"default: {' '.join(ALL_SETS)}")
    parser.add_argument("--data-dir", default=None, help=f"folder of the .npz sets (default {DEFAULT_DATA_DIR / 'tabular'})")
    parser.add_argument(
        "--quick", nargs="?", type=int, const=1000, default=None, metavar="N",
        help="stratified subsample of at most N rows per set (default N=1000) for smoke runs",
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE",
        help="override a UGMMClassifier parameter (repeatable), e.g. --set alpha=1e-3",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="torch intra-op threads (default 1: the small uGMM networks gain nothing from more, "
        "and on a busy machine extra threads slow them down badly)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {MODELS}")
    ugmm_params = parse_overrides(args.set)
    if ugmm_params:
        print(f"UGMMClassifier overrides: {ugmm_params}")

    results = {}  # dataset -> model -> metrics
    header = f"{'dataset':<15}{'n':>7}{'d':>4}{'k':>3}  " + "".join(
        f"{m + ' acc':>11}{m + ' ll':>11}{m + ' s':>10}" for m in models
    )
    print(header)
    print("-" * len(header))
    for name in args.datasets:
        try:
            X, y = load_dataset(name, args.data_dir)
        except (FileNotFoundError, ValueError, AttributeError) as exc:
            print(f"{name:<15}skipped: {exc}")
            continue
        if args.quick:
            X, y = subsample(X, y, args.quick)
        row = {}
        for m in models:
            row[m] = evaluate(make_model(m, ugmm_params), X, y, args.folds)
        results[name] = row
        line = f"{name:<15}{X.shape[0]:>7}{X.shape[1]:>4}{len(np.unique(y)):>3}  " + "".join(
            f"{row[m]['acc']:>11.4f}{row[m]['logloss']:>11.4f}{row[m]['fit_s']:>10.2f}" for m in models
        )
        print(line, flush=True)
    if results:
        print("-" * len(header))
        means = {m: {k: np.mean([r[m][k] for r in results.values()]) for k in ("acc", "logloss", "fit_s")} for m in models}
        print(
            f"{'MEAN (' + str(len(results)) + ' sets)':<29}  "
            + "".join(f"{means[m]['acc']:>11.4f}{means[m]['logloss']:>11.4f}{means[m]['fit_s']:>10.2f}" for m in models)
        )
    return results


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total wall time {time.perf_counter() - start:.0f} s")
