"""Out-of-distribution benchmark: how well each model's scores separate known from unknown inputs.

Cases (AUROC of each score, with the in-distribution test rows as the
positive class, so 0.5 is chance and 1 a perfect separation):

* ``digits_openset``: scikit-learn's 8x8 digits; the models train on the
  classes 0-4 of a stratified half of the data; the other half's 0-4 rows
  are in-distribution and its 5-9 rows unseen classes. Repeated over 5 seeds
  (split and models), mean and standard deviation reported;
* ``mnist_openset``: the same on MNIST: classes 0-4 of ``--n-train``
  training images (a seeded subsample) to train, the 10000 test images split
  into 0-4 (in) and 5-9 (out);
* ``mnist_fashion``: far OOD: trained on ``--n-train`` MNIST training images
  of all ten classes; MNIST test (in) against Fashion-MNIST test (out).

Models, the same epoch budget for both sides:

* ``ugmm``: ``UGMMClassifier(random_state=seed)``, its defaults on digits;
  on MNIST ``hidden_layer_sizes=(64,)``, ``learning_rate_init=1e-2``,
  ``batch_size=128``, ``averaging_epochs=1`` (as in ``mnist.py``), the
  default internal scaling, ``--epochs`` epochs without early stopping
  (``standardize=False`` with the defaults otherwise did much worse; see
  the benchmark page); ``--set PARAM=VALUE`` overrides a parameter of
  ours in every case (the results directory records it);
* ``mlp``: ``MLPClassifier(hidden_layer_sizes=(64,), random_state=seed)``
  (ReLU), behind a ``StandardScaler`` on digits (``max_iter=500``), on the
  [0, 1] pixels with ``batch_size=128`` and ``max_iter=--epochs`` on MNIST.

Scores (higher = more in-distribution): ours ``score_samples`` (the
log-sum-exp of the output neurons' log-densities) and the maximum class
probability; the MLP's maximum softmax probability and its energy, the
log-sum-exp of its logits (the output layer before the softmax).

MNIST and Fashion-MNIST are read from ``../shared/data`` relative to the
repository (``--data-dir``); the MNIST cases are skipped with a message
where the files are absent. Results go to ``<results>/<case>.json`` (a
finished case is not run again) and a table is printed.

Examples::

    python examples/benchmarks/bench_ood.py                     # all cases (minutes)
    python examples/benchmarks/bench_ood.py digits_openset --table
    python examples/benchmarks/bench_ood.py digits_openset --set label_smoothing=0 --results DIR
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import DEFAULT_DATA_DIR, load_mnist  # noqa: E402
from bench_tabular import parse_overrides  # noqa: E402

from sklearn_ugmm import UGMMClassifier  # noqa: E402

CASES = ("digits_openset", "mnist_openset", "mnist_fashion")
SCORES = ("ugmm score_samples", "ugmm max prob", "mlp max softmax", "mlp energy")
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results_ood"


def mlp_logits(model, X):
    """The logits of a fitted MLPClassifier (or a pipeline ending in one): its output before the softmax."""
    if hasattr(model, "steps"):
        for _, step in model.steps[:-1]:
            X = step.transform(X)
        model = model.steps[-1][1]
    h = np.asarray(X, dtype=np.float64)
    for W, b in zip(model.coefs_[:-1], model.intercepts_[:-1]):
        h = np.maximum(h @ W + b, 0.0)  # ReLU, MLPClassifier's default activation
    return h @ model.coefs_[-1] + model.intercepts_[-1]


def ood_scores(ugmm, mlp, X):
    """Every score of the two fitted models on X (higher = more in-distribution)."""
    logits = mlp_logits(mlp, X)
    return {
        "ugmm score_samples": ugmm.score_samples(X),
        "ugmm max prob": ugmm.predict_proba(X).max(axis=1),
        "mlp max softmax": mlp.predict_proba(X).max(axis=1),
        "mlp energy": logsumexp(logits, axis=1),
    }


def aurocs(ugmm, mlp, X_in, X_out):
    s_in, s_out = ood_scores(ugmm, mlp, X_in), ood_scores(ugmm, mlp, X_out)
    labels = np.r_[np.ones(len(X_in)), np.zeros(len(X_out))]
    return {name: float(roc_auc_score(labels, np.r_[s_in[name], s_out[name]])) for name in SCORES}


def fit_pair(X, y, *, seed, epochs=None, ugmm_params=None):
    """(ugmm, mlp, accuracy-free fit seconds): digits settings without ``epochs``, MNIST settings with.

    ``ugmm_params`` override the UGMMClassifier's parameters (``--set``).
    """
    ugmm_params = ugmm_params or {}
    if epochs is None:
        ugmm = UGMMClassifier(random_state=seed, n_threads=1).set_params(**ugmm_params)
        mlp = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed))
    else:
        ugmm = UGMMClassifier(
            hidden_layer_sizes=(64,), learning_rate_init=1e-2, batch_size=128, averaging_epochs=1,
            max_iter=epochs, early_stopping=False, n_iter_no_change=np.inf, random_state=seed, n_threads=1,
        ).set_params(**ugmm_params)
        mlp = MLPClassifier(hidden_layer_sizes=(64,), batch_size=128, max_iter=epochs, random_state=seed)
    seconds = {}
    for name, model in (("ugmm", ugmm), ("mlp", mlp)):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed epoch budget on MNIST
            model.fit(X, y)
        seconds[name] = time.perf_counter() - start
    return ugmm, mlp, seconds


def digits_openset(seeds=range(5), ugmm_params=None):
    X, y = load_digits(return_X_y=True)
    runs = []
    for seed in seeds:
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, stratify=y, random_state=seed)
        known = y_train < 5
        ugmm, mlp, seconds = fit_pair(X_train[known], y_train[known], seed=seed, ugmm_params=ugmm_params)
        inside = y_test < 5
        runs.append({
            "auroc": aurocs(ugmm, mlp, X_test[inside], X_test[~inside]),
            "accuracy": {"ugmm": ugmm.score(X_test[inside], y_test[inside]),
                         "mlp": mlp.score(X_test[inside], y_test[inside])},
            "fit_time": seconds,
        })
    return runs


def _mnist_subsample(X, y, n, seed):
    rows = np.random.RandomState(seed).permutation(len(X))[:n]
    return X[rows], y[rows]


def mnist_openset(data_dir, n_train, epochs, seed=0, ugmm_params=None):
    X_train, y_train, X_test, y_test = load_mnist(data_dir / "mnist.npz")
    known = y_train < 5
    X_fit, y_fit = _mnist_subsample(X_train[known], y_train[known], n_train, seed)
    ugmm, mlp, seconds = fit_pair(X_fit, y_fit, seed=seed, epochs=epochs, ugmm_params=ugmm_params)
    inside = y_test < 5
    return [{
        "auroc": aurocs(ugmm, mlp, X_test[inside], X_test[~inside]),
        "accuracy": {"ugmm": ugmm.score(X_test[inside], y_test[inside]),
                     "mlp": mlp.score(X_test[inside], y_test[inside])},
        "fit_time": seconds,
    }]


def mnist_fashion(data_dir, n_train, epochs, seed=0, ugmm_params=None):
    X_train, y_train, X_test, y_test = load_mnist(data_dir / "mnist.npz")
    _, _, X_fashion, _ = load_mnist(data_dir / "fashion_mnist.npz")
    X_fit, y_fit = _mnist_subsample(X_train, y_train, n_train, seed)
    ugmm, mlp, seconds = fit_pair(X_fit, y_fit, seed=seed, epochs=epochs, ugmm_params=ugmm_params)
    return [{
        "auroc": aurocs(ugmm, mlp, X_test, X_fashion),
        "accuracy": {"ugmm": ugmm.score(X_test, y_test), "mlp": mlp.score(X_test, y_test)},
        "fit_time": seconds,
    }]


def summary(runs):
    """Mean and standard deviation over the runs of each AUROC, accuracy and fit time."""
    out = {}
    for key in ("auroc", "accuracy", "fit_time"):
        for name in runs[0][key]:
            values = [run[key][name] for run in runs]
            out[f"{key} {name}"] = (float(np.mean(values)), float(np.std(values)))
    return out


def print_table(results):
    print(f"\n{'case':16s} " + " ".join(f"{s:>20s}" for s in SCORES) + f" {'acc ugmm / mlp':>16s}")
    for case, runs in results.items():
        stats = summary(runs)
        cells = [f"{stats[f'auroc {s}'][0]:.4f}" + (f" ±{stats[f'auroc {s}'][1]:.3f}" if len(runs) > 1 else "")
                 for s in SCORES]
        acc = f"{stats['accuracy ugmm'][0]:.3f} / {stats['accuracy mlp'][0]:.3f}"
        print(f"{case:16s} " + " ".join(f"{c:>20s}" for c in cells) + f" {acc:>16s}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"any of {', '.join(CASES)} (default: all)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--n-train", type=int, default=10000, help="MNIST training images (a seeded subsample)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs on MNIST, for both models")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE",
        help="override a UGMMClassifier parameter (repeatable), e.g. --set label_smoothing=0",
    )
    parser.add_argument("--table", action="store_true", help="only print the table of the results so far")
    args = parser.parse_args(argv)
    ugmm_params = parse_overrides(args.set)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    if not args.table:
        args.results.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in args.cases:
        path = args.results / f"{case}.json"
        config = {"n_train": args.n_train, "epochs": args.epochs} if case != "digits_openset" else {}
        if ugmm_params:
            config["ugmm"] = ugmm_params
        if path.exists() and not args.table:
            saved = json.loads(path.read_text()).get("config", {})
            if saved != config:
                raise SystemExit(
                    f"{path} holds results of {saved}, not of {config}: give another --results directory "
                    "(or the same options, or --table to print what it holds)."
                )
        if not path.exists() and not args.table:
            if case != "digits_openset":
                needed = ["mnist.npz"] + (["fashion_mnist.npz"] if case == "mnist_fashion" else [])
                absent = [name for name in needed if not (args.data_dir / name).exists()]
                if absent:
                    print(f"skipping {case}: {', '.join(absent)} not found in {args.data_dir}")
                    continue
            start = time.perf_counter()
            if case == "digits_openset":
                runs = digits_openset(ugmm_params=ugmm_params)
            elif case == "mnist_openset":
                runs = mnist_openset(args.data_dir, args.n_train, args.epochs, ugmm_params=ugmm_params)
            else:
                runs = mnist_fashion(args.data_dir, args.n_train, args.epochs, ugmm_params=ugmm_params)
            path.write_text(json.dumps({"config": config, "runs": runs}, indent=1))
            print(f"{case}: done in {time.perf_counter() - start:.0f} s", flush=True)
        if path.exists():
            results[case] = json.loads(path.read_text())["runs"]
    if results:
        print_table(results)


if __name__ == "__main__":
    main()
