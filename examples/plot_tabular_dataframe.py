"""
======================================================================
A raw table: categorical columns, missing values, imbalanced classes
======================================================================

Real tables come with text categories, holes and a rare class of interest.
:class:`~sklearn_ugmm.UGMMClassifier` takes such a pandas DataFrame as it is:

* categorical columns (pandas ``category``, ``object`` or ``string``) become
  one network input per category inside the fitted preprocessing
  (``categorical_features="from_dtype"``, the default);
* a missing value (NaN, None), or a category never seen in training, removes
  that input's components from every first-layer mixture, which is then
  renormalised over the observed inputs: no imputer;
* ``class_weight="balanced"`` weighs the rare class up.

We tune it by successive halving over the number of epochs, compare it with
:class:`~sklearn.ensemble.HistGradientBoostingClassifier` (which also handles
categories and missing values natively) and look inside the fitted model.
"""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import HalvingGridSearchCV, train_test_split

from sklearn_ugmm import UGMMClassifier
from sklearn_ugmm.inspection import LayerDisplay, TrainingCurveDisplay

# %%
# A synthetic loan table
# ----------------------
# Defaults (the positive class, about 15% of the rows) depend on income,
# debt ratio, region and employment; 10% of every column is missing.
rng = np.random.default_rng(0)
n = 3000
region = rng.choice(["north", "south", "east", "west", "centre"], size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
employment = rng.choice(["salaried", "self-employed", "unemployed"], size=n, p=[0.7, 0.2, 0.1])
income = rng.lognormal(mean=10.3, sigma=0.5, size=n)
debt_ratio = rng.beta(2, 5, size=n)
age = rng.integers(20, 70, size=n).astype(float)
risk = (
    -2.3
    + 3.0 * (debt_ratio - 0.3)
    - 1.2 * (np.log(income) - 10.3)
    + np.select([region == "east", region == "centre"], [0.8, -0.6], 0.0)
    + np.select([employment == "unemployed", employment == "self-employed"], [1.5, 0.4], 0.0)
)
default = rng.random(n) < 1 / (1 + np.exp(-risk))
table = pd.DataFrame(
    {
        "region": pd.Categorical(region),
        "employment": pd.Series(employment, dtype=object),
        "income": income,
        "debt_ratio": debt_ratio,
        "age": age,
    }
)
for column in table.columns:
    table.loc[rng.random(n) < 0.1, column] = None
y = np.where(default, "default", "repaid")
print(table.head())
print(f"default rate {np.mean(default):.1%}, missing entries {table.isna().to_numpy().mean():.1%}")

X_train, X_test, y_train, y_test = train_test_split(table, y, test_size=0.3, stratify=y, random_state=0)

# %%
# Successive halving over the training budget
# -------------------------------------------
# Every candidate trains for 10 epochs; the best third goes on to 30. With
# ``n_iter_no_change=np.inf`` each fit trains exactly its budget.
search = HalvingGridSearchCV(
    UGMMClassifier(early_stopping=False, n_iter_no_change=np.inf, random_state=0),
    {"class_weight": [None, "balanced"], "hidden_layer_sizes": [(8,), (32,)]},
    resource="max_iter",
    min_resources=10,
    max_resources=30,
    factor=3,
    scoring="balanced_accuracy",
    cv=3,
    random_state=0,
).fit(X_train, y_train)
results = pd.DataFrame(search.cv_results_)[["iter", "n_resources", "params", "mean_test_score"]]
print(results.to_string(index=False))
print("best:", search.best_params_)

# %%
# Against gradient boosting
# -------------------------
# Balanced accuracy on the held-out rows. Both models handle categories and
# missing values natively; gradient boosting needs its text column as a pandas
# ``category``.
ugmm = search.best_estimator_
as_categories = {"employment": "category"}
hgb = HistGradientBoostingClassifier(class_weight="balanced", random_state=0)
hgb.fit(X_train.astype(as_categories), y_train)
scores = {
    "uGMM-NN": balanced_accuracy_score(y_test, ugmm.predict(X_test)),
    "HistGradientBoosting": balanced_accuracy_score(y_test, hgb.predict(X_test.astype(as_categories))),
}
for name, score in scores.items():
    print(f"{name:22s} balanced accuracy {score:.3f}")

# %%
# Inside the fitted model
# -----------------------
# The first layer's inputs are the numeric features and one input per
# category (``region=east``, ...); the heatmap shows which of them each hidden
# neuron's mixture weights.
fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
LayerDisplay.from_estimator(ugmm, layer=0, ax=ax)
plt.show()

TrainingCurveDisplay.from_estimator(ugmm)
plt.show()
