"""Missing-value benchmark: UGMMClassifier's native NaN handling against imputation pipelines.

For each data set, 5-fold ``StratifiedKFold(shuffle=True, random_state=0)``
cross-validation with entries missing completely at random (each entry NaN
with probability ``fraction``, drawn per fold with a fixed seed; a row that
would lose every entry keeps one at random, the same mask for every model),
in two regimes:

* ``test``: the models are trained on the complete training folds and
  predict on test folds with missing entries (one fit per fold, scored at
  every fraction);
* ``both``: training and test folds both have missing entries (one fit per
  fold and fraction).

Models:

* ``ugmm``: ``UGMMClassifier(random_state=0)``, its defaults, NaN passed as
  is (``input_dropout="auto"``: the training data's own missing fraction, so
  no input dropout in the ``test`` regime);
* ``ugmm_drop``: ``UGMMClassifier(random_state=0, input_dropout=0.3)``, the
  missingness-aware training at a fixed rate (``test`` regime only; in the
  ``both`` regime the default already is missingness-aware);
* ``ugmm_mixture``: ``UGMMClassifier(random_state=0, output_layer="mixture")``,
  the paper's mixture output neurons instead of the default products (not
  in the default model list);
* ``ugmm_noid``: ``UGMMClassifier(random_state=0, input_dropout=0.0)``, trained
  on the real missingness pattern alone (``both`` regime only; an ablation,
  not run by default);
* ``mlp_simple``: ``SimpleImputer(add_indicator=True)`` (mean), ``StandardScaler``,
  ``MLPClassifier(max_iter=500, random_state=0)``;
* ``mlp_iterative``: ``IterativeImputer(random_state=0)``, ``StandardScaler``,
  the same MLP;
* ``hgb``: ``HistGradientBoostingClassifier(random_state=0)`` (native NaN).

Every (set, regime) has one results file, ``<results>/<set>__<regime>.json``,
updated after each (model, fraction) cell, so an interrupted run resumes
where it stopped; ``--table`` prints the tables from whatever is there. The
work is done in order of priority: the ``both`` regime at 30% first (the
headline), then the ``test`` regime, then ``both`` at the other fractions.

Examples::

    python examples/benchmarks/bench_missing.py                       # everything (hours)
    python examples/benchmarks/bench_missing.py wine digits --fractions 0.3
    python examples/benchmarks/bench_missing.py --table
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, SimpleImputer
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import ALL_SETS, load_dataset  # noqa: E402

from sklearn_ugmm import UGMMClassifier  # noqa: E402

MODELS = ("ugmm", "ugmm_drop", "ugmm_noid", "ugmm_mixture", "mlp_simple", "mlp_iterative", "hgb")
DEFAULT_MODELS = ("ugmm", "ugmm_drop", "mlp_simple", "mlp_iterative", "hgb")
REGIME_MODELS = {"test": {"ugmm", "ugmm_drop", "ugmm_mixture", "mlp_simple", "mlp_iterative", "hgb"},
                 "both": {"ugmm", "ugmm_noid", "ugmm_mixture", "mlp_simple", "mlp_iterative", "hgb"}}
FRACTIONS = (0.1, 0.3, 0.5)
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results_missing"


def make_model(name):
    mlp = MLPClassifier(max_iter=500, random_state=0)
    if name == "ugmm":
        return UGMMClassifier(random_state=0, n_threads=1)
    if name == "ugmm_drop":
        return UGMMClassifier(random_state=0, n_threads=1, input_dropout=0.3)
    if name == "ugmm_mixture":
        return UGMMClassifier(random_state=0, n_threads=1, output_layer="mixture")
    if name == "ugmm_noid":
        return UGMMClassifier(random_state=0, n_threads=1, input_dropout=0.0)
    if name == "mlp_simple":
        return make_pipeline(SimpleImputer(add_indicator=True), StandardScaler(), mlp)
    if name == "mlp_iterative":
        return make_pipeline(IterativeImputer(random_state=0), StandardScaler(), mlp)
    if name == "hgb":
        return HistGradientBoostingClassifier(random_state=0)
    raise ValueError(name)


def with_missing(X, fraction, seed):
    """X with each entry NaN with probability ``fraction`` (MCAR); every row keeps one entry."""
    rng = np.random.RandomState(seed)
    missing = rng.rand(*X.shape) < fraction
    empty = np.flatnonzero(missing.all(axis=1))
    missing[empty, rng.randint(X.shape[1], size=len(empty))] = False
    return np.where(missing, np.nan, X)


def mask_seed(fold, fraction, part):
    """The seed of one fold's mask: the same for every model (part 0: training rows, 1: test rows)."""
    return 1000 * fold + int(round(100 * fraction)) * 10 + part


def _scores(model, X, y):
    proba = model.predict_proba(X)
    return accuracy_score(y, model.classes_[np.argmax(proba, axis=1)]), log_loss(y, proba, labels=model.classes_)


def _cell(model, fraction):
    return f"{model}|{fraction:g}"


def run_cell(X, y, regime, model, fractions, n_splits):
    """Per-fraction dict of fold lists (accuracy, log-loss, fit seconds) for one model in one regime."""
    folds = list(StratifiedKFold(n_splits, shuffle=True, random_state=0).split(X, y))
    out = {f: {"accuracy": [], "log_loss": [], "fit_time": []} for f in fractions}
    for k, (train, test) in enumerate(folds):
        if regime == "test":
            est = make_model(model)
            start = time.perf_counter()
            est.fit(X[train], y[train])
            seconds = time.perf_counter() - start
            for f in fractions:
                acc, loss = _scores(est, with_missing(X[test], f, mask_seed(k, f, 1)), y[test])
                for key, value in zip(("accuracy", "log_loss", "fit_time"), (acc, loss, seconds)):
                    out[f][key].append(float(value))
        else:
            for f in fractions:
                est = make_model(model)
                start = time.perf_counter()
                est.fit(with_missing(X[train], f, mask_seed(k, f, 0)), y[train])
                seconds = time.perf_counter() - start
                acc, loss = _scores(est, with_missing(X[test], f, mask_seed(k, f, 1)), y[test])
                for key, value in zip(("accuracy", "log_loss", "fit_time"), (acc, loss, seconds)):
                    out[f][key].append(float(value))
    return out


def _load(path):
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path, results):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


def work_plan(sets, models, fractions, regimes=("both", "test")):
    """(set, regime, fractions) in order of priority: both at 30%, test, both at the other fractions."""
    plan = []
    if 0.3 in fractions:
        plan += [(s, "both", (0.3,)) for s in sets]
    plan += [(s, "test", tuple(fractions)) for s in sets]
    others = tuple(f for f in fractions if f != 0.3)
    if others:
        plan += [(s, "both", others) for s in sets]
    return [step for step in plan if step[1] in regimes]


def run(sets, models, fractions, n_splits, results_dir, verbose=True, regimes=("both", "test")):
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, regime, cell_fractions in work_plan(sets, models, fractions, regimes):
        try:
            X, y = load_dataset(name)
        except (FileNotFoundError, ValueError) as exc:
            print(f"skipping {name}: {exc}", flush=True)
            continue
        path = results_dir / f"{name}__{regime}.json"
        for model in models:
            if model not in REGIME_MODELS[regime]:
                continue
            results = _load(path)
            for f in cell_fractions:
                done = results.get(_cell(model, f))
                if done is not None and len(done["accuracy"]) != n_splits:
                    raise SystemExit(
                        f"{path} holds {len(done['accuracy'])}-fold results for {model} at {f:g}, not "
                        f"{n_splits}-fold ones: give another --results directory (or the same --folds)."
                    )
            todo = tuple(f for f in cell_fractions if _cell(model, f) not in results)
            if not todo:
                continue
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                out = run_cell(X, y, regime, model, todo, n_splits)
            results = _load(path)  # another process may have added cells meanwhile
            for f, cell in out.items():
                results[_cell(model, f)] = cell
            _save(path, results)
            if verbose:
                summary = ", ".join(f"{f:g}: {np.mean(c['accuracy']):.4f} / {np.mean(c['log_loss']):.4f}"
                                    for f, c in out.items())
                print(f"{name:14s} {regime:4s} {model:13s} {summary} ({time.perf_counter() - start:.0f} s)",
                      flush=True)


def table(sets, models, fractions, results_dir):
    """Print the mean over the sets (those with every model done) and the per-set tables."""
    for regime in ("both", "test"):
        regime_models = [m for m in models if m in REGIME_MODELS[regime]]
        if not regime_models:
            continue
        for f in fractions:
            rows = {}
            for name in sets:
                results = _load(results_dir / f"{name}__{regime}.json")
                cells = [results.get(_cell(m, f)) for m in regime_models]
                if all(c is not None for c in cells):
                    rows[name] = [(np.mean(c["accuracy"]), np.mean(c["log_loss"])) for c in cells]
            if not rows:
                continue
            print(f"\nregime={regime} fraction={f:g} ({len(rows)} sets): accuracy / log-loss")
            print(f"{'set':14s} " + " ".join(f"{m:>17s}" for m in regime_models))
            for name, values in rows.items():
                print(f"{name:14s} " + " ".join(f"{a:8.4f} /{l:7.4f}" for a, l in values))
            mean = np.mean(np.array(list(rows.values())), axis=0)
            print(f"{'mean':14s} " + " ".join(f"{a:8.4f} /{l:7.4f}" for a, l in mean))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="*", default=list(ALL_SETS))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--regimes", nargs="+", default=["both", "test"], choices=["both", "test"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--table", action="store_true", help="only print the tables of the results so far")
    args = parser.parse_args(argv)
    if not args.table:
        run(args.sets, args.models, args.fractions, args.folds, args.results, regimes=args.regimes)
    table(args.sets, args.models, args.fractions, args.results)


if __name__ == "__main__":
    main()
