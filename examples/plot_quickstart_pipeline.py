"""
=============================================
Quick start: a Pipeline with GridSearchCV
=============================================

:class:`~sklearn_ugmm.UGMMClassifier` is an ordinary scikit-learn classifier:
it goes in a :class:`~sklearn.pipeline.Pipeline`, its hyperparameters are
searched with :class:`~sklearn.model_selection.GridSearchCV`, and it is scored
with the usual metrics. Here we tune the hidden layer size and the L2 penalty
on the breast cancer data set.
"""

# %%
# Data and pipeline
# -----------------
# The estimator standardises its inputs internally, so the scaler is not
# needed; we keep it to show that any preprocessing composes as usual.
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import classification_report
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_ugmm import UGMMClassifier

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)

pipe = make_pipeline(StandardScaler(), UGMMClassifier(max_iter=40, random_state=0))

# %%
# Grid search
# -----------
# Early stopping is on by default: each fit holds out 10% of its training
# data and restores the epoch with the best validation loss.
grid = GridSearchCV(
    pipe,
    {"ugmmclassifier__hidden_layer_sizes": [(8,), (32,)], "ugmmclassifier__alpha": [1e-4, 1e-2]},
    cv=3,
    scoring="neg_log_loss",
)
grid.fit(X_train, y_train)
print("best parameters:", grid.best_params_)
print(f"best cross-validated log-loss: {-grid.best_score_:.3f}")

# %%
# Test set
# --------
print(classification_report(y_test, grid.predict(X_test), digits=3))

# %%
# The search results as a table of mean test scores:
import pandas as pd

results = pd.DataFrame(grid.cv_results_)
results[["param_ugmmclassifier__hidden_layer_sizes", "param_ugmmclassifier__alpha", "mean_test_score"]]
